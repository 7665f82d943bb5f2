"""Generation jobs of the collapse study, and the processes that run them (`app/research/collapse.py`).

A job is one batch of generations of one condition (`model.batch_decode.generate_batch`), scored as soon as
it ends (the plain model's NLL of every token, the collapse detector). A batch runs on one intra-op thread,
which is what makes each generation independent of its batch, so a study uses the machine's cores by
running jobs in as many processes (`StudyPool`, `--workers`): each loads the model once and keeps its
selectors; the parent gets every finished job's rows and a count of tokens per step for its bar. With one
worker the jobs run in the calling process. The rows do not depend on the number of workers.

The processes are spawned, not forked: torch's thread pool does not survive a fork.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.progress import OnProgress, Progress
from model.batch_decode import BatchRequest, BatchResult, generate_batch
from model.batch_sampler import NOTHING, BatchExact, BatchSelector, BatchSimulate
from model.evaluation import CollapseCriteria, score_generation, token_nll
from model.generate import ExactSelector, Selector
from model.loading import LoadedModel, load_chosen
from model.sampler import SamplerConfig
from model.simulate import SimulateSelector, identity_perm

CONDITIONS = ("plain", "neither", "pp", "tsp", "both")
AMBIGUOUS = 1e-3  # a draw is ambiguous when some weight is off by more than this (DESIGN.md's table)
IntArray = npt.NDArray[np.int64]
BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ModelSource:
    """Where a worker process loads the model from (the default model, a local directory, the tiny one)."""

    tiny: bool = False
    path: Path | None = None

    def load(self, on_progress: OnProgress | None = None) -> LoadedModel:
        return load_chosen(self.tiny, self.path, on_progress=on_progress)


@dataclass(frozen=True)
class GenerationJob:
    """One batch of one condition: the texts `indices` (prompt numbers beside them) with their requests."""

    condition: str
    sampler: SamplerConfig  # the study's settings; the condition decides TSP and PP
    criteria: CollapseCriteria
    indices: tuple[int, ...]
    prompt_numbers: tuple[int, ...]
    requests: tuple[BatchRequest, ...]


def condition_sampler(condition: str, base: SamplerConfig) -> SamplerConfig:
    """The sampler settings of a simulate condition: `base` with TSP and PP on or off."""
    tsp, pp = condition in ("tsp", "both"), condition in ("pp", "both")
    return SamplerConfig(**{**base.to_dict(), "tsp": tsp, "pp": pp})


def condition_perm(condition: str, vocab: int, tsp_perm: IntArray | None) -> IntArray:
    """The sampling order of a condition: the TSP order for tsp and both, token-id order otherwise."""
    if condition in ("tsp", "both") and tsp_perm is not None:
        return tsp_perm
    return identity_perm(vocab)


def study_selector(
    condition: str, loaded: LoadedModel, tsp_perm: IntArray | None, base: SamplerConfig
) -> BatchSelector:
    """The batched selector of a condition: plain sampling, or simulate mode with TSP and PP on or off."""
    embeddings = loaded.input_embeddings()
    if condition == "plain":
        return BatchExact(embeddings, base.temperature)
    perm = condition_perm(condition, embeddings.shape[0], tsp_perm)
    return BatchSimulate(embeddings, perm, condition_sampler(condition, base))


def unbatched_selector(
    condition: str, loaded: LoadedModel, tsp_perm: IntArray | None, base: SamplerConfig
) -> Selector:
    """The one-sequence selector of a condition (the landed collapse path: the benchmark's baseline)."""
    embeddings = loaded.input_embeddings()
    if condition == "plain":
        return ExactSelector(embeddings, base.temperature)
    perm = condition_perm(condition, embeddings.shape[0], tsp_perm)
    return SimulateSelector(embeddings, perm, condition_sampler(condition, base))


def generation_row(
    job: GenerationJob, slot: int, result: BatchResult, nll: npt.NDArray[np.float64]
) -> dict[str, Any]:
    """The scored row of one generation (the per-text line of generations.csv)."""
    criteria, request = job.criteria, job.requests[slot]
    score = score_generation(result.tokens, nll, criteria)
    drawn = [c for c, e in zip(result.cosine, result.exact, strict=True) if e != NOTHING]
    return {
        "condition": job.condition,
        "index": job.indices[slot],
        "prompt": job.prompt_numbers[slot],
        "seed": request.seed,
        "steps": len(result.tokens),
        "collapsed": int(score.collapsed(criteria)),
        "loop": int(score.repetition(criteria)),
        "implausible": int(score.implausible(criteria)),
        "paper_repeat": int(score.repeat_from >= 0),
        "onset": score.onset(criteria, len(result.tokens)),
        "paper_onset": score.repeat_from,
        "loop_tokens": score.loop_tokens,
        "loop_period": score.loop_period,
        "max_window_nll": f"{score.max_window_nll:.3f}",
        "mean_nll": f"{score.mean_nll:.3f}",
        "distinct_2": f"{score.distinct_2:.3f}",
        "ambiguous_steps": sum(e > AMBIGUOUS for e in result.max_error),
        "nothing_drawn_steps": result.nothing_drawn,
        "display_differs_steps": result.display_differs,
        "mean_cosine": f"{np.mean(drawn):.4g}" if drawn else "",
    }


class JobRunner:
    """Runs jobs on one loaded model, keeping one selector per condition and settings."""

    def __init__(self, loaded: LoadedModel, tsp_perm: IntArray | None) -> None:
        self.loaded = loaded
        self.tsp_perm = tsp_perm
        self.selectors: dict[tuple[str, str], BatchSelector] = {}

    def run(self, job: GenerationJob, on_progress: OnProgress) -> list[dict[str, Any]]:
        """Generate and score one job; each row carries its text and tokens beside the scores."""
        key = (job.condition, repr(job.sampler))
        if key not in self.selectors:
            self.selectors[key] = study_selector(job.condition, self.loaded, self.tsp_perm, job.sampler)
        results = generate_batch(
            self.loaded, job.requests, self.selectors[key], ban_eos=True, on_progress=on_progress
        )
        rows = []
        for slot, (request, result) in enumerate(zip(job.requests, results, strict=True)):
            nll = token_nll(self.loaded, request.prompt_ids, result.tokens)
            row = generation_row(job, slot, result, nll)
            rows.append({**row, "text": self.loaded.tokenizer.decode(result.tokens), "tokens": result.tokens})
        return rows


# --- worker processes ---------------------------------------------------------------------------

_runner: JobRunner | None = None  # a worker process's own runner (set by _start_worker)
_ticks: Any = None  # the queue a worker process reports its tokens on
_stop: Any = None  # set by the parent to end the jobs in progress at their next step


class JobStopped(Exception):
    """A job ended early because the parent is stopping the study."""


def _start_worker(source: ModelSource, tsp_perm: IntArray | None, ticks: Any, stop: Any) -> None:
    global _runner, _ticks, _stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it sets `stop`
    torch.set_num_threads(1)  # one process per core; the batches run on one thread anyway
    _runner, _ticks, _stop = JobRunner(source.load(), tsp_perm), ticks, stop


class _Ticks:
    """A job's progress in a worker process, sent to the parent as tokens produced since the last report."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, event: Progress) -> None:
        if _stop.is_set():
            raise JobStopped("the study is stopping")
        _ticks.put(event.done - self.sent)
        self.sent = event.done


def _run_in_worker(job: GenerationJob) -> list[dict[str, Any]]:
    assert _runner is not None, "a study worker runs jobs only after _start_worker"
    return _runner.run(job, _Ticks())


class StudyPool:
    """Runs generation jobs in `workers` spawned processes (or in this process when `workers` is 1).

    Use as a context manager; leaving it stops the processes, on an error or Ctrl-C within a step.
    """

    def __init__(
        self, loaded: LoadedModel, source: ModelSource, tsp_perm: IntArray | None, workers: int
    ) -> None:
        self.workers = workers
        self.local = JobRunner(loaded, tsp_perm) if workers == 1 else None
        if workers > 1:  # the workers' numpy products on one thread each too (read when numpy loads)
            os.environ.update(
                {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
            )
        self.context = multiprocessing.get_context("spawn")
        self.ticks: Any = self.context.Queue() if workers > 1 else None
        self.stop: Any = self.context.Event() if workers > 1 else None
        self.executor = (
            ProcessPoolExecutor(
                workers,
                mp_context=self.context,
                initializer=_start_worker,
                initargs=(source, tsp_perm, self.ticks, self.stop),
            )
            if workers > 1
            else None
        )

    def __enter__(self) -> StudyPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.close(stop_now=kind is not None)

    def close(self, stop_now: bool = False) -> None:
        """Let the workers finish and exit (or, on an error or Ctrl-C, end their jobs at the next step)."""
        if self.executor is None:
            return
        if stop_now:
            self.stop.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.ticks.close()
        self.ticks.join_thread()
        self.executor = self.ticks = self.stop = None

    def run(self, jobs: Sequence[GenerationJob], on_progress: OnProgress) -> Iterator[list[dict[str, Any]]]:
        """Yield each job's rows as it finishes (in finishing order).

        `on_progress` gets Progress("tokens", tokens of all the jobs produced so far, tokens they want)."""
        tally = _Tally(sum(request.length for job in jobs for request in job.requests), on_progress)
        if self.local is not None:
            for job in jobs:
                yield self.local.run(job, tally.job())
            return
        assert self.executor is not None, "the pool is closed"
        pending: set[Future[list[dict[str, Any]]]] = {
            self.executor.submit(_run_in_worker, job) for job in jobs
        }
        while pending:
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            self._drain(tally)
            for future in finished:
                yield future.result()
        self._drain(tally)

    def _drain(self, tally: _Tally) -> None:
        while True:
            try:
                tally.add(self.ticks.get_nowait())
            except queue.Empty:
                return


class _Tally:
    """The tokens of many jobs added up into one Progress (jobs report their own counts, from 0)."""

    def __init__(self, wanted: int, on_progress: OnProgress) -> None:
        self.wanted, self.done, self.on_progress = wanted, 0, on_progress

    def add(self, tokens: int) -> None:
        self.done += tokens
        self.on_progress(Progress("tokens", self.done, self.wanted))

    def job(self) -> OnProgress:
        """A callback for one job in this process: its own counts, added to the others'."""
        base = self.done

        def report(event: Progress) -> None:
            self.add(base + event.done - self.done)

        return report
