"""The page's own port also serves its embedded worker: `/worker` relays websocket frames to it.

A Hugging Face Space exposes one port, behind the Space's TLS. With `--worker-endpoint` (on by default
on a Space) the page adds a websocket route `/worker` that relays every frame, both ways, to the
embedded worker on 127.0.0.1, so a key holder at home reaches the Space's worker at
`wss://<space host>/worker?token=...` and keeps its secret key at home. The relay decides nothing: the
worker checks the token and the Origin (forwarded as the client sent it) and closes with its own codes,
which the relay passes on; the relay holds no keys and reads no frame.

References: Starlette's WebSocket (receive / send_bytes / close); websockets' asyncio client.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app import protocol as p
from app.worker.admission import TOKEN_PARAMETER, with_token
from core.errors import CODE_TRY_AGAIN

RELAY_PATH = "/worker"


def public_url(worker_url: str, host: str, port: int) -> str:
    """Where a key holder elsewhere reaches the relay to the worker at `worker_url` (its token kept): on
    a Space its https host (`SPACE_HOST`), else the page's own address."""
    space = os.environ.get("SPACE_HOST")
    base = f"wss://{space}{RELAY_PATH}" if space else f"ws://{host}:{port}{RELAY_PATH}"
    token = parse_qs(urlsplit(worker_url).query).get(TOKEN_PARAMETER, [None])[0]
    return with_token(base, token)


def serve_relay(page: Any, worker_url: Callable[[], str | None]) -> None:
    """Add the relay to a launched Gradio page's server (before any route that could shadow it) and let
    that server take frames as large as the worker does (uvicorn's default is 16 MiB)."""
    page.server.config.ws_max_size = p.MAX_MESSAGE_BYTES
    page.app.router.routes.insert(0, WebSocketRoute(RELAY_PATH, relay_endpoint(worker_url)))


def relay_endpoint(worker_url: Callable[[], str | None]) -> Callable[[WebSocket], Awaitable[None]]:
    """A Starlette websocket endpoint relaying to the worker at `worker_url()` (None: not started)."""

    async def endpoint(client: WebSocket) -> None:
        await client.accept()
        url = worker_url()
        if url is None:
            await client.close(CODE_TRY_AGAIN, "the worker is not running; try again shortly")
            return
        parts = urlsplit(url)  # the embedded worker's address; the client's own query carries its token
        target = urlunsplit((parts.scheme, parts.netloc, "/", client.url.query, ""))
        try:
            worker = await connect(
                target,
                origin=client.headers.get("origin"),  # type: ignore[arg-type]  # the worker checks it
                max_size=p.MAX_MESSAGE_BYTES,
                compression=None,
                open_timeout=10,
            )
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            await client.close(CODE_TRY_AGAIN, f"the worker cannot be reached ({type(exc).__name__})")
            return
        async with worker:
            await _pump(client, worker)

    return endpoint


async def _pump(client: WebSocket, worker: ClientConnection) -> None:
    """Frames both ways until one side closes; the other side then closes with the same code."""

    async def upstream() -> None:
        while True:
            message: MutableMapping[str, Any] = await client.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            await worker.send(data if data is not None else message.get("text") or "")

    async def downstream() -> None:
        async for data in worker:
            if isinstance(data, bytes):
                await client.send_bytes(data)
            else:
                await client.send_text(data)

    tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[1] in done:  # the worker closed: pass its code and reason on
        code, reason = worker.close_code or 1000, worker.close_reason or ""
        try:
            await client.close(code if 1000 <= code < 5000 and code not in (1005, 1006) else 1011, reason)
        except (RuntimeError, WebSocketDisconnect):
            pass
    else:
        await worker.close()
