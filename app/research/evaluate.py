"""Evaluation commands for the sampler: single-step error, the collapse study and its noise sweep.

    python -m app.research.evaluate single-step                     # 4 prompts x 10,000 draws, 4 cells
    python -m app.research.evaluate single-step --precision fp32 --amp-rounds 2 --name ss-fp32-a2
    python -m app.research.evaluate collapse                    # the paper's protocol: 5 x 100 x 1,500 tokens
    python -m app.research.evaluate collapse --n 8 --length 256 --name collapse-small
    python -m app.research.evaluate sweep                           # noise on c - r 0..1e-5 x amp rounds 2, 3
    python -m app.research.evaluate summarise results/a results/b   # tables of finished or stopped runs

Each command writes into results/<name>/: per-item CSV, summary CSV and Markdown, PNG plots and
settings.json (the sampler settings, the model, the ordering and the command line). A bar with an ETA shows
on stderr. `collapse` and `sweep` generate in batches (--batch) in one process per core (--workers), and
append every finished generation to generations.jsonl: the same command started again continues where it
stopped, and the texts do not depend on --batch or --workers. Errors print one line naming the problem and
the fix, and exit with status 2.

The collapse protocol is the paper's (arXiv 2510.12343, section 5): plaintext simulation of the sampler,
softmax rounded to fp16, temperature 1, no top-k or top-p, EOS suppressed so every text has the full length,
the same uniforms for every condition (paired), plus plain sampling as the detector's baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from app.model_options import add_model_arguments, print_progress
from app.research.collapse import run_collapse, run_summarise, run_sweep, tsp_order
from app.research.jobs import CONDITIONS, ModelSource, StudyPool
from app.research.single_step import run_single_step
from core.errors import ChatError
from model.batch_decode import MAX_BATCH
from model.loading import LoadedModel
from model.sampler import PRECISIONS

RESULTS = Path("results")


def model_source(args: argparse.Namespace) -> ModelSource:
    return ModelSource(tiny=args.tiny, path=args.model_path)


def load_model(source: ModelSource) -> LoadedModel:
    return source.load(print_progress)


def integer(name: str, least: int, most: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if value < least or (most is not None and value > most):
            limit = f"between {least} and {most}" if most is not None else f"at least {least}"
            raise argparse.ArgumentTypeError(f"{name} must be {limit}, got {value}")
        return value

    return parse


def positive(name: str, most: int | None = None) -> Callable[[str], int]:
    return integer(name, 1, most)


def text(name: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"{name} must not be empty")
        return value

    return parse


def non_negative(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{name} must be between 0 and 1, got {text}")
        return value

    return parse


def number_list(name: str, kind: Callable[[str], float | int]) -> Callable[[str], list[float | int]]:
    def parse(text: str) -> list[float | int]:
        try:
            values = [kind(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes comma-separated numbers, got {text!r}") from None
        if any(v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"{name} values must not be negative, got {text!r}")
        return values

    return parse


def condition_list(text: str) -> str:
    conditions = text.split(",")
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown or len(set(conditions)) < len(conditions):
        problem = f"unknown {', '.join(unknown)}" if unknown else "a condition listed twice"
        raise argparse.ArgumentTypeError(f"--conditions: {problem}; choose from {','.join(CONDITIONS)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.research.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("single-step", "approximation error of one sampler step"),
        ("collapse", "the collapse study (the paper's protocol)"),
        ("sweep", "collapse study over added noise and amp rounds"),
    ):
        sub = commands.add_parser(name, help=help_text)
        add_model_arguments(sub, cache_dir=False)
        sub.add_argument("--name", default=name, help="results/<name>/ receives the outputs")
        sub.add_argument(
            "--precision", choices=PRECISIONS, default="fp16", help="softmax precision (paper: fp16)"
        )
        sub.add_argument("--temperature", type=float, default=1.0)
        sub.add_argument(
            "--seed", type=integer("--seed", 0, 2**32 - 1), default=0, help="first seed of the r streams"
        )
        sub.add_argument(
            "--prompt",
            action="append",
            type=text("--prompt"),
            help="a prompt (repeatable); default: built-in",
        )
        if name == "single-step":
            sub.add_argument("--threads", type=positive("--threads"), default=2, help="torch threads")
        if name != "sweep":
            sub.add_argument(
                "--amp-rounds", type=positive("--amp-rounds"), default=3, help="rounds of g1^5 (paper: 3)"
            )
        if name == "single-step":
            sub.add_argument(
                "--draws", type=positive("--draws"), default=10_000, help="draws of r per prompt"
            )
            sub.add_argument(
                "--prompts", type=positive("--prompts"), default=4, help="built-in prompts to use"
            )
            sub.add_argument(
                "--prefix-tokens", type=int, default=16, help="greedy tokens before the measured step"
            )
            continue
        cells = ",".join(CONDITIONS) if name == "collapse" else "neither,pp,tsp,both"
        sub.add_argument(
            "--n",
            type=positive("--n"),
            default=100 if name == "collapse" else 50,
            help="generations per condition",
        )
        sub.add_argument(
            "--length",
            type=positive("--length"),
            default=1500,
            help="tokens per generation",
        )
        sub.add_argument(
            "--conditions",
            type=condition_list,
            default=cells,
            help=f"comma-separated subset of {','.join(CONDITIONS)}",
        )
        sub.add_argument(
            "--workers",
            type=positive("--workers", 64),
            default=os.cpu_count() or 1,
            help="processes, one thread each (default: one per core; results do not depend on it)",
        )
        sub.add_argument(
            "--batch",
            type=positive("--batch", MAX_BATCH),
            default=50,
            help=f"generations per forward pass, 1-{MAX_BATCH} (results do not depend on it)",
        )
        if name == "collapse":
            sub.add_argument(
                "--noise-sigma",
                type=non_negative("--noise-sigma"),
                default=0.0,
                help="std of Gaussian noise on c - r (the encrypted prefix sum's error; 0 = off)",
            )
        else:
            sub.add_argument(
                "--noise",
                type=number_list("--noise", float),
                default=[0.0, 1e-7, 1e-6, 1e-5],
                help="stds of Gaussian noise on c - r, comma-separated",
            )
            sub.add_argument(
                "--amp", type=number_list("--amp", int), default=[2, 3], help="amp rounds, comma-separated"
            )
    summarise = commands.add_parser("summarise", help="rebuild collapse tables from finished or stopped runs")
    summarise.add_argument(
        "runs", nargs="+", help="results/<name> folders of collapse runs with equal settings"
    )
    summarise.add_argument("--name", default="collapse-merged", help="results/<name>/ receives the tables")
    summarise.add_argument("--threads", type=positive("--threads"), default=1, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = RESULTS / args.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if args.command == "summarise":
            run_summarise(args, folder)
        elif args.command == "single-step":
            torch.set_num_threads(args.threads)
            run_single_step(args, load_model(model_source(args)), folder)
        else:
            torch.set_num_threads(1)  # as in every worker: the texts do not depend on --workers
            source = model_source(args)
            loaded = load_model(source)
            perm, described = (
                tsp_order(loaded) if {"tsp", "both"} & set(args.conditions.split(",")) else (None, "unused")
            )
            with StudyPool(loaded, source, perm, args.workers) as pool:
                if args.command == "collapse":
                    run_collapse(args, loaded, folder, pool, described)
                else:
                    run_sweep(args, loaded, folder, pool, described)
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nstopped; {folder}/ keeps what is done (the same command continues)", file=sys.stderr)
        return 130
    print(f"wrote {folder}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
