"""CSV tables: a round trip with given columns, columns from the first row, and the empty-table error."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.tables import read_csv, write_csv


def test_round_trip_with_given_columns_counts_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = ({"a": i, "b": f"x{i}, «y»"} for i in range(3))  # a generator, read once; commas and non-ASCII
    assert write_csv(path, rows, ("b", "a")) == 3
    assert path.read_text(encoding="utf-8").splitlines()[0] == "b,a"
    assert read_csv(path) == [{"b": f"x{i}, «y»", "a": str(i)} for i in range(3)]


def test_columns_default_to_the_first_rows_keys(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    assert write_csv(path, [{"z": 1, "y": 2}, {"z": 3, "y": 4}]) == 2
    assert read_csv(path) == [{"z": "1", "y": "2"}, {"z": "3", "y": "4"}]


def test_an_empty_table_needs_its_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no rows and no columns"):
        write_csv(tmp_path / "t.csv", [])
    assert write_csv(tmp_path / "e.csv", [], ("a",)) == 0 and read_csv(tmp_path / "e.csv") == []
    with pytest.raises(ValueError):
        write_csv(tmp_path / "x.csv", [{"a": 1, "b": 2}], ("a",))  # a key the header does not have
