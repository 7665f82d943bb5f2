"""The in-process key holder + worker pair: what it refuses (its replies are tested in
tests/model/test_encrypted.py and tests/app/worker/test_compute_pool.py, which drive the pipeline with it)."""

from __future__ import annotations

import numpy as np
import pytest

from app.worker.in_process import start_worker
from core.errors import WorkerUnavailable
from model.loading import LoadedModel


def test_a_worker_that_is_not_warm_in_time_is_closed_and_reported(tiny: LoadedModel) -> None:
    with pytest.raises(WorkerUnavailable, match=r"1 rank\(s\) were not ready after 0 s"):
        start_worker(tiny, np.arange(tiny.model.config.vocab_size), "ids", 1, timeout=0.0)
