"""What a generation job on the worker sees, and what the worker keeps of each session.

`JobContext` is all a reply's computation (`WorkerModel.run`, in a thread) may touch: the session's id,
the request, and two narrow channels to the key holder, `oracle` and `emit`. `job_context` builds them
over the event loop with the two rules that keep one client from holding the worker: an oracle call
unanswered within `WorkerLimits.oracle_timeout` ends the reply (and marks the session unresponsive, so
it is closed), and a session past its compute budget is stopped at its next call. `deadline` says how
long a connection may stay silent: a Hello within seconds, the keys within minutes, then the idle time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from app import protocol as p
from app.worker.admission import WorkerLimits
from core.errors import JobCancelled, LimitExceeded, ProtocolError, UnknownSession
from crypto.keys_wire import RotationPlan
from crypto.params import CKKSParams
from model.conversation import PublicPrefix
from model.encrypted import OracleCall


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

    def load_keys(self, session: str, data: bytes, params: CKKSParams) -> None:
        """Load a session's public context, which must be for `params` (the Hello's preset); blocks;
        raises a typed error for a bad context."""
        ...

    def drop_keys(self, session: str) -> None: ...

    def run(self, job: JobContext) -> str:
        """Generate; emit Token messages; return the finish reason ("length" or "context")."""
        ...


@dataclass
class Session:
    id: str
    preset: str
    connection: ServerConnection
    welcomed: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)  # the last valid message
    key_chunks: list[bytes] = field(default_factory=list)
    key_total: int = 0
    keys_loaded: bool = False
    job: asyncio.Task[None] | None = None
    request: str = ""  # the reply running or waiting in line ("" if none)
    cancelled: threading.Event = field(default_factory=threading.Event)
    reading: bool = False  # the job is a read-ahead (0 tokens): a reply of another session preempts it
    preempted: str = ""  # the last read-ahead that gave way (its late oracle answers are dropped)
    calls: dict[int, tuple[asyncio.Future[list[bytes]], int]] = field(default_factory=dict)  # + blobs due
    next_call: int = 0
    compute_seconds: float = 0.0  # seconds of replies so far (the budget is WorkerLimits')
    unresponsive: bool = False  # it let an oracle call time out: it is closed once its reply has ended

    @property
    def key_bytes(self) -> int:
        return sum(len(c) for c in self.key_chunks)


def deadline(
    session: Session | None, opened: float, limits: WorkerLimits
) -> tuple[float | None, ProtocolError]:
    """Seconds until a connection (opened at `opened`, holding `session` once it said Hello) must send its
    next message, and the error it gets if it does not (None: no deadline while a reply runs or waits)."""
    now = time.monotonic()
    if session is None:
        late = LimitExceeded(f"no Hello within {limits.hello_seconds:g} s of connecting; send it first")
        return max(opened + limits.hello_seconds - now, 0.0), late
    if session.request:  # a reply runs or waits: the oracle deadline watches the key holder
        return None, UnknownSession("")
    idle_for = f"{limits.idle_seconds:.0f} s"
    expired = UnknownSession(f"session expired after {idle_for} without a valid message; reconnect")
    idle = session.last_seen + limits.idle_seconds - now
    if session.keys_loaded:
        return max(idle, 0.0), expired
    upload = session.welcomed + limits.key_upload_seconds - now
    if upload < idle:
        late = LimitExceeded(
            f"the keys were not uploaded within {limits.key_upload_seconds:.0f} s of the Hello; "
            "reconnect and send every KeyChunk without pausing"
        )
        return max(upload, 0.0), late
    return max(idle, 0.0), expired


def budget_spent(limits: WorkerLimits) -> LimitExceeded:
    """The refusal of a session that has used its compute budget."""
    total = limits.session_compute_seconds
    return LimitExceeded(f"this session has used its {total:.0f} s of replies; open a new session")


def job_context(
    session: Session,
    msg: p.Generate,
    loop: asyncio.AbstractEventLoop,
    limits: WorkerLimits,
    ask: Callable[[OracleCall], Coroutine[Any, Any, list[bytes]]],
    started: float,
) -> JobContext:
    """The channels of one reply's job, run from its thread: `ask` sends an oracle request on the loop
    and waits for the answer; `emit` sends a Progress or Token."""
    conn = session.connection
    budget = limits.session_compute_seconds - session.compute_seconds

    def spend() -> None:
        if time.monotonic() - started > budget:
            raise budget_spent(limits)

    def emit(message: p.Message) -> None:
        spend()
        asyncio.run_coroutine_threadsafe(conn.send(p.encode(message)), loop).result()

    def oracle(call: OracleCall) -> list[bytes]:
        if session.cancelled.is_set():
            raise JobCancelled()
        spend()
        future = asyncio.run_coroutine_threadsafe(ask(call), loop)
        try:
            return future.result(timeout=limits.oracle_timeout)
        except (concurrent.futures.CancelledError, ConnectionClosed) as exc:
            raise JobCancelled() from exc  # Cancel, or the key holder vanished
        except TimeoutError as exc:
            future.cancel()
            session.unresponsive = True
            limit = limits.oracle_timeout
            message = (
                f"the key holder did not answer a {call.fn} call within {limit:g} s; the reply is "
                "stopped and the worker goes on with the next in line"
            )
            raise LimitExceeded(message) from exc

    return JobContext(session.id, msg, oracle, emit, session.cancelled)
