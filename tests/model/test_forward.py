"""The explicit-step forward pass (the encrypted pipeline's plaintext twin) against transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import InputError
from model.forward import KeyHolderFunctions, PlainBackend, PreparedModel, forward
from model.loading import LoadedModel

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 28, 4093, 198]


def _reference_logits(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(torch.tensor([ids])).logits[0]  # (T, V)


def _run(loaded: LoadedModel, prepared: PreparedModel, chunks: list[list[int]]) -> list[torch.Tensor]:
    """Feed the prompt in chunks (prefill, then one token at a time); logits after each chunk."""
    backend = PlainBackend(KeyHolderFunctions(prepared.shape))
    embed = loaded.input_embeddings()
    return [forward(backend, prepared, embed[torch.tensor(chunk)])[0] for chunk in chunks]


@pytest.mark.parametrize("split", [len(PROMPT), 5, 1])
def test_prefill_and_decode_match_transformers(tiny: LoadedModel, split: int) -> None:
    prepared = PreparedModel.from_loaded(tiny)
    chunks = [PROMPT[:split]] + [[t] for t in PROMPT[split:]]
    reference = _reference_logits(tiny, PROMPT)
    ends = np.cumsum([len(c) for c in chunks]) - 1
    for logits, end in zip(_run(tiny, prepared, chunks), ends, strict=True):
        assert torch.allclose(logits, reference[end], atol=1e-4), float((logits - reference[end]).abs().max())


def test_pi_is_baked_into_the_lm_head_and_the_embedding_rows(tiny: LoadedModel) -> None:
    perm = np.random.default_rng(0).permutation(tiny.model.config.vocab_size)
    plain = PreparedModel.from_loaded(tiny)
    ordered = PreparedModel.from_loaded(tiny, perm)
    logits = _run(tiny, plain, [PROMPT])[0]
    logits_pi = _run(tiny, ordered, [PROMPT])[0]
    assert torch.allclose(logits_pi, logits[perm], atol=1e-5)  # position j holds token perm[j]
    assert torch.equal(ordered.embed_pi, tiny.input_embeddings()[perm])


def test_reordering_shares_the_layers_and_equals_preparing_afresh(tiny: LoadedModel) -> None:
    vocab = tiny.model.config.vocab_size
    perm = np.random.default_rng(1).permutation(vocab)
    ordered = PreparedModel.from_loaded(tiny, perm)
    back = ordered.reordered(np.arange(vocab))
    fresh = PreparedModel.from_loaded(tiny)
    assert torch.equal(back.lm_head, fresh.lm_head) and torch.equal(back.embed_pi, fresh.embed_pi)
    assert back.layers is ordered.layers
    with pytest.raises(InputError, match="permutation"):
        ordered.reordered(np.zeros(vocab, dtype=int))


@pytest.mark.parametrize("bad", [np.arange(10), np.zeros(49_152, dtype=int)])
def test_a_wrong_perm_is_refused(tiny: LoadedModel, bad: np.ndarray) -> None:
    with pytest.raises(InputError, match="permutation"):
        PreparedModel.from_loaded(tiny, bad)


def test_only_allow_listed_functions_run(tiny: LoadedModel) -> None:
    functions = KeyHolderFunctions(PreparedModel.from_loaded(tiny).shape)
    with pytest.raises(InputError, match="not an allowed function"):
        functions.evaluate("exp", 0, [torch.zeros(1, 64)])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="layer must be"):
        functions.attention(99, torch.zeros(1, 64), torch.zeros(1, 32), torch.zeros(1, 32))


def test_default_model_matches_transformers() -> None:
    from model.loading import load_default

    loaded = load_default()
    prepared = PreparedModel.from_loaded(loaded)
    logits = _run(loaded, prepared, [PROMPT[:8], PROMPT[8:9]])
    reference = _reference_logits(loaded, PROMPT[:9])
    assert torch.allclose(logits[0], reference[7], atol=2e-3)
    assert torch.allclose(logits[1], reference[8], atol=2e-3)
    assert int(logits[1].argmax()) == int(reference[8].argmax())
