"""Tests for app/chat/ui_handlers.py: the page's small handlers (the Send and Compare handlers are driven
through the served page in test_ui.py and in Chromium in test_browser.py)."""

from __future__ import annotations

from app.chat.ui_handlers import ENCRYPTED_TOKENS, MODE_INFO, cap_for_encrypted, request_stop, worker_status
from app.chat.ui_parts import Keyring


def test_picking_encrypted_caps_the_reply_length_and_says_why() -> None:
    update, info = cap_for_encrypted("encrypted", ENCRYPTED_TOKENS + 100)
    assert update["value"] == ENCRYPTED_TOKENS and info == MODE_INFO["encrypted"]
    update, info = cap_for_encrypted("encrypted", ENCRYPTED_TOKENS)  # already within: left alone
    assert "value" not in update
    update, info = cap_for_encrypted("plain", 500)
    assert "value" not in update and info == MODE_INFO["plain"]


def test_the_warm_up_line_counts_up_then_stops_polling() -> None:
    text, timer = worker_status(lambda: (3, 12))
    assert "25%" in text and timer.active
    text, timer = worker_status(lambda: (12, 12))
    assert text.startswith("Worker ready") and not timer.active
    text, timer = worker_status(None)  # a remote worker: nothing to show
    assert text == "" and not timer.active


def test_stop_sets_only_the_flag_it_names() -> None:
    ring = Keyring()
    request_stop(ring, "compare")
    assert ring.stop["compare"].is_set() and not ring.stop["chat"].is_set()
    request_stop(None, "chat")  # type: ignore[arg-type]  # no keyring yet (a fresh tab): nothing to stop
