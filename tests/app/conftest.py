"""Fixtures of the app's tests: a worker over the counting test double on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.worker.admission import WorkerLimits
from tests.app.worker.doubles import CounterModel, LoopbackWorker


@pytest.fixture
def served() -> Iterator[LoopbackWorker]:
    """A worker over `CounterModel` (50 ms a token) with a 4 MB message cap, stopped after the test."""
    server = LoopbackWorker(CounterModel(delay=0.05), WorkerLimits(max_message_bytes=4 * 1024 * 1024))
    yield server
    server.stop()
