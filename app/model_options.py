"""Which model a command line runs: the `--model-path` / `--tiny` / `--cache-dir` options and their loading.

Every command line that loads a model (`python -m app`, `app.study.cli`, `app.research.evaluate`,
`app.research.ordering`) adds these options with `add_model_arguments` and loads with `load_model`, which
prints the default model's conversion progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.progress import Progress
from model.loading import LoadedModel, load_chosen


def add_model_arguments(parser: argparse.ArgumentParser, cache_dir: bool = True) -> None:
    """`--model-path DIR` or `--tiny` (one of them), and `--cache-dir` unless `cache_dir` is False."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-path", type=Path, help="a local transformers causal-LM directory")
    source.add_argument("--tiny", action="store_true", help="the tiny random test model (fast, nonsense)")
    if cache_dir:
        parser.add_argument("--cache-dir", type=Path, help="where the converted default model is cached")


def print_progress(event: Progress) -> None:
    """A progress report as one line on stderr (loading the default model: a few lines, no bar)."""
    print(event.line(), file=sys.stderr)


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model `add_model_arguments`' options chose (the default model when neither is given)."""
    return load_chosen(
        getattr(args, "tiny", False),
        getattr(args, "model_path", None),
        getattr(args, "cache_dir", None),
        on_progress=print_progress,
    )
