"""Benchmark: batched simulate generation for the collapse study against the landed one-at-a-time path.

    python bench/bench_collapse.py                       # cells neither and both, 128 tokens, B = 1, 8, 32
    python bench/bench_collapse.py --batches 1,8,32,64 --length 256 --threads 2

Target (issue 16): at B = 32 the batched path makes >= 15x the tokens/s of the landed `collapse` path
(`model.evaluation.generate_fixed_length` with `SimulateSelector`, one sequence at a time), same run, same
settings (softmax fp16, T = 1, amp_rounds 3, EOS banned, the study's prompts in rotation). Both paths are
timed end to end per sequence batch, prefill included, so the figures are what a study sees. The cells
differ in cost: without PP most mixtures are dense (a float64 product over the whole (V, d) table), with PP
they are sparse. The landed path runs `--landed` sequences per cell (the same seeds as the batched rows).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.evaluate_collapse import PROMPTS  # noqa: E402
from app.evaluate_jobs import study_selector, unbatched_selector  # noqa: E402
from model.batch_decode import BatchRequest, generate_batch  # noqa: E402
from model.evaluation import generate_fixed_length  # noqa: E402
from model.generate import build_prompt  # noqa: E402
from model.loading import load_default  # noqa: E402
from model.ordering import ordering_for_model  # noqa: E402
from model.sampler import SamplerConfig  # noqa: E402

TARGET = 15.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes, comma-separated")
    parser.add_argument("--cells", default="neither,both", help="conditions, comma-separated")
    parser.add_argument("--landed", type=int, default=2, help="sequences per cell on the landed path")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both paths")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.length} tokens per sequence")

    loaded = load_default()
    perm = ordering_for_model(loaded).perm
    base = SamplerConfig(softmax_precision="fp16", temperature=1.0, amp_rounds=3)
    encoded = [
        tuple(build_prompt(loaded, [{"role": "user", "content": p}], reserve=args.length)) for p in PROMPTS
    ]
    requests = [
        BatchRequest(encoded[i % len(encoded)], seed=i, length=args.length) for i in range(max(batches))
    ]
    print("| cell | path | B | tokens/s | x landed |")
    print("|---|---|---|---|---|")
    for cell in args.cells.split(","):
        start = time.perf_counter()
        for request in requests[: args.landed]:
            single = unbatched_selector(cell, loaded, perm, base)
            generate_fixed_length(loaded, list(request.prompt_ids), single, args.length, request.seed)
        landed = args.landed * args.length / (time.perf_counter() - start)
        print(f"| {cell} | landed | 1 | {landed:.1f} | 1.0 |", flush=True)
        for batch in batches:
            start = time.perf_counter()
            generate_batch(loaded, requests[:batch], study_selector(cell, loaded, perm, base))
            rate = batch * args.length / (time.perf_counter() - start)
            verdict = (
                f" ({'meets' if rate / landed >= TARGET else 'misses'} {TARGET:g}x)" if batch == 32 else ""
            )
            print(f"| {cell} | batched | {batch} | {rate:.1f} | {rate / landed:.1f}{verdict} |", flush=True)
    print(f"(single runs; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])})")


if __name__ == "__main__":
    main()
