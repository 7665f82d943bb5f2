"""Fixtures of the research commands' tests: `cli` runs `python -m app.research.evaluate` on the tiny
model, writing under a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.research import evaluate as evaluate_cli
from model.loading import LoadedModel


@pytest.fixture
def cli(tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(evaluate_cli, "RESULTS", tmp_path)
    monkeypatch.setattr(evaluate_cli, "load_model", lambda args: tiny)
    perm = np.random.default_rng(0).permutation(tiny.input_embeddings().shape[0])
    monkeypatch.setattr(evaluate_cli, "tsp_order", lambda loaded: (perm, "test permutation"))
    return tmp_path
