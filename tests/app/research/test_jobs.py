"""The study's generation jobs (app/research/jobs.py): a row is the unbatched generation of its seed, and
worker processes write the texts one process writes."""

from __future__ import annotations

from pathlib import Path

from app.research import collapse as evaluate_collapse
from app.research import evaluate as evaluate_cli
from app.research import jobs as evaluate_jobs
from core.progress import Progress
from model.evaluation import generate_fixed_length
from model.generate import build_prompt
from model.loading import LoadedModel
from model.sampler import SamplerConfig
from tests.app.research.test_collapse import texts


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


def test_the_pool_adds_every_jobs_tokens_into_one_progress() -> None:
    events: list[Progress] = []
    tally = evaluate_jobs._Tally(10, events.append)
    first = tally.job()  # a job in this process reports its own counts from 0
    first(Progress("tokens", 2, 4))
    first(Progress("tokens", 4, 4))
    second = tally.job()
    second(Progress("tokens", 3, 6))
    tally.add(3)  # what a worker process sends: tokens since its last report
    assert [event.done for event in events] == [2, 4, 7, 10]
    assert events[-1] == Progress("tokens", 10, 10)
