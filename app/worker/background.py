"""The worker served from a thread of this process: `start` puts a `Worker` on a socket, `BackgroundWorker`
runs it on its own event loop (the app's in-process worker, the pool's replicas, and the tests' loopback
workers on port 0).
"""

from __future__ import annotations

import asyncio
import ssl
import threading

from websockets.asyncio.server import Server, serve

from app.worker.admission import WorkerAccess, WorkerLimits, with_token
from app.worker.server import Worker
from app.worker.session import WorkerModel
from app.worker.tls import scheme, server_options


async def start(
    worker: Worker, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
) -> Server:
    """Start serving (`wss://` with `tls`, see app/worker/tls.py); port 0 picks a free port (see
    `server.sockets[0].getsockname()`)."""
    return await serve(
        worker.handler,
        host,
        port,
        max_size=worker.limits.max_hello_bytes,  # raised for the connection once it has said Hello
        **server_options(tls),
    )


class BackgroundWorker:
    """A worker serving from its own event-loop thread (the app's in-process worker, and tests)."""

    def __init__(
        self,
        model: WorkerModel,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: WorkerLimits | None = None,
        access: WorkerAccess | None = None,
        tls: ssl.SSLContext | None = None,
    ):
        self.worker = Worker(model, limits or WorkerLimits(), access)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="he-chat-worker", daemon=True)
        self.thread.start()
        serving = start(self.worker, host, port, tls)
        self.server = asyncio.run_coroutine_threadsafe(serving, self.loop).result(60)
        bound_host, bound_port = self.server.sockets[0].getsockname()[:2]
        address = f"{scheme(tls)}://{bound_host}:{bound_port}"
        self.url = with_token(address, self.worker.access.token)  # what clients use

    def stop(self) -> None:
        """Stop serving, and stop the model's compute processes if it has any."""
        self.server.close()
        asyncio.run_coroutine_threadsafe(self.server.wait_closed(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        close = getattr(self.worker.model, "close", None)
        if close is not None:
            close()
