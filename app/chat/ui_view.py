"""One reply as the chat page shows it: the text, a live progress note, then a footer.

`ReplyView` renders itself as Gradio "messages": the reply text, then one assistant message with
`metadata` (a "thought") that is a live progress note while the reply runs and the reply's footer when it
ends. In encrypted mode the note says what the worker is doing, how many positions this turn sends (a new
chat: the public prefix computed in the clear, then the encrypted rest; a later turn: only the new
positions after those the key holder already holds), an estimate of the time left for the prompt (from
the pace of its layers), then the time to the first token, seconds per token and the time left.
`app.chat.service.to_messages` skips every metadata message, so neither notes, footers nor errors reach the
model's context.

References: gradio ChatMessage metadata ("thoughts"); STYLE.md rule 12.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from app.chat.replies import ReplyUpdate
from app.chat.service import ChatSettings

BADGE = {"plain": "🟢", "simulate": "🧪", "encrypted": "🔐"}
FINISH = {
    "eos": "end of reply",
    "length": "reached max new tokens",
    "context": "context window full",
    "cancelled": "stopped",
}
LAYER = re.compile(r"layer (\d+)/(\d+)")


MARKUP = re.compile(r"([\\`*_{}\[\]()<>#+!|~&])")


def plain(text: str) -> str:
    """Text shown exactly as written in a Markdown message (a worker's error or stage cannot add links,
    images or HTML to the page): every Markdown and HTML character is escaped, lines become spaces."""
    escaped = MARKUP.sub(r"\\\1", " ".join(str(text).split()))
    return escaped.replace("://", ":/\u2060/")  # a word joiner: no bare address becomes a link


def seconds_text(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    minutes, sec = divmod(int(round(s)), 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def verbatim(text: str) -> dict[str, str]:
    """Message content Gradio keeps as it is: a plain string goes through `inspect.cleandoc`, which strips
    a reply's leading space and a pasted block's indentation, so the history the page sends back would no
    longer be what the model read (and a follow-up could not continue from the chat's state)."""
    return {"type": "text", "text": text}


def refused_message(text: str) -> dict[str, Any]:
    """A user message that was not sent (refused before any token): shown folded, with its text inside,
    and, like every message with metadata, left out of the model's context."""
    return {
        "role": "user",
        "content": verbatim(text),
        "metadata": {
            "title": "✖ Not sent (the reason is below; your text is back in the box)",
            "status": "done",
        },
    }


def error_message(title: str, text: str) -> dict[str, Any]:
    """An assistant message shown as a warning; its metadata keeps it out of the model's context."""
    return {"role": "assistant", "content": text, "metadata": {"title": f"⚠️ {title}"}}


@dataclass
class ReplyView:
    """One reply as the page shows it; `stream_reply` updates it in place."""

    settings: ChatSettings
    update: ReplyUpdate | None = None
    token_seconds: list[float] = field(default_factory=list)  # wall time at which each token arrived
    note: str = ""  # key creation and upload progress, or the wait for the last turn's read-ahead
    note_title: str = "creating your keys"
    stopping: bool = False
    stopped: bool = False
    error: tuple[str, str] | None = None  # (title, text)
    started: float = field(default_factory=time.perf_counter)
    layer_times: list[tuple[float, int, int]] = field(default_factory=list)  # the prompt's (time, layer, of)

    def push(self, update: ReplyUpdate) -> None:
        if update.tokens > len(self.token_seconds):
            self.token_seconds.append(update.seconds)
        if update.tokens == 0 and (found := LAYER.search(update.stage)):
            layer, layers = int(found.group(1)), int(found.group(2))
            if not self.layer_times or self.layer_times[-1][1] != layer:
                self.layer_times.append((update.seconds, layer, layers))
        self.update = update

    @property
    def tokens(self) -> int:
        return self.update.tokens if self.update else 0

    def seconds_per_token(self) -> float | None:
        """Median time per token after the first (the first includes the prompt); None before two."""
        gaps = [b - a for a, b in zip(self.token_seconds, self.token_seconds[1:], strict=False)]
        return statistics.median(gaps) if gaps else None

    def prompt_left(self) -> float | None:
        """Seconds until the first token, from the pace of the prompt's layers so far (None: too early)."""
        if len(self.layer_times) < 2 or self.update is None:
            return None
        (t0, l0, layers), (t1, l1, _) = self.layer_times[0], self.layer_times[-1]
        per_layer = (t1 - t0) / max(l1 - l0, 1)
        left = (layers - l1 + 1) * per_layer - (self.update.seconds - t1)
        return max(left, 0.0) + 0.15 * layers * per_layer  # the LM head and the sampler, about 4 layers

    def seconds_left(self) -> float | None:
        per_token = self.seconds_per_token()
        if per_token is None:
            return None
        return max(self.settings.max_new_tokens - self.tokens, 0) * per_token

    @property
    def refused(self) -> bool:
        """The reply failed before any token (bad input, the worker refusing): its message is not sent."""
        return self.error is not None and self.tokens == 0 and not self.stopped

    @property
    def finished(self) -> bool:
        return self.stopped or self.error is not None or bool(self.update and self.update.finish)

    def messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.update and self.update.text:
            out.append({"role": "assistant", "content": verbatim(self.update.text)})
        if not self.refused:  # a refused message gets its reason only, no "0 tokens" footer
            out.append(self._status())
        if self.error:
            out.append(error_message(*self.error))
        return out

    def _status(self) -> dict[str, Any]:
        label = f"{BADGE[self.settings.mode]} {self.settings.label()}"
        elapsed = self.update.seconds if self.update else time.perf_counter() - self.started
        if self.finished:
            return self._footer(label, elapsed)
        if self.note:
            title, lines = f"{label} · {self.note_title}", [self.note]
        elif self.stopping:
            title, lines = (
                f"{label} · stopping…",
                ["Cancelling the job; the page is ready again in a moment."],
            )
        else:
            title, lines = self._progress(label)
        return {
            "role": "assistant",
            "content": "\n\n".join(lines),
            "metadata": {"title": title, "status": "pending"},
        }

    def _positions(self) -> str:
        update = self.update
        if update is None or not update.new_positions:
            return ""
        if update.continued:
            ahead = f", the last {update.ahead} of them read while you typed" if update.ahead else ""
            return (
                f"Continuing the conversation: {update.new_positions} new positions after the "
                f"{update.start} the key holder already holds{ahead} (nothing is re-read)."
            )
        public = update.start if self.settings.mode == "encrypted" else 0
        if public:
            return (
                f"Reading the conversation: {public} public positions (the template's opening, computed "
                f"by the worker in the clear, once), then {update.new_positions} encrypted ones."
            )
        return f"Reading the conversation: {update.new_positions} positions."

    def _progress(self, label: str) -> tuple[str, list[str]]:
        n, k = self.settings.max_new_tokens, self.tokens
        update = self.update
        if self.settings.mode != "encrypted":
            return f"{label} · generating · {k} of at most {n} tokens", []
        stage = "waiting for the worker" if k else "starting"
        if update and update.stage:
            stage = plain(update.stage)
        done, total = update.progress if update else (0, 0)
        title = f"{label} · token {min(k + 1, n)} of at most {n} · {stage}"
        lines = [f"Now: token {min(k + 1, n)}, {stage}" + (f" (step {done + 1} of {total})" if total else "")]
        if positions := self._positions():
            lines.append(positions)
        if k == 0:
            left = self.prompt_left()
            lines.append(
                f"Reading the prompt: about {seconds_text(left)} to the first token."
                if left is not None
                else "Time to the first token: estimated after two layers of the prompt."
            )
        else:
            per_token, left = self.seconds_per_token(), self.seconds_left()
            first = f"First token after {seconds_text(update.first_token_seconds)}" if update else ""
            if per_token is not None and left is not None:
                lines.append(
                    f"{first} · {seconds_text(per_token)} per token · about {seconds_text(left)} left for "
                    f"the remaining {n - k} (fewer if the reply ends sooner)"
                )
            else:
                lines.append(f"{first} · seconds per token: measured after the second token")
        if update and update.notice:
            lines.append(f"ℹ️ {update.notice}")
        return title, lines

    def _footer(self, label: str, elapsed: float) -> dict[str, Any]:
        update = self.update
        k = self.tokens
        parts = [label, f"{k} token{'s' if k != 1 else ''}"]
        if update and update.tokens_per_second:
            parts.append(f"{update.tokens_per_second:.2f} tokens/s")
        if self.stopped:
            parts.append("stopped by you")
        elif self.error:
            parts.append("interrupted")
        elif update and update.finish:
            parts.append(FINISH.get(str(update.finish), plain(str(update.finish))))
        details = [
            f"Temperature {self.settings.temperature:g} · seed {self.settings.seed} · "
            f"at most {self.settings.max_new_tokens} new tokens · {seconds_text(elapsed)} in all"
        ]
        if update and update.first_token_seconds:
            per_token = self.seconds_per_token()
            pace = f", then {seconds_text(per_token)} per token" if per_token is not None else ""
            first = seconds_text(update.first_token_seconds)
            details.append(f"First token after {first} (prompt included){pace}.")
        if positions := self._positions():
            details.append(positions)
        if update and update.notice:
            details.append(f"ℹ️ {update.notice}")
        return {
            "role": "assistant",
            "content": "\n\n".join(details),
            "metadata": {"title": " · ".join(parts), "status": "done", "duration": round(elapsed, 1)},
        }
