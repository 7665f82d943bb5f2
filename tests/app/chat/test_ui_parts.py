"""Tests for app/chat/ui_parts.py: settings from the page, streaming a reply, the tab's keys."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.chat.replies import ReplyUpdate
from app.chat.service import ChatService, ChatSettings
from app.chat.ui_parts import Keyring, OpenKeyrings, read_settings, stream_reply
from core.errors import InputError, WorkerUnavailable
from core.progress import Progress
from model.loading import LoadedModel
from tests.app.chat.test_ui import message_text
from tests.app.chat.test_ui_view import reply_update

CLOSED_PORT_URL = "ws://127.0.0.1:9"


def test_each_reply_draws_a_fresh_seed_unless_one_is_given(tiny: LoadedModel) -> None:
    assert len({ChatSettings().drawn().seed for _ in range(8)}) == 8
    assert ChatSettings(seed=7).drawn().seed == 7
    assert read_settings("plain", 0.3, 4, None, True, True).seed is None
    assert read_settings("plain", 0.3, 4, "", True, True).seed is None
    service = ChatService.create(tiny)
    footers = []
    for _ in range(2):
        settings = read_settings("plain", 1.0, 2, None, True, True)
        views = list(
            stream_reply(service, Keyring(), [{"role": "user", "content": "Hi"}], settings, threading.Event())
        )
        footers.append(views[-1].messages()[-1]["content"])
    seeds = [footer.split(" · seed ")[1].split(" ")[0] for footer in footers]
    assert seeds[0].isdigit() and seeds[0] != seeds[1]  # named in the footer, so a reply can be repeated


def test_settings_errors_name_the_field() -> None:
    with pytest.raises(InputError, match="max new tokens must be a whole number"):
        read_settings("plain", 0.3, 2.5, 0, True, True)
    with pytest.raises(InputError, match="mode must be one of"):
        read_settings("quantum", 0.3, 5, 0, True, True)
    assert read_settings("simulate", 0.3, 5.0, 7, False, True).label() == "simulate (TSP off, PP on, amp 3)"


class _FakeSession:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _FakeService:
    """Stands in for ChatService: one token, then the worker goes away."""

    worker_url = "ws://worker"

    def reply(self, messages: Any, settings: ChatSettings, *args: Any) -> Iterator[ReplyUpdate]:
        yield reply_update(" Paris", 1, 1.0, first=1.0)
        raise WorkerUnavailable("the worker at ws://worker went away (1006); retry")


def test_a_worker_lost_for_good_keeps_the_text_the_keys_and_the_chat_state() -> None:
    ring = Keyring()
    session = _FakeSession()
    ring.session = session  # type: ignore[assignment]
    settings = ChatSettings(mode="encrypted", max_new_tokens=5, seed=0)
    views = list(stream_reply(_FakeService(), ring, [], settings, threading.Event()))  # type: ignore[arg-type]
    final = views[-1].messages()
    assert message_text(final[0]) == " Paris"
    assert "interrupted" in final[1]["metadata"]["title"]
    assert final[2]["metadata"]["title"] == "⚠️ The worker cannot be reached"
    assert not session.closed and ring.session is session  # the next reply reconnects and continues
    assert not ring.lock.locked()


class _ReadingService:
    """Stands in for ChatService: a finished reply, then a read-ahead that runs until it is stopped."""

    worker_url = "ws://worker"

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.read_for: list[str] = []

    def reply(self, messages: Any, settings: ChatSettings, *args: Any) -> Iterator[ReplyUpdate]:
        yield reply_update(" Paris.", 1, 1.0, first=1.0, finish="eos")

    def read_ahead(self, messages: Any, reply: str, settings: Any, session: Any, memory: Any,
                   should_stop: Any, on_progress: Any) -> int:  # fmt: skip
        self.read_for.append(reply)
        on_progress(Progress("reading ahead (5 positions): layer 3/30", 3, 30))
        self.reading.set()
        while not should_stop():
            time.sleep(0.01)
        return 0


def test_the_next_reply_waits_for_the_read_ahead_and_stop_cancels_it() -> None:
    ring, service = Keyring(), _ReadingService()
    ring.session = _FakeSession()  # type: ignore[assignment]
    settings = ChatSettings(mode="encrypted", max_new_tokens=5, seed=0)
    first = list(stream_reply(service, ring, [], settings, threading.Event(), ring.memory))  # type: ignore[arg-type]
    assert first[-1].error is None and service.reading.wait(5) and service.read_for == [" Paris."]
    assert ring.lock.locked()  # the read-ahead holds the session until it ends
    stop = threading.Event()
    second = stream_reply(service, ring, [], settings, stop, ring.memory)  # type: ignore[arg-type]
    waiting = [next(second), next(second)][-1].messages()[-1]
    assert waiting["metadata"]["title"].endswith("· finishing the read-ahead")
    assert "layer 3/30" in waiting["content"]
    stop.set()  # Stop while waiting: the read-ahead ends, then the reply (stopped at once)
    rest = list(second)
    assert rest[-1].error is None and ring.read_ahead is not None and not ring.read_ahead.cancel.is_set()
    ring.drop()
    assert ring.read_ahead is not None and ring.read_ahead.cancel.is_set()
    ring.read_ahead._thread.join(5)
    assert not ring.lock.locked()


def test_keys_are_never_copied_shown_or_kept_after_expiry_or_tab_close() -> None:
    rings = OpenKeyrings()
    ring, other = Keyring(), Keyring()
    session, other_session = _FakeSession(), _FakeSession()
    ring.session, other.session = session, other_session  # type: ignore[assignment]
    rings.track("tab-1", ring)
    rings.track("tab-2", other)
    assert copy.deepcopy(ring).session is None  # Gradio's per-session copy of the initial value
    assert "Session" not in repr(ring) and "open" in repr(ring)
    rings.close(ring)  # gr.State's delete_callback: the time to live ran out
    assert session.closed and ring.session is None and len(rings) == 1
    rings.close_session("tab-2")  # Blocks.unload: the tab was closed
    assert other_session.closed and other.session is None and len(rings) == 0
    rings.close_session("tab-2")  # twice is harmless
