"""The wire protocol between the key holder and the model worker: every message, its fields and limits.

One binary websocket frame per message (STYLE.md rule 9):

    uint32 big-endian   length of the JSON header
    header              UTF-8 JSON: {"v": PROTOCOL_VERSION, "type": ..., <fields>, "blobs": [n0, n1, ...]}
    payload             the blobs (serialised ciphertexts, key chunks) back to back, raw bytes, no base64

A message's `blobs` field carries the payload; every other field lives in the header. `decode` checks
the version, the type tag, every field's type and every limit, and raises a `ProtocolError` subclass
whose `code` is the close / error code (core/errors.py) — never a crash.

Conversation (DESIGN.md section 4):

    key holder                                   worker
    Hello(version, preset)              ->
                                        <-       Welcome(session, model, order, preset, galois_steps,
                                                         limits, readiness, public prefixes + their caches)
    KeyChunk(session, i, n, blob) x n   ->
                                        <-       KeysAccepted(session, bytes)
    Generate(session, request, start,   ->       (start: positions the key holder's cache already holds;
             prefix, positions, prompt)           the prompt is only the new positions)
                                        <-       OracleRequest(call, fn, layer, parts, pieces, blobs)
    OracleReply(call, blobs)            ->                                            (many per token)
                                        <-       Progress(request, stage, done, total)
                                        <-       Token(request, index, blobs = parts of I', telemetry)
    Cancel(request)                     ->       (the key holder saw EOS, or the user pressed Stop)
                                        <-       Done(request, reason)
    any message                         <-       Error(code, message, request)

The worker stays stateless between replies apart from the session's keys: the key holder keeps the
conversation's attention cache and says where the new positions start. A Generate with max_new_tokens 0
is a read-ahead: the worker runs the positions through the layers (the oracle calls fill the key
holder's cache), sends no Token and ends with Done("length").
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias, get_type_hints

from core.errors import (
    CODE_BAD_CIPHERTEXT,
    CODE_BAD_REQUEST,
    CODE_INTERNAL,
    CODE_SECRET_KEY,
    ChatError,
    CryptoError,
    InputError,
    JobFailed,
    MessageTooLarge,
    ParamsError,
    ProtocolError,
    SecretKeyError,
    UnknownMessageType,
    VersionMismatch,
)

PROTOCOL_VERSION = 3  # 3: the reply queue; 2: continued conversations, public prefixes, share layouts
MAX_HEADER_BYTES = 64 * 1024  # JSON headers are small; anything bigger is garbage or an attack
MAX_STRING = 4096  # characters in one string field
MAX_ERROR_MESSAGE = 1000  # an Error's message is cut to this (it may quote the bad value)
QUEUE_STAGE = "queue"  # Progress(stage="queue", done=position, total=line length): a reply waits its turn
MAX_BLOBS = 4096  # a 49,152-slot vector at N=8192 is 12 ciphertexts; a prompt a few dozen
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # websockets max_size on both ends; keys are chunked below this
KEY_CHUNK_BYTES = 8 * 1024 * 1024  # public-key upload chunk
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class Hello:
    """First message of a connection. The worker rejects another protocol version."""

    type: ClassVar[str] = "hello"
    version: int
    preset: str  # CKKS parameter preset the key holder will use (crypto.params)
    client: str = ""  # free text for logs, e.g. "he-chat 0.1 ui"


@dataclass(frozen=True)
class Welcome:
    """The worker's identity and plan. The key holder refuses a worker whose model, vocabulary, order or
    preset differ from its own. `blobs` holds the keys and values of each public prefix (two blobs each,
    float32, layers stacked), computed by the worker in the clear."""

    type: ClassVar[str] = "welcome"
    session: str
    model: str  # model name, so the key holder can check it holds the same tokenizer
    vocab: int
    ordering: str  # fingerprint of the vocabulary order the worker baked in
    preset: str  # the CKKS preset of this session (the Hello's)
    context_window: int
    galois_steps: list[int]  # rotation steps the worker's plan needs keys for
    conjugate: bool  # whether the plan also needs the conjugation key
    max_message_bytes: int
    key_chunk_bytes: int
    ready: int  # percent of the weight caches warmed (100: no reply waits for the warm-up)
    prefixes: list[str]  # ids of the public prefixes (model.conversation.PublicPrefix.id)
    prefix_tokens: list[list[int]]  # their token ids
    blobs: list[bytes]


@dataclass(frozen=True)
class KeyChunk:
    """One chunk of the public context (crypto.keys.public_context_bytes), in order."""

    type: ClassVar[str] = "key_chunk"
    session: str
    index: int
    total: int
    blobs: list[bytes]


@dataclass(frozen=True)
class KeysAccepted:
    type: ClassVar[str] = "keys_accepted"
    session: str
    bytes: int  # total public-context bytes received


@dataclass(frozen=True)
class Generate:
    """Start a reply: the encrypted input embeddings of the positions not yet in the key holder's cache."""

    type: ClassVar[str] = "generate"
    session: str
    request: str
    start: int  # positions the key holder's cache already holds (a continued chat, or a public prefix)
    prefix: str  # id of the public prefix the conversation began with ("" if none)
    positions: int  # new positions, one ciphertext each in `blobs`
    max_new_tokens: int
    seed: int  # seeds the worker's plaintext uniforms r
    first_index: int  # uniforms to skip: a reply resumed on a new connection continues its stream
    sampler: dict[str, Any]  # model.sampler.SamplerConfig as a dict (tsp, pp, amp_rounds, ...)
    blobs: list[bytes]


@dataclass(frozen=True)
class OracleRequest:
    """The worker asks the key holder to refresh ciphertexts or evaluate an allow-listed function.

    `parts[i]` = [position, offset] says where blob i goes in the function's input (shares at the same
    place add up); `pieces[j]` = [position, start, stop, period, copies, level] is the j-th ciphertext
    wanted back (model.encrypted.PieceSpec). A refresh returns one blob per input blob."""

    type: ClassVar[str] = "oracle_request"
    request: str
    call: int  # sequence number within the request; the reply echoes it
    fn: str  # one of model.oracle.ORACLE_FUNCTIONS (the key holder's client refuses anything else)
    layer: int  # decoder layer for per-layer functions (attention's KV cache), else -1
    parts: list[list[int]]
    pieces: list[list[int]]
    blobs: list[bytes]


@dataclass(frozen=True)
class OracleReply:
    type: ClassVar[str] = "oracle_reply"
    session: str
    request: str
    call: int
    blobs: list[bytes]


@dataclass(frozen=True)
class Progress:
    type: ClassVar[str] = "progress"
    request: str
    stage: str  # e.g. "layer 12/30", "lm_head", "sampler", "refresh"
    done: int
    total: int


@dataclass(frozen=True)
class Token:
    """One generated token: the encrypted approximate one-hot vector I' and what it cost."""

    type: ClassVar[str] = "token"
    request: str
    index: int
    telemetry: dict[str, Any]  # seconds by stage, oracle calls, bytes each way, levels used
    blobs: list[bytes]


@dataclass(frozen=True)
class Cancel:
    type: ClassVar[str] = "cancel"
    session: str
    request: str


@dataclass(frozen=True)
class Done:
    type: ClassVar[str] = "done"
    request: str
    reason: str  # "length", "cancelled", "context"


@dataclass(frozen=True)
class Error:
    type: ClassVar[str] = "error"
    code: int  # 4000-4999, see core/errors.py
    message: str  # names the problem and the fix
    request: str = ""


Message: TypeAlias = (
    Hello
    | Welcome
    | KeyChunk
    | KeysAccepted
    | Generate
    | OracleRequest
    | OracleReply
    | Progress
    | Token
    | Cancel
    | Done
    | Error
)
MESSAGE_TYPES: dict[str, type[Any]] = {
    cls.type: cls
    for cls in (
        Hello,
        Welcome,
        KeyChunk,
        KeysAccepted,
        Generate,
        OracleRequest,
        OracleReply,
        Progress,
        Token,
        Cancel,
        Done,
        Error,
    )
}
_HINTS = {name: get_type_hints(cls) for name, cls in MESSAGE_TYPES.items()}


def encode(message: Message) -> bytes:
    """Message -> one binary frame."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": message.type}
    blobs: list[bytes] = []
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if f.name == "blobs":
            blobs = list(value)
        else:
            header[f.name] = value
    header["blobs"] = [len(b) for b in blobs]
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_LENGTH.pack(len(head)), head, *blobs])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _check_field(kind: str, name: str, value: Any, hint: Any) -> None:
    ok: bool
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    elif hint is str:
        ok = isinstance(value, str) and len(value) <= MAX_STRING
    elif hint == list[int]:
        ok = isinstance(value, list) and all(_is_int(v) for v in value)
    elif hint == list[list[int]]:
        ok = isinstance(value, list) and all(
            isinstance(v, list) and len(v) <= MAX_STRING and all(_is_int(i) for i in v) for v in value
        )
    elif hint == list[str]:
        ok = isinstance(value, list) and all(isinstance(v, str) and len(v) <= MAX_STRING for v in value)
    elif hint == dict[str, Any]:
        ok = isinstance(value, dict)
    else:  # pragma: no cover - a new field type must be added here
        raise TypeError(f"unsupported field type {hint!r}")
    if not ok:
        raise ProtocolError(f"{kind}.{name} must be {getattr(hint, '__name__', hint)}, got {value!r:.80}")


def decode(frame: bytes | str, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """One frame -> a validated message.

    Raises:
        MessageTooLarge, ProtocolError, UnknownMessageType, VersionMismatch: with a readable message.
    """
    if isinstance(frame, str):
        raise ProtocolError("text frames are not part of the protocol; send one binary frame per message")
    if len(frame) > max_bytes:
        raise MessageTooLarge(f"message of {len(frame):,} bytes exceeds the limit of {max_bytes:,} bytes")
    if len(frame) < _LENGTH.size:
        raise ProtocolError("frame shorter than its 4-byte header length")
    (head_len,) = _LENGTH.unpack_from(frame)
    if head_len > MAX_HEADER_BYTES or _LENGTH.size + head_len > len(frame):
        raise ProtocolError(f"header length {head_len} does not fit the frame of {len(frame)} bytes")
    try:
        header = json.loads(frame[_LENGTH.size : _LENGTH.size + head_len])
    except RecursionError as exc:
        raise ProtocolError("header nests too deeply; fields are flat values and lists of lists") from exc
    except ValueError as exc:  # not UTF-8, not JSON, or an integer past Python's digit limit
        raise ProtocolError(f"header is not valid UTF-8 JSON: {str(exc):.200}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    if header.get("v") != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version {header.get('v')!r} is not supported; this side speaks version "
            f"{PROTOCOL_VERSION}. Update the key holder and the worker to the same release."
        )
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise UnknownMessageType(f"unknown message type {kind!r}; known: {', '.join(sorted(MESSAGE_TYPES))}")
    cls = MESSAGE_TYPES[kind]
    sizes = header.pop("blobs", [])
    if (
        not isinstance(sizes, list)
        or len(sizes) > MAX_BLOBS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes)
    ):
        raise ProtocolError(f"{kind}: 'blobs' must be a list of at most {MAX_BLOBS} byte counts")
    if _LENGTH.size + head_len + sum(sizes) != len(frame):
        raise ProtocolError(f"{kind}: the blob sizes in the header do not add up to the frame's payload")
    hints = _HINTS[kind]
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "blobs":
            continue
        if f.name not in header:
            if f.default is not dataclasses.MISSING:
                continue
            raise ProtocolError(f"{kind}: missing field {f.name!r}")
        _check_field(kind, f.name, header[f.name], hints[f.name])
        kwargs[f.name] = header[f.name]
    extra = set(header) - {f.name for f in dataclasses.fields(cls)} - {"v", "type"}
    if extra:
        raise ProtocolError(f"{kind}: unexpected field(s) {sorted(extra)}")
    if "blobs" in hints:
        offset = _LENGTH.size + head_len
        blobs = []
        for n in sizes:
            blobs.append(bytes(frame[offset : offset + n]))
            offset += n
        kwargs["blobs"] = blobs
    elif sizes:
        raise ProtocolError(f"{kind} carries no payload, but the header lists {len(sizes)} blob(s)")
    message: Message = cls(**kwargs)
    return message


def error_message(exc: BaseException, request: str = "") -> Error:
    """The `Error` message for an exception, with its code from core/errors.py's table (CODE_INTERNAL,
    4500, for anything unexpected)."""
    if isinstance(exc, ProtocolError | JobFailed):
        code = exc.code
    elif isinstance(exc, ParamsError):
        code = CODE_BAD_REQUEST
    elif isinstance(exc, SecretKeyError):
        code = CODE_SECRET_KEY
    elif isinstance(exc, CryptoError):
        code = CODE_BAD_CIPHERTEXT
    elif isinstance(exc, InputError | ChatError):
        code = CODE_BAD_REQUEST
    else:
        return Error(CODE_INTERNAL, f"internal worker error ({type(exc).__name__}); please retry", request)
    message = str(exc)
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 1] + "…"
    return Error(code=code, message=message, request=request[:MAX_STRING])
