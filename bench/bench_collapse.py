"""Benchmark: the collapse study's generation, batched in worker processes, against the landed path.

    python bench/bench_collapse.py                              # cells neither and both, 400 tokens
    python bench/bench_collapse.py --length 1500 --landed 1     # the study's length

Target (issue 16): at B = 32 the batched path makes >= 15x the tokens/s of the landed `collapse` path,
same run, same settings (softmax fp16, T = 1, amp_rounds 3, EOS banned, the study's prompts in rotation).

- landed: `model.evaluation.generate_fixed_length` with the unbatched selector, one sequence at a time on
  `--threads` torch threads (the landed `collapse` command's loop; its code is unchanged);
- batched, one process: `model.batch_decode.generate_batch` at B = 1, 8, 32 (one intra-op thread, as
  every batch runs);
- batched, the study: `--workers` spawned processes, each generating its own batch of B = 32 at once
  (how `collapse --workers` uses the cores).

All figures are generation only, prefill included (scoring is the same per text on both paths). The cells
differ in cost: without PP most mixtures are dense products over the (V, d) table, with PP they are sparse.
The landed path runs `--landed` sequences per cell (the same seeds as the batched rows).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.research.collapse import PROMPTS, tsp_order  # noqa: E402
from app.research.jobs import BLAS_THREADS, study_selector, unbatched_selector  # noqa: E402
from model.batch_decode import BatchRequest, generate_batch  # noqa: E402
from model.evaluation import generate_fixed_length  # noqa: E402
from model.generate import build_prompt  # noqa: E402
from model.loading import LoadedModel, load_default  # noqa: E402
from model.sampler import SamplerConfig  # noqa: E402

TARGET = 15.0
STUDY_BATCH = 32
BASE = SamplerConfig(softmax_precision="fp16", temperature=1.0, amp_rounds=3)


def requests(loaded: LoadedModel, count: int, length: int, first_seed: int = 0) -> list[BatchRequest]:
    encoded = [tuple(build_prompt(loaded, [{"role": "user", "content": p}], reserve=length)) for p in PROMPTS]
    return [
        BatchRequest(encoded[i % len(encoded)], seed=i, length=length)
        for i in range(first_seed, first_seed + count)
    ]


def one_worker(cell: str, length: int, first_seed: int, ready: object, go: object) -> None:
    """A study worker's share: load, wait for the others, generate one batch of STUDY_BATCH."""
    torch.set_num_threads(1)
    loaded = load_default()
    selector = study_selector(cell, loaded, tsp_order(loaded)[0], BASE)
    batch = requests(loaded, STUDY_BATCH, length, first_seed)
    ready.release()  # type: ignore[attr-defined]
    go.wait()  # type: ignore[attr-defined]
    generate_batch(loaded, batch, selector)


def study_rate(cell: str, length: int, workers: int) -> float:
    """Tokens/s of `workers` processes each generating a batch of STUDY_BATCH, timed from a common start."""
    os.environ.update({name: "1" for name in BLAS_THREADS})
    context = multiprocessing.get_context("spawn")
    ready, go = context.Semaphore(0), context.Event()
    processes = [
        context.Process(target=one_worker, args=(cell, length, w * STUDY_BATCH, ready, go))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.acquire()
    start = time.perf_counter()
    go.set()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a worker process failed (exit code {process.exitcode})")
    return workers * STUDY_BATCH * length / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--length", type=int, default=400, help="tokens per sequence")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes of one process, comma-separated")
    parser.add_argument("--cells", default="neither,both", help="conditions, comma-separated")
    parser.add_argument("--landed", type=int, default=2, help="sequences per cell on the landed path")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the landed path")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes of the study row")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__}, {args.length} tokens per sequence, {os.cpu_count()} cores")

    loaded = load_default()
    perm = tsp_order(loaded)[0]
    rows = requests(loaded, max(batches + [args.landed]), args.length)
    print("| cell | path | B | tokens/s | x landed |")
    print("|---|---|---|---|---|")
    landed_seconds = study_seconds = 0.0  # per token of each cell, summed: the cells in equal shares
    for cell in args.cells.split(","):
        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        for request in rows[: args.landed]:
            single = unbatched_selector(cell, loaded, perm, BASE)
            generate_fixed_length(loaded, list(request.prompt_ids), single, args.length, request.seed)
        landed = args.landed * args.length / (time.perf_counter() - start)
        print(f"| {cell} | landed, {args.threads} threads | 1 | {landed:.1f} | 1.0 |", flush=True)
        for batch in batches:
            start = time.perf_counter()
            generate_batch(loaded, rows[:batch], study_selector(cell, loaded, perm, BASE))
            rate = batch * args.length / (time.perf_counter() - start)
            print(f"| {cell} | batched, 1 process | {batch} | {rate:.1f} | {rate / landed:.1f} |", flush=True)
        rate = study_rate(cell, args.length, args.workers)
        landed_seconds, study_seconds = landed_seconds + 1 / landed, study_seconds + 1 / rate
        verdict = "meets" if rate / landed >= TARGET else "misses"
        print(
            f"| {cell} | batched, {args.workers} processes (the study) | {STUDY_BATCH} each | {rate:.1f} "
            f"| {rate / landed:.1f} ({verdict} {TARGET:g}x) |",
            flush=True,
        )
    cells = len(args.cells.split(","))
    ratio = landed_seconds / study_seconds
    print(
        f"| {args.cells}, equal tokens each (the study's mix) | landed {cells / landed_seconds:.1f}, study "
        f"{cells / study_seconds:.1f} | | | {ratio:.1f} ({'meets' if ratio >= TARGET else 'misses'} "
        f"{TARGET:g}x) |"
    )
    print(f"(single runs; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])})")


if __name__ == "__main__":
    main()
