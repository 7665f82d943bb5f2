"""The chat page: streaming chat in three modes, encrypted progress, "What the worker saw", compare.

    Chat tab      a Chatbot with history, message box, Send and Stop; settings (mode, TSP, PP, temperature,
                  max new tokens, seed); the "What the worker saw" panel for the last encrypted token.
    Compare tab   one prompt and seed streamed in two modes or settings side by side.

Handlers are generators (STYLE.md rule 13): each yield replaces the chat with the history plus the reply
so far (`app.chat.ui_parts.ReplyView`). Stop sets this session's stop flag; the running reply sees it at its
next update, closes the reply iterator (which sends Cancel to the worker) and ends with a "stopped"
footer, so the page never waits on a spinner. Keys live in a `gr.State` (`Keyring`) with a callable
initializer, a time to live and a delete callback that closes the worker connection (rule 14).
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from app.chat.service import (
    CHAT_REPETITION_PENALTY,
    CHAT_TEMPERATURE,
    MODES,
    ChatService,
    ChatSettings,
    to_messages,
)
from app.chat.ui_panel import worker_panel
from app.chat.ui_parts import (
    KEY_TTL_SECONDS,
    Keyring,
    OpenKeyrings,
    error_title,
    new_keyring,
    read_settings,
    stream_reply,
)
from app.chat.ui_view import ReplyView, error_message, plain, refused_message, verbatim
from app.worker.admission import redact
from core.errors import InputError
from model.generate import MAX_NEW_TOKENS_LIMIT

EXAMPLES = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in two sentences.",
]
ENCRYPTED_TOKENS = 64  # max new tokens when encrypted is picked: 12-20 minutes at most on 2 cores
MODE_INFO = {
    "plain": "plain: the exact model and exact sampling, in the clear on this server (the baseline).",
    "simulate": "simulate: the paper's polynomial sampler in floating point, mixture-embedding feedback.",
    "encrypted": (
        "encrypted: the model runs on CKKS ciphertexts on the worker. On a 2-core machine the first token "
        "takes one and a half to two and a half minutes and each further one 11-20 s; a follow-up "
        "continues from the key holder's state and sends only the positions the model has not read yet "
        "(the markers before your next message are read while you type). Max new tokens "
        f"is set to {ENCRYPTED_TOKENS} when you pick it "
        "(a reply ends sooner at the model's end-of-reply token); raise it if you are patient."
    ),
}
REPLIES_AT_ONCE = 4  # sessions served at once (the worker itself runs one encrypted job; others get "busy")
FRAME_SECONDS = 0.05  # at most ~20 chat redraws per second (the browser lags behind faster streams)


def _user(message: str) -> dict[str, Any]:
    return {"role": "user", "content": verbatim(message)}


def make_chat(service: ChatService, rings: OpenKeyrings):  # type: ignore[no-untyped-def]
    """The Send handler: validates, streams the reply as chat messages, updates the worker panel."""

    def chat(
        message: str | None,
        history: list[Any] | None,
        ring: Keyring,
        mode: str,
        temperature: float,
        max_new_tokens: float,
        seed: float,
        tsp: bool,
        pp: bool,
        penalty: float,
        pad: bool,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        ring = ring if isinstance(ring, Keyring) else Keyring()
        rings.track(getattr(request, "session_hash", None), ring)
        history = list(history or [])
        message = message or ""
        busy = (gr.update(value="", interactive=False), gr.update(interactive=False))
        ready = (gr.update(interactive=True), gr.update(interactive=True))
        try:
            if not message.strip():
                raise InputError("the message is empty; type some text before sending")
            settings = read_settings(mode, temperature, max_new_tokens, seed, tsp, pp, penalty, pad)
        except InputError as exc:
            shown = [*history, *([refused_message(message)] if message.strip() else [])]
            yield (
                [*shown, error_message(error_title(exc), plain(str(exc)))],
                *ready,
                ring,
                worker_panel(ring, service.worker_url),
            )
            return
        messages = to_messages(history, message)
        history.append(_user(message))
        stop = ring.stop["chat"]
        stop.clear()
        view: ReplyView | None = None
        shown_at = 0.0
        for view in stream_reply(service, ring, messages, settings, stop, ring.memory):
            if time.monotonic() - shown_at >= FRAME_SECONDS or view.note or view.stopping:
                shown_at = time.monotonic()  # fast plain replies: one frame per 50 ms, not per token
                yield [*history, *view.messages()], *busy, ring, worker_panel(ring, service.worker_url)
        if view is not None:
            if view.refused:  # not part of the conversation: the next message is built without it
                history[-1], ready = (
                    refused_message(message),
                    (gr.update(value=message, interactive=True), ready[1]),
                )
            yield [*history, *view.messages()], *ready, ring, worker_panel(ring, service.worker_url)

    return chat


def make_compare(service: ChatService, rings: OpenKeyrings):  # type: ignore[no-untyped-def]
    """The Compare handler: two replies to the same prompt and seed, streamed side by side (threads)."""

    def compare(
        prompt: str | None,
        ring: Keyring,
        mode_a: str,
        tsp_a: bool,
        pp_a: bool,
        mode_b: str,
        tsp_b: bool,
        pp_b: bool,
        temperature: float,
        max_new_tokens: float,
        seed: float,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        ring = ring if isinstance(ring, Keyring) else Keyring()
        rings.track(getattr(request, "session_hash", None), ring)
        prompt = prompt or ""
        if seed is None:  # both sides share one seed, drawn here
            seed = secrets.randbelow(2**32)
        shown: list[list[dict[str, Any]]] = [[_user(prompt)] if prompt.strip() else [], []]
        shown[1] = list(shown[0])
        chats: list[list[dict[str, Any]]] = [list(shown[0]), list(shown[1])]
        sides: list[ChatSettings | None] = [None, None]
        for i, (mode, tsp, pp) in enumerate(((mode_a, tsp_a, pp_a), (mode_b, tsp_b, pp_b))):
            try:
                if not prompt.strip():
                    raise InputError("the prompt is empty; type some text before comparing")
                sides[i] = read_settings(mode, temperature, max_new_tokens, seed, tsp, pp)
            except InputError as exc:
                chats[i] = [*shown[i], error_message(error_title(exc), plain(str(exc)))]
        a, b = sides
        if a is not None and b is not None and a.mode == b.mode == "encrypted":
            sides[1] = None
            chats[1] = [
                *shown[1],
                error_message(
                    "Only one side can be encrypted",
                    "The worker runs one encrypted job at a time; compare encrypted with plain or simulate.",
                ),
            ]
        stop = ring.stop["compare"]
        stop.clear()
        updates: queue.Queue[tuple[int, list[dict[str, Any]] | None]] = queue.Queue()
        messages = to_messages([], prompt)  # the model gets the prompt as a string, not a page part

        def pump(side: int, settings: ChatSettings) -> None:
            try:
                for view in stream_reply(service, ring, messages, settings, stop):
                    updates.put((side, view.messages()))
            finally:
                updates.put((side, None))

        running = 0
        for i, settings in enumerate(sides):
            if settings is not None:
                threading.Thread(
                    target=pump, args=(i, settings), name=f"he-chat-compare-{i}", daemon=True
                ).start()
                running += 1
        panel = worker_panel(ring, service.worker_url)
        yield chats[0], chats[1], gr.update(interactive=running == 0), ring, panel
        try:
            while running:
                side, rendered = updates.get()
                while True:  # take everything queued so far, then render once
                    if rendered is None:
                        running -= 1
                    else:
                        chats[side] = [*shown[side], *rendered]
                    try:
                        side, rendered = updates.get_nowait()
                    except queue.Empty:
                        break
                yield (
                    chats[0],
                    chats[1],
                    gr.update(interactive=False),
                    ring,
                    worker_panel(ring, service.worker_url),
                )
        finally:
            stop.set()  # the page went away mid-compare: let both threads wind down (and cancel the worker)
        yield chats[0], chats[1], gr.update(interactive=True), ring, worker_panel(ring, service.worker_url)

    return compare


def _cap_for_encrypted(mode: str, max_new_tokens: float) -> tuple[Any, Any]:
    capped = mode == "encrypted" and (max_new_tokens or 0) > ENCRYPTED_TOKENS
    return (
        gr.update(value=ENCRYPTED_TOKENS) if capped else gr.update(),
        MODE_INFO.get(mode, ""),
    )


def _worker_status(readiness: Callable[[], tuple[int, int]] | None) -> tuple[str, Any]:
    """The embedded worker's warm-up, while it lasts (an encrypted reply meanwhile waits for it)."""
    if readiness is None:
        return "", gr.Timer(active=False)
    done, total = readiness()
    if done >= total:
        return "Worker ready: its weight plaintexts are warm.", gr.Timer(active=False)
    return (
        f"⏳ Worker warming up: {100 * done // max(total, 1)}% of its weight plaintexts encoded "
        "(once, at start-up; an encrypted reply waits for it)."
    ), gr.Timer(active=True)


def _request_stop(ring: Keyring, which: str) -> None:
    if isinstance(ring, Keyring):
        ring.stop[which].set()


def _forget_keys(ring: Keyring, service: ChatService) -> tuple[Keyring, str]:
    ring.drop()
    ring.last_wire = None
    return ring, worker_panel(ring, service.worker_url)


def _header(service: ChatService) -> str:
    worker = f"worker `{redact(service.worker_url)}`" if service.worker_url else "no worker configured"
    return (
        "## 🔐 Private chat under homomorphic encryption\n"
        f"Model **{service.loaded.name}** · CKKS preset `{service.preset}` · {worker}. "
        "In **encrypted** mode the model runs on a worker that only ever sees ciphertexts and picks "
        "each next token with the TSP-ordered polynomial sampler of arXiv 2510.12343; **simulate** runs "
        "that sampler in floating point, **plain** is the exact model."
    )


def build_ui(
    service: ChatService, readiness: Callable[[], tuple[int, int]] | None = None, endpoint: str | None = None
) -> gr.Blocks:
    """The chat page for one loaded model; `readiness` reports the embedded worker's warm-up; `endpoint`
    is the address where key holders elsewhere reach this page's worker (app/worker/relay.py)."""
    limit = min(MAX_NEW_TOKENS_LIMIT, 1024)
    rings = OpenKeyrings()
    with gr.Blocks(title="Encrypted chat") as page:
        ring = gr.State(new_keyring, time_to_live=KEY_TTL_SECONDS, delete_callback=rings.close)
        gr.Markdown(_header(service), elem_id="header")
        if endpoint is not None:
            gr.Markdown(
                "**Keep your keys at home:** this page's worker also serves key holders elsewhere. On your "
                f"machine, `HE_CHAT_WORKER_URL='{endpoint}' make run` serves the page there: your browser "
                "session's secret key stays on your machine and this worker sees only ciphertexts.",
                elem_id="endpoint",
            )
        status = gr.Markdown(_worker_status(readiness)[0], elem_id="worker_status")
        timer = gr.Timer(2.0, active=readiness is not None)
        timer.tick(
            lambda: _worker_status(readiness), None, [status, timer], queue=False, show_progress="hidden"
        )
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=340):
                        chatbot = gr.Chatbot(
                            label="Conversation",
                            height=520,
                            feedback_options=None,
                            elem_id="chatbot",
                            placeholder="Type a message below. Each reply names the mode that made it.",
                        )
                        with gr.Row(equal_height=True):
                            textbox = gr.Textbox(
                                show_label=False,
                                placeholder="Your message (Enter sends)",
                                lines=1,
                                max_lines=6,
                                scale=5,
                                min_width=150,
                                elem_id="message",
                            )
                            send = gr.Button("Send", variant="primary", scale=1, min_width=70, elem_id="send")
                            stop = gr.Button("Stop", variant="stop", scale=1, min_width=70, elem_id="stop")
                        gr.Examples(EXAMPLES, inputs=[textbox], label="Examples")
                        forget = gr.Button("Forget my keys", size="sm", elem_id="forget")
                    with gr.Column(scale=2, min_width=300):
                        with gr.Accordion("Settings", open=True, elem_id="settings"):
                            mode = gr.Radio(list(MODES), value="plain", label="Mode", elem_id="mode")
                            mode_hint = gr.Markdown(MODE_INFO["plain"], elem_id="mode_hint")
                            with gr.Row():
                                tsp = gr.Checkbox(value=True, label="TSP vocabulary order", elem_id="tsp")
                                pp = gr.Checkbox(value=True, label="Post-processing (PP)", elem_id="pp")
                            pad = gr.Checkbox(
                                value=False,
                                label="Hide each reply's length from the worker",
                                info="Encrypted: the worker computes every reply to max new tokens (slower)",
                                elem_id="pad",
                            )
                            temperature = gr.Slider(
                                0.0, 2.0, value=CHAT_TEMPERATURE, step=0.05, label="Temperature (0 = greedy)"
                            )
                            penalty = gr.Slider(
                                1.0,
                                2.0,
                                value=CHAT_REPETITION_PENALTY,
                                step=0.05,
                                label="Repetition penalty (1 = off)",
                                info="Holds back words the conversation already has, so replies do not loop",
                                elem_id="penalty",
                            )
                            max_new_tokens = gr.Slider(
                                1, limit, value=128, step=1, label="Max new tokens", elem_id="max_new_tokens"
                            )
                            seed = gr.Number(
                                value=None,
                                precision=0,
                                minimum=0,
                                label="Seed (empty: a new one for each reply)",
                                info="The footer names the seed each reply used",
                                elem_id="seed",
                            )
                        with gr.Accordion("What the worker saw", open=True, elem_id="worker_saw"):
                            panel = gr.Markdown(worker_panel(Keyring(), service.worker_url), elem_id="panel")
            with gr.Tab("Compare", id="compare"):
                gr.Markdown(
                    "The same prompt and seed, two settings, streamed side by side. The default compares "
                    "the paper's sampler without and with TSP order and post-processing. One side may be "
                    "*encrypted* (it is much slower, so give it few tokens)."
                )
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES[1], lines=2, elem_id="compare_prompt")
                with gr.Row():
                    c_temperature = gr.Slider(
                        0.0, 2.0, value=1.0, step=0.05, label="Temperature", min_width=200
                    )
                    c_tokens = gr.Slider(
                        1,
                        limit,
                        value=48,
                        step=1,
                        label="Max new tokens",
                        min_width=200,
                        elem_id="compare_tokens",
                    )
                    c_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", min_width=120)
                with gr.Row():
                    run = gr.Button("Compare", variant="primary", elem_id="compare_run")
                    c_stop = gr.Button("Stop", variant="stop", elem_id="compare_stop")
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=300):
                        mode_a = gr.Radio(list(MODES), value="simulate", label="A: mode", elem_id="mode_a")
                        with gr.Row():
                            tsp_a = gr.Checkbox(value=False, label="TSP", elem_id="tsp_a")
                            pp_a = gr.Checkbox(value=False, label="PP", elem_id="pp_a")
                        chat_a = gr.Chatbot(label="A", height=380, feedback_options=None, elem_id="chat_a")
                    with gr.Column(min_width=300):
                        mode_b = gr.Radio(list(MODES), value="simulate", label="B: mode", elem_id="mode_b")
                        with gr.Row():
                            tsp_b = gr.Checkbox(value=True, label="TSP", elem_id="tsp_b")
                            pp_b = gr.Checkbox(value=True, label="PP", elem_id="pp_b")
                        chat_b = gr.Chatbot(label="B", height=380, feedback_options=None, elem_id="chat_b")

        settings = [mode, temperature, max_new_tokens, seed, tsp, pp, penalty, pad]
        gr.on(
            [textbox.submit, send.click],
            make_chat(service, rings),
            [textbox, chatbot, ring, *settings],
            [chatbot, textbox, send, ring, panel],
            api_name="chat",
            show_progress="hidden",
            concurrency_limit=REPLIES_AT_ONCE,
        )
        stop.click(lambda r: _request_stop(r, "chat"), [ring], None, queue=False, api_name="stop")
        forget.click(lambda r: _forget_keys(r, service), [ring], [ring, panel], api_name="forget_keys")
        mode.change(
            _cap_for_encrypted,
            [mode, max_new_tokens],
            [max_new_tokens, mode_hint],
            queue=False,
            api_visibility="private",
        )
        run.click(
            make_compare(service, rings),
            [prompt, ring, mode_a, tsp_a, pp_a, mode_b, tsp_b, pp_b, c_temperature, c_tokens, c_seed],
            [chat_a, chat_b, run, ring, panel],
            api_name="compare",
            show_progress="hidden",
            concurrency_limit=REPLIES_AT_ONCE,
        )
        c_stop.click(
            lambda r: _request_stop(r, "compare"), [ring], None, queue=False, api_name="stop_compare"
        )

        def forget_keys_on_close(request: gr.Request) -> None:
            rings.close_session(getattr(request, "session_hash", None))

        page.unload(forget_keys_on_close)
    blocks: gr.Blocks = page
    blocks.open_keyrings = rings  # type: ignore[attr-defined]  # for tests: keys per open tab
    return blocks
