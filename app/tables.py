"""CSV tables of the study and research wings: one writer and one reader, shared by both.

Rows are dicts from column name to value; a table's columns are given, or else those of its first row.
Files are UTF-8 with the csv module's default dialect, so a spreadsheet or pandas reads them as written.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str] = ()) -> int:
    """Write `rows` under a header line to `path` (replacing it).

    Args:
        path: the file to write.
        rows: the table's rows, read once (a generator will do).
        columns: the header, in order; empty: the keys of the first row.

    Returns:
        The number of rows written.

    Raises:
        ValueError: no `columns` and no rows to take them from, or a row with a key not in the header.
    """
    remaining = iter(rows)
    if not columns:
        first = next(remaining, None)
        if first is None:
            raise ValueError(f"write_csv({path}): no rows and no columns; pass `columns` for an empty table")
        columns = list(first)
        remaining = itertools.chain([first], remaining)
    count = 0
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in remaining:
            writer.writerow(row)
            count += 1
    return count


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header line, every value a string."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
