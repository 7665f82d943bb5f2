"""The model worker: a websockets server that computes on ciphertexts and never holds a secret key.

One connection = one session. The key holder says Hello, uploads its public context in chunks, then
asks for replies with Generate. A reply runs in a worker thread (`asyncio.to_thread`), so pings and
other sessions stay alive; the job reaches the key holder only through `JobContext.oracle` (refresh and
the allow-listed functions) and `JobContext.emit` (Progress, Token, Done). Between replies the worker
keeps nothing of a conversation: the key holder holds its attention cache and says where the new
positions start (`Generate.start`), which the worker checks against the context window and the public
prefix.

Faults never take the worker down: every bad frame gets an `Error` message with a code in 4000-4999
(app/protocol.py); protocol violations that leave the connection unusable also close it with that
code. A session's keys and job die with its connection. One reply is generated at a time (it uses every
core); a second Generate meanwhile gets WorkerBusy (4007). `WorkerModel` (app/encrypted_worker.py for the
real pipeline, on a pool of processes) does the computing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import psutil
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from app import protocol as p
from crypto.keys import RotationPlan
from crypto.params import preset
from model.conversation import PublicPrefix
from model.encrypted import OracleCall
from model.errors import (
    ChatError,
    JobCancelled,
    LimitExceeded,
    OutOfOrder,
    ProtocolError,
    UnknownSession,
    VersionMismatch,
    WorkerBusy,
)

log = logging.getLogger("he_chat.worker")
FATAL_CODES = {4000, 4001, 4002, 4003}  # the peer does not speak our protocol: close the connection


@dataclass
class JobContext:
    """What a generation job may touch: the session's id (its keys) and two narrow channels to the key
    holder."""

    session: str
    request: p.Generate
    oracle: Callable[[OracleCall], list[bytes]]  # one oracle round trip; blocks
    emit: Callable[[p.Message], None]  # Progress / Token messages to the key holder
    cancelled: threading.Event

    def check(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled()


class WorkerModel(Protocol):
    """The computing part of a worker (the encrypted pipeline, or a test double)."""

    name: str
    vocab: int
    ordering: str  # fingerprint of the baked-in vocabulary order
    context_window: int
    prefixes: dict[str, tuple[PublicPrefix, list[bytes]]]  # id -> the prefix and its keys and values

    def rotation_plan(self, preset_name: str) -> RotationPlan:
        """The rotations the plan needs for a parameter preset (raises ParamsError if unsupported)."""
        ...

    def readiness(self) -> tuple[int, int]:
        """(done, total) of warming the weight caches."""
        ...

    def load_keys(self, session: str, data: bytes) -> None:
        """Load a session's public context (blocks; raises a typed error for a bad context)."""
        ...

    def drop_keys(self, session: str) -> None: ...

    def run(self, job: JobContext) -> str:
        """Generate; emit Token messages; return the finish reason ("length" or "context")."""
        ...


@dataclass(frozen=True)
class WorkerLimits:
    """Resource limits; a client that exceeds one gets LimitExceeded, the others carry on."""

    max_message_bytes: int = p.MAX_MESSAGE_BYTES  # websockets max_size: one frame
    max_sessions: int = 16  # concurrent connections with a session
    max_key_bytes: int = 512 * 1024 * 1024  # public context per session (a full N=16384 key set is ~330 MB)
    max_total_bytes: int = 20 * 1024**3  # this process's RSS above which new sessions are refused
    idle_seconds: float = 900.0  # a session with no message for this long is expired and closed
    oracle_timeout: float = 600.0  # a key holder that does not answer an oracle call in time is dropped


@dataclass
class Session:
    id: str
    preset: str
    connection: ServerConnection
    last_seen: float = field(default_factory=time.monotonic)
    key_chunks: list[bytes] = field(default_factory=list)
    key_total: int = 0
    keys_loaded: bool = False
    job: asyncio.Task[None] | None = None
    request: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    reading: bool = False  # the job is a read-ahead (0 tokens): a reply of another session preempts it
    preempted: str = ""  # the last read-ahead that gave way (its late oracle answers are dropped)
    calls: dict[int, asyncio.Future[list[bytes]]] = field(default_factory=dict)
    next_call: int = 0

    @property
    def key_bytes(self) -> int:
        return sum(len(c) for c in self.key_chunks)


class Worker:
    """Sessions, dispatch and the single generation slot."""

    def __init__(self, model: WorkerModel, limits: WorkerLimits = WorkerLimits()) -> None:
        self.model = model
        self.limits = limits
        self.sessions: dict[str, Session] = {}
        self.busy: Session | None = None  # the session whose reply is being generated
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- connection ---------------------------------------------------------------------------

    async def handler(self, connection: ServerConnection) -> None:
        self.loop = asyncio.get_running_loop()
        session: Session | None = None
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(connection.recv(), timeout=self.limits.idle_seconds)
                except TimeoutError:
                    expired = UnknownSession(
                        f"session expired after {self.limits.idle_seconds:.0f} s without a message; reconnect"
                    )
                    await self._fail(connection, expired, close=True)
                    return
                try:
                    message = p.decode(frame, self.limits.max_message_bytes)
                    session = await self.dispatch(connection, session, message)
                except (ChatError, ValueError) as exc:
                    await self._fail(connection, exc)
                    if isinstance(exc, ProtocolError) and exc.code in FATAL_CODES:
                        return
        except ConnectionClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - one broken session must never take the worker down
            log.exception("session crashed")
            await self._fail(connection, exc)
        finally:
            if session is not None:
                await self.drop(session)

    async def _fail(self, connection: ServerConnection, exc: Exception, close: bool = False) -> None:
        error = p.error_message(exc)
        try:
            await connection.send(p.encode(error))
            if close or error.code in FATAL_CODES:
                await connection.close(error.code, error.message[:120])
        except ConnectionClosed:
            pass

    async def drop(self, session: Session) -> None:
        """Free everything a session holds (keys, job, pending oracle calls)."""
        self._stop(session)
        session.calls.clear()
        if session.job is not None:
            try:
                await session.job
            except Exception:  # noqa: BLE001, S110 - the job's own errors were already reported
                pass
        self.sessions.pop(session.id, None)
        session.key_chunks.clear()
        if session.keys_loaded:
            session.keys_loaded = False
            await asyncio.to_thread(self.model.drop_keys, session.id)

    # --- dispatch -----------------------------------------------------------------------------

    async def dispatch(
        self, conn: ServerConnection, session: Session | None, msg: p.Message
    ) -> Session | None:
        if isinstance(msg, p.Hello):
            return await self._hello(conn, session, msg)
        if session is None:
            raise OutOfOrder(f"{msg.type} before hello; start every connection with a Hello message")
        if getattr(msg, "session", session.id) != session.id:
            raise UnknownSession(f"unknown session {getattr(msg, 'session', '')!r}; use the id from Welcome")
        session.last_seen = time.monotonic()
        if isinstance(msg, p.KeyChunk):
            await self._key_chunk(conn, session, msg)
        elif isinstance(msg, p.Generate):
            self._generate(conn, session, msg)
        elif isinstance(msg, p.OracleReply):
            future = session.calls.pop(msg.call, None) if msg.request == session.request else None
            if future is None and msg.request and msg.request == session.preempted:
                return session  # an answer to a read-ahead that gave way to another reply: not needed
            if future is None:
                raise OutOfOrder(
                    f"oracle reply for call {msg.call} of request {msg.request!r}, which is not open"
                )
            if not future.done():
                future.set_result(msg.blobs)
        elif isinstance(msg, p.Cancel):
            if msg.request == session.request:
                self._stop(session)
        else:
            raise OutOfOrder(f"{msg.type} is a worker-to-client message; the worker does not accept it")
        return session

    async def _hello(self, conn: ServerConnection, session: Session | None, msg: p.Hello) -> Session:
        if msg.version != p.PROTOCOL_VERSION:
            raise VersionMismatch(f"client speaks protocol {msg.version}, this worker {p.PROTOCOL_VERSION}")
        if session is not None:
            raise OutOfOrder("hello twice on one connection; open a new connection for a new session")
        if len(self.sessions) >= self.limits.max_sessions:
            raise LimitExceeded(f"the worker serves {self.limits.max_sessions} sessions at most; retry later")
        rss = psutil.Process().memory_info().rss
        if rss > self.limits.max_total_bytes:
            raise LimitExceeded(
                f"the worker uses {rss / 2**30:.1f} GiB, above its "
                f"{self.limits.max_total_bytes / 2**30:.1f} GiB limit; retry when other sessions have ended"
            )
        preset(msg.preset)  # raises ParamsError for an unknown preset
        plan = self.model.rotation_plan(msg.preset)
        session = Session(id=uuid.uuid4().hex, preset=msg.preset, connection=conn)
        self.sessions[session.id] = session
        done, total = self.model.readiness()
        prefixes = list(self.model.prefixes.items())
        welcome = p.Welcome(
            session=session.id,
            model=self.model.name,
            vocab=self.model.vocab,
            ordering=self.model.ordering,
            preset=msg.preset,
            context_window=self.model.context_window,
            galois_steps=sorted(plan.steps),
            conjugate=plan.conjugate,
            max_message_bytes=self.limits.max_message_bytes,
            key_chunk_bytes=p.KEY_CHUNK_BYTES,
            ready=100 * done // max(total, 1),
            prefixes=[pid for pid, _ in prefixes],
            prefix_tokens=[list(prefix.ids) for _, (prefix, _) in prefixes],
            blobs=[blob for _, (_, blobs) in prefixes for blob in blobs],
        )
        try:
            await conn.send(p.encode(welcome))
        except ConnectionClosed:
            # The connection died before the handler could hold the session: free it here.
            self.sessions.pop(session.id, None)
            raise
        return session

    async def _key_chunk(self, conn: ServerConnection, session: Session, msg: p.KeyChunk) -> None:
        if session.keys_loaded:
            raise OutOfOrder("keys were already accepted for this session")
        if msg.index != len(session.key_chunks) or not 0 < msg.total <= 4096 or msg.index >= msg.total:
            raise OutOfOrder(
                f"key chunk {msg.index}/{msg.total} out of order; send chunks 0..total-1 in order"
            )
        if session.key_total and msg.total != session.key_total:
            raise OutOfOrder("key chunk total changed during the upload")
        session.key_total = msg.total
        session.key_chunks.append(b"".join(msg.blobs))
        if session.key_bytes > self.limits.max_key_bytes:
            session.key_chunks.clear()
            raise LimitExceeded(f"public context exceeds {self.limits.max_key_bytes:,} bytes")
        if len(session.key_chunks) < msg.total:
            return
        data = b"".join(session.key_chunks)
        session.key_chunks.clear()
        await asyncio.to_thread(self.model.load_keys, session.id, data)  # SecretKeyError, WireFormatError
        session.keys_loaded = True
        await conn.send(p.encode(p.KeysAccepted(session.id, len(data))))

    def _generate(self, conn: ServerConnection, session: Session, msg: p.Generate) -> None:
        if not session.keys_loaded:
            raise OutOfOrder("generate before the keys were uploaded; send the KeyChunk messages first")
        prefixes = {pid: len(prefix.ids) for pid, (prefix, _) in self.model.prefixes.items()}
        p.check_generate(msg, self.model.context_window, prefixes)
        previous = None
        if self.busy is not None:
            running = self.busy
            if running is session or not running.reading or msg.max_new_tokens == 0:
                raise WorkerBusy("the worker is generating another reply; retry when it is done")
            running.preempted = running.request  # a read-ahead only saves its chat time later
            self._stop(running)
            previous = running.job
        self.busy = session
        session.request = msg.request
        session.reading = msg.max_new_tokens == 0
        session.cancelled = threading.Event()
        session.job = asyncio.create_task(self._run(conn, session, msg, previous))

    @staticmethod
    def _stop(session: Session) -> None:
        """End the session's job at its next check; an oracle call it waits on is abandoned."""
        session.cancelled.set()
        for future in session.calls.values():
            future.cancel()

    async def _run(
        self, conn: ServerConnection, session: Session, msg: p.Generate, after: asyncio.Task[None] | None
    ) -> None:
        """Run one Generate (after the preempted read-ahead `after` has ended, if any)."""
        assert self.loop is not None
        loop = self.loop
        if after is not None:
            stage = "waiting for another chat's read-ahead to stop"
            await self._send_quietly(conn, p.Progress(msg.request, stage, 0, 1))
            await asyncio.wait([after])

        def emit(message: p.Message) -> None:
            asyncio.run_coroutine_threadsafe(conn.send(p.encode(message)), loop).result()

        def oracle(call: OracleCall) -> list[bytes]:
            if session.cancelled.is_set():
                raise JobCancelled()
            future = asyncio.run_coroutine_threadsafe(self._ask(conn, session, call), loop)
            try:
                return future.result(timeout=self.limits.oracle_timeout)
            except (concurrent.futures.CancelledError, ConnectionClosed) as exc:
                raise JobCancelled() from exc  # Cancel, or the key holder vanished
            except TimeoutError as exc:
                future.cancel()
                limit = self.limits.oracle_timeout
                message = f"the key holder did not answer a {call.fn} call within {limit:.0f} s"
                raise LimitExceeded(message) from exc

        job = JobContext(session.id, msg, oracle, emit, session.cancelled)
        try:
            reason = await asyncio.to_thread(self.model.run, job)
            await conn.send(p.encode(p.Done(msg.request, reason)))
        except JobCancelled:
            await self._send_quietly(conn, p.Done(msg.request, "cancelled"))
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            if not isinstance(exc, ChatError):
                log.exception("generation failed")
            await self._send_quietly(conn, p.error_message(exc, msg.request))
        finally:
            session.request = ""
            session.job = None
            if self.busy is session:
                self.busy = None

    async def _ask(self, conn: ServerConnection, session: Session, call: OracleCall) -> list[bytes]:
        number = session.next_call
        session.next_call += 1
        if session.cancelled.is_set():  # a Cancel handled after oracle() checked, before this call existed
            raise JobCancelled()
        future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        session.calls[number] = future
        parts = [list(part) for part in call.parts]
        pieces = [spec.as_list() for spec in call.pieces]
        request = p.OracleRequest(session.request, number, call.fn, call.layer, parts, pieces, call.blobs)
        await conn.send(p.encode(request))
        return await future

    @staticmethod
    async def _send_quietly(conn: ServerConnection, message: p.Message) -> None:
        try:
            await conn.send(p.encode(message))
        except ConnectionClosed:
            pass


async def start(worker: Worker, host: str = "127.0.0.1", port: int = 0) -> Server:
    """Start serving; port 0 picks a free port (see `server.sockets[0].getsockname()`)."""
    return await serve(
        worker.handler,
        host,
        port,
        max_size=worker.limits.max_message_bytes,
        compression=None,  # ciphertexts do not compress
        ping_interval=20,
        ping_timeout=60,
        close_timeout=5,  # a peer that ignores our close (e.g. still pushing an oversized frame) is cut off
    )


class BackgroundWorker:
    """A worker serving from its own event-loop thread (the app's in-process worker, and tests)."""

    def __init__(
        self, model: WorkerModel, host: str = "127.0.0.1", port: int = 0, limits: WorkerLimits | None = None
    ):
        self.worker = Worker(model, limits or WorkerLimits())
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="he-chat-worker", daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(start(self.worker, host, port), self.loop).result(60)
        bound_host, bound_port = self.server.sockets[0].getsockname()[:2]
        self.url = f"ws://{bound_host}:{bound_port}"

    def stop(self) -> None:
        """Stop serving, and stop the model's compute processes if it has any."""
        self.server.close()
        asyncio.run_coroutine_threadsafe(self.server.wait_closed(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        close = getattr(self.worker.model, "close", None)
        if close is not None:
            close()
