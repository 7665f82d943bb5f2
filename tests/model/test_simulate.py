"""Simulate mode: the selector chain, mixture feedback, perm handling, and agreement with plain mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import SamplerError
from model.generate import ExactSelector, GenerationSettings, build_prompt, generate
from model.loading import LoadedModel
from model.sampler import SamplerConfig, exact_position
from model.simulate import MIXTURE_TOLERANCE, SimulateSelector, identity_perm, mixture
from tests.conftest import assert_close

USER = [{"role": "user", "content": "Write a short poem about the sea."}]
NEAR_EXACT = SamplerConfig(tsp=False, pp=False, amp_rounds=8, softmax_precision="fp64")


def test_simulate_with_tsp_and_pp_off_matches_plain_token_for_token(tiny: LoadedModel) -> None:
    prompt = build_prompt(tiny, USER)
    embeddings = tiny.input_embeddings()
    for seed in (0, 1):
        settings = GenerationSettings(max_new_tokens=40, temperature=1.0, seed=seed)
        plain = [s.token_id for s in generate(tiny, prompt, ExactSelector(embeddings, 1.0), settings)]
        selector = SimulateSelector(embeddings, identity_perm(embeddings.shape[0]), NEAR_EXACT)
        simulated = [s.token_id for s in generate(tiny, prompt, selector, settings)]
        assert simulated == plain
        assert len(plain) > 5


def test_displayed_token_and_feedback_follow_the_order(tiny: LoadedModel, rng: np.random.Generator) -> None:
    embeddings = tiny.input_embeddings()
    vocab = embeddings.shape[0]
    perm = rng.permutation(vocab)
    selector = SimulateSelector(embeddings, perm, SamplerConfig(softmax_precision="fp64"), record=True)
    logits = torch.from_numpy(rng.normal(0, 3, vocab).astype(np.float32))
    for r in rng.random(20):
        choice = selector.select(logits, float(r))
        p = np.exp(logits.double().numpy() - logits.double().numpy().max())
        position = exact_position((p / p.sum())[perm], float(r))
        assert position is not None and choice.token_id == perm[position]
        assert choice.next_input().dtype == torch.float32
        weights = selector.one_hot(logits, float(r))  # (V,) in sampling order
        mixed = weights @ embeddings.double().numpy()[perm]
        assert_close(choice.next_input().numpy(), mixed, atol=1e-6)  # float32 of the mixture I'^T W_pi
        if selector.trace[-1].max_error < 1e-6:  # unambiguous draw: the mixture is the token's own row
            assert_close(choice.next_input().numpy(), embeddings[choice.token_id].numpy(), atol=1e-6)
    assert len(selector.trace) == 20 and all(t.position == t.exact_position for t in selector.trace)
    assert sum(t.max_error < 1e-6 for t in selector.trace) >= 15


def test_temperature_zero_displays_the_argmax(tiny: LoadedModel, rng: np.random.Generator) -> None:
    embeddings = tiny.input_embeddings()
    selector = SimulateSelector(
        embeddings, rng.permutation(embeddings.shape[0]), SamplerConfig(temperature=0.0)
    )
    logits = torch.from_numpy(rng.normal(0, 1, embeddings.shape[0]).astype(np.float32))
    for r in (0.01, 0.5, 0.99):
        assert selector.select(logits, r).token_id == int(torch.argmax(logits))


def test_mixture_equals_the_full_product(rng: np.random.Generator) -> None:
    table = rng.normal(0, 1, (2000, 16))
    norm = float(np.linalg.norm(table, axis=1).max())
    weights = np.zeros(2000)
    weights[[5, 6, 7]] = [0.7, 0.2, 0.3]
    weights[rng.integers(0, 2000, 50)] = 1e-20  # negligible: left out, within the bound
    assert_close(mixture(weights, table, norm), weights @ table, atol=MIXTURE_TOLERANCE)
    weights[rng.integers(0, 2000, 1500)] = 1e-19  # many small ones: the bound no longer holds -> full product
    assert_close(mixture(weights, table, norm), weights @ table, atol=1e-15)


@pytest.mark.parametrize(
    "perm",
    [np.arange(10), np.zeros(49_152, dtype=np.int64), np.arange(49_152) + 1, np.arange(49_152.0)],
)
def test_a_bad_perm_is_refused(tiny: LoadedModel, perm: np.ndarray) -> None:
    with pytest.raises(SamplerError, match="perm"):
        SimulateSelector(tiny.input_embeddings(), perm, SamplerConfig())


def test_noise_model_is_off_at_sigma_zero_and_changes_weights_above(
    tiny: LoadedModel, rng: np.random.Generator
) -> None:
    embeddings = tiny.input_embeddings()
    perm = identity_perm(embeddings.shape[0])
    logits = torch.from_numpy(rng.normal(0, 3, embeddings.shape[0]).astype(np.float32))
    clean = SimulateSelector(embeddings, perm, SamplerConfig()).one_hot(logits, 0.4)
    silent = SimulateSelector(embeddings, perm, SamplerConfig(), noise_rng=np.random.default_rng(1))
    assert np.array_equal(silent.one_hot(logits, 0.4), clean)
    for field in ("noise_sigma", "input_noise_sigma"):
        noisy = SimulateSelector(embeddings, perm, SamplerConfig(**{field: 1e-6}))  # type: ignore[arg-type]
        assert not np.array_equal(noisy.one_hot(logits, 0.4), clean)


@pytest.mark.slow
def test_default_model_simulate_matches_plain_with_a_sharp_step() -> None:
    from model.loading import load_default

    loaded = load_default()
    prompt = build_prompt(loaded, USER)
    embeddings = loaded.input_embeddings()
    settings = GenerationSettings(max_new_tokens=32, temperature=1.0, seed=3)
    plain = [s.token_id for s in generate(loaded, prompt, ExactSelector(embeddings, 1.0), settings)]
    selector = SimulateSelector(embeddings, identity_perm(embeddings.shape[0]), NEAR_EXACT)
    assert [s.token_id for s in generate(loaded, prompt, selector, settings)] == plain
