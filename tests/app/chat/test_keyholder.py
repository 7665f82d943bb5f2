"""The key holder's client (app/chat/keyholder.py) against a real worker over loopback websockets.

The worker is `BackgroundWorker` on port 0 with the `CounterModel` double of tests/app/worker/test_server.py
(real CKKS keys and ciphertexts, the real oracle round trip); the key holder's math is `CounterMath`. These
tests are about the client's side: connecting and checking the worker, the key upload and its progress,
reconnecting, Stop and closing a reply, and the oracle requests it refuses as it parses them.
"""

from __future__ import annotations

import threading
import time

import pytest

from app import protocol as p
from app.chat.keyholder import (
    DoneEvent,
    Expected,
    KeyHolderClient,
    ReplyRequest,
    TokenEvent,
    oracle_call,
)
from app.worker.admission import WorkerLimits
from app.worker.session import JobContext
from core.errors import ProtocolError, UnknownOracleFunction, WorkerMismatch, WorkerUnavailable
from core.progress import Progress
from model.encrypted import OracleCall
from model.oracle import ORACLE_FUNCTIONS
from tests.app.worker.doubles import CounterMath, CounterModel, LoopbackWorker, reply


def tokens(events: list[object]) -> list[int]:
    return [e.token_id for e in events if isinstance(e, TokenEvent)]


# --- connecting: the key upload, the worker's identity, reconnecting --------------------------------------


def test_the_key_upload_reports_its_progress_as_progress_records(served: LoopbackWorker) -> None:
    heard: list[Progress] = []
    client = KeyHolderClient(served.url, CounterMath(), on_progress=heard.append)
    chunks = -(-client.key_bytes // client.welcome.key_chunk_bytes)
    assert heard == [Progress("uploading keys", i, chunks) for i in range(1, chunks + 1)]
    assert client.key_bytes > 0
    client.close()


def test_reconnect_opens_a_new_session_for_the_same_secret_key(served: LoopbackWorker) -> None:
    math = CounterMath()
    client = KeyHolderClient(served.url, math)
    first = client.welcome.session
    assert tokens(reply(client, [4], 1)) == [5]
    heard: list[Progress] = []
    client.reconnect(on_progress=heard.append)
    assert client.welcome.session != first and client.key_bytes > 0 and not client.closed
    assert heard[-1].stage == "uploading keys" and heard[-1].done == heard[-1].total
    assert tokens(reply(client, [4], 2)) == [5, 6]  # the same secret key reads the new session's tokens
    client.close()
    served.wait_idle()  # the first connection's session was freed when it closed


def test_a_closed_client_refuses_to_generate(served: LoopbackWorker) -> None:
    client = KeyHolderClient(served.url, CounterMath())
    client.close()
    with pytest.raises(WorkerUnavailable, match="is closed; reconnect"):
        reply(client, [1], 1)


def test_closing_the_stream_cancels_promptly(served: LoopbackWorker) -> None:
    client = KeyHolderClient(served.url, CounterMath())
    stream = client.generate([1], 0, "", ReplyRequest(max_new_tokens=500, seed=0))
    assert isinstance(next(e for e in stream if isinstance(e, TokenEvent)), TokenEvent)
    start = time.perf_counter()
    stream.close()
    assert time.perf_counter() - start < 5
    assert [e.token_id for e in reply(client, [1], 2) if isinstance(e, TokenEvent)] == [2, 3]
    client.close()


def test_worker_unreachable_is_a_clear_error() -> None:
    with pytest.raises(WorkerUnavailable, match="cannot reach the worker at ws://127.0.0.1:9"):
        KeyHolderClient("ws://127.0.0.1:9", CounterMath(), open_timeout=2)


def test_the_key_holder_refuses_a_worker_that_serves_something_else(served: LoopbackWorker) -> None:
    with pytest.raises(WorkerMismatch, match="vocab: the worker has 8, this key holder 49152"):
        KeyHolderClient(served.url, CounterMath(), Expected(model="counter", vocab=49152))
    served.wait_idle()  # the refused connection was closed and its session freed


def test_stop_while_the_worker_computes_cancels_within_a_poll(served: LoopbackWorker) -> None:
    client = KeyHolderClient(served.url, CounterMath())
    stop = threading.Event()
    stream = client.generate([1], 0, "", ReplyRequest(max_new_tokens=500, seed=0), stop.is_set)
    next(e for e in stream if isinstance(e, TokenEvent))
    stop.set()
    start = time.perf_counter()
    rest = list(stream)  # ends by itself: Cancel, then the worker's Done is drained
    assert time.perf_counter() - start < 5 and not any(isinstance(e, DoneEvent) for e in rest)
    assert [e.token_id for e in reply(client, [1], 2) if isinstance(e, TokenEvent)] == [2, 3]
    client.close()


# --- the oracle: the client refuses a function off the allow-list ------------------------------------------


class AskingModel(CounterModel):
    """A worker that first asks the key holder for `fn` on the prompt, then counts as `CounterModel`."""

    def __init__(self) -> None:
        super().__init__()
        self.fn = "argmax"
        self.outcome: list[str] = []

    def run(self, job: JobContext) -> str:
        try:
            job.oracle(OracleCall(self.fn, -1, [(0, 0)], [job.request.blobs[0]]))
        except BaseException as exc:
            self.outcome.append(type(exc).__name__)
            raise
        self.outcome.append("answered")
        return super().run(job)


def test_an_oracle_request_off_the_allow_list_is_refused_as_it_is_parsed() -> None:
    model = AskingModel()
    worker = LoopbackWorker(model, WorkerLimits())
    try:
        math = CounterMath()  # its answer() accepts only "refresh": the refusal must come before it
        client = KeyHolderClient(worker.url, math)
        with pytest.raises(
            UnknownOracleFunction, match="'argmax', which is not on the oracle's allow-list"
        ) as no:
            reply(client, [1], 2)
        assert all(fn in str(no.value) for fn in ORACLE_FUNCTIONS)
        deadline = time.monotonic() + 10
        while not model.outcome and time.monotonic() < deadline:
            time.sleep(0.01)
        assert model.outcome == ["JobCancelled"]  # the client sent Cancel and drained the worker's Done
        model.fn = "refresh"  # an allowed function: the same session goes on
        assert tokens(reply(client, [1], 2)) == [2, 3] and model.outcome[-1] == "answered"
        client.close()
    finally:
        worker.stop()


def test_an_oracle_request_is_checked_field_by_field_after_decoding() -> None:
    def parsed(**changes: object) -> OracleCall:
        fields: dict[str, object] = {
            "request": "r",
            "call": 0,
            "fn": "rmsnorm",
            "layer": 0,
            "parts": [[0, 0]],
            "pieces": [[0, 0, 64, 0, 1, -1]],
            "blobs": [b"x"],
        }
        message = p.decode(p.encode(p.OracleRequest(**{**fields, **changes})))  # type: ignore[arg-type]
        assert isinstance(message, p.OracleRequest)
        return oracle_call(message)

    call = parsed()
    assert (call.fn, call.parts, call.pieces[0].stop) == ("rmsnorm", [(0, 0)], 64)
    assert parsed(fn="refresh_tail", pieces=[]).fn == "refresh_tail"
    with pytest.raises(UnknownOracleFunction, match="'exp'.*refresh, refresh_tail, rmsnorm"):
        parsed(fn="exp")
    with pytest.raises(ProtocolError, match="pairs"):
        parsed(parts=[[0, 0, 1]])
