"""The key holder's client: connect to a worker, upload public keys, stream a reply, answer the oracle.

Synchronous on purpose (websockets' sync client): the UI and the command line consume replies as
plain generators, and while the key holder answers an oracle call the worker is waiting for it anyway.
The secret key stays in `KeyHolderMath` on this side; only `public_context_bytes` output and
ciphertexts go over the wire.

    client = KeyHolderClient(url, math, expect)   # connects, checks the Welcome, uploads keys (chunked)
    for event in client.generate(new_ids, start, prefix, request, should_stop):
        ...                                       # TokenEvent / Progress, until the reply ends (DoneEvent)
    client.close()

The key holder refuses a worker whose model, vocabulary size, order or preset differ from its own
(`Expected`): a worker with another vocabulary order would otherwise be decoded with the wrong
permutation, silently. Closing the generator early (the user pressed Stop, or the key holder saw EOS),
or `should_stop` turning true while the worker computes, sends Cancel and waits for the worker's Done,
so the connection is ready for the next reply. `reconnect` opens a new connection to the same worker
and uploads the same public keys again: the conversation lives on this side and survives it. An oracle
request is checked as it is parsed (`oracle_call`): a function off the allow-list (model/oracle.py) stops
the reply with `UnknownOracleFunction` before anything is decrypted.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from app import protocol as p
from app.chat.replies import Telemetry
from app.worker.admission import redact
from app.worker.tls import client_tls, unreachable
from core.errors import (
    ChatError,
    ProtocolError,
    UnknownSession,
    WorkerError,
    WorkerMismatch,
    WorkerUnavailable,
)
from core.progress import OnProgress, Progress
from crypto.vector_wire import split_vector_bytes
from model.encrypted import OracleCall, PieceSpec
from model.oracle import check_function
from model.repetition import RepetitionGuard
from model.sampler import SamplerConfig

POLL_SECONDS = 0.2  # while waiting for the worker, how often Stop is looked at


class KeyHolderMath(Protocol):
    """The key holder's cryptography and plaintext functions (model/key_holder.py, or a test double)."""

    preset: str

    def public_context(self, galois_steps: list[int], conjugate: bool) -> bytes: ...

    def encrypt_prompt(self, prompt_ids: list[int]) -> list[bytes]: ...

    def answer(self, call: OracleCall) -> list[bytes]: ...

    def read_token(self, blobs: list[bytes]) -> int: ...

    def begin_reply(self, temperature: float, tsp: bool, guard: RepetitionGuard | None = None) -> None:
        """Take the reply's settings (the temperature of the logits' softmax, the order to undo, the
        repetition guard over the conversation's tokens)."""
        ...


@dataclass(frozen=True)
class Expected:
    """What the key holder serves: a worker must match every field (None: not checked)."""

    model: str | None = None
    vocab: int | None = None
    ordering: str | None = None  # fingerprint of the vocabulary order (model.tsp.ordering.Ordering.order_id)


@dataclass(frozen=True)
class ReplyRequest:
    """What the key holder asks the worker for (the worker-visible part of the settings)."""

    max_new_tokens: int
    seed: int
    tsp: bool = True
    pp: bool = True
    amp_rounds: int = 3
    temperature: float = 1.0  # applied by the key holder in the logits' softmax
    repetition_penalty: float = 1.0  # applied by the key holder before that softmax; never sent
    pad: bool = False  # compute to max_new_tokens after EOS, so the worker cannot see the reply's length
    first_index: int = 0  # uniforms already used: a reply resumed after a lost worker continues its stream

    def sampler(self) -> dict[str, Any]:
        config = SamplerConfig(self.tsp, self.pp, self.amp_rounds, temperature=self.temperature)
        return config.to_dict()


@dataclass(frozen=True)
class TokenEvent:
    index: int
    token_id: int
    worker: dict[str, Any]  # the worker's telemetry for this token
    local: Telemetry
    seconds: float  # wall time since the previous token
    last_frame_hex: str  # the first bytes of the token's first SEAL ciphertext, for "what the worker saw"


@dataclass(frozen=True)
class DoneEvent:
    reason: str


Event = TokenEvent | Progress | DoneEvent  # Progress: where the worker is (its Progress message)


def printable(text: str, limit: int = p.MAX_ERROR_MESSAGE) -> str:
    """A worker's string made safe to print: control characters (terminal escapes, newlines) become
    spaces and the length is capped. The page escapes Markdown on top (app.chat.ui_view.plain)."""
    clean = "".join(c if c.isprintable() else " " for c in text[:limit])
    return clean + ("…" if len(text) > limit else "")


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok and value >= 0 else None


def worker_telemetry(raw: dict[str, Any]) -> dict[str, Any]:
    """The worker's per-token report reduced to what this side uses, every name and number checked
    (a worker is not trusted with what the page shows): seconds by stage, oracle calls by function,
    counts of bytes, refreshes, rotations and processes. Anything else is dropped."""
    out: dict[str, Any] = {}
    for name in ("seconds", "oracle_calls"):
        table = raw.get(name)
        if isinstance(table, dict):
            pairs = [(printable(str(k), 40), _number(v)) for k, v in list(table.items())[:32]]
            out[name] = {k: (v if name == "seconds" else int(v)) for k, v in pairs if v is not None}
    for name in ("bytes_to_key_holder", "bytes_from_key_holder", "refreshes", "rotations", "processes"):
        value = _number(raw.get(name))
        if value is not None and value < 2**53:
            out[name] = int(value)
    return out


def oracle_call(message: p.OracleRequest) -> OracleCall:
    """The call an oracle request asks for, checked before the key holder evaluates anything.

    Raises:
        UnknownOracleFunction: the function is not on the allow-list (model/oracle.py).
        ProtocolError: a part is not a [position, offset] pair.
        InputError: a piece is not [position, start, stop, period, copies, level].
    """
    fn = check_function(message.fn)
    if any(len(part) != 2 for part in message.parts):
        raise ProtocolError("an oracle request's parts must be [position, offset] pairs")
    parts = [(part[0], part[1]) for part in message.parts]
    pieces = [PieceSpec.from_list(piece) for piece in message.pieces]
    return OracleCall(fn, message.layer, parts, message.blobs, pieces)


def _ciphertext_preview(blobs: list[bytes]) -> str:
    """The first 32 bytes of the token's first SEAL ciphertext (past our framing and JSON header)."""
    try:
        chunks = split_vector_bytes(blobs[0])
    except (IndexError, ChatError):
        return ""
    return chunks[1][:32].hex() if len(chunks) > 1 else ""


class KeyHolderClient:
    """One session with a worker."""

    def __init__(
        self,
        url: str,
        math: KeyHolderMath,
        expect: Expected = Expected(),
        open_timeout: float = 10.0,
        on_progress: OnProgress | None = None,
    ) -> None:
        self.math = math
        self.url = url
        self.expect = expect
        self.open_timeout = open_timeout
        self.closed = False
        self._open(on_progress)

    def _open(self, on_progress: OnProgress | None) -> None:
        tls = client_tls(self.url)  # None for ws://
        try:
            self.conn: ClientConnection = connect(
                self.url,
                ssl=tls,
                max_size=p.MAX_MESSAGE_BYTES,
                compression=None,
                open_timeout=self.open_timeout,
            )
        except (OSError, TimeoutError, InvalidURI, InvalidHandshake, ConnectionClosed) as exc:
            raise WorkerUnavailable(unreachable(self.url, exc)) from exc
        self.closed = False
        try:
            self.welcome = self._hello()
            self._check_welcome(self.welcome)
            self.key_bytes = self._upload_keys(on_progress)
        except BaseException:
            self.close()
            raise

    def reconnect(self, on_progress: OnProgress | None = None) -> None:
        """A new connection to the same worker (a restarted one): Hello, the checks, the same keys again.

        Raises:
            WorkerUnavailable, WorkerMismatch, WorkerError: as when connecting first.
        """
        self.close()
        self._open(on_progress)

    def _check_welcome(self, welcome: p.Welcome) -> None:
        differ = []
        for name in ("model", "vocab", "ordering"):
            mine = getattr(self.expect, name)
            if mine is not None and mine != getattr(welcome, name):
                differ.append(f"{name}: the worker has {getattr(welcome, name)!r}, this key holder {mine!r}")
        if welcome.preset != self.math.preset:
            differ.append(f"preset: the worker has {welcome.preset!r}, this key holder {self.math.preset!r}")
        count = len(welcome.prefixes)
        if len(welcome.prefix_tokens) != count or len(welcome.blobs) != 2 * count:
            differ.append("public prefixes: the Welcome does not carry two cache blobs per prefix")
        if differ:
            raise WorkerMismatch(
                f"the worker at {redact(self.url)} does not match this key holder ({'; '.join(differ)}); "
                "point --worker-url at a worker started for the same model and order"
            )

    def prefix(self, prefix_id: str) -> tuple[list[int], list[bytes]] | None:
        """A public prefix the worker offered: its tokens and its two cache blobs."""
        w = self.welcome
        if prefix_id not in w.prefixes:
            return None
        i = w.prefixes.index(prefix_id)
        return list(w.prefix_tokens[i]), list(w.blobs[2 * i : 2 * i + 2])

    # --- plumbing -----------------------------------------------------------------------------

    def _send(self, message: p.Message) -> int:
        frame = p.encode(message)
        try:
            self.conn.send(frame)
        except ConnectionClosed as exc:
            where = redact(self.url)
            raise WorkerUnavailable(f"the worker at {where} closed the connection ({exc})") from exc
        return len(frame)

    def _recv(self, timeout: float | None = None) -> tuple[p.Message, int]:
        try:
            frame = self.conn.recv(timeout=timeout)
        except ConnectionClosed as exc:
            raise WorkerUnavailable(f"the worker at {redact(self.url)} went away ({exc}); retry") from exc
        if isinstance(frame, str):
            raise ProtocolError("the worker sent a text frame")
        message = p.decode(frame)
        if isinstance(message, p.Error):
            if message.code == UnknownSession.code:  # the worker lost or expired this session: reconnect
                self.close()
                raise WorkerUnavailable(
                    f"the worker at {redact(self.url)} no longer knows this session "
                    f"({printable(message.message)})"
                )
            raise WorkerError(message.code, printable(message.message))
        return message, len(frame)

    def _expect(self, kind: type[Any], timeout: float = 600.0) -> Any:
        message, _ = self._recv(timeout)
        if not isinstance(message, kind):
            raise ProtocolError(f"expected {kind.type}, the worker sent {message.type}")
        return message

    def _hello(self) -> p.Welcome:
        self._send(p.Hello(version=p.PROTOCOL_VERSION, preset=self.math.preset, client="he-chat key holder"))
        welcome: p.Welcome = self._expect(p.Welcome, timeout=60)
        return welcome

    def _upload_keys(self, on_progress: OnProgress | None) -> int:
        data = self.math.public_context(self.welcome.galois_steps, self.welcome.conjugate)
        size = self.welcome.key_chunk_bytes
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for index, chunk in enumerate(chunks):
            self._send(p.KeyChunk(self.welcome.session, index, len(chunks), [chunk]))
            if on_progress:
                on_progress(Progress("uploading keys", index + 1, len(chunks)))
        accepted: p.KeysAccepted = self._expect(p.KeysAccepted)
        return accepted.bytes

    # --- replies ------------------------------------------------------------------------------

    def generate(
        self,
        new_ids: list[int],
        start: int,
        prefix: str,
        request: ReplyRequest,
        should_stop: Callable[[], bool] | None = None,
        guard: RepetitionGuard | None = None,
    ) -> Generator[Event, None, None]:
        """Stream one reply from `new_ids`, the positions after the `start` the key holder's cache holds.

        `guard` is the reply's repetition guard (the key holder applies it to the logits it decrypts).
        Closing the iterator early, or `should_stop()` turning true, cancels it on the worker.
        """
        if self.closed:
            where = redact(self.url)
            raise WorkerUnavailable(f"the connection to the worker at {where} is closed; reconnect")
        self.math.begin_reply(request.temperature, request.tsp, guard)
        request_id = uuid.uuid4().hex
        blobs = self.math.encrypt_prompt(new_ids)
        local = Telemetry()
        local.bytes_up += self._send(
            p.Generate(
                session=self.welcome.session,
                request=request_id,
                start=start,
                prefix=prefix,
                positions=len(new_ids),
                max_new_tokens=request.max_new_tokens,
                seed=request.seed,
                first_index=request.first_index,
                sampler=request.sampler(),
                blobs=blobs,
            )
        )
        finished = False
        last = time.perf_counter()
        try:
            while True:
                if should_stop is not None and should_stop():
                    return  # finally: Cancel, then drain until the worker's Done
                try:
                    message, size = self._recv(timeout=POLL_SECONDS)
                except TimeoutError:
                    continue
                local.bytes_down += size
                if isinstance(message, p.OracleRequest):
                    start_answer = time.perf_counter()
                    answer = self.math.answer(oracle_call(message))
                    local.oracle_seconds += time.perf_counter() - start_answer
                    sent = self._send(p.OracleReply(self.welcome.session, request_id, message.call, answer))
                    local.count(message.fn, sent, size)
                elif isinstance(message, p.Progress):
                    yield Progress(printable(message.stage, 120), message.done, message.total)
                elif isinstance(message, p.Token):
                    now = time.perf_counter()
                    token = self.math.read_token(message.blobs)
                    preview = _ciphertext_preview(message.blobs)
                    telemetry = worker_telemetry(message.telemetry)
                    yield TokenEvent(message.index, token, telemetry, local, now - last, preview)
                    local, last = Telemetry(), now
                elif isinstance(message, p.Done):
                    finished = True
                    yield DoneEvent(printable(message.reason, 40))
                    return
        except WorkerError:
            finished = True  # the worker rejected or aborted the request: nothing left to cancel
            raise
        finally:
            if not finished:
                self._cancel(request_id)

    def _cancel(self, request_id: str) -> None:
        """Tell the worker to stop and drain until its Done, answering nothing further."""
        try:
            self._send(p.Cancel(self.welcome.session, request_id))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                message, _ = self._recv(timeout=deadline - time.monotonic())
                if isinstance(message, p.Done):
                    return
        except (ChatError, TimeoutError):
            self.close()  # the connection is in an unknown state; a new client reconnects

    def close(self) -> None:
        self.closed = True
        self.conn.close()
