"""Tests for app/worker/background.py: a worker served from a thread of this process, on a free port.

The counting double (tests/app/worker/doubles.py) is the model: real keys, real ciphertexts, milliseconds.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from app.chat.keyholder import KeyHolderClient
from app.worker.admission import WorkerAccess, WorkerLimits
from app.worker.background import BackgroundWorker
from core.errors import WorkerError, WorkerUnavailable
from tests.app.worker.doubles import CounterMath, CounterModel, tokens


class ClosingModel(CounterModel):
    """The counting double, saying whether the worker stopped it (as it stops a pool's processes)."""

    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_background_worker_serves_on_a_free_port_with_its_token_then_stops() -> None:
    model = ClosingModel()
    worker = BackgroundWorker(model, limits=WorkerLimits(max_sessions=3))
    try:
        url = urlsplit(worker.url)
        assert url.scheme == "ws" and url.hostname == "127.0.0.1" and url.port not in (None, 0)
        assert parse_qs(url.query)["token"] == [worker.worker.access.token]  # a new token, in the url
        assert worker.worker.limits.max_sessions == 3
        client = KeyHolderClient(worker.url, CounterMath())
        assert tokens(client, 5, 2) == [6, 7]
        client.close()
        bare = worker.url.split("?")[0]
        with pytest.raises(WorkerError, match="worker error 4011: the worker's access token is missing"):
            KeyHolderClient(bare, CounterMath(), open_timeout=5)  # without the token: refused
    finally:
        worker.stop()
    assert model.closed and not worker.thread.is_alive()
    with pytest.raises(WorkerUnavailable, match="cannot reach the worker"):
        KeyHolderClient(worker.url, CounterMath(), open_timeout=2)


def test_a_background_worker_takes_the_port_and_access_it_is_given() -> None:
    first = BackgroundWorker(CounterModel())
    port = urlsplit(first.url).port
    first.stop()
    access = WorkerAccess("the-same-token-as-before")
    again = BackgroundWorker(CounterModel(), port=port or 0, access=access)  # a restart on the same address
    try:
        assert urlsplit(again.url).port == port and again.worker.access is access
        assert tokens(KeyHolderClient(again.url, CounterMath()), 1) == [2]
    finally:
        again.stop()
