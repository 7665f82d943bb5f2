"""The page's port relays `/worker` to its embedded worker, over real sockets (uvicorn, websockets).

The relay runs in uvicorn as the page's server runs it; the worker behind it is `BackgroundWorker` over
the `CounterModel` double of tests/app/worker/test_server.py (real CKKS keys and ciphertexts), then the real
encrypted worker of the tiny model behind `python -m app ui --worker-endpoint`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.request import urlopen

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app import protocol as p
from app.chat.keyholder import KeyHolderClient, TokenEvent
from app.chat.service import ChatService, ChatSettings
from app.worker.admission import WorkerLimits
from app.worker.relay import RELAY_PATH, public_url, relay_endpoint
from model.loading import LoadedModel
from tests.app.worker.doubles import HELLO, CounterMath, CounterModel, LoopbackWorker, reply

ROOT = Path(__file__).resolve().parents[3]


class Page:
    """A uvicorn server with the relay route, in a thread (the page's server, without the page)."""

    def __init__(self, worker_url: str | None) -> None:
        app = Starlette(routes=[WebSocketRoute(RELAY_PATH, relay_endpoint(lambda: worker_url))])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", ws_max_size=p.MAX_MESSAGE_BYTES
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def relayed() -> Iterator[tuple[LoopbackWorker, Page]]:
    worker = LoopbackWorker(CounterModel(delay=0.02), WorkerLimits(max_message_bytes=4 * 1024 * 1024))
    page = Page(worker.url)
    yield worker, page
    page.stop()
    worker.stop()


def test_a_key_holder_reaches_the_worker_through_the_pages_port(relayed: tuple[LoopbackWorker, Page]) -> None:
    worker, page = relayed
    url = public_url(worker.url, "127.0.0.1", page.port)
    assert url.startswith(f"ws://127.0.0.1:{page.port}{RELAY_PATH}?token=")
    client = KeyHolderClient(url, CounterMath())
    assert [e.token_id for e in reply(client, [5, 1, 2], 4) if isinstance(e, TokenEvent)] == [6, 7, 8, 9]
    client.close()
    worker.wait_idle()


def test_the_workers_refusals_pass_through_the_relay(relayed: tuple[LoopbackWorker, Page]) -> None:
    worker, page = relayed
    base = f"ws://127.0.0.1:{page.port}{RELAY_PATH}"
    good = public_url(worker.url, "127.0.0.1", page.port)
    for url, origin, says in (
        (base + "?token=guess", None, "access token is wrong"),
        (good, "https://evil.example", "not allowed"),  # a web page's Origin reaches the worker
    ):
        with connect(url, origin=origin) as conn:  # type: ignore[arg-type]
            conn.send(HELLO)
            error = p.decode(conn.recv(timeout=10))
            with pytest.raises(ConnectionClosed) as closed:
                conn.recv(timeout=10)
        assert isinstance(error, p.Error) and error.code == 4011 and says in error.message
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4011  # the worker's own code
    client = KeyHolderClient(good, CounterMath())  # the relay still serves
    assert [e.token_id for e in reply(client, [1], 2) if isinstance(e, TokenEvent)] == [2, 3]
    client.close()


def test_no_worker_behind_the_relay_is_a_try_again_close() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{spare.getsockname()[1]}/?token=x"  # nothing listens there
    page = Page(dead)
    try:
        with connect(f"ws://127.0.0.1:{page.port}{RELAY_PATH}?token=x") as conn:
            with pytest.raises(ConnectionClosed) as closed:
                conn.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert "cannot be reached" in closed.value.rcvd.reason
    finally:
        page.stop()


def test_the_page_command_serves_its_real_worker_at_slash_worker(tiny: LoadedModel) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    command = [sys.executable, "-m", "app", "ui", "--tiny", "--port", str(port), "--worker-endpoint"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SPACE_HOST", None)
    page = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert page.stderr is not None
        for line in page.stderr:  # (the page's log, until the relay is up)
            if "Serving the worker to key holders elsewhere" in line:
                break
        else:
            raise AssertionError("the page ended before serving the worker")
        threading.Thread(target=page.stderr.read, daemon=True).start()  # keep the pipe drained
        config = json.loads(urlopen(f"http://127.0.0.1:{port}/config", timeout=30).read())
        shown = re.search(r"HE_CHAT_WORKER_URL='([^']+)'", json.dumps(config))
        assert shown is not None, "the page shows where key holders elsewhere reach its worker"
        assert shown.group(1).startswith(f"ws://127.0.0.1:{port}{RELAY_PATH}?token=")
        service = ChatService.create(tiny, worker_url=shown.group(1))
        session = service.open_encrypted()  # keys made here, uploaded through the page's port
        settings = ChatSettings(mode="encrypted", max_new_tokens=2, seed=0)
        updates = list(service.reply([{"role": "user", "content": "hi"}], settings, session))
        assert updates[-1].tokens == 2
        session.close()
    finally:
        page.terminate()
        page.wait(30)
