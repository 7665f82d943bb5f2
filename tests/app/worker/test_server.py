"""The worker server and the key-holder client over real loopback websockets (port 0), real CKKS.

The computing part is a small test double (`CounterModel`): per token it refreshes the encrypted
prompt through the oracle and adds 1 under encryption, so every test exercises real ciphertexts, the
real oracle round trip and the real session machinery, in milliseconds. The encrypted transformer
itself is tested in tests/model/test_encrypted.py, the key holder's client on its own in
tests/app/chat/test_keyholder.py (with these doubles).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import psutil
import pytest
from websockets.sync.client import connect

from app import protocol as p
from app.chat.keyholder import (
    DoneEvent,
    KeyHolderClient,
    ReplyRequest,
    TokenEvent,
)
from app.worker.admission import WorkerLimits
from core.errors import CODE_BAD_CIPHERTEXT, CODE_BAD_REQUEST, CODE_SECRET_KEY, WorkerError
from core.progress import Progress
from crypto.params import CKKS_TEST
from tests.app.worker.doubles import (
    HELLO,
    PREFIX,
    CounterMath,
    CounterModel,
    LoopbackWorker,
    errors,
    raw_exchange,
    reply,
    tamper,
)
from tests.conftest import private_context_bytes


def test_a_reply_is_computed_on_ciphertexts_and_streamed(served: LoopbackWorker) -> None:
    client = KeyHolderClient(served.url, CounterMath())
    events = reply(client, [5, 1, 2], 4)
    tokens = [e.token_id for e in events if isinstance(e, TokenEvent)]
    assert tokens == [6, 7, 8, 9]
    assert any(isinstance(e, Progress) for e in events)
    assert isinstance(events[-1], DoneEvent) and events[-1].reason == "length"
    first = next(e for e in events if isinstance(e, TokenEvent))
    assert first.local.oracle_calls == 1 and first.local.bytes_up > 0 and first.local.bytes_down > 0
    assert client.key_bytes > 0
    assert reply(client, [20], 2)[-1] == DoneEvent("length")  # the session serves a second reply
    client.close()
    served.wait_idle()


@pytest.mark.parametrize(
    ("frames", "code", "closed"),
    [
        ([b"\x00\x00\x00\x05garbage"], 4000, True),  # malformed frame
        (["text frame"], 4000, True),
        ([tamper(p.encode(p.Cancel("s", "r")), type="cancelx")], 4001, True),  # unknown type
        ([p.encode(p.Hello(1, "test"))], 4002, True),  # an older protocol version in hello
        ([tamper(HELLO, v=9)], 4002, True),  # wrong frame version
        ([p.encode(p.Cancel("s", "r"))], 4008, False),  # before hello
        ([HELLO, p.encode(p.Cancel("not-my-session", "r"))], 4004, False),  # unknown session
        ([HELLO, HELLO], 4008, False),  # hello twice
        ([p.encode(p.Hello(p.PROTOCOL_VERSION, "no-such-preset"))], 4009, False),
        ([HELLO, p.encode(p.Done("r", "length"))], 4008, False),  # a worker-to-client message
    ],
)
def test_bad_frames_get_typed_errors(
    served: LoopbackWorker, frames: list[Any], code: int, closed: bool
) -> None:
    bystander = KeyHolderClient(served.url, CounterMath())
    received, close_code = raw_exchange(served.url, frames)
    assert code in errors(received), received
    assert (close_code == code) if closed else close_code is None
    assert [e.token_id for e in reply(bystander, [3], 1) if isinstance(e, TokenEvent)] == [4]  # unaffected
    bystander.close()
    served.wait_idle()


def test_oversized_message_is_refused(served: LoopbackWorker) -> None:
    received, code = raw_exchange(served.url, [HELLO, b"x" * (5 * 1024 * 1024)])
    # websockets enforces max_size before our parser sees a byte: close 1009 "message too big" (or, when
    # the close frame races the client's own write, a dropped connection); never a parse error (4000)
    assert code in (1009, None) and errors(received) == []
    served.wait_idle()  # the connection can die while the Welcome is sent: the session must still go
    client = KeyHolderClient(served.url, CounterMath())
    assert reply(client, [1], 1)[-1] == DoneEvent("length")
    client.close()


def _upload(url: str, data: bytes) -> list[p.Message]:
    with connect(url, max_size=None, compression=None) as conn:
        conn.send(HELLO)
        welcome = p.decode(conn.recv(timeout=10))
        assert isinstance(welcome, p.Welcome)
        conn.send(p.encode(p.KeyChunk(welcome.session, 0, 1, [data])))
        return [p.decode(conn.recv(timeout=30))]


def test_a_context_with_a_secret_key_is_refused(served: LoopbackWorker) -> None:
    data = private_context_bytes(CKKS_TEST)
    assert errors(_upload(served.url, data)) == [CODE_SECRET_KEY]
    assert not any(s.keys_loaded for s in served.worker.sessions.values())
    served.wait_idle()


def test_garbage_keys_are_refused(served: LoopbackWorker) -> None:
    assert errors(_upload(served.url, b"HECKKS garbage")) == [CODE_BAD_CIPHERTEXT]


def test_a_ciphertext_from_another_context_is_refused(served: LoopbackWorker) -> None:
    client = KeyHolderClient(served.url, CounterMath("test"))
    other = CounterMath("n8192-s40")  # other parameters: the worker cannot parse its ciphertexts
    client.math.encrypt_prompt = other.encrypt_prompt  # type: ignore[method-assign]
    with pytest.raises(WorkerError, match="worker error 4006"):
        reply(client, [1], 2)
    client.math.encrypt_prompt = CounterMath.encrypt_prompt.__get__(client.math)  # type: ignore[method-assign]
    assert [e.token_id for e in reply(client, [1], 1) if isinstance(e, TokenEvent)] == [2]
    client.close()


def test_replies_wait_in_line_and_are_told_their_place(served: LoopbackWorker) -> None:
    first, second, third = (KeyHolderClient(served.url, CounterMath()) for _ in range(3))
    stream = first.generate([1], 0, "", ReplyRequest(max_new_tokens=30, seed=0))
    next(e for e in stream if isinstance(e, TokenEvent))
    waiting: dict[str, list[Any]] = {"second": [], "third": []}

    def wait_in_line(name: str, client: KeyHolderClient, prompt: int) -> None:
        waiting[name] = reply(client, [prompt], 2)

    threads = [threading.Thread(target=wait_in_line, args=("second", second, 5))]
    threads[0].start()
    while not served.worker.line:
        time.sleep(0.01)
    threads.append(threading.Thread(target=wait_in_line, args=("third", third, 7)))
    threads[1].start()
    assert list(stream)[-1] == DoneEvent("length")  # the running reply is not disturbed
    for thread in threads:
        thread.join(30)
    places = {
        name: [e.stage for e in events if isinstance(e, Progress) and e.stage.startswith(p.QUEUE_STAGE)]
        for name, events in waiting.items()
    }
    assert places["second"][0] == "queue: you are 1st in line for the worker"
    assert places["third"][0].startswith("queue: you are 2nd") and "1st" in places["third"][-1]
    assert [e.token_id for e in waiting["second"] if isinstance(e, TokenEvent)] == [6, 7]
    assert [e.token_id for e in waiting["third"] if isinstance(e, TokenEvent)] == [8, 9]
    for client in (first, second, third):
        client.close()
    served.wait_idle()


def test_session_and_memory_limits_refuse_new_sessions_only() -> None:
    server = LoopbackWorker(CounterModel(), WorkerLimits(max_sessions=1))
    try:
        first = KeyHolderClient(server.url, CounterMath())
        received, _ = raw_exchange(server.url, [HELLO])
        assert errors(received) == [4010]
        assert [e.token_id for e in reply(first, [1], 1) if isinstance(e, TokenEvent)] == [2]
        first.close()
    finally:
        server.stop()
    server = LoopbackWorker(CounterModel(), WorkerLimits(max_total_bytes=1))
    try:
        received, _ = raw_exchange(server.url, [HELLO])
        assert errors(received) == [4010] and "GiB" in received[0].message  # type: ignore[union-attr]
    finally:
        server.stop()


def test_vanishing_clients_free_their_sessions_and_leak_nothing(served: LoopbackWorker) -> None:
    def vanish() -> None:
        math = CounterMath()
        client = KeyHolderClient(served.url, math)
        sampler = ReplyRequest(500, 0).sampler()
        generate = p.Generate(
            client.welcome.session, "r", 0, "", 1, 500, 0, 0, sampler, math.encrypt_prompt([1])
        )
        client.conn.send(p.encode(generate))
        client.conn.recv(timeout=10)  # the worker is mid-generation (an oracle request or progress)
        client.conn.close()

    for _ in range(5):  # warm up allocator pools before measuring
        vanish()
    served.wait_idle()
    gc.collect()
    before = psutil.Process().memory_info().rss
    for _ in range(50):
        vanish()
    served.wait_idle()
    gc.collect()
    grown = psutil.Process().memory_info().rss - before
    assert grown < 40 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB over 50 vanished sessions"
    client = KeyHolderClient(served.url, CounterMath())  # and the worker still serves
    assert reply(client, [1], 1)[-1] == DoneEvent("length")
    client.close()


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({"positions": 2}, "match the 1 ciphertexts"),
        ({"start": 600}, "leave no room for a reply"),
        ({"prefix": "default-000000000000"}, "unknown public prefix"),
        ({"prefix": PREFIX.id, "start": 1}, "inside the public prefix"),
        ({"max_new_tokens": 10**6}, "max_new_tokens must be"),
        ({"max_new_tokens": -1}, "max_new_tokens must be 0.."),
        ({"seed": -1}, "seed must be"),
        ({"sampler": {"amp_rounds": 99}}, "amp_rounds must be between"),
        ({"sampler": {"bogus": 1}}, "unknown sampler setting"),
        ({"sampler": {"noise_sigma": 0.1}}, "simulation settings"),
    ],
)
def test_generate_fields_are_range_checked_before_any_work(
    served: LoopbackWorker, changes: dict[str, Any], text: str
) -> None:
    math = CounterMath()
    client = KeyHolderClient(served.url, math)
    fields = {
        "session": client.welcome.session,
        "request": "r",
        "start": 0,
        "prefix": "",
        "positions": 1,
        "max_new_tokens": 2,
        "seed": 0,
        "first_index": 0,
        "sampler": ReplyRequest(2, 0).sampler(),
        "blobs": math.encrypt_prompt([3]),
    }
    client.conn.send(p.encode(p.Generate(**{**fields, **changes})))
    error = p.decode(client.conn.recv(timeout=10))
    assert isinstance(error, p.Error) and error.code == CODE_BAD_REQUEST and text in error.message, error
    assert [e.token_id for e in reply(client, [3], 1) if isinstance(e, TokenEvent)] == [4]  # still served
    client.close()


def test_a_reply_preempts_another_sessions_read_ahead_and_both_chats_go_on(served: LoopbackWorker) -> None:
    reader, replier = KeyHolderClient(served.url, CounterMath()), KeyHolderClient(served.url, CounterMath())
    events: list[Any] = []
    ahead = threading.Thread(
        target=lambda: events.extend(reader.generate([3], 0, "", ReplyRequest(max_new_tokens=0, seed=0)))
    )
    ahead.start()
    deadline = time.monotonic() + 10
    while served.worker.busy is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.worker.busy is not None and served.worker.busy.reading
    began = time.perf_counter()
    assert [e.token_id for e in reply(replier, [3], 2) if isinstance(e, TokenEvent)] == [4, 5]  # not busy
    assert time.perf_counter() - began < 5  # the read-ahead (200 x 50 ms) gave way at once
    ahead.join(10)
    assert isinstance(events[-1], DoneEvent) and events[-1].reason == "cancelled"
    assert [e.token_id for e in reply(reader, [3], 1) if isinstance(e, TokenEvent)] == [4]  # no stray error
    stream = replier.generate([3], 0, "", ReplyRequest(max_new_tokens=50, seed=0))
    next(stream)  # a reply is running: a read-ahead never preempts anything
    with pytest.raises(WorkerError, match="4007"):
        list(reader.generate([3], 0, "", ReplyRequest(max_new_tokens=0, seed=0)))
    stream.close()
    reader.close()
    replier.close()
