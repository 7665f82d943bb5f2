"""The real chat page in headless Chromium (Playwright driving Debian's /usr/bin/chromium).

One page, one embedded worker (a process of its own with two compute processes, as `make run` starts
it) and the tiny model for the whole module; the tests run in file order and share one browser tab (one
Gradio session, so the encrypted keys are created once):

    empty page -> plain reply streams, Stop -> settings toggled (simulate, TSP/PP off) -> an encrypted
    reply with progress and "What the worker saw" -> a follow-up that continues the chat, Stop during it,
    then one more that still continues the first turn's state -> compare -> phone width -> the worker goes
    down (last: it stops the worker).

Screenshots of each state go to $HE_CHAT_SCREENSHOTS when set (the committed ones in docs/screenshots
come from `HE_CHAT_SCREENSHOTS=docs/screenshots pytest tests/app/chat/test_browser.py`),
else to a temp folder.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.chat.service import CHAT_REPETITION_PENALTY, ChatService
from model.conversation import MAX_PROMPT_CHARS
from model.loading import LoadedModel

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (browser tests)")
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TITLES = "#chatbot .thought-group > .title"  # the per-reply status / footer / error ("thought") titles
REPLIES = "#chatbot [data-testid=bot]:not(:has(.thought-group))"  # the reply bubbles' text
WATCH_REPLY = f"""() => {{
    window.replyLengths = [];
    const before = document.querySelectorAll("{REPLIES}").length;
    new MutationObserver(() => {{
        const replies = document.querySelectorAll("{REPLIES}");
        if (replies.length > before) window.replyLengths.push(replies[replies.length - 1].innerText.length);
    }}).observe(document.querySelector("#chatbot"), {{subtree: true, childList: true, characterData: true}});
}}"""
SLOW = 300_000  # ms: encrypted replies on a shared 2-core machine
GUARD = f"repetition penalty {CHAT_REPETITION_PENALTY:g}"  # the chat's default guard, named in every footer


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("HE_CHAT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def app(tiny: LoadedModel) -> Iterator[dict[str, Any]]:
    """The page on a free loopback port with an in-process worker (as `python -m app --tiny` runs it)."""
    from app.chat.service import start_local_worker
    from app.chat.ui import build_ui

    service = ChatService.create(tiny)
    worker = start_local_worker(service, 2)
    page = build_ui(service, worker.readiness)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    page.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    state = {"url": f"http://127.0.0.1:{port}/", "worker": worker, "service": service, "stopped": False}
    state["rings"] = page.open_keyrings
    try:
        yield state
    finally:
        page.close()
        if not state["stopped"]:
            worker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make browser)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def tab(browser: Any, app: dict[str, Any]) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(app["url"])
    expect(page.locator("#send")).to_be_visible()
    yield page
    page.close()


def send(page: Any, text: str) -> None:
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()


def set_number(page: Any, elem_id: str, value: int) -> None:
    """Type a number; a tab Gradio has just mounted may still write its initial value over the first fill."""
    box = page.locator(f"#{elem_id} input[type=number]")
    for _ in range(3):
        box.fill(str(value))
        box.press("Enter")
        try:
            expect(box).to_have_value(str(value), timeout=3_000)
            return
        except AssertionError:
            continue
    expect(box).to_have_value(str(value))


def last_title(page: Any, chat: str = "#chatbot") -> Any:
    return page.locator(f"{chat} .thought-group > .title").last


def wait_ready(page: Any) -> None:
    expect(page.locator("#send")).to_be_enabled(timeout=SLOW)


def test_empty_page_at_desktop_width(tab: Any, shots: Path) -> None:
    expect(tab.locator("#header")).to_contain_text("Private chat under homomorphic encryption")
    expect(tab.locator("#mode input[value=plain]")).to_be_checked()
    expect(tab.locator("#panel")).to_contain_text("none yet")
    assert tab.evaluate("document.documentElement.scrollWidth") <= 1440
    tab.screenshot(path=str(shots / "01-empty-1440.png"))


def test_plain_reply_streams_and_stop_ends_it(tab: Any, app: dict[str, Any], shots: Path) -> None:
    # The tiny model writes its whole context in ~3 s; slow it to ~20 tokens/s so Stop lands mid-reply.
    service = app["service"]
    fast_reply = service.reply

    def slow_reply(*args: Any) -> Iterator[Any]:
        for update in fast_reply(*args):
            time.sleep(0.05)
            yield update

    service.reply = slow_reply
    try:
        _stream_and_stop(tab, shots)
    finally:
        del service.reply  # back to the class's method


def _stream_and_stop(tab: Any, shots: Path) -> None:
    set_number(tab, "max_new_tokens", 1024)  # the tiny model's context (512) ends it first, if not Stop
    tab.evaluate(WATCH_REPLY)  # records the reply's length at every change of the chat
    send(tab, "Tell me a long story about the sea.")
    tab.wait_for_function("new Set(window.replyLengths.filter(n => n > 0)).size >= 2")
    tab.screenshot(path=str(shots / "02-plain-streaming.png"))
    tab.locator("#stop").click()
    expect(last_title(tab)).to_contain_text("stopped by you", timeout=60_000)
    expect(last_title(tab)).to_contain_text("🟢 plain")
    wait_ready(tab)
    lengths = tab.evaluate("window.replyLengths")
    assert len({n for n in lengths if n > 0}) >= 3, f"the reply should grow while streaming: {lengths}"
    tokens = int(last_title(tab).inner_text().split(" · ")[1].split()[0])
    assert 0 < tokens < 500


def test_a_refused_message_is_not_sent_and_the_chat_goes_on(tab: Any, shots: Path) -> None:
    set_number(tab, "max_new_tokens", 4)
    too_long = "Why is the sea salty? " * (MAX_PROMPT_CHARS // 22 + 1)
    send(tab, too_long)
    expect(tab.locator(TITLES).last).to_contain_text("⚠️ Cannot send this", timeout=60_000)
    error = tab.locator("#chatbot .thought-group").last
    expect(error).to_contain_text(f"This message is {len(too_long):,} characters; at most")
    expect(tab.locator("#chatbot .thought-group").nth(-2)).to_contain_text("Not sent")  # folded, in its place
    wait_ready(tab)
    assert tab.locator("#message textarea").input_value() == too_long, "the text is back in the box"
    tab.screenshot(path=str(shots / "02b-refused-message.png"))
    send(tab, "Thanks! One more tip?")  # built without the refused message: it gets a reply
    expect(last_title(tab)).to_contain_text(f"🟢 plain ({GUARD}) · 4 tokens", timeout=60_000)
    wait_ready(tab)


def test_settings_toggles_reach_the_reply(tab: Any, shots: Path) -> None:
    tab.locator("#mode input[value=simulate]").check()
    expect(tab.locator("#mode_hint")).to_contain_text("polynomial sampler")
    tab.locator("#tsp input[type=checkbox]").uncheck()
    tab.locator("#pp input[type=checkbox]").uncheck()
    set_number(tab, "max_new_tokens", 5)
    send(tab, "What is the capital of France?")
    expect(last_title(tab)).to_contain_text(
        f"🧪 simulate (TSP off, PP off, amp 3, {GUARD}) · 5 tokens", timeout=120_000
    )
    wait_ready(tab)
    tab.locator("#tsp input[type=checkbox]").check()
    tab.locator("#pp input[type=checkbox]").check()
    tab.screenshot(path=str(shots / "03-simulate-settings.png"))


def test_encrypted_reply_shows_progress_and_what_the_worker_saw(tab: Any, shots: Path) -> None:
    set_number(tab, "max_new_tokens", 100)
    tab.locator("#mode input[value=encrypted]").check()
    expect(tab.locator("#max_new_tokens input[type=number]")).to_have_value("64")  # lowered on switching
    expect(tab.locator("#mode_hint")).to_contain_text("ciphertexts")
    set_number(tab, "max_new_tokens", 2)
    send(tab, "Hi")
    expect(last_title(tab)).to_contain_text("token 1 of at most 2", timeout=120_000)
    expect(last_title(tab)).to_contain_text("layer", timeout=120_000)
    tab.screenshot(path=str(shots / "04-encrypted-progress.png"))
    expect(last_title(tab)).to_contain_text(
        f"🔐 encrypted (TSP on, PP on, amp 3, {GUARD}) · 2 tokens", timeout=SLOW
    )
    wait_ready(tab)
    assert tab.locator(REPLIES).last.inner_text().strip(), "the decrypted reply text is shown"
    panel = tab.locator("#panel")
    for text in [
        "Key holder → worker",
        "Public keys (once per session)",
        "128-bit security",
        "refresh",
        "softmax",
    ]:
        expect(panel).to_contain_text(text)
    expect(panel).to_contain_text("MB of public keys")
    tab.locator("#worker_saw").scroll_into_view_if_needed()
    tab.screenshot(path=str(shots / "05-encrypted-worker-saw.png"), full_page=True)


def test_a_follow_up_continues_stop_keeps_the_first_turns_state(tab: Any, shots: Path) -> None:
    set_number(tab, "max_new_tokens", 3)
    send(tab, "And then?")  # one line, after the encrypted reply above: only the new positions go up
    thought = tab.locator("#chatbot .thought-group").last
    # the end of the reply and the markers before this message were read ahead after the first reply:
    # only the message and the markers after it go up (9 positions here; 15 without the read-ahead)
    expect(thought).to_contain_text(
        re.compile(r"Continuing the conversation: \d new positions"), timeout=120_000
    )
    assert "creating your keys" not in last_title(tab).inner_text()  # the session's keys are reused
    expect(last_title(tab)).to_contain_text(
        f"encrypted (TSP on, PP on, amp 3, {GUARD}) · 3 tokens", timeout=SLOW
    )
    wait_ready(tab)
    send(tab, "Tell me more about the sea and the sky and the wind.")
    expect(last_title(tab)).to_contain_text("layer", timeout=120_000)
    tab.locator("#stop").click()
    expect(last_title(tab)).to_contain_text("stopped by you", timeout=30_000)  # measured: well under 2 s
    wait_ready(tab)
    tab.evaluate("window.scrollTo(0, 0)")
    tab.screenshot(path=str(shots / "06-encrypted-stopped.png"))
    set_number(tab, "max_new_tokens", 1)
    send(tab, "Thanks!")  # the stopped turn added nothing to the state: this one continues the first two
    expect(tab.locator("#chatbot .thought-group").last).to_contain_text(
        "Continuing the conversation", timeout=SLOW
    )
    expect(last_title(tab)).to_contain_text("· 1 token", timeout=SLOW)
    wait_ready(tab)


def test_compare_streams_two_settings_side_by_side(tab: Any, shots: Path) -> None:
    tab.get_by_role("tab", name="Compare").click()
    try:
        set_number(tab, "compare_tokens", 12)
        tab.locator("#compare_run").click()
        expect(last_title(tab, "#chat_a")).to_contain_text(
            "🧪 simulate (TSP off, PP off, amp 3) · 12 tokens", timeout=120_000
        )
        expect(last_title(tab, "#chat_b")).to_contain_text("🧪 simulate (TSP on, PP on, amp 3) · 12 tokens")
        expect(tab.locator("#compare_run")).to_be_enabled(timeout=60_000)
        tab.evaluate("window.scrollTo(0, 0)")
        tab.screenshot(path=str(shots / "07-compare.png"))
    finally:  # the tests after this one use the Chat tab
        tab.get_by_role("tab", name="Chat").click()


def test_phone_width_is_usable(browser: Any, app: dict[str, Any], shots: Path) -> None:
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        phone.goto(app["url"])
        expect(phone.locator("#send")).to_be_visible(timeout=60_000)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 392, "no sideways scrolling"
        for elem in ["#message", "#send", "#stop", "#mode"]:
            box = phone.locator(elem).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 391, elem
        set_number(phone, "max_new_tokens", 8)
        send(phone, "Hello from a phone")
        expect(last_title(phone)).to_contain_text(f"🟢 plain ({GUARD}) · 8 tokens", timeout=120_000)
        phone.screenshot(path=str(shots / "09-phone-390.png"), full_page=True)
    finally:
        tabs = len(app["rings"])
        phone.close(run_before_unload=True)
    deadline = time.monotonic() + 30  # closing the tab forgets its keys (Blocks.unload)
    while len(app["rings"]) >= tabs and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(app["rings"]) == tabs - 1


def test_worker_down_is_a_chat_message_and_the_page_keeps_working(
    tab: Any, app: dict[str, Any], shots: Path
) -> None:
    app["worker"].stop()
    app["stopped"] = True
    tab.locator("#mode input[value=encrypted]").check()
    set_number(tab, "max_new_tokens", 2)
    send(tab, "Are you there?")
    error = tab.locator(TITLES).last
    expect(error).to_contain_text("⚠️ The worker", timeout=120_000)
    wait_ready(tab)
    expect(tab.locator("#panel")).to_contain_text("MB of public keys")  # the keys and the state stay
    expect(tab.locator("#chatbot .thought-group").last).to_contain_text(
        re.compile("the worker at ws:", re.I)  # (escaped: no address becomes a link)
    )
    expect(tab.locator("#chatbot .thought-group").last.locator(".content")).to_be_visible()  # opened
    tab.evaluate("window.scrollTo(0, 0)")
    tab.screenshot(path=str(shots / "08-worker-down.png"))
    send(tab, "Still there?")  # a second try reconnects, and says the worker cannot be reached
    expect(tab.locator(TITLES).last).to_contain_text("⚠️ The worker cannot be reached", timeout=120_000)
    wait_ready(tab)
    tab.locator("#mode input[value=plain]").check()
    send(tab, "Plain still works")
    expect(last_title(tab)).to_contain_text(f"🟢 plain ({GUARD}) · 2 tokens", timeout=120_000)
