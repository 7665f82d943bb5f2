"""Tests for app/model_options.py: the model options every command line shares, and their loading."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from app.model_options import add_model_arguments, load_model, print_progress
from core.errors import ModelPathError
from core.progress import Progress


def _parser(cache_dir: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_model_arguments(parser, cache_dir)
    return parser


def test_the_options_parse_and_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["--model-path", "/m", "--cache-dir", "/c"])
    assert (args.model_path, args.tiny, args.cache_dir) == (Path("/m"), False, Path("/c"))
    assert _parser().parse_args([]).tiny is False
    with pytest.raises(SystemExit):
        _parser().parse_args(["--tiny", "--model-path", "/m"])
    assert "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser(cache_dir=False).parse_args(["--cache-dir", "/c"])


def test_tiny_loads_the_test_model() -> None:
    loaded = load_model(_parser().parse_args(["--tiny"]))
    assert loaded.name.startswith("tiny") and loaded.source == "code"


def test_a_missing_model_directory_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ModelPathError):
        load_model(_parser().parse_args(["--model-path", str(tmp_path / "nowhere")]))


def test_progress_prints_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    print_progress(Progress("model", note="converting"))
    assert capsys.readouterr().err == "model: converting\n"
