"""Tests for app/chat/ui_view.py: what a streaming reply shows (progress, its place in line, notes)."""

from __future__ import annotations

from typing import Any

from app.chat.replies import ReplyUpdate
from app.chat.service import ChatSettings
from app.chat.ui_view import ReplyView

CLOSED_PORT_URL = "ws://127.0.0.1:9"


def reply_update(text: str, tokens: int, seconds: float, **kw: Any) -> ReplyUpdate:
    return ReplyUpdate(text, "", tokens, seconds, kw.pop("first", 12.0), **kw)


def test_progress_estimates_the_prompt_then_the_time_left_from_the_median_token_time() -> None:
    view = ReplyView(ChatSettings(mode="encrypted", max_new_tokens=10))
    assert "estimated after two layers" in view.messages()[-1]["content"]
    for seconds, layer in [(2.0, 1), (4.0, 2), (6.0, 3)]:  # a prompt layer every 2 s
        stage = f"prompt (13 positions): layer {layer}/30"
        view.push(reply_update("", 0, seconds, first=0.0, stage=stage, start=24, new_positions=13))
    prompt = view.messages()[-1]["content"]
    assert "24 public positions" in prompt and "then 13 encrypted ones" in prompt
    assert "about 1 min 05 s to the first token" in prompt  # 28 layers x 2 s, plus the head and sampler
    for tokens, seconds in [(1, 12.0), (2, 18.0), (3, 30.0), (4, 36.0)]:  # gaps 6, 12, 6 s
        view.push(reply_update("abc", tokens, seconds))
    view.push(reply_update("abc", 4, 37.0, stage="token: layer 2/30", progress=(1, 33)))
    assert view.seconds_per_token() == 6.0
    assert view.seconds_left() == 36.0  # 6 tokens left x 6 s
    reply, status = view.messages()
    assert reply == {"role": "assistant", "content": {"type": "text", "text": "abc"}}
    assert status["metadata"]["status"] == "pending"
    assert "token 5 of at most 10 · token: layer 2/30" in status["metadata"]["title"]
    assert "about 36 s left" in status["content"] and "step 2 of 33" in status["content"]
    assert "First token after 12 s" in status["content"]


def test_a_continued_turn_says_what_it_sent() -> None:
    view = ReplyView(ChatSettings(mode="encrypted", max_new_tokens=4))
    view.push(
        reply_update("Madrid.", 4, 40.0, first=30.0, finish="eos", start=42, new_positions=15, continued=True)
    )
    footer = view.messages()[-1]["content"]
    assert "15 new positions after the 42 the key holder already holds (nothing" in footer
    view.push(reply_update("Madrid.", 4, 40.0, first=30.0, finish="eos", start=48, new_positions=9,
                      continued=True, ahead=6))  # fmt: skip
    footer = view.messages()[-1]["content"]
    assert (
        "9 new positions after the 48 the key holder already holds, the last 6 of them read while" in footer
    )


def test_a_reply_waiting_in_line_shows_its_place_and_worker_text_is_escaped() -> None:
    view = ReplyView(ChatSettings(mode="encrypted", max_new_tokens=4))
    view.push(reply_update("", 0, 1.0, first=0.0, stage="queue: you are 2nd in line for the worker"))
    assert "you are 2nd in line" in view.messages()[-1]["metadata"]["title"]
    view.push(reply_update("", 0, 2.0, first=0.0, stage="![x](http://evil.example/x.png)"))
    title = view.messages()[-1]["metadata"]["title"]
    assert "![" not in title and "\\!\\[x\\]" in title
