"""The collapse study's command: the paper's criterion, resuming a stopped run, the noise sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from app.research import collapse as evaluate_collapse
from app.research import evaluate as evaluate_cli
from app.research import jobs as evaluate_jobs
from model.evaluation import CollapseCriteria, generate_fixed_length, repeat_run_start, score_generation
from model.generate import build_prompt
from model.loading import LoadedModel
from model.sampler import SamplerConfig


def test_the_paper_criterion_finds_the_first_run_of_a_repeated_unit_anywhere() -> None:
    assert repeat_run_start([1, 2] + [7] * 8 + [3, 4], max_unit=4, times=8) == 2
    assert repeat_run_start([1, 2] + [7] * 7 + [3, 4], max_unit=4, times=8) == -1  # 7 times is not enough
    assert repeat_run_start([9, 9, 9] + [5, 6, 7] * 8, max_unit=4, times=8) == 3  # a 3-token unit
    assert repeat_run_start([5, 6, 7, 8, 0] * 8, max_unit=4, times=8) == -1  # a 5-token unit is text
    assert repeat_run_start([], max_unit=4, times=8) == -1
    tokens = list(range(40)) + [3] * 10 + list(range(100, 110))
    score = score_generation(tokens, np.full(len(tokens), 7.0), CollapseCriteria(nll_window=8))
    assert (
        score.repeat_from == 40 and score.implausible_from == 0 and score.onset(CollapseCriteria(), 60) == 0
    )


@pytest.fixture
def cli(tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(evaluate_cli, "RESULTS", tmp_path)
    monkeypatch.setattr(evaluate_cli, "load_model", lambda args: tiny)
    perm = np.random.default_rng(0).permutation(tiny.input_embeddings().shape[0])
    monkeypatch.setattr(evaluate_cli, "tsp_order", lambda loaded: (perm, "test permutation"))
    return tmp_path


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


def test_a_study_row_is_the_unbatched_generation_of_its_seed(cli: Path, tiny: LoadedModel) -> None:
    assert evaluate_cli.main(["collapse", "--tiny", "--n", "2", "--length", "9", "--conditions", "pp",
                              "--seed", "5", "--name", "pp", "--workers", "1"]) == 0  # fmt: skip
    prompt = build_prompt(tiny, [{"role": "user", "content": evaluate_collapse.PROMPTS[1]}], reserve=9)
    selector = evaluate_jobs.unbatched_selector("pp", tiny, None, SamplerConfig())
    alone = generate_fixed_length(tiny, prompt, selector, 9, 6)  # index 1 of seed 5: r stream seed 6
    assert texts(cli / "pp")[1]["tokens"] == alone


def test_worker_processes_write_the_texts_one_process_writes(cli: Path) -> None:
    """Two spawned workers (each loading the tiny model itself) and one in-process runner: the same rows,
    with batches of 3 against batches of 2, and noise on c - r drawn per text."""
    command = ["collapse", "--tiny", "--n", "5", "--length", "8", "--conditions", "plain,tsp,both",
               "--noise-sigma", "1e-4"]  # fmt: skip
    assert evaluate_cli.main([*command, "--workers", "2", "--batch", "3", "--name", "two"]) == 0
    assert evaluate_cli.main([*command, "--workers", "1", "--batch", "2", "--name", "one"]) == 0
    key = lambda row: (row["condition"], row["index"])  # noqa: E731
    assert sorted(texts(cli / "two"), key=key) == sorted(texts(cli / "one"), key=key)
    assert len(texts(cli / "two")) == 15


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
