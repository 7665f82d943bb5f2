"""Benchmark of the TSP vocabulary ordering on the default model (issue 3 targets).

    python bench/bench_ordering.py               # 3 repetitions, full SmolLM2 vocabulary
    python bench/bench_ordering.py --reps 5
    python bench/bench_ordering.py --quick       # 1 repetition on the first 8,192 tokens, 1,000 kicks

Every repetition runs in a fresh subprocess (so the peak RSS is that run's, model loading included) and
measures: model load, fingerprint, and each stage of `compute_ordering` (kNN lists, first path, local
search, kicks, quality). The parent prints medians, the path lengths (id / random / first path / final),
the ratios against token-id order and against the paper's greedy path, and the gap to the lower bound.
The paper's greedy length comes from the shipped manifest (computed with --paper-reference) unless
--paper-reference is passed here. Targets: <= 60 s wall and <= 2 GB peak, final >= 30% shorter than id
order and >= 5% shorter than the paper's greedy path.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    from model.loading import load_default
    from model.tsp.config import OrderingConfig
    from model.tsp.ordering import compute_ordering, embedding_fingerprint

    loaded = load_default()
    embeddings = loaded.input_embeddings()
    if args.quick:
        embeddings = embeddings[:8192]
    load_s = time.perf_counter() - start
    mark = time.perf_counter()
    fingerprint = embedding_fingerprint(embeddings)
    fingerprint_s = time.perf_counter() - mark
    config = OrderingConfig(kicks=args.kicks) if args.kicks is not None else OrderingConfig()
    ordering = compute_ordering(
        embeddings, config, paper_reference=args.paper_reference, held_karp=args.held_karp
    )
    result = {
        "load_s": load_s,
        "fingerprint_s": fingerprint_s,
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "fingerprint": fingerprint,
        "quality": ordering.quality,
        "config": {"kicks": config.kicks, "time_budget_s": config.time_budget_s},
    }
    print("RESULT " + json.dumps(result))


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child"]
    if args.quick:
        command.append("--quick")
    if args.kicks is not None:
        command += ["--kicks", str(args.kicks)]
    if args.paper_reference:
        command.append("--paper-reference")
    if args.held_karp:
        command.append("--held-karp")
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    parsed: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8,192 tokens, 1,000 kicks, 1 repetition")
    parser.add_argument("--kicks", type=int, default=None)
    parser.add_argument("--paper-reference", action="store_true", help="also time the paper's greedy path")
    parser.add_argument("--held-karp", action="store_true", help="also compute the Held-Karp style bound")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.reps = 1
        args.kicks = 1000 if args.kicks is None else args.kicks
    if args.child:
        child(args)
        return
    runs = []
    for rep in range(args.reps):
        runs.append(run_once(args))
        r = runs[-1]
        print(
            f"rep {rep + 1}/{args.reps}: wall {r['wall_s']:.1f} s, peak {r['peak_rss_mb']:.0f} MB", flush=True
        )
    med = statistics.median
    stages: dict[str, list[float]] = {"load model": [r["load_s"] for r in runs]}
    stages["fingerprint"] = [r["fingerprint_s"] for r in runs]
    for name in runs[0]["quality"]["timings_s"]:
        stages[name] = [r["quality"]["timings_s"].get(name, 0.0) for r in runs]
    stages["end to end"] = [r["wall_s"] for r in runs]
    print(f"\nmedians over {len(runs)} run(s); each stage: median [min, max] seconds")
    for name, values in stages.items():
        print(f"  {name:<14} {med(values):7.2f}  [{min(values):.2f}, {max(values):.2f}]")
    peaks = [r["peak_rss_mb"] for r in runs]
    print(f"  peak RSS       {med(peaks):7.0f} MB (median; max {max(peaks):.0f})")
    q = runs[-1]["quality"]
    lengths = dict(q["length"])
    finals = [r["quality"]["length"]["final"] for r in runs]
    lengths["final"] = med(finals)
    if "paper_greedy" not in lengths and not args.quick:
        manifest = ROOT / "assets" / "orderings" / "SmolLM2-135M-Instruct" / "manifest.json"
        if manifest.is_file():
            shipped = json.loads(manifest.read_text())
            if shipped.get("fingerprint") == runs[-1]["fingerprint"]:
                lengths["paper_greedy"] = shipped["quality"]["length"].get("paper_greedy")
    n = q["vocab_size"]
    print(f"\npath lengths over {n:,} tokens (mean adjacent cosine distance):")
    for key in ("id_order", "random_order", "paper_greedy", "construction", "final"):
        if lengths.get(key) is not None:
            print(f"  {key:<13} {lengths[key]:10.1f}  ({lengths[key] / (n - 1):.4f})")
    print(f"  final spread over runs: {min(finals):.1f} .. {max(finals):.1f}")
    print(f"  final vs id order:      {100 * (1 - lengths['final'] / lengths['id_order']):.1f}% shorter")
    if lengths.get("paper_greedy"):
        print(
            f"  final vs paper greedy:  {100 * (1 - lengths['final'] / lengths['paper_greedy']):.2f}% shorter"
        )
    print(f"  final vs first path:    {100 * (1 - lengths['final'] / lengths['construction']):.2f}% shorter")
    bound = q["lower_bound"]
    print(
        f"  lower bound: {bound['value']:.1f} ({bound['which']}; "
        f"two-neighbour {bound['two_neighbour']:.1f}); "
        f"final is {100 * (lengths['final'] / bound['value'] - 1):.1f}% above it"
    )
    print(
        f"  kicks done {q['kicks']['done']} (accepted {q['kicks']['accepted']}, "
        f"unchecked {q['kicks'].get('unchecked', 0)}), stopped by {q['stopped_by']}"
    )


if __name__ == "__main__":
    main()
