"""Batched selection (model/batch_sampler.py): each row of a batch selects what the unbatched selector
selects for its logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.batch_sampler import BatchExact, BatchSimulate, exact_draws, rowwise_probabilities
from model.generate import ExactSelector
from model.loading import LoadedModel
from model.sampler import SamplerConfig, probabilities
from model.simulate import SimulateSelector, identity_perm


@pytest.mark.parametrize("precision", ["fp16", "fp32", "fp64"])
def test_rowwise_probabilities_equal_the_unbatched_softmax_value_for_value(precision: str) -> None:
    logits = np.random.default_rng(0).normal(0, 4, size=(5, 49152))
    rows = rowwise_probabilities(logits, 0.7, precision, False)  # type: ignore[arg-type]
    for b in range(5):
        assert np.array_equal(rows[b], probabilities(logits[b], 0.7, precision, False))  # type: ignore[arg-type]
    greedy = rowwise_probabilities(logits, 0.0, "fp16", False)
    assert np.array_equal(np.argmax(greedy, axis=1), np.argmax(logits, axis=1)) and greedy.sum() == 5


def test_exact_draws_are_inverse_transform_with_nothing_above_the_sum() -> None:
    c = np.cumsum(np.array([[0.25, 0.25, 0.0, 0.25], [0.5, 0.0, 0.25, 0.0]]), axis=1)
    assert exact_draws(c, np.array([0.6, 0.1])).tolist() == [3, 0]
    assert exact_draws(c, np.array([0.8, 0.75])).tolist() == [-1, -1]  # r >= sum(q): nothing drawn


@pytest.mark.parametrize(
    "config",
    [
        SamplerConfig(tsp=False, pp=False),
        SamplerConfig(tsp=True, pp=True, softmax_precision="fp32", amp_rounds=2),
        SamplerConfig(tsp=False, pp=True, noise_sigma=1e-6),
        SamplerConfig(tsp=True, pp=False, prefix_noise_sigma=1e-5),
        SamplerConfig(tsp=False, pp=False, input_noise_sigma=1e-7),
    ],
)
def test_a_batch_row_selects_what_the_unbatched_selector_selects_for_its_logits(
    tiny: LoadedModel, config: SamplerConfig
) -> None:
    """Same logits, r and noise generator: same I', same token, same mixture embedding, bit for bit."""
    embeddings = tiny.input_embeddings()
    vocab = embeddings.shape[0]
    perm = np.random.default_rng(1).permutation(vocab) if config.tsp else identity_perm(vocab)
    logits = np.random.default_rng(2).normal(0, 3, size=(6, vocab)).astype(np.float32).astype(np.float64)
    rs = np.random.default_rng(3).random(6)
    batch = BatchSimulate(embeddings, perm, config)
    choice = batch.select(logits, rs, [np.random.default_rng((b, 1)) for b in range(6)])
    assert choice.max_error is not None and choice.position is not None
    for b in range(6):
        single = SimulateSelector(
            embeddings, perm, config, noise_rng=np.random.default_rng((b, 1)), record=True
        )
        picked = single.select(torch.from_numpy(logits[b].astype(np.float32)), float(rs[b]))
        assert picked.token_id == choice.tokens[b]
        assert torch.equal(picked.next_input(), choice.embeddings[b])
        trace = single.trace[-1]
        assert trace.position == choice.position[b]
        assert (trace.exact_position if trace.exact_position is not None else -1) == choice.exact[b]  # type: ignore[index]
        assert trace.max_error == pytest.approx(float(choice.max_error[b]), abs=0)


def test_batch_exact_draws_what_plain_mode_draws(tiny: LoadedModel) -> None:
    embeddings = tiny.input_embeddings()
    logits = np.random.default_rng(4).normal(0, 3, size=(5, embeddings.shape[0])).astype(np.float32)
    rs = np.random.default_rng(5).random(5)
    choice = BatchExact(embeddings, 1.0).select(logits.astype(np.float64), rs, [])
    for b in range(5):
        single = ExactSelector(embeddings, 1.0).select(torch.from_numpy(logits[b]), float(rs[b]))
        assert single.token_id == choice.tokens[b]
        assert torch.equal(single.next_input(), choice.embeddings[b])
