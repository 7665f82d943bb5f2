"""Fixtures of the chat's tests: a chat service whose encrypted mode talks to a real worker on loopback.

The worker is the real pipeline on the tiny model: a `BackgroundWorker` serving an `EncryptedWorker`
whose two ranks are threads (the process pool is tested in tests/app/worker/test_compute_pool.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.chat.service import ChatService
from app.worker.background import BackgroundWorker
from app.worker.encrypted import EncryptedWorker, WorkerSpec
from model.loading import LoadedModel

TURNS = ["What is the capital of France?", "And of Spain?"]  # a chat of two turns, the second continuing


@pytest.fixture(scope="module")
def chat_worker(tiny: LoadedModel) -> Iterator[tuple[ChatService, BackgroundWorker]]:
    """A chat service and the worker its encrypted mode uses (one per test module)."""
    service = ChatService.create(tiny)
    spec = WorkerSpec.from_loaded(tiny, service.ordering.perm, service.ordering.order_id, 2)
    worker = BackgroundWorker(EncryptedWorker(spec, threads=True))
    service.worker_url = worker.url
    assert worker.worker.model.pool.wait_ready(300)  # type: ignore[attr-defined]
    yield service, worker
    worker.stop()
