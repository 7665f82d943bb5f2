"""Who may use a worker, and how much: its limits, the access check and the line of waiting replies.

A worker is reached over the network by clients it cannot trust, some of them a web page in the
user's own browser (any page can open `ws://127.0.0.1:<port>`). So every connection must

- name the worker's access token in its URL (`ws://host:port/?token=...`): the token is made at start-up
  (`new_token`) and handed to the page by the process that starts the worker, printed by a standalone
  worker, or given by its operator (`--token`, HE_CHAT_WORKER_TOKEN);
- come without an Origin header (the key holder is a program, not a page) or from an allowed origin;
- fit the connection cap, say Hello within seconds and finish its key upload within minutes.

Replies take turns: one runs (it uses every core), the others wait in a first-come line and are told
their place (`Progress` with stage `protocol.QUEUE_STAGE`); read-aheads never wait in it.
Each session also has a compute budget (seconds of replies), so one client cannot hold the worker
for ever by asking again and again. And a reply is asked for within the model's limits: `check_generate`
range-checks every field of a Generate (positions, the context window, the public prefix, the sampler's
settings) before any work.
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

from app import protocol as p
from core.errors import AccessDenied, InputError
from model.generate import MAX_NEW_TOKENS_LIMIT
from model.sampler import SamplerConfig

TOKEN_PARAMETER = "token"
S = TypeVar("S")


@dataclass(frozen=True)
class WorkerLimits:
    """Resource limits; a client that exceeds one gets a typed refusal, the others carry on."""

    max_message_bytes: int = p.MAX_MESSAGE_BYTES  # one frame, once a session has said Hello
    max_hello_bytes: int = 64 * 1024  # one frame before Hello (a Hello is a few hundred bytes)
    max_connections: int = 64  # open websockets, with or without a session
    max_sessions: int = 16  # connections that said Hello
    max_key_bytes: int = 512 * 1024 * 1024  # public context per session (a full N=16384 key set is ~330 MB)
    max_pending_key_bytes: int = 1024**3  # unfinished key uploads of all sessions together
    max_total_bytes: int = 20 * 1024**3  # this process's RSS above which new sessions are refused
    max_queue: int = 16  # replies waiting for the one running
    hello_seconds: float = 10.0  # a connection must say Hello within this
    key_upload_seconds: float = 600.0  # ... and have its keys accepted within this of its Hello
    idle_seconds: float = 900.0  # a session without a valid message (and no reply) for this long expires
    oracle_timeout: float = 60.0  # a key holder that does not answer an oracle call in time loses its slot
    session_compute_seconds: float = 4 * 3600.0  # seconds of replies one session may use


def new_token() -> str:
    """A fresh access token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def with_token(url: str, token: str | None) -> str:
    """`url` with the access token in its query (`ws://host:port/?token=...`)."""
    if not token:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", f"{TOKEN_PARAMETER}={token}", ""))


def redact(url: str | None) -> str:
    """A worker URL fit to show or log: the access token is replaced by `***`."""
    if not url:
        return ""
    parts = urlsplit(url)
    if TOKEN_PARAMETER not in parse_qs(parts.query):
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, f"{TOKEN_PARAMETER}=***", ""))


@dataclass(frozen=True)
class WorkerAccess:
    """Who may connect: the access token (None: anyone who reaches the port, for tests and the operator
    who wants it) and the browser origins allowed beside clients that send no Origin header."""

    token: str | None
    origins: tuple[str, ...] = ()

    def check(self, path: str, origin: str | None) -> None:
        """Refuse a connection without the token or from a web page that is not allowed.

        Raises:
            AccessDenied: the message says what was missing and how to get it right.
        """
        if origin is not None and origin not in self.origins:
            allowed = ", ".join(self.origins) or "none"
            raise AccessDenied(
                f"connections from the web page at {origin[:100]!r} are not allowed (allowed origins: "
                f"{allowed}); the chat page connects from its server, not from the browser"
            )
        if self.token is None:
            return
        given = parse_qs(urlsplit(path).query).get(TOKEN_PARAMETER, [""])[0]
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            what = "wrong" if given else "missing"
            raise AccessDenied(
                f"the worker's access token is {what}; connect with the URL the worker printed at start-up "
                "(ws://host:port/?token=...), or ask its operator for the token"
            )


@dataclass
class Waiting(Generic[S]):
    session: S
    request: p.Generate


class ReplyLine(Generic[S]):
    """Replies waiting for the running one, first come first served."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._line: deque[Waiting[S]] = deque()

    def __len__(self) -> int:
        return len(self._line)

    def join(self, session: S, request: p.Generate) -> None:
        """Add a reply at the end (the caller checks `full` first)."""
        self._line.append(Waiting(session, request))

    @property
    def full(self) -> bool:
        return len(self._line) >= self.capacity

    def next(self) -> Waiting[S] | None:
        return self._line.popleft() if self._line else None

    def leave(self, session: S) -> Waiting[S] | None:
        """Take the session's waiting reply out of the line (it cancelled, or it went away)."""
        for waiting in self._line:
            if waiting.session is session:
                self._line.remove(waiting)
                return waiting
        return None

    def places(self) -> list[tuple[Waiting[S], int]]:
        """Each waiting reply with its place (1 = next)."""
        return [(waiting, place) for place, waiting in enumerate(self._line, start=1)]


def ordinal(place: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 23 -> "23rd"."""
    suffix = "th" if 10 <= place % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(place % 10, "th")
    return f"{place}{suffix}"


def check_generate(msg: p.Generate, window: int, prefixes: dict[str, int]) -> None:
    """Every field of a Generate in range, before any work (InputError, 4009, names the field).

    Args:
        window: the model's context window.
        prefixes: the worker's public prefixes, id -> positions.
    """
    if not 1 <= msg.positions <= window or msg.positions != len(msg.blobs):
        raise InputError(
            f"positions must be 1..{window} and match the {len(msg.blobs)} ciphertexts sent, "
            f"got {msg.positions}"
        )
    if msg.start < 0 or msg.start + msg.positions + 1 > window:
        raise InputError(
            f"start {msg.start} + {msg.positions} new positions leave no room for a reply in the context "
            f"window of {window}; clear the conversation"
        )
    if msg.prefix:
        if msg.prefix not in prefixes:
            raise InputError(
                f"unknown public prefix {msg.prefix[:80]!r}; use one from this worker's Welcome (or none)"
            )
        if msg.start < prefixes[msg.prefix]:
            raise InputError(f"start {msg.start} is inside the public prefix of {prefixes[msg.prefix]}")
    most = min(MAX_NEW_TOKENS_LIMIT, window)
    if not 0 <= msg.max_new_tokens <= most:
        raise InputError(
            f"max_new_tokens must be 0..{most}, the context window (0 reads the positions ahead and "
            f"predicts nothing), got {msg.max_new_tokens}"
        )
    if not 0 <= msg.seed < 2**63 or not 0 <= msg.first_index <= MAX_NEW_TOKENS_LIMIT:
        raise InputError("seed must be 0..2^63-1 and first_index 0..the reply limit")
    config = SamplerConfig.from_dict(dict(msg.sampler))  # InputError names a bad field
    if config.noise_sigma or config.input_noise_sigma or config.prefix_noise_sigma:
        raise InputError(
            "noise_sigma, input_noise_sigma and prefix_noise_sigma are simulation settings; send 0"
        )
