"""The chat page served for real on loopback, driven through gradio_client.

The encrypted path against a real worker, Stop in the browser and the layout are in test_browser.py; here
the worker URL points at a closed port, so encrypted mode exercises the "worker unreachable" message. The
page's pure parts have their own modules: test_ui_view.py, test_ui_parts.py, test_ui_panel.py.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from gradio_client import Client

from app.chat.service import ChatService, ChatSettings, to_messages
from app.chat.ui import build_ui
from model.conversation import MAX_PROMPT_CHARS
from model.loading import LoadedModel

CLOSED_PORT_URL = "ws://127.0.0.1:9"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def page_url(tiny: LoadedModel) -> Iterator[str]:
    from app.chat.service import ChatService

    service = ChatService.create(tiny, worker_url=CLOSED_PORT_URL)
    page = build_ui(service)
    port = _free_port()
    page.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        page.close()


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, dict):  # a message the handler made (app.chat.ui_view.verbatim)
        return str(content.get("text", ""))
    if isinstance(content, list):  # a message as the page sends it back
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def _titles(chat: list[dict[str, Any]]) -> list[str]:
    return [str((m.get("metadata") or {}).get("title", "")) for m in chat]


def _replies(chat: list[dict[str, Any]]) -> list[str]:
    return [message_text(m) for m in chat if m.get("role") == "assistant" and not m.get("metadata")]


def _chat(client: Client, message: str, mode: str = "plain", tokens: int = 6, **kw: Any) -> Any:
    args = [message, kw.get("history", []), mode, kw.get("temperature", 1.0), tokens, kw.get("seed", 0)]
    guard = kw.get("penalty", 1.0)  # off unless a test asks: the footers below name the paper's sampler only
    return client.submit(*args, kw.get("tsp", True), kw.get("pp", True), guard, api_name="/chat")


def test_page_is_served_on_loopback(page_url: str) -> None:
    with urllib.request.urlopen(page_url, timeout=30) as response:
        assert response.status == 200
        page = response.read().decode()
    assert "Encrypted chat" in page and "What the worker saw" in page and "Compare" in page


def test_plain_reply_streams_and_names_its_mode(page_url: str) -> None:
    outputs = list(_chat(Client(page_url, verbose=False), "Hello", tokens=100))  # frames: one per 50 ms
    chats = [out[0] for out in outputs]
    texts = [(_replies(chat) or [""])[-1] for chat in chats]
    assert len({t for t in texts if t}) >= 2, "the reply should arrive in several growing chunks"
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
    final = chats[-1]
    assert message_text(final[0]) == "Hello" and final[0]["role"] == "user"
    assert _titles(final)[-1].startswith("🟢 plain · 100 tokens")
    assert "reached max new tokens" in _titles(final)[-1]
    assert "ran on this server in the clear" in outputs[-1][-1]


def test_simulate_footer_names_tsp_and_pp(page_url: str) -> None:
    final = _chat(Client(page_url, verbose=False), "Hello", "simulate", 4, tsp=False).result()[0]
    assert _titles(final)[-1].startswith("🧪 simulate (TSP off, PP on, amp 3) · 4 tokens")
    final = _chat(Client(page_url, verbose=False), "Hello", "simulate", 4, penalty=1.25).result()[0]
    assert _titles(final)[-1].startswith(
        "🧪 simulate (TSP on, PP on, amp 3, repetition penalty 1.25) · 4 tokens"
    )


def test_follow_up_keeps_history_and_leaves_notes_out_of_the_context(page_url: str) -> None:
    client = Client(page_url, verbose=False)
    first = _chat(client, "Hello", tokens=3).result()[0]
    second = _chat(client, "And then?", tokens=3, history=first).result()[0]
    assert [m["role"] for m in second[: len(first)]] == [m["role"] for m in first]
    assert message_text(second[len(first)]) == "And then?"
    context = to_messages(second, "next")
    assert [m["role"] for m in context] == ["user", "assistant", "user", "assistant", "user"]


def test_the_page_sends_back_exactly_what_the_model_read(page_url: str, tiny: LoadedModel) -> None:
    """Gradio strips plain-string messages (inspect.cleandoc); a changed history could not continue."""
    message = "  Look:\n    x = 1\n    y = 2\n"
    chat = _chat(Client(page_url, verbose=False), message, tokens=12).result()[0]
    assert message_text(chat[0]) == message
    settings = ChatSettings("plain", temperature=1.0, max_new_tokens=12, seed=0, repetition_penalty=1.0)
    *_, last = ChatService.create(tiny).reply([{"role": "user", "content": message}], settings)
    assert _replies(chat) == [last.text]  # the reply exactly as generated, leading space and all


@pytest.mark.parametrize(
    ("message", "seed", "title", "detail"),
    [
        ("   ", 0, "Cannot send this", "empty"),
        ("x" * (MAX_PROMPT_CHARS + 1), 0, "Cannot send this", "This message is 20,001 characters; the limit"),
        ("Hello", 2**70, "Cannot send this", "seed"),
    ],
)
def test_bad_input_is_a_chat_message_and_the_page_keeps_working(
    page_url: str, message: str, seed: int, title: str, detail: str
) -> None:
    client = Client(page_url, verbose=False)
    chat, *_, panel = _chat(client, message, seed=seed).result()
    assert _titles(chat)[-1] == f"⚠️ {title}"
    assert detail in message_text(chat[-1])
    again = _chat(client, "Hello again", tokens=3).result()[0]
    assert _titles(again)[-1].startswith("🟢 plain · 3 tokens")
    after = _chat(client, "Hello again", tokens=3, history=chat).result()[0]  # the refused one shown above
    assert _replies(after) == _replies(again)  # ... but left out of what the model reads


def test_unreachable_worker_is_reported_in_the_chat(page_url: str) -> None:
    client = Client(page_url, verbose=False)
    chat, *_, panel = _chat(client, "Hi", "encrypted", 2).result()
    titles = _titles(chat)
    assert titles[-1] == "⚠️ The worker cannot be reached"
    assert "127.0.0.1:9" in message_text(chat[-1])  # (escaped for the page: the address is no link)
    assert "Not sent" in titles[-2] and chat[-2]["role"] == "user"  # no token came: the message was not sent
    assert "none yet" in panel  # no keys kept after the failure
    plain = _chat(client, "Hello", tokens=2).result()[0]
    assert _titles(plain)[-1].startswith("🟢 plain · 2 tokens")


def test_stop_ends_the_reply_with_a_stopped_footer(page_url: str) -> None:
    client = Client(page_url, verbose=False)
    job = _chat(client, "Tell me a long story", tokens=1024, temperature=1.0)
    deadline = time.monotonic() + 120
    while len(job.outputs()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.predict(api_name="/stop")  # same client: the same browser session and stop flag
    final = job.result(timeout=120)[0]
    title = _titles(final)[-1]
    assert "stopped by you" in title, title
    assert int(title.split(" · ")[1].split()[0]) < 1024


def test_compare_streams_two_settings_side_by_side(page_url: str) -> None:
    client = Client(page_url, verbose=False)
    job = client.submit(
        "Hello", "simulate", False, False, "plain", True, True, 1.0, 5, 3, api_name="/compare"
    )
    outputs = list(job)
    a, b = outputs[-1][0], outputs[-1][1]
    assert message_text(a[0]) == message_text(b[0]) == "Hello"
    assert _titles(a)[-1].startswith("🧪 simulate (TSP off, PP off, amp 3) · 5 tokens")
    assert _titles(b)[-1].startswith("🟢 plain · 5 tokens")
    assert len(outputs) >= 3


def test_compare_refuses_two_encrypted_sides(page_url: str) -> None:
    client = Client(page_url, verbose=False)
    a, b, *_ = client.predict(
        "Hi", "encrypted", True, True, "encrypted", True, True, 1.0, 2, 0, api_name="/compare"
    )
    assert _titles(b)[-1] == "⚠️ Only one side can be encrypted"
    assert _titles(a)[-1] == "⚠️ The worker cannot be reached"  # side A still ran (and found no worker)


# --- the pure parts ---------------------------------------------------------------------------------
