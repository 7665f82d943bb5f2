"""The Gradio chat page (plain mode for now): streaming replies, history, Stop, generation settings.

Gradio calls `respond` as a generator; each yield replaces the reply bubble with the growing text, and
Stop closes the generator, which stops the decode loop at its next step. Bad input (empty or over-long
message, invalid settings) is shown as an error and the page keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.chat import CHAT_TEMPERATURE, MODES, ChatService, ChatSettings, to_messages
from model.errors import ChatError
from model.generate import MAX_NEW_TOKENS_LIMIT

EXAMPLES = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in two sentences.",
]


def make_respond(service: ChatService):  # type: ignore[no-untyped-def]
    def respond(
        message: str,
        history: list[Any],
        mode: str,
        temperature: float,
        max_new_tokens: float,
        seed: float,
        tsp: bool,
        pp: bool,
    ) -> Iterator[str]:
        try:
            settings = ChatSettings(
                mode=mode,  # type: ignore[arg-type]
                max_new_tokens=int(max_new_tokens),
                temperature=float(temperature),
                seed=int(seed),
                tsp=bool(tsp),
                pp=bool(pp),
            )
            messages = to_messages(history, message or "")
            session = service.open_encrypted() if settings.mode == "encrypted" else None
            try:
                for update in service.reply(messages, settings, session):
                    footer = ""
                    if update.stage:
                        footer = f"\n\n<sub>{update.stage} …</sub>"
                    if update.finish is not None:
                        footer = (
                            f"\n\n<sub>{settings.label()} · {update.tokens} tokens · "
                            f"{update.tokens_per_second:.2f} tokens/s · stopped by {update.finish}</sub>"
                        )
                    yield update.text + footer
            finally:
                if session is not None:
                    session.close()
        except ChatError as exc:
            raise gr.Error(str(exc), title="Cannot answer") from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise gr.Error(f"Invalid setting: {exc}", title="Cannot answer") from exc

    return respond


def build_ui(service: ChatService) -> gr.Blocks:
    """The chat page for one loaded model."""
    loaded = service.loaded
    with gr.Blocks(title="Encrypted chat") as page:
        gr.Markdown(
            f"## Private chat under homomorphic encryption\n"
            f"Model: **{loaded.name}** · pick a mode under Settings: plain, simulate (the paper's sampler in "
            "floating point) or encrypted (the model runs on ciphertexts)."
        )
        gr.ChatInterface(
            make_respond(service),
            additional_inputs=[
                gr.Radio(list(MODES), value="plain", label="Mode"),
                gr.Slider(0.0, 2.0, value=CHAT_TEMPERATURE, step=0.05, label="Temperature (0 = greedy)"),
                gr.Slider(1, min(MAX_NEW_TOKENS_LIMIT, 1024), value=256, step=1, label="Max new tokens"),
                gr.Number(value=0, precision=0, minimum=0, label="Seed"),
                gr.Checkbox(value=True, label="TSP vocabulary order"),
                gr.Checkbox(value=True, label="Post-processing polynomial"),
            ],
            additional_inputs_accordion=gr.Accordion("Settings", open=False),
            examples=[[e, "plain", CHAT_TEMPERATURE, 256, 0, True, True] for e in EXAMPLES],
            run_examples_on_click=False,
            flagging_mode="never",
            save_history=False,
            fill_height=True,
        )
    return page
