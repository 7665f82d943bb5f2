"""The research command (app/research/evaluate.py): its subcommands end to end on the tiny model, and the
values it refuses before anything runs (each study's own behaviour: test_collapse.py, test_jobs.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from app.research import collapse as evaluate_collapse
from app.research import evaluate as evaluate_cli
from app.research import single_step as evaluate_single_step
from app.research.report import CELLS
from model.loading import LoadedModel


def test_cli_writes_tables_plots_and_settings(
    tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluate_cli, "RESULTS", tmp_path)
    monkeypatch.setattr(evaluate_cli, "load_model", lambda args: tiny)
    perm = np.random.default_rng(0).permutation(tiny.input_embeddings().shape[0])
    for module in (evaluate_collapse, evaluate_single_step):
        monkeypatch.setattr(module, "tsp_order", lambda loaded: (perm, "test permutation"))
    args = [
        "single-step",
        "--tiny",
        "--draws",
        "64",
        "--prompts",
        "3",
        "--prefix-tokens",
        "1",
        "--name",
        "ss",
    ]
    assert evaluate_cli.main(args) == 0
    summary = list(csv.DictReader((tmp_path / "ss" / "summary.csv").open()))
    assert [(row["TSP"], row["PP"]) for row in summary] == list(CELLS)
    assert (tmp_path / "ss" / "single_step.png").stat().st_size > 1000
    assert json.loads((tmp_path / "ss" / "settings.json").read_text())["draws"] == 64
    args = ["collapse", "--tiny", "--n", "1", "--length", "8", "--conditions", "plain,both", "--name", "col"]
    assert evaluate_cli.main(args) == 0
    assert "| both |" in (tmp_path / "col" / "summary.md").read_text()
    assert (tmp_path / "col" / "collapse.png").is_file()
    assert (
        evaluate_cli.main(["summarise", str(tmp_path / "col"), str(tmp_path / "col"), "--name", "merged"])
        == 0
    )
    merged = list(csv.DictReader((tmp_path / "merged" / "summary.csv").open()))
    assert [(row["condition"], row["n"]) for row in merged] == [
        ("plain", "1"),
        ("both", "1"),
    ]  # no duplicates


def test_cli_rejects_bad_arguments(
    tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(evaluate_cli, "RESULTS", tmp_path)
    monkeypatch.setattr(evaluate_cli, "load_model", lambda args: tiny)
    for conditions in ("plain,bogus", "pp,pp"):
        with pytest.raises(SystemExit) as stop:
            evaluate_cli.main(["collapse", "--tiny", "--conditions", conditions])
        assert stop.value.code == 2 and "--conditions" in capsys.readouterr().err
    assert evaluate_cli.main(["single-step", "--tiny", "--temperature", "9"]) == 2
    assert "temperature" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_cli.main(["collapse", "--n", "0"])


def test_bad_values_are_refused_before_anything_runs(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        evaluate_cli.main(["sweep", "--tiny", "--noise", "0,-1"])
    assert "must not be negative" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_cli.main(["collapse", "--tiny", "--batch", "65"])
    assert "between 1 and 64" in capsys.readouterr().err
    for bad, says in (
        (["--seed", "-1"], "between 0 and 4294967295"),
        (["--prompt", "  "], "must not be empty"),
    ):
        with pytest.raises(SystemExit):
            evaluate_cli.main(["collapse", "--tiny", *bad])
        assert says in capsys.readouterr().err
    assert evaluate_cli.main(["collapse", "--tiny", "--length", "100000", "--name", "long"]) == 2
    assert "context window" in capsys.readouterr().err
