"""Tests for app/chat/replies.py: the key holder's accounting, a reply's decode speed, a chat's memory."""

from __future__ import annotations

from app.chat.replies import ChatMemory, ReplyUpdate, Telemetry
from model.conversation import Conversation


def test_telemetry_adds_up_the_oracle_calls_by_function() -> None:
    telemetry = Telemetry()
    telemetry.count("softmax", up=100, down=400)
    telemetry.count("refresh", up=10, down=20)
    telemetry.count("softmax", up=1, down=2)
    assert telemetry.oracle_calls == 3 and telemetry.bytes_up == 111
    assert telemetry.by_fn == {"softmax": 2, "refresh": 1}
    assert telemetry.fn_bytes == {"softmax": [101, 402], "refresh": [10, 20]}


def test_the_decode_speed_leaves_out_the_first_token_and_its_prompt() -> None:
    update = ReplyUpdate("abc", "c", tokens=5, seconds=10.0, first_token_seconds=2.0)
    assert update.tokens_per_second == 4 / 8.0
    assert ReplyUpdate("a", "a", tokens=1, seconds=3.0, first_token_seconds=3.0).tokens_per_second == 0.0
    assert ReplyUpdate("", "", tokens=0, seconds=0.0, first_token_seconds=0.0).tokens_per_second == 0.0


def test_a_cleared_memory_starts_the_next_turn_afresh() -> None:
    memory = ChatMemory(conversation=Conversation(("plain",), "Hi", [1, 2, 3]))
    memory.clear()
    assert memory.conversation is None and memory.session is None
