"""The collapse study (app/research/collapse.py): a stopped run continues where it stopped and refuses
other settings; the noise sweep writes one row per point and cell."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from app.research import evaluate as evaluate_cli
from model.loading import LoadedModel


def texts(folder: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]


def test_a_stopped_study_continues_where_it_stopped_and_refuses_other_settings(
    cli: Path, tiny: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["collapse", "--tiny", "--length", "10", "--conditions", "plain,neither,both", "--batch", "2",
               "--workers", "1"]  # fmt: skip
    assert evaluate_cli.main([*command, "--n", "3", "--name", "whole"]) == 0
    assert evaluate_cli.main([*command, "--n", "2", "--name", "part"]) == 0
    first = texts(cli / "part")
    lines = (cli / "part" / "generations.jsonl").read_text()
    (cli / "part" / "generations.jsonl").write_text(lines + lines.splitlines()[0][:25])  # killed mid-write
    assert evaluate_cli.main([*command, "--n", "3", "--name", "part"]) == 0
    assert "resuming" in capsys.readouterr().err
    resumed = texts(cli / "part")
    assert resumed[: len(first)] == first and len(resumed) == 9  # 6 kept, 3 new, the cut line dropped
    key = lambda row: (row["condition"], row["index"])  # noqa: E731
    assert sorted(map(key, resumed)) == sorted(map(key, texts(cli / "whole")))
    whole = {key(r): r["tokens"] for r in texts(cli / "whole")}
    assert all(whole[key(r)] == r["tokens"] for r in resumed)  # batches of 2 then 1: the same texts
    summary = list(csv.DictReader((cli / "part" / "summary.csv").open()))
    assert [(row["condition"], row["n"]) for row in summary] == [
        ("plain", "3"),
        ("neither", "3"),
        ("both", "3"),
    ]
    assert (cli / "part" / "collapse_by_position.png").stat().st_size > 1000
    assert evaluate_cli.main([*command, "--n", "3", "--length", "12", "--name", "part"]) == 2
    assert "length differ" in capsys.readouterr().err and len(texts(cli / "part")) == 9


def test_the_sweep_writes_one_row_per_point_and_cell(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    command = [
        "sweep",
        "--tiny",
        "--n",
        "1",
        "--length",
        "6",
        "--noise",
        "0,1e-6",
        "--amp",
        "2",
        "--name",
        "sw",
        "--workers",
        "1",
    ]
    assert evaluate_cli.main(command) == 0
    table = list(csv.DictReader((cli / "sw" / "sweep.csv").open()))
    assert [(r["noise_sigma"], r["condition"]) for r in table] == [
        (sigma, cell) for sigma in ("0", "1e-06") for cell in ("neither", "pp", "tsp", "both")
    ]
    assert (cli / "sw" / "sweep.png").stat().st_size > 1000 and (cli / "sw" / "noise-1e-06-amp-2").is_dir()
