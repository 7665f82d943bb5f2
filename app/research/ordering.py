"""Command line for the TSP vocabulary order: compute it for a model, or inspect a stored one.

    python -m app.research.ordering compute [--model default|tiny | --model-path DIR] [--ship | --out DIR]
                                       [--paper-reference] [--held-karp] [config flags]
    python -m app.research.ordering inspect [--model ... | --model-path DIR] [--dir DIR] [--runs 4]
                                       [--run-length 12]

`compute` shows a tqdm bar with an ETA per stage, then the quality report and a few runs of consecutive
tokens in id order and in the new order. Without --ship/--out it writes to the user cache (where
`model.tsp.store.ordering_for_model` looks); --ship writes the repository asset
assets/orderings/<model>/ with the command line that regenerates it. `inspect` loads a stored ordering,
checks it against the model's embedding fingerprint and prints the same report (never recomputes).

References: DESIGN.md section 2; model/tsp/ordering.py (the search), model/tsp/store.py (the files).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core.errors import ChatError
from core.progress import Progress
from model.tsp.config import CANDIDATE_RULES, CONSTRUCTIONS, METHODS, OrderingConfig
from model.tsp.ordering import Ordering, compute_ordering, embedding_fingerprint
from model.tsp.store import cached_ordering_dir, load_ordering, save_ordering, shipped_ordering_dir


class _Bars:
    """Turns Progress reports into one tqdm bar per stage (rate and ETA included)."""

    def __init__(self) -> None:
        self.stage = ""
        self.bar: Any = None

    def __call__(self, progress: Progress) -> None:
        if progress.total <= 0:
            tqdm.write(f"[{progress.stage}] {progress.note}")
            return
        if progress.stage != self.stage:
            self.close()
            self.stage = progress.stage
            self.bar = tqdm(
                total=progress.total, desc=f"{progress.stage:>13}", dynamic_ncols=True, leave=True
            )
        if self.bar.total != progress.total:
            self.bar.total = progress.total
        self.bar.n = progress.done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _load_model(args: argparse.Namespace) -> Any:
    from app.model_options import print_progress
    from model.loading import load_chosen

    return load_chosen(args.model == "tiny", args.model_path or None, on_progress=print_progress)


def _config(args: argparse.Namespace) -> OrderingConfig:
    names = [f.name for f in fields(OrderingConfig)]
    values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.exact_knn:
        values["bf16_prefilter"] = False
    return OrderingConfig(**values)


def _print_report(ordering: Ordering, tokenizer: Any, runs: int, run_length: int, seed: int) -> None:
    q = ordering.quality
    mean = q.get("mean_distance", {})
    print(f"\nvocabulary {ordering.vocab_size:,}  method {ordering.config.method}", end="")
    print(f"  fingerprint {ordering.fingerprint[:16]}")
    print("mean adjacent cosine distance (path length):")
    labels = {
        "id_order": "(a) token-id order",
        "random_order": "(b) random order",
        "paper_greedy": "(c) paper greedy NN",
        "construction": "    first path",
        "final": "(d) final path",
    }
    for key, label in labels.items():
        if key in mean:
            print(f"  {label:<22} {mean[key]:.4f}  ({q['length'][key]:,.1f})")
    if q.get("shorter_than_id") is not None:
        print(f"  final is {100 * q['shorter_than_id']:.1f}% shorter than id order", end="")
        if q.get("shorter_than_greedy") is not None:
            ref = "paper greedy" if "paper_greedy" in mean else "first path"
            print(f", {100 * q['shorter_than_greedy']:.2f}% shorter than the {ref}", end="")
        print()
    bound = q.get("lower_bound")
    if bound:
        print(
            f"  lower bound ({bound['which']}): {bound['value']:,.1f}; "
            f"final is {100 * q['gap_to_bound']:.1f}% above it"
        )
    if "timings_s" in q:
        print("  timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in q["timings_s"].items()))
    if tokenizer is None or runs <= 0:
        return
    rng = np.random.default_rng(seed)
    n = ordering.vocab_size
    starts = rng.integers(0, max(n - run_length, 1), size=runs)

    def show(ids: np.ndarray) -> str:
        return " ".join(repr(tokenizer.decode([int(t)])) for t in ids)

    print(f"\n{runs} runs of {run_length} consecutive positions (same positions, before -> after):")
    for s in starts.tolist():
        print(f"  ids {s}..{s + run_length - 1}\n    before: {show(np.arange(s, s + run_length))}")
        print(f"    after:  {show(ordering.perm[s : s + run_length])}")


def _compute(args: argparse.Namespace) -> int:
    config = _config(args)  # checked before the model loads: a bad combination fails at once
    loaded = _load_model(args)
    embeddings = loaded.input_embeddings()
    bars = _Bars()
    try:
        ordering = compute_ordering(
            embeddings, config, bars, paper_reference=args.paper_reference, held_karp=args.held_karp
        )
    finally:
        bars.close()
    if args.ship:
        target = shipped_ordering_dir(loaded.name)
    elif args.out:
        target = Path(args.out)
    else:
        target = cached_ordering_dir(loaded.name, ordering.fingerprint)
    command = "python -m app.research.ordering " + shlex.join(sys.argv[1:])
    save_ordering(ordering, target, model_name=loaded.name, command=command)
    print(f"wrote {target}")
    _print_report(ordering, loaded.tokenizer, args.runs, args.run_length, args.seed or 0)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    loaded = _load_model(args)
    directory = Path(args.dir) if args.dir else shipped_ordering_dir(loaded.name)
    ordering = load_ordering(directory)
    fingerprint = embedding_fingerprint(loaded.input_embeddings())
    status = "matches" if fingerprint == ordering.fingerprint else "DOES NOT MATCH (it would be recomputed)"
    print(f"{directory}: fingerprint {status} the embeddings of {loaded.name}")
    _print_report(ordering, loaded.tokenizer, args.runs, args.run_length, args.seed or 0)
    return 0 if fingerprint == ordering.fingerprint else 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.research.ordering", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("compute", "inspect"):
        what = "compute and store an ordering" if name == "compute" else "report a stored ordering"
        p = sub.add_parser(name, help=what)
        source = p.add_mutually_exclusive_group()
        source.add_argument("--model", choices=("default", "tiny"), default="default", help="built-in model")
        source.add_argument("--model-path", help="a local transformers model directory")
        p.add_argument("--runs", type=_non_negative, default=4, help="runs of consecutive tokens to print")
        p.add_argument("--run-length", type=_positive, default=12, help="tokens per printed run")
        p.add_argument("--seed", type=_non_negative, default=None, help="seed (config and printed runs)")
    compute = sub.choices["compute"]
    where = compute.add_mutually_exclusive_group()
    where.add_argument("--ship", action="store_true", help="write assets/orderings/<model>")
    where.add_argument("--out", help="output directory (default: the user cache)")
    compute.add_argument("--method", choices=METHODS, default=None)
    compute.add_argument("--construction", choices=CONSTRUCTIONS, default=None)
    compute.add_argument("--start-token", dest="start_token", type=_non_negative, default=None)
    compute.add_argument("--candidate-rule", dest="candidate_rule", choices=CANDIDATE_RULES, default=None)
    compute.add_argument("--knn-k", dest="knn_k", type=_positive, default=None, help="search list length")
    compute.add_argument("--greedy-k", dest="greedy_k", type=_positive, default=None)
    compute.add_argument("--ascent-steps", dest="ascent_steps", type=_non_negative, default=None)
    compute.add_argument("--candidates", type=_positive, default=None)
    compute.add_argument("--kicks", type=_non_negative, default=None)
    compute.add_argument("--kick-window", dest="kick_window", type=_positive, default=None)
    compute.add_argument("--window-size", dest="window_size", type=_non_negative, default=None)
    compute.add_argument("--time-budget", dest="time_budget_s", type=float, default=None, help="seconds")
    compute.add_argument("--exact-knn", action="store_true", help="float32 kNN lists (no bfloat16 prefilter)")
    compute.add_argument("--paper-reference", action="store_true", help="also run the paper's greedy path")
    compute.add_argument("--held-karp", action="store_true", help="also compute the Held-Karp style bound")
    sub.choices["inspect"].add_argument("--dir", help="ordering directory (default: the shipped asset)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _compute(args) if args.command == "compute" else _inspect(args)
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
