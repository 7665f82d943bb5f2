"""What a reply streams (`ReplyUpdate`, `WireReport` and the key holder's `Telemetry` behind it) and what a
chat keeps between turns (`ChatMemory`).

Shared by the chat service (app/chat/service.py), its encrypted path (app/chat/encrypted.py), the page and the
command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from model.conversation import Conversation
from model.generate import DecodeSession, FinishReason


@dataclass
class Telemetry:
    """Per-token accounting kept on the key-holder side (the worker adds its own in Token.telemetry)."""

    oracle_calls: int = 0
    bytes_up: int = 0  # key holder -> worker
    bytes_down: int = 0  # worker -> key holder
    oracle_seconds: float = 0.0  # time this side spent answering
    by_fn: dict[str, int] = field(default_factory=dict)
    fn_bytes: dict[str, list[int]] = field(default_factory=dict)  # fn -> [up, down] of its oracle calls

    def count(self, fn: str, up: int, down: int) -> None:
        """One oracle call of `fn`: `down` bytes of request, `up` of answer."""
        self.oracle_calls, self.bytes_up = self.oracle_calls + 1, self.bytes_up + up
        self.by_fn[fn] = self.by_fn.get(fn, 0) + 1
        traffic = self.fn_bytes.setdefault(fn, [0, 0])
        traffic[0], traffic[1] = traffic[0] + up, traffic[1] + down


@dataclass(frozen=True)
class WireReport:
    """What crossed the wire for the last token of an encrypted reply ("what the worker saw")."""

    key_upload_bytes: int
    bytes_to_worker: int  # this token: key holder -> worker
    bytes_from_worker: int  # this token: worker -> key holder
    oracle_calls: dict[str, int]  # what the key holder evaluated for the worker, by function
    worker_seconds: dict[str, float]  # the worker's time by stage
    ciphertext_hex: str  # the first bytes of the token's ciphertext as the worker sent it
    preset: str
    params: dict[str, Any]
    public_positions: int = 0  # the public prefix's positions (computed by the worker in the clear)
    public_text: str = ""  # ... and their text
    start: int = 0  # positions the key holder's cache held when this reply began
    new_positions: int = 0  # positions this reply sent encrypted before its first token
    processes: int = 1  # the worker's compute processes


@dataclass(frozen=True)
class ReplyUpdate:
    """The reply so far, streamed to the UI and the command line."""

    text: str  # the whole reply so far (cumulative; multi-byte safe)
    delta: str  # what this update added, for terminals
    tokens: int  # tokens generated so far
    seconds: float  # wall time so far, prompt included
    first_token_seconds: float  # time to the first token (prompt + one selection)
    finish: FinishReason | Literal["cancelled"] | None = None  # set on the last update
    stage: str = ""  # encrypted mode: what the worker is doing ("token: layer 3/30", "sampler")
    progress: tuple[int, int] = (0, 0)  # encrypted mode: (done, total) within the current token
    wire: WireReport | None = None
    start: int = 0  # positions the chat's model state held before this reply (0: a fresh prompt)
    new_positions: int = 0  # positions this reply prefilled
    continued: bool = False  # the chat's state from the last turn was reused
    notice: str = ""  # something the user should know about this reply (the worker was lost, ...)
    ahead: int = 0  # of the `start` positions, how many were read ahead while the user typed

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first over the time they took (prompt excluded)."""
        decode = self.seconds - self.first_token_seconds
        return (self.tokens - 1) / decode if self.tokens > 1 and decode > 0 else 0.0


@dataclass
class ChatMemory:
    """One chat's model state between turns (a browser tab's chat, a terminal conversation).

    `conversation` says what the cached positions stand for; plain and simulate keep transformers' cache
    in `session`, encrypted mode keeps it in the key holder (`EncryptedSession.keys`).
    """

    conversation: Conversation | None = None
    session: DecodeSession | None = None

    def clear(self) -> None:
        self.conversation, self.session = None, None
