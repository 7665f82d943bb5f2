"""The chat service the UI and the command line share: model + settings -> a stream of reply text.

This is the edge between the pure pipeline (`model.generate`) and the user: it turns UI/CLI history
into chat messages, builds the selector for the chosen mode and decodes tokens cumulatively
(STYLE.md rule 13). The encrypted mode will plug in here as another way to produce token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from model.generate import ExactSelector, FinishReason, GenerationSettings, build_prompt, generate
from model.loading import LoadedModel
from model.text import StreamDecoder

CHAT_TEMPERATURE = 0.3  # the chat default: SmolLM2-135M rambles at 1.0 (the sampler's research default)


@dataclass(frozen=True)
class ReplyUpdate:
    """The reply so far, streamed to the UI and the command line."""

    text: str  # the whole reply so far (cumulative; multi-byte safe)
    delta: str  # what this update added, for terminals
    tokens: int  # tokens generated so far
    seconds: float  # wall time so far, prompt prefill included
    first_token_seconds: float  # time to the first token (prefill + one selection)
    finish: FinishReason | None = None  # set on the last update

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first over the time they took (prefill excluded)."""
        decode = self.seconds - self.first_token_seconds
        return (self.tokens - 1) / decode if self.tokens > 1 and decode > 0 else 0.0


def _content_text(content: Any) -> str:
    """Gradio history content is a string or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(_content_text(part) for part in content)
    return ""


def to_messages(history: Sequence[Any], message: str) -> list[dict[str, str]]:
    """Chat history (Gradio "messages" format) plus the new user message, as template messages."""
    messages: list[dict[str, str]] = []
    for turn in history:
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant", "system"):
            continue
        text = _content_text(turn.get("content"))
        if text:
            messages.append({"role": str(turn["role"]), "content": text})
    messages.append({"role": "user", "content": message})
    return messages


def stream_reply(
    loaded: LoadedModel,
    messages: Sequence[dict[str, str]],
    settings: GenerationSettings,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[ReplyUpdate]:
    """Generate a plain-mode reply and yield the growing text.

    Raises:
        InputError: empty or over-long conversation, before any token is generated.
    """
    prompt = build_prompt(loaded, messages)
    selector = ExactSelector(loaded.input_embeddings(), settings.temperature)
    decoder = StreamDecoder(loaded.tokenizer)
    seconds = first = 0.0
    for step in generate(loaded, prompt, selector, settings, should_stop=should_stop):
        seconds += step.seconds
        first = first or seconds
        delta = decoder.push(step.token_id)
        if step.finish is not None:
            delta += decoder.flush()
        yield ReplyUpdate(
            text=decoder.emitted,
            delta=delta,
            tokens=step.index + 1,
            seconds=seconds,
            first_token_seconds=first,
            finish=step.finish,
        )
