"""Attacks on a worker over real loopback websockets, each with an honest bystander session checked.

The worker is `BackgroundWorker` over the `CounterModel` test double of tests/app/worker/test_server.py
(real CKKS keys and ciphertexts, the real session machinery); the cache-poisoning attack runs against the
real encrypted pipeline on the tiny model. Each attack names the close or error code it now gets.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app import protocol as p
from app.chat.keyholder import (
    KeyHolderClient,
    ReplyRequest,
    printable,
    worker_telemetry,
)
from app.worker.admission import WorkerAccess, WorkerLimits, redact
from app.worker.session import JobContext
from core.errors import WorkerError
from crypto.params import preset
from tests.app.worker.doubles import (
    HELLO,
    CounterMath,
    CounterModel,
    LoopbackWorker,
    errors,
    raw_exchange,
    tamper,
    tokens,
)


@pytest.fixture
def server() -> Iterator[LoopbackWorker]:
    limits = WorkerLimits(max_message_bytes=4 * 1024 * 1024, oracle_timeout=1.0)
    worker = LoopbackWorker(CounterModel(delay=0.02), limits)
    yield worker
    worker.stop()


def bare(url: str) -> str:
    """The worker's address without its access token."""
    return url.split("?")[0]


# --- 3. access: the token and the origin -----------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "origin", "text"),
    [
        ("bare", None, "access token is missing"),
        ("wrong", None, "access token is wrong"),
        ("good", "http://evil.example", "not allowed"),  # a web page the user visits, with the token even
    ],
)
def test_a_connection_without_the_token_or_from_a_web_page_is_refused_4011(
    server: LoopbackWorker, address: str, origin: str | None, text: str
) -> None:
    bystander = KeyHolderClient(server.url, CounterMath())
    url = {"bare": bare(server.url), "wrong": bare(server.url) + "?token=guess", "good": server.url}[address]
    headers = {"Origin": origin} if origin else None
    with connect(url, additional_headers=headers, compression=None) as conn:
        conn.send(HELLO)
        error = p.decode(conn.recv(timeout=5))
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv(timeout=5)
    assert isinstance(error, p.Error) and error.code == 4011 and text in error.message
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4011
    assert set(server.worker.sessions) == {bystander.welcome.session}
    assert tokens(bystander, 3) == [4]
    bystander.close()


def test_an_allowed_origin_and_the_key_holder_without_one_get_in() -> None:
    access = WorkerAccess("t" * 32, ("https://page.example",))
    worker = LoopbackWorker(CounterModel(), WorkerLimits(), access)
    try:
        assert worker.url.endswith("?token=" + "t" * 32) and redact(worker.url).endswith("token=***")
        with connect(worker.url, additional_headers={"Origin": "https://page.example"}) as conn:
            conn.send(HELLO)
            assert isinstance(p.decode(conn.recv(timeout=5)), p.Welcome)
        assert tokens(KeyHolderClient(worker.url, CounterMath()), 1) == [2]
    finally:
        worker.stop()


# --- 4. slots, deadlines and memory -------------------------------------------------------------------


def test_connections_over_the_cap_are_refused_4010_and_silent_ones_lose_theirs() -> None:
    worker = LoopbackWorker(CounterModel(), WorkerLimits(max_connections=3, hello_seconds=1.0))
    try:
        bystander = KeyHolderClient(worker.url, CounterMath())
        squatters = [connect(worker.url) for _ in range(2)]  # they never say Hello
        with connect(worker.url) as conn:  # refused at once, before its Hello
            refusal = p.decode(conn.recv(timeout=5))
            assert (
                isinstance(refusal, p.Error)
                and refusal.code == 4010
                and "connections open" in refusal.message
            )
            with pytest.raises(ConnectionClosed) as over:
                conn.recv(timeout=5)
            assert over.value.rcvd is not None and over.value.rcvd.code == 4010
        for squatter in squatters:  # closed at the Hello deadline
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    squatter.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4010
        assert tokens(bystander, 3) == [4]
        received, _ = raw_exchange(worker.url, [HELLO])  # and a slot is free again
        assert isinstance(received[0], p.Welcome)
        bystander.close()
    finally:
        worker.stop()


def test_invalid_frames_do_not_keep_a_session_alive() -> None:
    worker = LoopbackWorker(CounterModel(), WorkerLimits(idle_seconds=1.0))
    try:
        with connect(worker.url) as conn:
            conn.send(HELLO)
            welcome = p.decode(conn.recv(timeout=5))
            assert isinstance(welcome, p.Welcome)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                while time.monotonic() - started < 10:
                    conn.send(p.encode(p.OracleReply(welcome.session, "r", 0, [])))  # 4008, every 0.2 s
                    time.sleep(0.2)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4004
            assert time.monotonic() - started < 4
        worker.wait_idle()
    finally:
        worker.stop()


def test_frames_before_hello_are_small_and_unfinished_uploads_are_capped_in_all() -> None:
    chunk = 4 * 1024 * 1024
    limits = WorkerLimits(max_message_bytes=2 * chunk, max_pending_key_bytes=6 * chunk)
    worker = LoopbackWorker(CounterModel(), limits)
    try:
        bystander = KeyHolderClient(worker.url, CounterMath())
        before = psutil.Process().memory_info().rss
        # four frames of 8 MB before Hello: cut at the websocket layer (1009), never buffered
        for _ in range(4):
            received, code = raw_exchange(worker.url, [b"x" * (2 * chunk)])
            assert code in (1009, None) and errors(received) == []
        # three sessions each try to leave 16 MB of an upload of 40 MB unfinished
        held, codes = [], []
        for _ in range(3):
            conn = connect(worker.url, max_size=None, compression=None)
            held.append(conn)
            conn.send(HELLO)
            welcome = p.decode(conn.recv(timeout=5))
            assert isinstance(welcome, p.Welcome)
            for index in range(4):
                conn.send(p.encode(p.KeyChunk(welcome.session, index, 10, [bytes(chunk)])))
            try:
                answer = p.decode(conn.recv(timeout=2))
                codes.append(answer.code if isinstance(answer, p.Error) else 0)
            except TimeoutError:
                codes.append(0)
        assert codes[-1] == 4010 and sum(s.key_bytes for s in worker.worker.sessions.values()) <= 6 * chunk
        grown = psutil.Process().memory_info().rss - before
        assert grown < 150 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB (cap: pending uploads 24 MiB)"
        for conn in held:
            conn.close()
        assert tokens(bystander, 3) == [4]
        bystander.close()
        worker.wait_idle()
    finally:
        worker.stop()


# --- 2. squatting the generation slot -------------------------------------------------------------


def test_a_client_that_stops_answering_loses_the_slot_and_the_next_in_line_runs(
    server: LoopbackWorker,
) -> None:
    math = CounterMath()
    squatter = KeyHolderClient(server.url, math)
    huge = p.Generate(
        squatter.welcome.session,
        "r",
        0,
        "",
        1,
        2**40,
        0,
        0,
        ReplyRequest(1, 0).sampler(),
        math.encrypt_prompt([1]),
    )
    squatter.conn.send(p.encode(huge))
    refusal = p.decode(squatter.conn.recv(timeout=5))
    assert isinstance(refusal, p.Error) and refusal.code == 4009 and "context window" in refusal.message
    squat = p.Generate(
        squatter.welcome.session,
        "s",
        0,
        "",
        1,
        500,
        0,
        0,
        ReplyRequest(1, 0).sampler(),
        math.encrypt_prompt([1]),
    )
    squatter.conn.send(p.encode(squat))  # ... and never answers the oracle
    assert isinstance(p.decode(squatter.conn.recv(timeout=5)), p.Progress | p.OracleRequest)
    bystander = KeyHolderClient(server.url, CounterMath())
    started = time.monotonic()
    assert tokens(bystander, 3, 2) == [4, 5]  # it waited in line for one oracle deadline, then ran
    assert time.monotonic() - started < 10
    seen: list[p.Message] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            seen.append(p.decode(squatter.conn.recv(timeout=5)))
    assert 4010 in errors(seen) and closed.value.rcvd is not None and closed.value.rcvd.code == 4010
    bystander.close()
    server.wait_idle()


# --- 5. typed answers for every bad frame --------------------------------------------------------------


def _frame(header: bytes) -> bytes:
    return struct.pack(">I", len(header)) + header


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([_frame(b'{"v":3,"type":"hello","version":' + b"9" * 5000 + b',"preset":"test"}')], 4000),
        ([_frame(b"[" * 30000 + b"]" * 30000)], 4000),
        ([HELLO, tamper(p.encode(p.Cancel("s" * 4096, "r")))], 4004),  # an echoed long value is cut
    ],
)
def test_hostile_json_gets_a_typed_error_that_fits_the_decoder(
    server: LoopbackWorker, frames: list[bytes], code: int
) -> None:
    bystander = KeyHolderClient(server.url, CounterMath())
    received, _ = raw_exchange(server.url, frames)  # raw_exchange decodes every answer: each fits
    assert code in errors(received), received
    assert all(len(m.message) <= p.MAX_ERROR_MESSAGE for m in received if isinstance(m, p.Error))
    assert tokens(bystander, 3) == [4]
    bystander.close()


def _session(url: str, math: CounterMath) -> Any:
    conn = connect(url, max_size=None, compression=None)
    conn.send(HELLO)
    welcome = p.decode(conn.recv(timeout=5))
    assert isinstance(welcome, p.Welcome)
    conn.send(p.encode(p.KeyChunk(welcome.session, 0, 1, [math.public_context([], False)])))
    assert isinstance(p.decode(conn.recv(timeout=10)), p.KeysAccepted)
    return conn, welcome.session


def test_a_negative_seed_and_an_oracle_reply_without_blobs_are_typed_4009(server: LoopbackWorker) -> None:
    math = CounterMath()
    conn, session = _session(server.url, math)
    sampler = ReplyRequest(1, 0).sampler()
    conn.send(p.encode(p.Generate(session, "r", 0, "", 1, 2, -1, 0, sampler, math.encrypt_prompt([1]))))
    error = p.decode(conn.recv(timeout=5))
    assert isinstance(error, p.Error) and error.code == 4009 and "seed" in error.message
    conn.send(p.encode(p.Generate(session, "r", 0, "", 1, 2, 0, 0, sampler, math.encrypt_prompt([1]))))
    while not isinstance(call := p.decode(conn.recv(timeout=5)), p.OracleRequest):
        pass
    conn.send(p.encode(p.OracleReply(session, "r", call.call, [])))
    seen = [p.decode(conn.recv(timeout=5)) for _ in range(2)]
    assert errors(seen) == [4009, 4009] and "carries 0 ciphertexts" in seen[0].message  # type: ignore[union-attr]
    conn.close()
    bystander = KeyHolderClient(server.url, CounterMath())
    assert tokens(bystander, 3) == [4]
    bystander.close()
    server.wait_idle()


# --- 1. keys of another preset under a preset's name ---------------------------------------------------


def test_keys_that_are_not_for_the_announced_preset_are_refused(server: LoopbackWorker) -> None:
    other = CounterMath("n8192-s40")  # real keys, another modulus chain
    data = other.public_context([], False)
    head_len = struct.unpack_from(">6sHI", data)[2]
    header = json.loads(data[12 : 12 + head_len])
    header["params"] = preset("test").to_dict()  # ... relabelled as the preset the Hello names
    relabelled_head = json.dumps(header, sort_keys=True).encode()
    relabelled = data[:8] + struct.pack(">I", len(relabelled_head)) + relabelled_head + data[12 + head_len :]
    for upload in (data, relabelled):
        with connect(server.url, max_size=None, compression=None) as conn:
            conn.send(HELLO)
            welcome = p.decode(conn.recv(timeout=5))
            assert isinstance(welcome, p.Welcome)
            conn.send(p.encode(p.KeyChunk(welcome.session, 0, 1, [upload])))
            error = p.decode(conn.recv(timeout=30))
            assert isinstance(error, p.Error) and error.code in (4006, 4009), error
    bystander = KeyHolderClient(server.url, CounterMath())
    assert tokens(bystander, 3) == [4]
    bystander.close()


# --- 6. the key holder does not trust the worker's strings ------------------------------------------------


class HostileModel(CounterModel):
    """A worker that tries to put markup and terminal escapes on the user's screen."""

    def run(self, job: JobContext) -> str:
        job.emit(p.Progress(job.request.request, "![x](http://evil.example/a.png)\x1b[2J", 0, 1))
        super().run(job)
        raise ValueError("unused")  # becomes a 4500 with a fixed message


def test_worker_strings_reach_the_page_escaped() -> None:
    from app.chat.ui_view import plain

    evil = {"seconds": {"<img src=x onerror=alert(1)>": 1.0, "ok": "NaN"}, "processes": "lots", "extra": 1}
    clean = worker_telemetry(evil)
    assert clean == {"seconds": {"<img src=x onerror=alert(1)>": 1.0}}
    shown = plain(next(iter(clean["seconds"])))
    assert re.search(r"(?<!\\)[<>()]", shown) is None and shown.startswith("\\<img")
    assert "\x1b" not in printable("\x1b[2Jhello\nworld")
    assert plain("[link](http://evil.example)") == "\\[link\\]\\(http:/\u2060/evil.example\\)"
    worker = LoopbackWorker(HostileModel(), WorkerLimits())
    try:
        events = []
        with pytest.raises(WorkerError) as failed:
            for event in KeyHolderClient(worker.url, CounterMath()).generate([1], 0, "", ReplyRequest(1, 0)):
                events.append(event)
        assert "\x1b" not in events[0].stage and failed.value.code == 4500
    finally:
        worker.stop()


def test_the_key_holder_without_the_token_is_told_how_to_get_in() -> None:
    worker = LoopbackWorker(CounterModel(), WorkerLimits())
    try:
        with pytest.raises(WorkerError) as refused:
            KeyHolderClient(bare(worker.url), CounterMath())
        assert refused.value.code == 4011 and "printed at start-up" in str(refused.value)
    finally:
        worker.stop()
