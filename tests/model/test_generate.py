"""The generation pipeline: settings, prompts, the KV-cached decode loop, EOS, length, context, stop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import InputError
from model.generate import (
    DecodeSession,
    ExactSelector,
    GenerationSettings,
    Selection,
    build_prompt,
    generate,
    inverse_transform,
)
from model.loading import LoadedModel

USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 10**6}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 7.0}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"seed": "7"}, "seed"),
    ],
)
def test_invalid_settings_name_the_field(kwargs: dict[str, object], names: str) -> None:
    with pytest.raises(InputError, match=names):
        GenerationSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("content", ["", "   \n\t "])
def test_empty_message_is_refused(tiny: LoadedModel, content: str) -> None:
    with pytest.raises(InputError, match="empty"):
        build_prompt(tiny, [{"role": "user", "content": content}])


def test_prompt_longer_than_the_context_window_is_refused(tiny: LoadedModel) -> None:
    long = " ".join(["word"] * 2_000)  # ~2,000 tokens > the tiny model's 512
    with pytest.raises(InputError, match="context window is 512"):
        build_prompt(tiny, [{"role": "user", "content": long}])


def test_over_long_text_is_refused_before_tokenising(tiny: LoadedModel) -> None:
    with pytest.raises(InputError, match="characters"):
        build_prompt(tiny, [{"role": "user", "content": "x" * 50_000}])


def test_prompt_uses_the_chat_template(tiny: LoadedModel) -> None:
    ids = build_prompt(tiny, USER)
    text = tiny.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")


def _greedy_without_cache(loaded: LoadedModel, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    out = []
    for _ in range(n):
        with torch.no_grad():
            logits = loaded.model(torch.tensor([ids])).logits[0, -1]
        out.append(int(torch.argmax(logits)))
        ids.append(out[-1])
    return out


def test_kv_cached_embedding_feedback_matches_full_recomputation(tiny: LoadedModel) -> None:
    prompt = build_prompt(tiny, USER)
    selector = ExactSelector(tiny.input_embeddings(), temperature=0.0)
    steps = list(generate(tiny, prompt, selector, GenerationSettings(max_new_tokens=12, temperature=0.0)))
    assert [s.index for s in steps] == list(range(len(steps)))
    assert [s.token_id for s in steps] == _greedy_without_cache(tiny, prompt, len(steps))[: len(steps)]


def test_stream_is_lazy_one_step_at_a_time(tiny: LoadedModel) -> None:
    prompt = build_prompt(tiny, USER)
    calls = []

    class Counting(ExactSelector):
        def select(self, logits: torch.Tensor, r: float) -> Selection:
            calls.append(r)
            return super().select(logits, r)

    stream = generate(
        tiny, prompt, Counting(tiny.input_embeddings(), 1.0), GenerationSettings(max_new_tokens=50)
    )
    next(stream)
    assert len(calls) == 1
    next(stream)
    assert len(calls) == 2


class PlantedEos(ExactSelector):
    """Test double: token 100, 101, ... then EOS at step `at`."""

    def __init__(self, loaded: LoadedModel, at: int) -> None:
        super().__init__(loaded.input_embeddings(), 1.0)
        self.at = at
        self.eos = next(iter(loaded.eos_token_ids))
        self.calls = 0

    def select(self, logits: torch.Tensor, r: float) -> Selection:
        token = self.eos if self.calls == self.at else 100 + self.calls
        self.calls += 1
        return Selection(token, self.embeddings[token])


def test_eos_ends_the_reply(tiny: LoadedModel) -> None:
    selector = PlantedEos(tiny, at=3)
    steps = list(generate(tiny, build_prompt(tiny, USER), selector, GenerationSettings(max_new_tokens=20)))
    assert [s.token_id for s in steps] == [100, 101, 102, selector.eos]
    assert [s.finish for s in steps] == [None, None, None, "eos"]


def test_max_new_tokens_ends_the_reply(tiny: LoadedModel) -> None:
    selector = PlantedEos(tiny, at=10**9)
    steps = list(generate(tiny, build_prompt(tiny, USER), selector, GenerationSettings(max_new_tokens=5)))
    assert len(steps) == 5 and steps[-1].finish == "length"


def test_full_context_window_ends_the_reply(tiny: LoadedModel) -> None:
    prompt = build_prompt(tiny, USER)
    prompt = prompt + [100] * (tiny.context_window - len(prompt) - 3)  # room for exactly 3 tokens
    selector = PlantedEos(tiny, at=10**9)
    steps = list(generate(tiny, prompt, selector, GenerationSettings(max_new_tokens=50)))
    assert len(steps) == 3 and steps[-1].finish == "context"


def test_should_stop_ends_the_stream(tiny: LoadedModel) -> None:
    stop = {"now": False}
    stream = generate(
        tiny,
        build_prompt(tiny, USER),
        PlantedEos(tiny, at=10**9),
        GenerationSettings(max_new_tokens=50),
        should_stop=lambda: stop["now"],
    )
    first = [next(stream), next(stream)]
    stop["now"] = True
    assert len(first) == 2 and list(stream) == []


def test_same_seed_same_reply_other_seed_other_reply(tiny: LoadedModel) -> None:
    prompt = build_prompt(tiny, USER)

    def run(seed: int) -> list[int]:
        selector = ExactSelector(tiny.input_embeddings(), 1.0)
        return [s.token_id for s in generate(tiny, prompt, selector, GenerationSettings(30, 1.0, seed))]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_inverse_transform_draws_with_the_planted_probabilities() -> None:
    p = np.array([0.5, 0.0, 0.2, 0.0, 0.0, 0.3])
    rng = np.random.default_rng(0)
    n = 20_000
    counts = np.bincount([inverse_transform(p, float(rng.random())) for _ in range(n)], minlength=len(p))
    assert counts[1] == counts[3] == counts[4] == 0  # zero-probability tokens are never drawn
    expected = p * n
    nonzero = expected > 0
    chi2 = float((((counts - expected) ** 2)[nonzero] / expected[nonzero]).sum())
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001
    assert inverse_transform(p, 0.0) == 0  # position 0 is sampleable
    assert inverse_transform(p, 0.999999999) == 5


def test_a_truncated_session_continues_as_if_the_dropped_positions_never_came(tiny: LoadedModel) -> None:
    ids = [int(i) for i in tiny.tokenizer("The sea is wide and deep", add_special_tokens=False)["input_ids"]]
    whole = DecodeSession(tiny).prefill(ids)
    session = DecodeSession(tiny)
    session.prefill([*ids[:-2], 7, 8, 9])  # three positions the state later drops
    session.truncate(len(ids) - 2)
    assert session.length == len(ids) - 2
    torch.testing.assert_close(session.prefill(ids[-2:]), whole, atol=1e-4, rtol=1e-4)


def test_the_default_model_answers_the_capital_of_france() -> None:
    from model.loading import load_default

    loaded = load_default()
    selector = ExactSelector(loaded.input_embeddings(), temperature=0.0)
    ids = [
        s.token_id
        for s in generate(loaded, build_prompt(loaded, USER), selector, GenerationSettings(40, 0.0))
    ]
    assert "Paris" in loaded.tokenizer.decode(ids, skip_special_tokens=True)
