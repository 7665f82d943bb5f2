"""The model worker: a websockets server that computes on ciphertexts and never holds a secret key.

One connection = one session. The key holder says Hello, uploads its public context in chunks, then
asks for replies with Generate. A reply runs in a worker thread (`asyncio.to_thread`), so pings and
other sessions stay alive; the job reaches the key holder only through `JobContext.oracle` (refresh and
the allow-listed functions) and `JobContext.emit` (Progress, Token, Done). Between replies the worker
keeps nothing of a conversation: the key holder holds its attention cache and says where the new
positions start (`Generate.start`), which the worker checks against the context window and the public
prefix.

Faults never take the worker down: every bad frame gets an `Error` message with a code in 4000-4999
(core/errors.py's table, app/protocol.py's `error_message`); protocol violations that leave the
connection unusable also close it with that code. A session's keys and job die with its connection.
Who may connect and how much each session may take (the access token, origins, deadlines, byte caps,
the line of waiting replies, the compute budget) is app/worker/admission.py. One reply is generated at
a time (it uses every core); the next ones wait in line and are told their place. `WorkerModel`
(app/worker/session.py: the contract; app/worker/encrypted.py for the real pipeline, on a pool of
processes) does the computing; app/worker/background.py serves a `Worker` from a thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from functools import partial

import psutil
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from app import protocol as p
from app.worker.admission import ReplyLine, WorkerAccess, WorkerLimits, check_generate, new_token, ordinal
from app.worker.session import Session, WorkerModel, budget_spent, deadline, job_context
from core.errors import (
    AccessDenied,
    ChatError,
    InputError,
    JobCancelled,
    LimitExceeded,
    MessageTooLarge,
    OutOfOrder,
    ProtocolError,
    UnknownMessageType,
    UnknownSession,
    VersionMismatch,
    WorkerBusy,
)
from crypto.params import preset
from model.encrypted import OracleCall
from model.oracle import REFRESHES

log = logging.getLogger("he_chat.worker")
FATAL_CODES = {  # not our protocol, or no access: the connection is closed
    c.code for c in (ProtocolError, UnknownMessageType, VersionMismatch, MessageTooLarge, AccessDenied)
}


class Worker:
    """Sessions, dispatch, the single generation slot and its line."""

    def __init__(
        self, model: WorkerModel, limits: WorkerLimits | None = None, access: WorkerAccess | None = None
    ) -> None:
        self.model = model
        self.limits = limits = limits or WorkerLimits()
        self.access = access if access is not None else WorkerAccess(new_token())
        self.sessions: dict[str, Session] = {}
        self.connections = 0
        self.busy: Session | None = None  # the session whose reply is being generated
        self.line: ReplyLine[Session] = ReplyLine(limits.max_queue)
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- connection ---------------------------------------------------------------------------

    async def handler(self, connection: ServerConnection) -> None:
        self.loop = asyncio.get_running_loop()
        if self.connections >= self.limits.max_connections:
            cap = self.limits.max_connections
            full = LimitExceeded(f"the worker has {cap} connections open, its limit; retry later")
            await self._fail(connection, full, close=True)
            return
        self.connections += 1
        session: Session | None = None
        opened = time.monotonic()
        try:
            while True:
                timeout, expiry = deadline(session, opened, self.limits)
                try:
                    frame = await asyncio.wait_for(connection.recv(), timeout=timeout)
                except TimeoutError:
                    await self._fail(connection, expiry, close=True)
                    return
                try:
                    limit = self.limits.max_message_bytes if session else self.limits.max_hello_bytes
                    message = p.decode(frame, limit)
                    session = await self.dispatch(connection, session, message)
                    if session is not None:
                        session.last_seen = time.monotonic()  # idle time counts from the last valid message
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
            self.connections -= 1
            if session is not None:
                await self.drop(session)

    async def _fail(self, connection: ServerConnection, exc: Exception, close: bool = False) -> None:
        error = p.error_message(exc)
        try:
            await connection.send(p.encode(error))
            if close or error.code in FATAL_CODES:
                reason = error.message.encode()[:120].decode(errors="ignore")  # a close reason is 123 bytes
                await connection.close(error.code, reason)
        except ConnectionClosed:
            pass

    async def drop(self, session: Session) -> None:
        """Free everything a session holds (keys, its place in line, job, pending oracle calls)."""
        if self.line.leave(session) is not None:
            session.request = ""
            self._tell_places()
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
            request = conn.request
            assert request is not None  # the handler runs after the handshake
            # AccessDenied (4011, fatal: closed) for a Hello without the token or from a web page
            self.access.check(request.path, request.headers.get("Origin"))
            return await self._hello(conn, session, msg)
        if session is None:
            raise OutOfOrder(f"{msg.type} before hello; start every connection with a Hello message")
        if getattr(msg, "session", session.id) != session.id:
            named = getattr(msg, "session", "")
            raise UnknownSession(f"unknown session {named!r:.80}; use the id from Welcome")
        if isinstance(msg, p.KeyChunk):
            await self._key_chunk(conn, session, msg)
        elif isinstance(msg, p.Generate):
            self._generate(conn, session, msg)
        elif isinstance(msg, p.OracleReply):
            self._oracle_reply(session, msg)
        elif isinstance(msg, p.Cancel):
            if msg.request == session.request and self.line.leave(session) is not None:
                session.request = ""  # it was waiting in line: it ends without having run
                await conn.send(p.encode(p.Done(msg.request, "cancelled")))
                self._tell_places()
            elif msg.request == session.request:
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
        conn.protocol.max_message_size = self.limits.max_message_bytes  # past Hello: ciphertext frames
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
        chunk = b"".join(msg.blobs)
        if session.key_bytes + len(chunk) > self.limits.max_key_bytes:
            session.key_chunks.clear()
            raise LimitExceeded(f"public context exceeds {self.limits.max_key_bytes:,} bytes")
        pending = sum(other.key_bytes for other in self.sessions.values())
        if pending + len(chunk) > self.limits.max_pending_key_bytes:
            session.key_chunks.clear()
            raise LimitExceeded(
                f"the worker is receiving {pending / 2**20:.0f} MB of other sessions' keys; reconnect and "
                "upload again in a minute"
            )
        session.key_total = msg.total
        session.key_chunks.append(chunk)
        if len(session.key_chunks) < msg.total:
            return
        data = b"".join(session.key_chunks)
        session.key_chunks.clear()
        params = preset(session.preset)  # the keys must be for the preset the Hello announced
        await asyncio.to_thread(self.model.load_keys, session.id, data, params)  # a typed error if not
        session.keys_loaded = True
        await conn.send(p.encode(p.KeysAccepted(session.id, len(data))))

    def _generate(self, conn: ServerConnection, session: Session, msg: p.Generate) -> None:
        if not session.keys_loaded:
            raise OutOfOrder("generate before the keys were uploaded; send the KeyChunk messages first")
        prefixes = {pid: len(prefix.ids) for pid, (prefix, _) in self.model.prefixes.items()}
        check_generate(msg, self.model.context_window, prefixes)
        if session.request:
            raise OutOfOrder(
                f"this session's request {session.request!r} is still running or waiting; wait for its Done "
                "or Cancel it"
            )
        if session.compute_seconds >= self.limits.session_compute_seconds:
            raise budget_spent(self.limits)
        running = self.busy
        if running is None:
            self._start(conn, session, msg, None)
        elif running.reading and msg.max_new_tokens > 0:
            running.preempted = running.request  # a read-ahead only saves its chat time later
            self._stop(running)
            self._start(conn, session, msg, running.job)
        elif msg.max_new_tokens == 0:
            raise WorkerBusy("the worker is generating another reply; the read-ahead is not needed now")
        elif self.line.full:
            waiting = len(self.line)
            raise WorkerBusy(f"{waiting} replies are waiting for the worker already; retry in a few minutes")
        else:
            session.request = msg.request
            self.line.join(session, msg)
            self._tell_places()

    def _start(
        self, conn: ServerConnection, session: Session, msg: p.Generate, after: asyncio.Task[None] | None
    ) -> None:
        self.busy = session
        session.request = msg.request
        session.reading = msg.max_new_tokens == 0
        session.cancelled = threading.Event()
        session.job = asyncio.create_task(self._run(conn, session, msg, after))

    def _next(self) -> None:
        """The slot is free: start the first reply in line."""
        waiting = self.line.next()
        if waiting is not None:
            self._start(waiting.session.connection, waiting.session, waiting.request, None)
            self._tell_places()

    def _tell_places(self) -> None:
        """Every waiting reply hears its place in line."""
        for waiting, place in self.line.places():
            stage = f"{p.QUEUE_STAGE}: you are {ordinal(place)} in line for the worker"
            message = p.Progress(waiting.request.request, stage, place, len(self.line))
            asyncio.ensure_future(self._send_quietly(waiting.session.connection, message))

    def _oracle_reply(self, session: Session, msg: p.OracleReply) -> None:
        due = session.calls.pop(msg.call, None) if msg.request == session.request else None
        if due is None and msg.request and msg.request == session.preempted:
            return  # an answer to a read-ahead that gave way to another reply: not needed
        if due is None:
            named = f"call {msg.call} of request {msg.request!r:.80}"
            raise OutOfOrder(f"oracle reply for {named}, which is not open")
        future, count = due
        if future.done():
            return
        if len(msg.blobs) != count:
            wrong = InputError(
                f"the oracle reply to call {msg.call} carries {len(msg.blobs)} ciphertexts; the call asked "
                f"for {count}, so the reply is stopped"
            )
            future.set_exception(wrong)
            raise wrong
        future.set_result(msg.blobs)

    @staticmethod
    def _stop(session: Session) -> None:
        """End the session's job at its next check; an oracle call it waits on is abandoned."""
        session.cancelled.set()
        for future, _ in session.calls.values():
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

        started = time.monotonic()
        job = job_context(session, msg, loop, self.limits, partial(self._ask, conn, session), started)
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
            session.compute_seconds += time.monotonic() - started
            session.request = ""
            session.job = None
            if self.busy is session:
                self.busy = None
                self._next()
        if session.unresponsive:  # it lost its slot; it does not keep its session either
            await conn.close(LimitExceeded.code, "the key holder stopped answering")

    async def _ask(self, conn: ServerConnection, session: Session, call: OracleCall) -> list[bytes]:
        number = session.next_call
        session.next_call += 1
        if session.cancelled.is_set():  # a Cancel handled after oracle() checked, before this call existed
            raise JobCancelled()
        future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        session.calls[number] = (future, len(call.blobs) if call.fn in REFRESHES else len(call.pieces))
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
