"""The pool's front (app/pool/front.py) without Ray: a stand-in Serve handle gives places on an echo
worker; the front relays frames both ways, counts places, and refuses a full pool or a wrong token at once
(the front before real replicas on Ray Serve: test_serve.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from app import protocol as p
from app.pool.front import BackgroundFront, PoolFront
from app.worker.admission import WorkerAccess, new_token, with_token

PID = 4242


class Slot:
    """A Serve streaming call: yields the place once, then waits as long as the replica lives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.given = False

    async def __anext__(self) -> dict[str, Any]:
        if not self.given:
            self.given = True
            return {"url": self.url, "pid": PID}
        await asyncio.Event().wait()  # the replica never fails here
        raise StopAsyncIteration

    def cancel(self) -> None:
        pass


class Handle:
    """`handle.options(stream=True).session.remote()` of a deployment with one replica."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = self
        self.calls = 0

    def options(self, stream: bool) -> Handle:
        return self

    def remote(self) -> Slot:
        self.calls += 1
        return Slot(self.url)


@pytest.fixture
def echo() -> Iterator[str]:
    """A worker that sends every frame back."""

    def handler(ws: ServerConnection) -> None:
        for frame in ws:
            ws.send(frame)

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        host, port = server.socket.getsockname()[:2]
        yield f"ws://{host}:{port}"
        server.shutdown()
    thread.join(10)


@pytest.fixture
def front(echo: str) -> Iterator[BackgroundFront]:
    access = WorkerAccess(new_token())
    door = PoolFront(Handle(echo), access, places=1, running=lambda: 1, capacity="1 replica, 1 session")
    background = BackgroundFront(door)
    yield background
    background.stop()


def _refusal(url: str) -> p.Error:
    with connect(url, open_timeout=10) as ws:
        ws.send(b"hello")
        message = p.decode(ws.recv(10))
        with pytest.raises(ConnectionClosed):
            ws.recv(10)
    assert isinstance(message, p.Error)
    return message


def test_the_front_relays_a_session_and_refuses_a_second_one_while_the_pool_is_full(
    front: BackgroundFront,
) -> None:
    with connect(front.url, open_timeout=10) as ws:
        ws.send(b"first frame")
        assert ws.recv(10) == b"first frame"  # through the front to the worker and back
        assert [q.pid for q in front.front.placed.values()] == [PID] and front.front.sessions == 1
        began = time.perf_counter()
        full = _refusal(front.url)
        assert full.code == 4010 and "every worker of the pool is busy (1 replica, 1 session)" in full.message
        assert time.perf_counter() - began < 2.0  # counted, not waited for
        assert front.front.handle.calls == 1  # the refused key holder never asked Serve for a place
    deadline = time.monotonic() + 10
    while front.front.sessions and time.monotonic() < deadline:  # the place is given back on close
        time.sleep(0.05)
    assert front.front.sessions == 0 and not front.front.placed
    with connect(front.url, open_timeout=10) as ws:
        ws.send(b"again")
        assert ws.recv(10) == b"again"


def test_a_wrong_token_is_refused_before_a_place_is_taken(front: BackgroundFront) -> None:
    wrong = with_token(front.url.split("?")[0], new_token())
    denied = _refusal(wrong)
    assert denied.code == 4011 and front.front.handle.calls == 0
