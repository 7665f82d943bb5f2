"""Batched generation (model/batch_decode.py) against the unbatched path; selection: test_batch_sampler.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import InputError
from core.progress import Progress
from model.batch_decode import BatchDecode, BatchRequest, generate_batch, one_thread
from model.batch_sampler import BatchExact, BatchSimulate
from model.evaluation import generate_fixed_length
from model.generate import DecodeSession, build_prompt
from model.loading import LoadedModel, load_default
from model.sampler import SamplerConfig
from model.simulate import SimulateSelector, identity_perm

PROMPTS = ("Name three colours.", "Tell me a long story about a lighthouse keeper.", "Hi")


def prompts(loaded: LoadedModel) -> list[tuple[int, ...]]:
    return [tuple(build_prompt(loaded, [{"role": "user", "content": p}], reserve=64)) for p in PROMPTS]


def test_the_first_step_of_a_padded_batch_is_the_unbatched_prefill(tiny: LoadedModel) -> None:
    rows = sorted(prompts(tiny), key=len, reverse=True)
    batch = BatchDecode(tiny, rows, steps=4)
    for b, prompt in enumerate(rows):
        assert torch.equal(batch.first_logits[b], DecodeSession(tiny).prefill(prompt))
    embeddings = tiny.input_embeddings()[torch.tensor([5, 6, 7])]
    stepped = batch.step(embeddings)
    for b, prompt in enumerate(rows):  # one step later: equal up to the batched product's rounding
        session = DecodeSession(tiny)
        session.prefill(prompt)
        torch.testing.assert_close(stepped[b], session.step(embeddings[b]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_each_sequence_of_a_batch_is_what_it_generates_on_its_own(tiny: LoadedModel, precision: str) -> None:
    """B = 6 rows of different prompts, seeds and lengths: the same tokens as 6 separate runs, both through
    the batched loop alone and through the landed unbatched loop (`generate_fixed_length`)."""
    config = SamplerConfig(tsp=False, pp=True, softmax_precision=precision)  # type: ignore[arg-type]
    embeddings = tiny.input_embeddings()
    perm = identity_perm(embeddings.shape[0])
    rows = prompts(tiny)
    requests = [BatchRequest(rows[i % 3], seed=40 + i, length=12 - 3 * (i % 2)) for i in range(6)]
    ticks: list[Progress] = []
    together = generate_batch(
        tiny, requests, BatchSimulate(embeddings, perm, config), on_progress=ticks.append
    )
    assert [len(r.tokens) for r in together] == [12, 9, 12, 9, 12, 9]
    assert all(r.finish == "length" for r in together) and ticks[-1] == Progress("tokens", 63, 63)
    assert [t.done for t in ticks] == sorted(t.done for t in ticks)
    for request, result in zip(requests, together, strict=True):
        alone = generate_batch(tiny, [request], BatchSimulate(embeddings, perm, config))[0]
        assert alone.tokens == result.tokens
        unbatched = SimulateSelector(embeddings, perm, config)
        assert generate_fixed_length(
            tiny, list(request.prompt_ids), unbatched, request.length, request.seed
        ) == (result.tokens)
        assert len(result.max_error) == len(result.tokens) and result.display_differs <= len(result.tokens)


def test_a_sequence_does_not_depend_on_its_batch_bit_for_bit(tiny: LoadedModel) -> None:
    """The same request among 4 companions and among 6 others (other prompts, other rows): every recorded
    number equal, not only the tokens. Without PP the mixtures are dense and share a padded product."""
    config = SamplerConfig(tsp=False, pp=False)
    embeddings = tiny.input_embeddings()
    selector = BatchSimulate(embeddings, identity_perm(embeddings.shape[0]), config)
    rows = prompts(tiny)
    target = BatchRequest(rows[1], seed=7, length=10)
    small = [BatchRequest(rows[0], 1, 10), target, BatchRequest(rows[2], 2, 10), BatchRequest(rows[0], 3, 4)]
    large = [BatchRequest(rows[i % 3], 20 + i, 6 + i) for i in range(6)]
    large.insert(5, target)
    first = generate_batch(tiny, small, selector)[1]
    second = generate_batch(tiny, large, selector)[5]
    assert first == second and len(first.tokens) == 10


def test_eos_banned_or_not_and_bad_batches(tiny: LoadedModel) -> None:
    embeddings = tiny.input_embeddings()
    eos = next(iter(tiny.eos_token_ids))

    class AlwaysEos:  # a selector that draws EOS whenever it is allowed
        def select(self, logits, rs, noise):  # type: ignore[no-untyped-def]
            choice = BatchExact(embeddings, 0.0).select(logits, rs, noise)
            allowed = np.isfinite(logits[:, eos])
            choice.tokens[allowed] = eos
            return choice

    request = BatchRequest(prompts(tiny)[0], seed=1, length=5)
    assert generate_batch(tiny, [request], AlwaysEos(), ban_eos=True)[0].tokens.count(eos) == 0
    stopped = generate_batch(
        tiny, [request, BatchRequest(request.prompt_ids, 2, 5)], AlwaysEos(), ban_eos=False
    )
    assert [r.tokens for r in stopped] == [[eos], [eos]] and stopped[0].finish == "eos"
    with pytest.raises(InputError, match="1 to 64"):
        generate_batch(tiny, [request] * 65, AlwaysEos())
    with pytest.raises(InputError, match="longest first"):
        BatchDecode(tiny, sorted(prompts(tiny), key=len), steps=2)
    with pytest.raises(InputError, match="context window"):
        generate_batch(tiny, [BatchRequest(request.prompt_ids, 1, tiny.context_window)], AlwaysEos())


@pytest.mark.slow
def test_batched_sequences_on_the_default_model_match_separate_runs() -> None:
    """The real model, 8 rows of 48 tokens without PP (dense mixtures): each row is bit for bit its own
    batch of one. The landed one-row loop computes the same function up to float rounding (its logits
    within 1e-3 of the batch's, given the same inputs); its tokens are not compared, because at
    temperature 1 a rounding-level difference moves a near tie and the texts part (measured: 5 of 8 rows
    part, at steps 4 to 46)."""
    loaded = load_default()
    embeddings = loaded.input_embeddings()
    config = SamplerConfig(tsp=False, pp=False)
    perm = identity_perm(embeddings.shape[0])
    rows = prompts(loaded)
    requests = [BatchRequest(rows[i % 3], seed=i, length=48) for i in range(8)]
    together = generate_batch(loaded, requests, BatchSimulate(embeddings, perm, config))
    for request, result in zip(requests, together, strict=True):
        assert generate_batch(loaded, [request], BatchSimulate(embeddings, perm, config))[0] == result
    ordered = sorted((rows[i % 3] for i in range(8)), key=len, reverse=True)
    draw = torch.Generator().manual_seed(0)
    inputs = [embeddings[torch.randint(0, embeddings.shape[0], (8,), generator=draw)] for _ in range(6)]
    with one_thread():
        batch = BatchDecode(loaded, ordered, steps=6)
        batched = [batch.first_logits] + [batch.step(x) for x in inputs]
    for row, prompt in enumerate(ordered):
        session = DecodeSession(loaded)
        alone = [session.prefill(prompt)] + [session.step(x[row]) for x in inputs]
        for one, many in zip(alone, batched, strict=True):
            assert (one.reshape(-1) - many[row]).abs().max() < 1e-3  # measured 5.9e-5 (logits up to 32)
