"""What a chat's model has read, and what a turn adds: continuation, invalidation, public prefixes."""

from __future__ import annotations

import pytest

from core.errors import InputError
from model.conversation import (
    Conversation,
    encode_text,
    extend,
    finish_turn,
    plan_turn,
    public_prefixes,
    read_ahead_text,
    template_text,
)
from model.loading import LoadedModel
from model.text import REPLACEMENT

KEY = ("plain", "tiny")
FIRST = [{"role": "user", "content": "What is the capital of France?"}]


def _after_first_reply(
    tiny: LoadedModel, reply: str = " Paris is."
) -> tuple[Conversation, list[dict[str, str]]]:
    """The state after a first reply whose tokens were all fed back but its EOS."""
    tok = tiny.tokenizer
    turn = plan_turn(tok, FIRST, KEY, None, tiny.context_window)
    reply_ids = encode_text(tok, reply) + [next(iter(tiny.eos_token_ids))]
    cached = turn.start + len(turn.new_ids) + len(reply_ids) - 1  # everything but the EOS
    state = finish_turn(tok, turn, reply_ids, cached)
    assert state is not None
    return state, [*FIRST, {"role": "assistant", "content": reply}]


def test_a_fresh_turn_reads_the_whole_prompt(tiny: LoadedModel) -> None:
    turn = plan_turn(tiny.tokenizer, FIRST, KEY, None, tiny.context_window)
    assert not turn.continued and turn.start == 0
    assert turn.new_ids == encode_text(tiny.tokenizer, template_text(tiny.tokenizer, FIRST))


def test_a_follow_up_adds_only_the_new_positions(tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    state, history = _after_first_reply(tiny)
    messages = [*history, {"role": "user", "content": "And of Spain?"}]
    turn = plan_turn(tok, messages, KEY, state, tiny.context_window)
    assert turn.continued and turn.start == len(state.ids)
    full = encode_text(tok, template_text(tok, messages))
    assert len(turn.new_ids) < 20 < len(full)  # the end of the reply, the markers, the message
    assert tok.decode(state.ids + turn.new_ids) == tok.decode(full)  # the same conversation, token by token


@pytest.mark.parametrize(
    "change",
    ["edited first message", "retried reply", "cleared chat", "other settings"],
)
def test_a_state_that_does_not_match_is_never_reused(tiny: LoadedModel, change: str) -> None:
    state, history = _after_first_reply(tiny)
    follow_up = {"role": "user", "content": "And of Spain?"}
    key = KEY
    if change == "edited first message":
        messages = [{"role": "user", "content": "What is the capital of Italy?"}, history[1], follow_up]
    elif change == "retried reply":
        messages = [history[0], {"role": "assistant", "content": " Lyon."}, follow_up]
    elif change == "cleared chat":
        messages = [follow_up]
    else:
        messages, key = [*history, follow_up], ("simulate", "tiny", "tsp", "")
    turn = plan_turn(tiny.tokenizer, messages, key, state, tiny.context_window)
    assert not turn.continued and turn.start == 0


def test_a_stopped_reply_feeds_what_the_cache_lacks_next_time(tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    turn = plan_turn(tok, FIRST, KEY, None, tiny.context_window)
    reply_ids = encode_text(tok, " Paris is the capital")
    shown = len(reply_ids)
    state = finish_turn(tok, turn, reply_ids, turn.start + len(turn.new_ids) + shown - 1)  # last not fed
    assert state is not None and len(state.ids) == len(turn.new_ids) + shown - 1
    reply_text = tok.decode(reply_ids, skip_special_tokens=True)
    messages = [*FIRST, {"role": "assistant", "content": reply_text}, {"role": "user", "content": "More?"}]
    follow = plan_turn(tok, messages, KEY, state, tiny.context_window)
    assert follow.continued
    assert tok.decode(state.ids + follow.new_ids) == template_text(tok, messages)


def test_a_reply_cut_inside_a_character_continues_from_before_it(tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    turn = plan_turn(tok, FIRST, KEY, None, tiny.context_window)
    ids = encode_text(tok, " Paris 🌊🌊")
    cut = next(
        k
        for k in range(1, len(ids))
        if tok.decode(ids[:k]).endswith(REPLACEMENT) and not tok.decode(ids[: k + 1]).endswith(REPLACEMENT)
    )
    reply_ids = ids[: cut + 1]  # the last token (not fed) completes the character the fed ones began
    shown = tok.decode(reply_ids, skip_special_tokens=True)
    assert REPLACEMENT not in shown
    state = finish_turn(tok, turn, reply_ids, turn.start + len(turn.new_ids) + cut)
    assert state is not None and len(state.ids) < turn.start + len(turn.new_ids) + cut
    messages = [*FIRST, {"role": "assistant", "content": shown}, {"role": "user", "content": "More?"}]
    follow = plan_turn(tok, messages, KEY, state, tiny.context_window)
    assert follow.continued  # the page shows the whole character; the state stops before it
    assert tok.decode(state.ids + follow.new_ids) == template_text(tok, messages)


def test_a_prefill_cut_short_leaves_the_state_of_before(tiny: LoadedModel) -> None:
    state, history = _after_first_reply(tiny)
    messages = [*history, {"role": "user", "content": "And of Spain?"}]
    turn = plan_turn(tiny.tokenizer, messages, KEY, state, tiny.context_window)
    assert finish_turn(tiny.tokenizer, turn, [], turn.start) is turn.base  # Stop during the prompt
    assert finish_turn(tiny.tokenizer, turn, [], turn.start + 3) is None  # half a prompt: never reuse


@pytest.mark.parametrize("reply", ["", "<eos>"])
def test_a_reply_stopped_before_any_text_continues_from_the_users_message(
    tiny: LoadedModel, reply: str
) -> None:
    """Stop after the prompt was read but before a word shows (or a reply that is only EOS): the page keeps
    no assistant message, so the state drops the assistant's opening markers and the next turn goes on."""
    tok = tiny.tokenizer
    state, history = _after_first_reply(tiny)
    asked = [*history, {"role": "user", "content": "Tell me more."}]
    turn = plan_turn(tok, asked, KEY, state, tiny.context_window)
    assert turn.opening > 0
    reply_ids = [next(iter(tiny.eos_token_ids))] if reply else []
    stopped = finish_turn(tok, turn, reply_ids, turn.start + len(turn.new_ids))  # the prompt whole
    assert stopped is not None and len(stopped.ids) == turn.start + len(turn.new_ids) - turn.opening
    messages = [*asked, {"role": "user", "content": "Thanks!"}]  # what the page sends next
    follow = plan_turn(tok, messages, KEY, stopped, tiny.context_window)
    assert follow.continued and follow.start == len(stopped.ids)
    assert tok.decode(stopped.ids + follow.new_ids) == template_text(tok, messages)


@pytest.mark.parametrize("reply", [" Paris is.", " Paris 🌊"])
def test_the_next_turns_opening_is_read_ahead_and_the_turn_sends_the_rest(
    tiny: LoadedModel, reply: str
) -> None:
    tok = tiny.tokenizer
    state, history = _after_first_reply(tiny, reply)
    text, ids = read_ahead_text(tok, state, FIRST, reply)
    assert text.endswith("user\n") and "<|im_end|>" in text and ids == encode_text(tok, text)
    ahead = extend(state, text, ids)
    messages = [*history, {"role": "user", "content": "And of Spain?"}]
    turn = plan_turn(tok, messages, KEY, ahead, tiny.context_window)
    without = plan_turn(tok, messages, KEY, state, tiny.context_window)
    assert turn.continued and turn.start == len(state.ids) + len(ids) and turn.base.ahead == len(ids)
    assert tok.decode(turn.new_ids).startswith("And of Spain?")
    assert len(turn.new_ids) == len(without.new_ids) - len(ids)
    assert tok.decode(ahead.ids + turn.new_ids) == template_text(tok, messages)


def test_nothing_is_read_ahead_for_a_state_that_lacks_the_turn(tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    state, history = _after_first_reply(tiny)
    stopped = [*history, {"role": "user", "content": "And of Spain?"}]  # Stop before its prompt was read
    assert read_ahead_text(tok, state, stopped, "") == ("", [])
    other = Conversation(KEY, "something else", [1, 2])
    assert read_ahead_text(tok, other, FIRST, " Paris is.") == ("", [])


def test_the_public_prefix_is_the_template_before_any_private_text(tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    prefixes = {p.name: p for p in public_prefixes(tok)}
    default = prefixes["default"]
    assert default.text.startswith("<|im_start|>system\n") and default.text.endswith("<|im_start|>user\n")
    assert "You are a helpful AI assistant" in default.text
    assert prefixes["system"].text == "<|im_start|>system\n"
    turn = plan_turn(tok, FIRST, ("encrypted",), None, tiny.context_window, list(prefixes.values()))
    assert turn.base.prefix == default.id and turn.start == len(default.ids)
    assert tok.decode(turn.base.ids + turn.new_ids) == template_text(tok, FIRST)
    custom = [{"role": "system", "content": "You are a pirate."}, *FIRST]
    turn = plan_turn(tok, custom, ("encrypted",), None, tiny.context_window, list(prefixes.values()))
    assert turn.base.prefix == prefixes["system"].id  # a custom system prompt is private: it goes encrypted
    assert "pirate" in tok.decode(turn.new_ids)


def test_a_conversation_that_fills_the_window_is_refused(tiny: LoadedModel) -> None:
    long = [{"role": "user", "content": " ".join(["word"] * 600)}]
    with pytest.raises(InputError, match="context window is 512"):
        plan_turn(tiny.tokenizer, long, KEY, None, tiny.context_window)
