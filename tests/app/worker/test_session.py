"""Tests for app/worker/session.py: how long a connection may stay silent, and a session's compute budget.

`deadline` and `budget_spent` on their own first, then each rule on a real loopback worker over the
counting double (tests/app/worker/doubles.py): an idle session expires, a stalled key upload is cut off,
a session past its budget is stopped while the next session is served. The oracle deadline of
`job_context` is tested with the other ways to hold the worker, in test_server_attacks.py.
"""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
from websockets.sync.client import connect

from app import protocol as p
from app.chat.keyholder import KeyHolderClient
from app.worker.admission import WorkerLimits
from app.worker.session import Session, budget_spent, deadline
from core.errors import LimitExceeded, UnknownSession, WorkerError
from tests.app.worker.doubles import (
    HELLO,
    CounterMath,
    CounterModel,
    LoopbackWorker,
    errors,
    raw_exchange,
    tokens,
)

LIMITS = WorkerLimits(hello_seconds=5.0, key_upload_seconds=60.0, idle_seconds=600.0)


def _session(**changes: Any) -> Session:
    session = Session("s", "test", cast(Any, None))  # `deadline` never touches the connection
    for name, value in changes.items():
        setattr(session, name, value)
    return session


def test_a_connection_has_seconds_for_its_hello_then_minutes_for_its_keys_then_the_idle_time() -> None:
    now = time.monotonic()
    seconds, late = deadline(None, now, LIMITS)
    assert seconds is not None and 4 < seconds <= 5 and isinstance(late, LimitExceeded)
    assert "no Hello within 5 s" in str(late)
    assert deadline(None, now - 10, LIMITS)[0] == 0.0  # overdue: at once, never negative
    seconds, late = deadline(_session(), now, LIMITS)
    assert seconds is not None and 59 < seconds <= 60 and isinstance(late, LimitExceeded)
    assert "not uploaded within 60 s" in str(late)
    seconds, expired = deadline(_session(keys_loaded=True), now, LIMITS)
    assert seconds is not None and 599 < seconds <= 600 and isinstance(expired, UnknownSession)
    assert "expired after 600 s" in str(expired)
    assert deadline(_session(keys_loaded=True, request="r"), now, LIMITS)[0] is None  # a reply runs


def test_a_spent_budget_names_the_budget_and_the_fix() -> None:
    refusal = budget_spent(WorkerLimits(session_compute_seconds=90.0))
    assert isinstance(refusal, LimitExceeded)
    assert "used its 90 s of replies" in str(refusal) and "open a new session" in str(refusal)


def test_idle_sessions_expire() -> None:
    server = LoopbackWorker(CounterModel(), WorkerLimits(idle_seconds=0.5))
    try:
        received, code = raw_exchange(server.url, [HELLO])
        assert isinstance(received[0], p.Welcome)
        assert errors(received) == [4004] and code == 4004
        server.wait_idle()
    finally:
        server.stop()


def test_a_key_upload_that_stalls_is_cut_off_4010() -> None:
    worker = LoopbackWorker(CounterModel(), WorkerLimits(key_upload_seconds=1.0))
    try:
        math = CounterMath()
        with connect(worker.url, compression=None) as conn:
            conn.send(HELLO)
            welcome = p.decode(conn.recv(timeout=5))
            assert isinstance(welcome, p.Welcome)
            conn.send(p.encode(p.KeyChunk(welcome.session, 0, 2, [math.public_context([], False)[:1000]])))
            error = p.decode(conn.recv(timeout=5))
            assert (
                isinstance(error, p.Error) and error.code == 4010 and "not uploaded within" in error.message
            )
        worker.wait_idle()
    finally:
        worker.stop()


def test_a_session_over_its_compute_budget_is_stopped_4010() -> None:
    worker = LoopbackWorker(CounterModel(delay=0.05), WorkerLimits(session_compute_seconds=0.5))
    try:
        client = KeyHolderClient(worker.url, CounterMath())
        with pytest.raises(WorkerError, match="4010.*used its 0 s|4010.*used its 1 s"):
            tokens(client, 1, 100)
        with pytest.raises(WorkerError, match="worker error 4010"):
            tokens(client, 1, 1)  # the budget is spent for this session
        assert tokens(KeyHolderClient(worker.url, CounterMath()), 3) == [4]  # not for the next
    finally:
        worker.stop()
