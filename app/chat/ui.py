"""The chat page: streaming chat in three modes, encrypted progress, "What the worker saw", compare.

    Chat tab      a Chatbot with history, message box, Send and Stop; settings (mode, TSP, PP, temperature,
                  max new tokens, seed); the "What the worker saw" panel for the last encrypted token.
    Compare tab   one prompt and seed streamed in two modes or settings side by side.

This module is the layout and its wiring; the handlers are app/chat/ui_handlers.py. Send and Compare are
generators (STYLE.md rule 13): each yield replaces the chat with the history plus the reply so far
(`app.chat.ui_view.ReplyView`). Stop sets this session's stop flag; the running reply sees it at its
next update, closes the reply iterator (which sends Cancel to the worker) and ends with a "stopped"
footer, so the page never waits on a spinner. Keys live in a `gr.State` (`Keyring`) with a callable
initializer, a time to live and a delete callback that closes the worker connection (rule 14).
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from app.chat.service import CHAT_REPETITION_PENALTY, CHAT_TEMPERATURE, MODES, ChatService
from app.chat.ui_handlers import (
    MODE_INFO,
    cap_for_encrypted,
    forget_keys,
    make_chat,
    make_compare,
    request_stop,
    worker_status,
)
from app.chat.ui_panel import worker_panel
from app.chat.ui_parts import KEY_TTL_SECONDS, Keyring, OpenKeyrings, new_keyring
from app.worker.admission import redact
from model.generate import MAX_NEW_TOKENS_LIMIT

EXAMPLES = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in two sentences.",
]
REPLIES_AT_ONCE = 4  # sessions served at once (the worker itself runs one encrypted job; others get "busy")


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
        status = gr.Markdown(worker_status(readiness)[0], elem_id="worker_status")
        timer = gr.Timer(2.0, active=readiness is not None)
        timer.tick(
            lambda: worker_status(readiness), None, [status, timer], queue=False, show_progress="hidden"
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
        stop.click(lambda r: request_stop(r, "chat"), [ring], None, queue=False, api_name="stop")
        forget.click(lambda r: forget_keys(r, service), [ring], [ring, panel], api_name="forget_keys")
        mode.change(
            cap_for_encrypted,
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
        c_stop.click(lambda r: request_stop(r, "compare"), [ring], None, queue=False, api_name="stop_compare")

        def forget_keys_on_close(request: gr.Request) -> None:
            rings.close_session(getattr(request, "session_hash", None))

        page.unload(forget_keys_on_close)
    blocks: gr.Blocks = page
    blocks.open_keyrings = rings  # type: ignore[attr-defined]  # for tests: keys per open tab
    return blocks
