"""Turning a stream of token ids into a growing string, safely for multi-byte characters.

Decoding token by token breaks characters that span tokens (byte-level BPE splits emoji and many
non-Latin letters). We decode the whole reply so far each time and emit only what is new, holding back
a trailing U+FFFD until the bytes that complete it arrive. Special tokens (EOS, chat markers) are skipped.

References: transformers TextStreamer (cumulative decode); STYLE.md rule 13.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

REPLACEMENT = "\ufffd"


class StreamDecoder:
    """Accumulates token ids; `push` returns the newly completed text (possibly empty)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""  # text already handed out

    @property
    def text(self) -> str:
        """Everything decodable so far, including a trailing incomplete character if any."""
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    @property
    def stable_text(self) -> str:
        """The text so far without a trailing incomplete character: what a UI should show."""
        return self.text.rstrip(REPLACEMENT)

    def push(self, token_id: int) -> str:
        """Add a token; return the text it completed (for printing deltas to a terminal)."""
        self.ids.append(token_id)
        stable = self.stable_text
        # Byte-level BPE decodes by concatenation, so `stable` extends what was emitted; if a tokenizer
        # ever rewrote earlier text, a terminal cannot take it back, so emit only the genuinely new tail.
        new = stable[len(self.emitted) :] if stable.startswith(self.emitted) else ""
        self.emitted = stable if new or stable.startswith(self.emitted) else self.emitted
        return new

    def flush(self) -> str:
        """At the end of a reply: whatever was held back (a genuinely invalid byte shows as U+FFFD)."""
        full = self.text
        new = full[len(self.emitted) :] if full.startswith(self.emitted) else ""
        self.emitted = full
        return new
