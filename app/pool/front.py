"""The pool's one address: check the token, take a place on a replica, relay the session's frames.

A key holder connects here as it would to one worker (same URL form, same protocol). The front decides
only who may come in and where they go: it checks the access token and the Origin (as a worker does),
asks Ray Serve for a place on a replica that has room (`WorkerReplica.session`, app/pool/serve.py), connects
to that replica's worker and relays every frame both ways, unread. The worker checks the token again
and does everything else.

- The pool is full (its sessions fill every running replica's places; the front is the pool's one door,
  so it counts them, and asks Serve every `POLL_SECONDS` how many replicas run): the connection gets an
  `Error` 4010 saying so, then a close, at once.
- The replica dies: its place fails; the front closes the connection with 1012 (service restart), so
  the key holder reconnects and lands on a replica that lives.
- A worker's own refusals and closes (its codes, its messages) pass through unchanged.

References: app/worker/relay.py (the same relay for a Space's one port); websockets' asyncio server and
client; Ray Serve's streaming DeploymentHandle (cancel ends the call on the replica).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from app import protocol as p
from app.worker.admission import WorkerAccess, with_token
from app.worker.tls import scheme, server_options
from core.errors import CODE_SERVICE_RESTART, CODE_TRY_AGAIN, AccessDenied, ChatError, LimitExceeded

log = logging.getLogger("he_chat.pool")
ASSIGN_SECONDS = 30.0  # a place the count says is free must be given within this (Serve routes in ms)
POLL_SECONDS = 2.0  # how often the front asks Serve how many replicas run
HELLO_SECONDS = 5.0  # a refused connection's Hello is awaited this long, so the answer is read as one


@dataclass
class Placed:
    """One relayed session: the replica it holds a place on."""

    url: str  # the replica's worker (with the token)
    pid: int  # the replica's process


class PoolFront:
    """The websocket server key holders reach; one `handler` call per connection."""

    def __init__(
        self, handle: Any, access: WorkerAccess, places: int, running: Callable[[], int], capacity: str
    ) -> None:
        """`handle`: the Serve handle of the replicas, each with `places` sessions; `running()` counts
        the running replicas (called in a thread); `capacity` says what the pool holds (for the message
        a refused key holder reads)."""
        self.handle = handle
        self.access = access
        self.places = places
        self.running = running
        self.capacity = capacity
        self.replicas = 0  # running, as last counted
        self.sessions = 0  # connections taking or holding a place
        self.placed: dict[int, Placed] = {}  # id(connection) -> its place
        self.counting: asyncio.Task[None] | None = None

    async def count_replicas(self) -> None:
        """Keep `replicas` current, for the front's life."""
        while True:
            try:
                self.replicas = await asyncio.to_thread(self.running)
            except Exception:  # noqa: BLE001 - Serve busy or restarting: keep the last count
                log.warning("could not count the pool's replicas", exc_info=True)
            await asyncio.sleep(POLL_SECONDS)

    async def handler(self, client: ServerConnection) -> None:
        request = client.request
        assert request is not None  # the handler runs after the handshake
        origin = request.headers.get("Origin")
        try:
            self.access.check(request.path, origin)
        except AccessDenied as exc:
            await _refuse(client, exc)
            return
        if self.sessions >= self.places * self.replicas:
            full = LimitExceeded(
                f"every worker of the pool is busy ({self.capacity}); try again in a minute, when a "
                "session has ended"
            )
            await _refuse(client, full)
            return
        self.sessions += 1
        try:
            await self._session(client, request.path, origin)
        finally:
            self.sessions -= 1

    async def _session(self, client: ServerConnection, path: str, origin: str | None) -> None:
        slot = self.handle.options(stream=True).session.remote()
        try:
            place = await asyncio.wait_for(slot.__anext__(), ASSIGN_SECONDS)
        except Exception as exc:  # noqa: BLE001 - no replica took it (starting, or all failed)
            slot.cancel()
            log.warning("no place for a session: %r", exc)
            await _close(client, CODE_TRY_AGAIN, "the pool has no free worker right now; try again shortly")
            return
        parts = urlsplit(place["url"])  # the client's own query carries its token: the worker checks it too
        target = urlunsplit((parts.scheme, parts.netloc, "/", urlsplit(path).query, ""))
        try:
            worker = await connect(
                target,
                origin=Origin(origin) if origin is not None else None,  # the worker checks it too
                max_size=p.MAX_MESSAGE_BYTES,
                compression=None,
                open_timeout=10,
            )
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            slot.cancel()
            unreachable = f"the pool's worker cannot be reached ({type(exc).__name__})"
            await _close(client, CODE_TRY_AGAIN, unreachable)
            return
        self.placed[id(client)] = Placed(place["url"], int(place["pid"]))
        try:
            async with worker:
                await _relay(client, worker, slot)
        finally:
            slot.cancel()
            self.placed.pop(id(client), None)


async def _relay(client: ServerConnection, worker: ClientConnection, slot: Any) -> None:
    """Frames both ways until a side closes or the replica's place fails; the other side follows."""

    async def pump(source: Any, sink: Any) -> None:
        async for frame in source:
            await sink.send(frame)

    async def watch() -> None:
        await slot.__anext__()  # yields once (already taken): this returns only when the replica fails

    tasks = {
        "up": asyncio.create_task(pump(client, worker)),
        "down": asyncio.create_task(pump(worker, client)),
        "replica": asyncio.create_task(watch()),
    }
    done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    code = worker.close_code
    if tasks["up"] in done and tasks["down"] not in done:
        await worker.close()  # the key holder left
    elif tasks["replica"] in done or code in (None, 1006, 1011):
        await _close(client, CODE_SERVICE_RESTART, "the worker went away; reconnect to the pool")
    else:
        await _close(client, code or 1000, worker.close_reason or "")


async def _refuse(client: ServerConnection, exc: ChatError) -> None:
    """An `Error` message in answer to the Hello (what the key holder shows), then the close."""
    error = p.error_message(exc)
    try:
        await asyncio.wait_for(client.recv(), HELLO_SECONDS)  # a key holder reads after its Hello
    except (TimeoutError, ConnectionClosed):
        pass
    try:
        await client.send(p.encode(error))
    except ConnectionClosed:
        return
    await _close(client, error.code, error.message)


async def _close(client: ServerConnection, code: int, reason: str) -> None:
    try:
        await client.close(code, reason.encode()[:120].decode(errors="ignore"))  # a reason is 123 bytes
    except ConnectionClosed:
        pass


async def start_front(front: PoolFront, host: str, port: int, tls: ssl.SSLContext | None = None) -> Server:
    """Serve the front (`wss://` with `tls`); it counts the replicas from the start."""
    front.replicas = await asyncio.to_thread(front.running)
    front.counting = asyncio.get_running_loop().create_task(front.count_replicas())
    return await serve(front.handler, host, port, max_size=p.MAX_MESSAGE_BYTES, **server_options(tls))


class BackgroundFront:
    """The front serving from its own event-loop thread (`python -m app pool` and tests); `url`."""

    def __init__(
        self, front: PoolFront, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.front = front
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="he-chat-pool-front", daemon=True)
        self.thread.start()
        serving = start_front(front, host, port, tls)
        self.server = asyncio.run_coroutine_threadsafe(serving, self.loop).result(30)
        bound_host, bound_port = self.server.sockets[0].getsockname()[:2]
        self.url = with_token(f"{scheme(tls)}://{bound_host}:{bound_port}", front.access.token)

    def stop(self) -> None:
        if self.front.counting is not None:
            self.loop.call_soon_threadsafe(self.front.counting.cancel)
        self.server.close()
        asyncio.run_coroutine_threadsafe(self.server.wait_closed(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
