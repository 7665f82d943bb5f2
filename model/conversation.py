"""What a chat's model has already read, and what a new turn has to add.

A chat keeps its model state between turns (the attention cache: transformers' for plain and simulate,
the key holder's for encrypted). `Conversation` describes that state: `text` is the chat-template text
its positions stand for and `ids` the token of every position (a reply position holds the token that was
shown; in simulate and encrypted mode the model read the mixture embedding, and the cache keeps exactly
that). A new turn renders the whole conversation with the chat template; when the rendering starts with
the state's text and the state was made under the same settings (`key`: mode, model, TSP order, CKKS
preset), only the rest is tokenised and prefilled: the end of the last reply, the turn markers, the new
message. Anything else (an edited or retried message, a cleared chat, other settings) starts again from
the full prompt, so a stale state is never reused.

Public prefixes: the positions before the first private token (the model's default system prompt and the
template's opening markers) carry nothing private, so the worker computes their keys and values once in
the clear and an encrypted chat starts from them (`public_prefixes`). With a custom system prompt only the
markers before it are public. The worker learns which prefix a chat began with (its length), nothing more.

References: DESIGN.md section 4; transformers chat templates (`apply_chat_template`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from core.errors import InputError
from model.text import REPLACEMENT

MAX_PROMPT_CHARS = 20_000  # a guard against pasting a book into the chat box; the token check follows
_SENTINEL = "Q7xZsentinelQ7xZ"  # stands in for private content when the template's public parts are found


@dataclass(frozen=True)
class PublicPrefix:
    """Template text before any private content, with its tokens."""

    name: str  # "default" (the template's own system prompt) or "system" (before a custom system prompt)
    text: str
    ids: tuple[int, ...]

    @property
    def id(self) -> str:
        """What worker and key holder agree on: a digest of the name and the tokens."""
        digest = hashlib.sha256(f"{self.name}:{','.join(map(str, self.ids))}".encode()).hexdigest()
        return f"{self.name}-{digest[:12]}"


@dataclass
class Conversation:
    """The positions in a model's cache: the template text they stand for and one token id each."""

    key: tuple[str, ...]  # the settings the state was made under; another key never reuses it
    text: str = ""
    ids: list[int] = field(default_factory=list)
    prefix: str = ""  # id of the public prefix the state began with ("" if none)
    ahead: int = 0  # positions at its end read ahead after the last reply (`read_ahead_text`)


@dataclass(frozen=True)
class Turn:
    """One reply's plan: the positions to prefill and the state they continue."""

    text: str  # the whole conversation in template text, ending with the assistant's opening markers
    base: Conversation  # the state the turn continues (a fresh one: empty, or a public prefix)
    new_ids: list[int]  # the positions to prefill
    continued: bool  # an earlier turn's state is reused
    opening: int = 0  # how many of new_ids, at their end, open the reply (`<|im_start|>assistant`)

    @property
    def start(self) -> int:
        """Positions already in the cache when the turn begins."""
        return len(self.base.ids)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of template text (special markers such as <|im_end|> become their own tokens)."""
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def template_text(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
) -> str:
    """The conversation rendered with the model's chat template."""
    text: Any = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, tokenize=False
    )
    return str(text)


def public_prefixes(tokenizer: PreTrainedTokenizerBase) -> tuple[PublicPrefix, ...]:
    """The template's public openings: with its default system prompt, and before a custom one."""
    found = []
    for name, messages in (
        ("default", [{"role": "user", "content": _SENTINEL}]),
        ("system", [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "x"}]),
    ):
        text = template_text(tokenizer, messages)
        if _SENTINEL in text and text.index(_SENTINEL) > 0:
            public = text[: text.index(_SENTINEL)]
            found.append(PublicPrefix(name, public, tuple(encode_text(tokenizer, public))))
    return tuple(found)


def check_messages(messages: Sequence[dict[str, str]]) -> None:
    """The conversation must end with a non-empty user message and stay under MAX_PROMPT_CHARS.

    Raises:
        InputError: naming what to change.
    """
    if not messages:
        raise InputError("The conversation is empty; type a message first.")
    last = messages[-1]
    if last.get("role") != "user":
        raise InputError("The last message must come from the user; type a message to reply to.")
    if not last.get("content", "").strip():
        raise InputError("The message is empty; type some text before sending.")
    size = len(last.get("content", ""))
    before = sum(len(m.get("content", "")) for m in messages[:-1])
    if before + size > MAX_PROMPT_CHARS:
        room = MAX_PROMPT_CHARS - before
        if len(messages) == 1:
            fix = f"the limit is {MAX_PROMPT_CHARS:,}. Shorten it."
        elif room > 0:
            fix = (
                f"at most {room:,} fit with the conversation so far (the limit is {MAX_PROMPT_CHARS:,} "
                "for the whole conversation). Shorten it or clear the history."
            )
        else:
            fix = (
                f"the conversation so far already holds {before:,} of the {MAX_PROMPT_CHARS:,} allowed. "
                "Clear the history to go on."
            )
        raise InputError(f"This message is {size:,} characters; {fix}")


def plan_turn(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, str]],
    key: tuple[str, ...],
    state: Conversation | None,
    window: int,
    prefixes: Sequence[PublicPrefix] = (),
    reserve: int = 1,
) -> Turn:
    """What this turn must prefill: only the new positions if `state` continues, else the whole prompt.

    Args:
        messages: the conversation so far, ending with the user's new message.
        key: the settings of this reply; a state made under another key is not reused.
        state: the chat's model state after its last reply (None: nothing cached).
        window: the model's context window; `reserve` positions must stay free for the reply.
        prefixes: public prefixes a fresh state may start from (encrypted mode; their keys and values
            come from the worker).

    Raises:
        InputError: an empty or over-long conversation, or one that does not fit the context window.
    """
    check_messages(messages)
    text = template_text(tokenizer, messages)
    closed = template_text(tokenizer, messages, add_generation_prompt=False)
    opening = encode_text(tokenizer, text[len(closed) :]) if text.startswith(closed) else []

    def turn(base: Conversation, continued: bool) -> Turn:
        new_ids = encode_text(tokenizer, text[len(base.text) :])
        whole = 0 < len(opening) < len(new_ids) and new_ids[-len(opening) :] == opening
        return _fits(Turn(text, base, new_ids, continued, len(opening) if whole else 0), window, reserve)

    if state is not None and state.key == key and state.ids and text.startswith(state.text):
        if len(text) > len(state.text):
            return turn(state, True)
    base = Conversation(key)
    for prefix in sorted(prefixes, key=lambda p: -len(p.text)):
        if prefix.ids and text.startswith(prefix.text) and len(text) > len(prefix.text):
            base = Conversation(key, prefix.text, list(prefix.ids), prefix.id)
            break
    return turn(base, False)


def _fits(turn: Turn, window: int, reserve: int) -> Turn:
    total = turn.start + len(turn.new_ids)
    if total + reserve > window:
        over = total + reserve - window
        raise InputError(
            f"With this message the conversation is {total:,} tokens but the model's context window is "
            f"{window:,} tokens (with {reserve} kept for the reply). Shorten the message by at least "
            f"{over:,} tokens (about {4 * over:,} characters) or clear the history."
        )
    return turn


def finish_turn(
    tokenizer: PreTrainedTokenizerBase, turn: Turn, reply_ids: Sequence[int], cached: int
) -> Conversation | None:
    """The chat's state after a reply: what the cache holds now (`cached` positions).

    The cache holds the turn's positions and the reply tokens that were fed back (a stopped reply, or the
    EOS that ended it, is not fed). If the turn's prefill did not complete (`cached` is the start again),
    the state is the one the turn began from. Returns None if `cached` fits neither (never reuse it).
    The state can hold fewer positions than `cached` (a reply cut inside a character, or an empty reply):
    the caller keeps only `len(state.ids)` positions of its cache.
    """
    fed = cached - turn.start - len(turn.new_ids)
    if fed < 0:
        return turn.base if cached == turn.start and turn.base.ids else None
    if fed > len(reply_ids):
        return None
    if turn.opening and not tokenizer.decode(list(reply_ids), skip_special_tokens=True):
        # Stopped before any text (or only EOS): the page keeps no assistant message, so the next turn's
        # template goes on from the user's message, not from the assistant's opening markers.
        base, markers = turn.base, str(tokenizer.decode(turn.new_ids[-turn.opening :]))
        if turn.text.endswith(markers):
            kept = turn.new_ids[: -turn.opening]
            return Conversation(base.key, turn.text[: -len(markers)], [*base.ids, *kept], base.prefix)
        return turn.base
    shown = list(reply_ids[:fed])
    reply_text = str(tokenizer.decode(shown, skip_special_tokens=True)) if shown else ""
    while shown and reply_text.endswith(REPLACEMENT):
        # The fed tokens end inside a character the next (unfed) token completes: the page shows the whole
        # character, so the state stops before it (the caller crops its cache to match; the next turn
        # feeds the character again as text).
        shown.pop()
        reply_text = str(tokenizer.decode(shown, skip_special_tokens=True)) if shown else ""
    base = turn.base
    return Conversation(base.key, turn.text + reply_text, [*base.ids, *turn.new_ids, *shown], base.prefix)


def read_ahead_text(
    tokenizer: PreTrainedTokenizerBase, state: Conversation, messages: Sequence[dict[str, str]], reply: str
) -> tuple[str, list[int]]:
    """What the next turn will read before the user's next message, known as soon as a reply ends.

    The template closes the reply and opens the next user message with markers that do not depend on
    what the user types (`<|im_end|>`, `<|im_start|>user`, and the end of the reply when its last token
    was not fed back). Returns their text after `state.text` and its tokens; empty if the template does
    not render the conversation as a continuation of the state.

    Args:
        state: the chat's state after the reply (`finish_turn`).
        messages: the conversation the reply answered; `reply` is its text as the page shows it.
    """
    if not state.text.startswith(template_text(tokenizer, messages)):
        return "", []  # the reply stopped before its prompt was read: the state is the turn's base
    following = [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": _SENTINEL}]
    text = template_text(tokenizer, following, add_generation_prompt=False)
    if _SENTINEL not in text:
        return "", []
    opening = text[: text.index(_SENTINEL)]
    if not state.ids or not opening.startswith(state.text) or len(opening) == len(state.text):
        return "", []
    rest = opening[len(state.text) :]
    return rest, encode_text(tokenizer, rest)


def extend(state: Conversation, text: str, ids: Sequence[int]) -> Conversation:
    """The state after `ids` (standing for `text`) were read into the cache after it."""
    return Conversation(state.key, state.text + text, [*state.ids, *ids], state.prefix, len(ids))
