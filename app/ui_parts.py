"""The chat page's logic without its layout: per-session keys, one reply as chat messages, the worker panel.

`stream_reply` runs one reply in any mode and yields a `ReplyView` after every update; the view renders
itself as Gradio "messages": the reply text, then one assistant message with `metadata` (a "thought")
that is a live progress note while the reply runs (stage, token k of n, seconds per token, time left)
and the reply's footer when it ends (mode label, tokens, tokens/s, why it stopped). Errors are one more
metadata message titled "⚠️ ...". `app.chat.to_messages` skips every metadata message, so neither
progress notes, footers nor errors reach the model's context.

Keys: a `Keyring` lives in one browser session's `gr.State` only. It holds the `EncryptedSession` (the
secret key and the worker connection), opened on the first encrypted reply and reused after that, and
dropped when the worker goes away so the next reply reconnects. It is never logged (its repr hides it),
never copied and never saved. It is dropped when the tab is closed or reloaded (`Blocks.unload`, via
`OpenKeyrings`) and after `KEY_TTL_SECONDS` without a reply (the State's time to live and delete callback).
"What the worker saw" is rendered by `app.ui_panel`.

References: STYLE.md rules 12-14; gradio ChatMessage metadata ("thoughts") and State(time_to_live).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.chat import ChatService, ChatSettings, EncryptedSession, ReplyUpdate, WireReport
from app.keyholder import WorkerError, WorkerUnavailable
from model.errors import ChatError, InputError

log = logging.getLogger(__name__)

KEY_TTL_SECONDS = 30 * 60  # keys are forgotten after 30 minutes without a reply (Gradio's State TTL)
WORKER_BUSY_CODE = 4007  # the worker is generating someone else's reply: the session itself is fine
BADGE = {"plain": "🟢", "simulate": "🧪", "encrypted": "🔐"}
FINISH = {
    "eos": "end of reply",
    "length": "reached max new tokens",
    "context": "context window full",
    "cancelled": "stopped",
}


class Keyring:
    """One browser session's encrypted session and Stop flags (held in `gr.State`, nowhere else)."""

    def __init__(self) -> None:
        self.session: EncryptedSession | None = None
        self.key_bytes = 0  # public keys uploaded for the current session
        self.last_wire: WireReport | None = None  # the last encrypted token's report
        self.last_label = ""  # the mode label of the last reply
        self.lock = threading.Lock()  # one encrypted reply at a time per session (one connection)
        self.stop = {"chat": threading.Event(), "compare": threading.Event()}

    def __repr__(self) -> str:
        return f"Keyring(session={'open' if self.session else 'none'})"  # never the keys

    def __deepcopy__(self, memo: dict[int, Any]) -> Keyring:
        return Keyring()  # Gradio deep-copies a State's initial value; keys are never copied

    def drop(self) -> None:
        """Forget the secret key and close the worker connection (the next encrypted reply reconnects)."""
        session, self.session, self.key_bytes = self.session, None, 0
        if session is not None:
            try:
                session.close()
            except Exception:  # a connection that is already gone
                log.debug("closing a dropped session failed", exc_info=True)


def new_keyring() -> Keyring:
    return Keyring()


class OpenKeyrings:
    """Browser session id -> its Keyring, so that closing the tab drops the keys at once.

    Gradio's own State deletion waits an hour after a tab closes; `Blocks.unload` fires when it closes
    but gets no State, only the request with its session id.
    """

    def __init__(self) -> None:
        self._rings: dict[str, Keyring] = {}
        self._lock = threading.Lock()

    def track(self, session_id: str | None, ring: Keyring) -> None:
        if session_id:
            with self._lock:
                self._rings[session_id] = ring

    def close_session(self, session_id: str | None) -> None:
        """The tab was closed or reloaded: forget its keys now."""
        with self._lock:
            ring = self._rings.pop(session_id or "", None)
        if ring is not None:
            ring.drop()

    def close(self, ring: Keyring | None) -> None:
        """gr.State delete_callback: the keys expired (time to live) or the session was deleted."""
        with self._lock:
            for session_id in [k for k, v in self._rings.items() if v is ring]:
                del self._rings[session_id]
        if ring is not None:
            ring.drop()

    def __len__(self) -> int:
        return len(self._rings)


def read_settings(
    mode: Any, temperature: Any, max_new_tokens: Any, seed: Any, tsp: Any, pp: Any
) -> ChatSettings:
    """Settings from the page's fields. Raises InputError naming the bad field."""
    try:
        return ChatSettings(
            mode=str(mode),  # type: ignore[arg-type]
            temperature=float(temperature),
            max_new_tokens=_whole(max_new_tokens, "max new tokens"),
            seed=_whole(seed, "seed"),
            tsp=bool(tsp),
            pp=bool(pp),
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"invalid setting: {exc}") from exc


def _whole(value: Any, name: str) -> int:
    if value is None or float(value) != int(float(value)):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return int(float(value))


def error_message(title: str, text: str) -> dict[str, Any]:
    """An assistant message shown as a warning; its metadata keeps it out of the model's context."""
    return {"role": "assistant", "content": text, "metadata": {"title": f"⚠️ {title}"}}


def error_title(exc: BaseException) -> str:
    if isinstance(exc, WorkerUnavailable):
        return "The worker cannot be reached"
    if isinstance(exc, WorkerError):
        busy = exc.code == WORKER_BUSY_CODE
        return "The worker is busy with another reply" if busy else "The worker stopped this reply"
    if isinstance(exc, InputError):
        return "Cannot send this"
    if isinstance(exc, ChatError):
        return "The reply failed"
    return "Unexpected error"


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    minutes, sec = divmod(int(round(s)), 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class ReplyView:
    """One reply as the page shows it; `stream_reply` updates it in place."""

    settings: ChatSettings
    update: ReplyUpdate | None = None
    token_seconds: list[float] = field(default_factory=list)  # wall time at which each token arrived
    note: str = ""  # key creation and upload progress
    stopping: bool = False
    stopped: bool = False
    error: tuple[str, str] | None = None  # (title, text)
    started: float = field(default_factory=time.perf_counter)

    def push(self, update: ReplyUpdate) -> None:
        if update.tokens > len(self.token_seconds):
            self.token_seconds.append(update.seconds)
        self.update = update

    @property
    def tokens(self) -> int:
        return self.update.tokens if self.update else 0

    def seconds_per_token(self) -> float | None:
        """Median time per token; the first token (it includes the prompt) only until there are others."""
        gaps = [b - a for a, b in zip(self.token_seconds, self.token_seconds[1:], strict=False)]
        if gaps:
            return statistics.median(gaps)
        return self.token_seconds[0] if self.token_seconds else None

    def seconds_left(self) -> float | None:
        per_token = self.seconds_per_token()
        if per_token is None:
            return None
        return max(self.settings.max_new_tokens - self.tokens, 0) * per_token

    @property
    def finished(self) -> bool:
        return self.stopped or self.error is not None or bool(self.update and self.update.finish)

    def messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.update and self.update.text:
            out.append({"role": "assistant", "content": self.update.text})
        out.append(self._status())
        if self.error:
            out.append(error_message(*self.error))
        return out

    def _status(self) -> dict[str, Any]:
        label = f"{BADGE[self.settings.mode]} {self.settings.label()}"
        elapsed = self.update.seconds if self.update else time.perf_counter() - self.started
        if self.finished:
            return self._footer(label, elapsed)
        if self.note:
            title, lines = f"{label} · creating your keys", [self.note]
        elif self.stopping:
            title, lines = (
                f"{label} · stopping…",
                ["Cancelling the job; the page is ready again in a moment."],
            )
        else:
            title, lines = self._progress(label)
        return {
            "role": "assistant",
            "content": "\n\n".join(lines),
            "metadata": {"title": title, "status": "pending"},
        }

    def _progress(self, label: str) -> tuple[str, list[str]]:
        n, k = self.settings.max_new_tokens, self.tokens
        update = self.update
        if self.settings.mode != "encrypted":
            return f"{label} · generating · {k} of at most {n} tokens", []
        stage = update.stage if update and update.stage else ("waiting for the worker" if k else "starting")
        done, total = update.progress if update else (0, 0)
        title = f"{label} · token {min(k + 1, n)} of at most {n} · {stage}"
        lines = [f"Now: token {min(k + 1, n)}, {stage}" + (f" (step {done + 1} of {total})" if total else "")]
        if k == 0:
            lines.append(
                "The first token also runs the whole prompt (one position at a time), so it is slow."
            )
        per_token = self.seconds_per_token()
        left = self.seconds_left()
        if per_token is not None and left is not None:
            lines.append(
                f"Tokens so far: {k} · {_seconds(per_token)} per token · about {_seconds(left)} left "
                f"for the remaining {n - k} (fewer if the reply ends sooner)"
            )
        else:
            lines.append("Time left: estimated after the first token.")
        return title, lines

    def _footer(self, label: str, elapsed: float) -> dict[str, Any]:
        update = self.update
        k = self.tokens
        parts = [label, f"{k} token{'s' if k != 1 else ''}"]
        if update and update.tokens_per_second:
            parts.append(f"{update.tokens_per_second:.2f} tokens/s")
        if self.stopped:
            parts.append("stopped by you")
        elif self.error:
            parts.append("interrupted")
        elif update and update.finish:
            parts.append(FINISH.get(str(update.finish), str(update.finish)))
        details = [
            f"Temperature {self.settings.temperature:g} · seed {self.settings.seed} · "
            f"at most {self.settings.max_new_tokens} new tokens · {_seconds(elapsed)} in all"
        ]
        if update and update.first_token_seconds:
            details.append(f"First token after {_seconds(update.first_token_seconds)} (prompt included).")
        return {
            "role": "assistant",
            "content": "\n\n".join(details),
            "metadata": {"title": " · ".join(parts), "status": "done", "duration": round(elapsed, 1)},
        }


def _open_session(service: ChatService, ring: Keyring) -> Iterator[str]:
    """Create keys and upload them in a thread, yielding a progress line; leaves the session in `ring`."""
    progress: list[tuple[str, int, int]] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            session = service.open_encrypted(lambda stage, done, total: progress.append((stage, done, total)))
            ring.session, ring.key_bytes = session, session.client.key_bytes
        except BaseException as exc:  # handed to the page below
            failure.append(exc)

    thread = threading.Thread(target=work, name="he-chat-keys", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.25)
        if progress:
            stage, done, total = progress[-1]
            yield f"Secret key created on the key holder; {stage} to the worker: part {done} of {total}…"
        else:
            yield "Creating your secret key and public keys (once per session)…"
    if failure:
        raise failure[0]


def stream_reply(
    service: ChatService,
    ring: Keyring,
    messages: Sequence[dict[str, str]],
    settings: ChatSettings,
    stop: threading.Event,
) -> Iterator[ReplyView]:
    """One reply in the settings' mode, as a view updated in place; never raises.

    Stop (the `stop` event) is checked after every update; the reply iterator is then closed, which
    sends Cancel to the worker in encrypted mode. A worker that is gone drops the session.
    """
    view = ReplyView(settings)
    ring.last_label = f"{BADGE[settings.mode]} {settings.label()}"
    if settings.mode == "encrypted" and ring.session is None:
        view.note = "Creating your secret key and public keys (once per session)…"
    yield view
    locked = False
    try:
        session = None
        if settings.mode == "encrypted":
            if not ring.lock.acquire(blocking=False):
                raise InputError(
                    "another encrypted reply is running in this browser session (the other tab?); "
                    "wait for it or press its Stop button"
                )
            locked = True
            if ring.session is None:
                for note in _open_session(service, ring):
                    view.note = note
                    yield view
                view.note = ""
            session = ring.session
        replies = service.reply(messages, settings, session)
        try:
            for update in replies:
                view.push(update)
                if update.wire is not None:
                    ring.last_wire = update.wire
                if stop.is_set() and update.finish is None:
                    view.stopping = True
                    yield view
                    break
                yield view
        finally:
            close = getattr(replies, "close", None)  # a generator: closing it ends the reply
            if close is not None:
                close()  # encrypted: sends Cancel and waits for the worker's Done
        view.stopped = view.stopping
        view.stopping = False
    except Exception as exc:  # the page must keep working: every failure becomes a message
        if isinstance(exc, WorkerUnavailable | WorkerError) and getattr(exc, "code", 0) != WORKER_BUSY_CODE:
            ring.drop()  # the connection is unusable; the next encrypted reply reconnects
        if not isinstance(exc, ChatError):
            log.exception("unexpected error in a reply")
        view.stopping = False
        view.note = ""
        view.error = (error_title(exc), _sentence(str(exc) or type(exc).__name__))
    finally:
        if locked:
            ring.lock.release()
    yield view


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")
