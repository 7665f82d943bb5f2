"""Cumulative decoding: multi-byte characters split across tokens never show as broken text."""

from __future__ import annotations

from model.loading import load_tokenizer
from model.text import REPLACEMENT, StreamDecoder


def test_deltas_concatenate_to_the_text_and_never_hold_half_characters() -> None:
    tokenizer = load_tokenizer()
    text = "Grüße aus Köln 🌍🚀 — 東京と北京, naïve café."
    ids = tokenizer.encode(text, add_special_tokens=False)
    # The premise: some token alone decodes to a broken character, otherwise this test proves nothing.
    assert any(REPLACEMENT in tokenizer.decode([i]) for i in ids)
    decoder = StreamDecoder(tokenizer)
    deltas = [decoder.push(i) for i in ids]
    deltas.append(decoder.flush())
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == text


def test_special_tokens_are_not_shown() -> None:
    tokenizer = load_tokenizer()
    decoder = StreamDecoder(tokenizer)
    ids = tokenizer.encode("Paris.", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == "Paris."
