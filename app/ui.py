"""The Gradio chat page (plain mode for now): streaming replies, history, Stop, generation settings.

Gradio calls `respond` as a generator; each yield replaces the reply bubble with the growing text, and
Stop closes the generator, which stops the decode loop at its next step. Bad input (empty or over-long
message, invalid settings) is shown as an error and the page keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.chat import CHAT_TEMPERATURE, stream_reply, to_messages
from model.errors import ChatError
from model.generate import MAX_NEW_TOKENS_LIMIT, GenerationSettings
from model.loading import LoadedModel

EXAMPLES = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in two sentences.",
]


def make_respond(loaded: LoadedModel):  # type: ignore[no-untyped-def]
    def respond(
        message: str, history: list[Any], temperature: float, max_new_tokens: float, seed: float
    ) -> Iterator[str]:
        try:
            settings = GenerationSettings(
                max_new_tokens=int(max_new_tokens), temperature=float(temperature), seed=int(seed)
            )
            messages = to_messages(history, message or "")
            for update in stream_reply(loaded, messages, settings):
                footer = ""
                if update.finish is not None:
                    footer = (
                        f"\n\n<sub>plain · {update.tokens} tokens · "
                        f"{update.tokens_per_second:.1f} tokens/s · stopped by {update.finish}</sub>"
                    )
                yield update.text + footer
        except ChatError as exc:
            raise gr.Error(str(exc), title="Cannot answer") from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise gr.Error(f"Invalid setting: {exc}", title="Cannot answer") from exc

    return respond


def build_ui(loaded: LoadedModel) -> gr.Blocks:
    """The chat page for one loaded model."""
    with gr.Blocks(title="Encrypted chat") as page:
        gr.Markdown(
            f"## Private chat under homomorphic encryption\n"
            f"Model: **{loaded.name}** · mode: **plain** (no encryption yet; the encrypted mode is coming)."
        )
        gr.ChatInterface(
            make_respond(loaded),
            additional_inputs=[
                gr.Slider(0.0, 2.0, value=CHAT_TEMPERATURE, step=0.05, label="Temperature (0 = greedy)"),
                gr.Slider(1, min(MAX_NEW_TOKENS_LIMIT, 1024), value=256, step=1, label="Max new tokens"),
                gr.Number(value=0, precision=0, minimum=0, label="Seed"),
            ],
            additional_inputs_accordion=gr.Accordion("Settings", open=False),
            examples=[[e, CHAT_TEMPERATURE, 256, 0] for e in EXAMPLES],
            run_examples_on_click=False,
            flagging_mode="never",
            save_history=False,
            fill_height=True,
        )
    return page
