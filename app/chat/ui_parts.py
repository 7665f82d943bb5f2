"""The chat page's logic without its layout: per-session keys and chat state, one reply as chat messages.

`stream_reply` runs one reply in any mode and yields a `ReplyView` (app/chat/ui_view.py) after every update.
Errors are one more metadata message titled "⚠️ ...".

Keys and state: a `Keyring` lives in one browser session's `gr.State` only. It holds the
`EncryptedSession` (the secret key, the conversation's attention cache and the worker connection), opened
on the first encrypted reply and reused after that, and the chat's `ChatMemory`, so each turn continues
the model's state instead of re-reading the conversation (in every mode). If the worker goes away the
keys and the state stay: the next reply reconnects and continues. It is never logged (its repr hides it),
never copied and never saved. It is dropped when the tab is closed or reloaded (`Blocks.unload`, via
`OpenKeyrings`), after `KEY_TTL_SECONDS` without a reply (the State's time to live and delete callback),
or with "Forget my keys". "What the worker saw" is rendered by `app.chat.ui_panel`.

References: STYLE.md rules 12-14; gradio ChatMessage metadata ("thoughts") and State(time_to_live).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

from app.chat.encrypted import EncryptedSession
from app.chat.replies import ChatMemory, WireReport
from app.chat.service import ChatService, ChatSettings
from app.chat.ui_view import BADGE, ReplyView, plain
from core.errors import (
    AccessDenied,
    ChatError,
    InputError,
    LimitExceeded,
    WorkerBusy,
    WorkerError,
    WorkerMismatch,
    WorkerUnavailable,
)
from core.progress import Progress
from model.repetition import NO_PENALTY

log = logging.getLogger(__name__)

KEY_TTL_SECONDS = 30 * 60  # keys are forgotten after 30 minutes without a reply (Gradio's State TTL)
TITLES = {  # by wire code (core/errors.py)
    WorkerBusy.code: "The worker is busy with other replies",
    LimitExceeded.code: "The worker's limits stopped this",
    AccessDenied.code: "The worker refused this connection",
}


class ReadAhead:
    """The next turn's opening markers, read into the key holder's cache in a thread while the user reads
    and types (`ChatService.read_ahead`). It holds the keyring's lock until it ends; the next reply
    waits for it (`wait`), and Stop or dropping the keys cancels it."""

    def __init__(self, ring: Keyring, work: Callable[..., int]) -> None:
        """`work(should_stop, on_progress)` reads ahead (`ChatService.read_ahead` with its arguments)."""
        self.cancel = threading.Event()
        self.stage = ""
        self._thread = threading.Thread(target=self._run, args=(ring, work), name="he-chat-read-ahead")
        self._thread.daemon = True

    def start(self) -> None:
        self._thread.start()

    def _run(self, ring: Keyring, work: Callable[..., int]) -> None:
        try:
            work(self.cancel.is_set, self._progress)
        except Exception:  # the next turn sends the markers itself
            log.exception("reading ahead failed")
        finally:
            ring.lock.release()

    def _progress(self, update: Progress) -> None:
        self.stage = update.stage

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, stop: threading.Event) -> Iterator[str]:
        """Until it ends, a note every quarter second; Stop cancels it."""
        while self._thread.is_alive():
            if stop.is_set():
                self.cancel.set()
            where = f": {self.stage}" if self.stage else ""
            yield (
                "While you typed, the worker started reading this turn's opening markers (the end of the "
                f"last reply, `<|im_end|>`, `<|im_start|>user`); it finishes that first{where}…"
            )
            self._thread.join(0.25)


class Keyring:
    """One browser session's encrypted session and Stop flags (held in `gr.State`, nowhere else)."""

    def __init__(self) -> None:
        self.session: EncryptedSession | None = None
        self.memory = ChatMemory()  # the chat tab's model state between turns
        self.key_bytes = 0  # public keys uploaded for the current session
        self.last_wire: WireReport | None = None  # the last encrypted token's report
        self.last_label = ""  # the mode label of the last reply
        self.lock = threading.Lock()  # one encrypted reply at a time per session (one connection)
        self.read_ahead: ReadAhead | None = None  # the last reply's read-ahead (holds the lock while it runs)
        self.stop = {"chat": threading.Event(), "compare": threading.Event()}

    def __repr__(self) -> str:
        return f"Keyring(session={'open' if self.session else 'none'})"  # never the keys

    def __deepcopy__(self, memo: dict[int, Any]) -> Keyring:
        return Keyring()  # Gradio deep-copies a State's initial value; keys are never copied

    def drop(self) -> None:
        """Forget the secret key, the chat's state and close the worker connection."""
        if self.read_ahead is not None:
            self.read_ahead.cancel.set()
        session, self.session, self.key_bytes = self.session, None, 0
        self.memory.clear()
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
    mode: Any,
    temperature: Any,
    max_new_tokens: Any,
    seed: Any,
    tsp: Any,
    pp: Any,
    penalty: Any = NO_PENALTY,
    pad: Any = False,
) -> ChatSettings:
    """Settings from the page's fields. Raises InputError naming the bad field."""
    try:
        return ChatSettings(
            mode=str(mode),  # type: ignore[arg-type]
            temperature=float(temperature),
            max_new_tokens=_whole(max_new_tokens, "max new tokens"),
            seed=None if seed is None or seed == "" else _whole(seed, "seed"),  # empty: fresh per reply
            tsp=bool(tsp),
            pp=bool(pp),
            repetition_penalty=float(penalty),
            pad=bool(pad),
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"invalid setting: {exc}") from exc


def _whole(value: Any, name: str) -> int:
    if value is None or float(value) != int(float(value)):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return int(float(value))


def error_title(exc: BaseException) -> str:
    if isinstance(exc, WorkerUnavailable):
        return "The worker cannot be reached"
    if isinstance(exc, WorkerError):
        return TITLES.get(exc.code, "The worker stopped this reply")
    if isinstance(exc, InputError):
        return "Cannot send this"
    if isinstance(exc, ChatError):
        return "The reply failed"
    return "Unexpected error"


def _open_session(service: ChatService, ring: Keyring) -> Iterator[str]:
    """Create keys and upload them in a thread, yielding a progress line; leaves the session in `ring`."""
    progress: list[Progress] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            session = service.open_encrypted(progress.append)
            ring.session, ring.key_bytes = session, session.client.key_bytes
        except BaseException as exc:  # handed to the page below
            failure.append(exc)

    thread = threading.Thread(target=work, name="he-chat-keys", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.25)
        if progress:
            last = progress[-1]
            part = f"part {last.done} of {last.total}"
            yield f"Secret key created on the key holder; {last.stage} to the worker: {part}…"
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
    memory: ChatMemory | None = None,
) -> Iterator[ReplyView]:
    """One reply in the settings' mode, as a view updated in place; never raises.

    Stop (the `stop` event) is polled by the reply itself, also while the worker computes, so it ends
    within a fraction of a second wherever the reply is (Cancel reaches the worker's processes at once).
    `memory` is the chat's state (None: a one-off reply, as in Compare). A worker that is gone keeps the
    keys and the state: the next reply reconnects. A worker that serves another model drops them.
    After an encrypted reply in a chat (`memory`), the next turn's opening markers are read ahead in a
    thread (`ReadAhead`); the next reply waits for it to end.
    """
    settings = settings.drawn()  # the footer names the seed, so the reply can be repeated
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
                ahead = ring.read_ahead
                if ahead is not None and ahead.running:
                    view.note_title = "finishing the read-ahead"
                    for note in ahead.wait(stop):
                        view.note = note
                        yield view
                    view.note, view.note_title = "", "creating your keys"
                if not ring.lock.acquire(timeout=1.0):
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
        replies = service.reply(messages, settings, session, memory, stop.is_set)
        try:
            for update in replies:
                view.push(update)
                if update.wire is not None:
                    ring.last_wire = update.wire
                if update.finish == "cancelled" or (stop.is_set() and update.finish is None):
                    view.stopping = True
                    if update.finish is None:
                        yield view
                        break
                yield view
        finally:
            close = getattr(replies, "close", None)  # a generator: closing it ends the reply
            if close is not None:
                close()  # encrypted: sends Cancel and waits for the worker's Done
        view.stopped = view.stopping
        view.stopping = False
        if session is not None and memory is not None:
            reply = view.update.text if view.update is not None else ""
            work = partial(service.read_ahead, messages, reply, settings, session, memory)
            ring.read_ahead = ReadAhead(ring, work)
            ring.read_ahead.start()
            locked = False  # the read-ahead holds the lock now and releases it when it ends
    except Exception as exc:  # the page must keep working: every failure becomes a message
        if isinstance(exc, WorkerMismatch):
            ring.drop()  # another worker now answers at that address: these keys are not for it
        if not isinstance(exc, ChatError):
            log.exception("unexpected error in a reply")
        view.stopping = False
        view.note = ""
        view.error = (error_title(exc), plain(_sentence(str(exc) or type(exc).__name__)))
    finally:
        if locked:
            ring.lock.release()
    yield view


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")
