"""The repetition guard: its arithmetic, one distribution in every mode, and what it does to a reply."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.chat.service import ChatService, ChatSettings
from core.errors import InputError
from model.forward import LlamaShape
from model.generate import ExactSelector
from model.key_holder import KeyHolderSide
from model.loading import LoadedModel
from model.repetition import Guarded, RepetitionGuard, check_penalty, conversation_guard
from model.sampler import SamplerConfig, probabilities
from model.simulate import SimulateSelector


def test_seen_tokens_are_held_back_by_sign_and_the_rest_untouched() -> None:
    guard = RepetitionGuard.of(2.0, seen=[1, 2, 5], exempt=[5])
    z = np.array([3.0, 3.0, -1.0, 0.5, -2.0, 4.0])
    out = guard.penalize(z)
    assert out.tolist() == [3.0, 1.5, -2.0, 0.5, -2.0, 4.0]  # 1: 3/2; 2: -1*2; 5 exempt; others as they were
    assert z.tolist() == [3.0, 3.0, -1.0, 0.5, -2.0, 4.0]  # a copy
    guard.add(0)
    assert guard.penalize(z)[0] == 1.5
    assert RepetitionGuard.of(1.0, seen=[0, 1]).penalize(z).tolist() == z.tolist()


def test_logits_in_another_order_are_penalised_at_each_token_s_place(rng: np.random.Generator) -> None:
    perm = rng.permutation(50)  # perm[j] = the token at position j
    position = np.empty_like(perm)
    position[perm] = np.arange(50)
    guard = RepetitionGuard.of(1.3, seen=rng.choice(50, 12, replace=False))
    z = rng.normal(0, 2, 50)
    assert np.array_equal(guard.penalize(z[perm], position), guard.penalize(z)[perm])


@pytest.mark.parametrize("bad", [0.9, 0.0, 3.5, math.nan, math.inf, True, "1.2", None])
def test_a_bad_penalty_is_refused_with_the_range(bad: object) -> None:
    with pytest.raises(InputError, match="repetition_penalty must be"):
        check_penalty(bad)
    with pytest.raises(InputError, match="repetition_penalty"):
        ChatSettings(repetition_penalty=bad)  # type: ignore[arg-type]


def test_plain_simulate_and_the_key_holder_form_the_same_probabilities(
    tiny: LoadedModel, rng: np.random.Generator
) -> None:
    """The guard acts where each mode forms p: plain's exact sampler, simulate's chain, the key holder's
    softmax of the logits it decrypts (which come in TSP order)."""
    embeddings, vocab = tiny.input_embeddings(), tiny.model.config.vocab_size
    perm = rng.permutation(vocab)
    seen = rng.choice(vocab, 40, replace=False).tolist()
    logits = torch.from_numpy(rng.normal(0, 3, vocab).astype(np.float32))
    expected = probabilities(RepetitionGuard.of(1.5, seen).penalize(logits.numpy()), 0.7, "fp16", False)

    simulate = SimulateSelector(embeddings, perm, SamplerConfig(temperature=0.7))
    penalized = torch.from_numpy(RepetitionGuard.of(1.5, seen).penalize(logits.numpy()))
    assert np.array_equal(simulate.ordered_probabilities(penalized, 0.4), expected[perm])
    guarded = Guarded(simulate, RepetitionGuard.of(1.5, seen))
    choice, direct = guarded.select(logits, 0.4), simulate.select(penalized, 0.4)
    assert choice.token_id == direct.token_id and torch.equal(choice.next_input(), direct.next_input())
    assert choice.token_id in guarded.guard.seen  # the shown token joins what the guard has seen

    keys = KeyHolderSide("test", LlamaShape.from_config(tiny.model.config), embeddings, perm)
    keys.begin_reply(0.7, True, RepetitionGuard.of(1.5, seen))
    q = keys._evaluate("softmax", -1, logits.double().numpy()[perm][None, :], [vocab])[0]
    assert np.array_equal(q, expected[perm])

    exact = [ExactSelector(embeddings, 0.7).select(penalized, r).token_id for r in (0.1, 0.5, 0.9)]
    plain = [
        Guarded(ExactSelector(embeddings, 0.7), RepetitionGuard.of(1.5, seen)).select(logits, r).token_id
        for r in (0.1, 0.5, 0.9)
    ]
    assert plain == exact


def test_the_guard_exempts_the_template_markers(tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    guard = conversation_guard(tok, 1.2, tok("<|im_start|>user\nHi<|im_end|>")["input_ids"])
    assert tok.convert_tokens_to_ids("<|im_end|>") in guard.exempt
    z = np.ones(tiny.model.config.vocab_size)
    held = np.flatnonzero(guard.penalize(z) != 1.0)
    assert sorted(held.tolist()) == sorted(set(guard.seen) - set(guard.exempt)) and len(held) >= 2


def test_a_guarded_reply_differs_and_greedy_plain_equals_greedy_simulate(tiny: LoadedModel) -> None:
    """At temperature 0 the sampler's one-hot is exact, so plain and simulate agree with the guard on
    too; the tiny random model repeats itself, so a strong guard changes its reply."""
    service = ChatService.create(tiny)
    messages = [{"role": "user", "content": "Give me a simple recipe for tomato soup."}]
    replies = {}
    for mode in ("plain", "simulate"):
        for penalty in (1.0, 2.0):
            settings = ChatSettings(mode=mode, temperature=0.0, max_new_tokens=24, repetition_penalty=penalty)  # type: ignore[arg-type]
            replies[mode, penalty] = list(service.reply(messages, settings))[-1].text
    assert replies["plain", 2.0] == replies["simulate", 2.0]
    assert replies["plain", 1.0] == replies["simulate", 1.0]
    assert replies["plain", 2.0] != replies["plain", 1.0]
