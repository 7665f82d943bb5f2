"""The chat page served for real on loopback, driven through gradio_client, plus its pure parts.

The encrypted path against a real worker, Stop in the browser and the layout are in test_browser.py; here
the worker URL points at a closed port, so encrypted mode exercises the "worker unreachable" message.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from gradio_client import Client

from app.chat.replies import ReplyUpdate
from app.chat.service import ChatService, ChatSettings, to_messages
from app.chat.ui import build_ui
from app.chat.ui_parts import Keyring, OpenKeyrings, read_settings, stream_reply
from app.chat.ui_view import ReplyView
from core.errors import InputError, WorkerUnavailable
from core.progress import Progress
from model.generate import MAX_PROMPT_CHARS
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


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, dict):  # a message the handler made (app.chat.ui_view.verbatim)
        return str(content.get("text", ""))
    if isinstance(content, list):  # a message as the page sends it back
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def _titles(chat: list[dict[str, Any]]) -> list[str]:
    return [str((m.get("metadata") or {}).get("title", "")) for m in chat]


def _replies(chat: list[dict[str, Any]]) -> list[str]:
    return [_text(m) for m in chat if m.get("role") == "assistant" and not m.get("metadata")]


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
    assert _text(final[0]) == "Hello" and final[0]["role"] == "user"
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
    assert _text(second[len(first)]) == "And then?"
    context = to_messages(second, "next")
    assert [m["role"] for m in context] == ["user", "assistant", "user", "assistant", "user"]


def test_the_page_sends_back_exactly_what_the_model_read(page_url: str, tiny: LoadedModel) -> None:
    """Gradio strips plain-string messages (inspect.cleandoc); a changed history could not continue."""
    message = "  Look:\n    x = 1\n    y = 2\n"
    chat = _chat(Client(page_url, verbose=False), message, tokens=12).result()[0]
    assert _text(chat[0]) == message
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
    assert detail in _text(chat[-1])
    again = _chat(client, "Hello again", tokens=3).result()[0]
    assert _titles(again)[-1].startswith("🟢 plain · 3 tokens")
    after = _chat(client, "Hello again", tokens=3, history=chat).result()[0]  # the refused one shown above
    assert _replies(after) == _replies(again)  # ... but left out of what the model reads


def test_unreachable_worker_is_reported_in_the_chat(page_url: str) -> None:
    client = Client(page_url, verbose=False)
    chat, *_, panel = _chat(client, "Hi", "encrypted", 2).result()
    titles = _titles(chat)
    assert titles[-1] == "⚠️ The worker cannot be reached"
    assert "127.0.0.1:9" in _text(chat[-1])  # (escaped for the page: the address is no link)
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
    assert _text(a[0]) == _text(b[0]) == "Hello"
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


def _update(text: str, tokens: int, seconds: float, **kw: Any) -> ReplyUpdate:
    return ReplyUpdate(text, "", tokens, seconds, kw.pop("first", 12.0), **kw)


def test_progress_estimates_the_prompt_then_the_time_left_from_the_median_token_time() -> None:
    view = ReplyView(ChatSettings(mode="encrypted", max_new_tokens=10))
    assert "estimated after two layers" in view.messages()[-1]["content"]
    for seconds, layer in [(2.0, 1), (4.0, 2), (6.0, 3)]:  # a prompt layer every 2 s
        stage = f"prompt (13 positions): layer {layer}/30"
        view.push(_update("", 0, seconds, first=0.0, stage=stage, start=24, new_positions=13))
    prompt = view.messages()[-1]["content"]
    assert "24 public positions" in prompt and "then 13 encrypted ones" in prompt
    assert "about 1 min 05 s to the first token" in prompt  # 28 layers x 2 s, plus the head and sampler
    for tokens, seconds in [(1, 12.0), (2, 18.0), (3, 30.0), (4, 36.0)]:  # gaps 6, 12, 6 s
        view.push(_update("abc", tokens, seconds))
    view.push(_update("abc", 4, 37.0, stage="token: layer 2/30", progress=(1, 33)))
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
        _update("Madrid.", 4, 40.0, first=30.0, finish="eos", start=42, new_positions=15, continued=True)
    )
    footer = view.messages()[-1]["content"]
    assert "15 new positions after the 42 the key holder already holds (nothing" in footer
    view.push(_update("Madrid.", 4, 40.0, first=30.0, finish="eos", start=48, new_positions=9,
                      continued=True, ahead=6))  # fmt: skip
    footer = view.messages()[-1]["content"]
    assert (
        "9 new positions after the 48 the key holder already holds, the last 6 of them read while" in footer
    )


def test_a_reply_waiting_in_line_shows_its_place_and_worker_text_is_escaped() -> None:
    view = ReplyView(ChatSettings(mode="encrypted", max_new_tokens=4))
    view.push(_update("", 0, 1.0, first=0.0, stage="queue: you are 2nd in line for the worker"))
    assert "you are 2nd in line" in view.messages()[-1]["metadata"]["title"]
    view.push(_update("", 0, 2.0, first=0.0, stage="![x](http://evil.example/x.png)"))
    title = view.messages()[-1]["metadata"]["title"]
    assert "![" not in title and "\\!\\[x\\]" in title


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
        yield _update(" Paris", 1, 1.0, first=1.0)
        raise WorkerUnavailable("the worker at ws://worker went away (1006); retry")


def test_a_worker_lost_for_good_keeps_the_text_the_keys_and_the_chat_state() -> None:
    ring = Keyring()
    session = _FakeSession()
    ring.session = session  # type: ignore[assignment]
    settings = ChatSettings(mode="encrypted", max_new_tokens=5, seed=0)
    views = list(stream_reply(_FakeService(), ring, [], settings, threading.Event()))  # type: ignore[arg-type]
    final = views[-1].messages()
    assert _text(final[0]) == " Paris"
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
        yield _update(" Paris.", 1, 1.0, first=1.0, finish="eos")

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


def test_worker_panel_reports_the_wire_the_parameters_and_the_oracle() -> None:
    from app.chat.replies import WireReport
    from app.chat.ui_panel import worker_panel
    from crypto.params import CKKS_DEFAULT

    ring = Keyring()
    assert "No encrypted reply yet" in worker_panel(ring, "ws://w")
    ring.last_label = "🔐 encrypted (TSP on, PP on, amp 3)"
    ring.last_wire = WireReport(
        key_upload_bytes=31_738_467,
        bytes_to_worker=129_951_868,
        bytes_from_worker=49_211_694,
        oracle_calls={"refresh": 28, "softmax": 1},
        worker_seconds={"sampler": 5.6},
        ciphertext_hex="5ea10400010000009a3102000000000028b52ffd60c9013d8c01ea4d0a8b9c11",
        preset="default",
        params=CKKS_DEFAULT.to_dict(),
        public_positions=24,
        public_text="<|im_start|>system\nYou are a helpful AI assistant",
        start=24,
        new_positions=13,
        processes=2,
    )
    panel = worker_panel(ring, "ws://w")
    for text in [
        "**Key holder → worker:** 130.0 MB",
        "**Worker → key holder:** 49.2 MB",
        "**Public keys (once per session):** 31.7 MB",
        "the first 32 bytes of the first SEAL ciphertext",
        "N = 8,192",
        "128-bit security",
        "**refresh** ×28: decrypt and re-encrypt",
        "**softmax** ×1",
        "sampler 5.6 s",
        "24 public positions",
        "`<|im_start|>system⏎You are a helpful AI assistant`",  # markers as they are, not escaped
        "13 positions encrypted",
        "2 compute processes",
    ]:
        assert text in panel, text
