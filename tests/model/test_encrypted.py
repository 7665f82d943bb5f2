"""The encrypted pipeline on the tiny model: real CKKS, ranks in lockstep, the same tokens as simulate.

The worker runs in-process (`app.worker.in_process`: the ranks are threads, so the routing of shares, the
split sampler and the collectives are the real ones, without spawning processes; the process pool itself
is tested in tests/app/worker/test_compute_pool.py) and the oracle is a direct call into the key holder
(the websocket path is tested in tests/app/worker/test_server.py and tests/app/chat/test_service.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from app.worker.encrypted import EncryptedWorker, WorkerSpec
from app.worker.in_process import open_session, reply_job, run_reply, start_worker
from core.errors import CODE_BAD_CIPHERTEXT, JobFailed
from crypto.keys import load_public_context
from crypto.vector import decrypt_vector
from crypto.vector_wire import encrypt_vector_bytes, vector_from_bytes
from model.encrypted import OracleCall
from model.generate import GenerationSettings, build_prompt, generate
from model.key_holder import KeyHolderSide
from model.loading import LoadedModel
from model.oracle import ORACLE_FUNCTIONS
from model.sampler import SamplerConfig
from model.simulate import SimulateSelector

PRESET = "default"
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "2+2="]


def tiny_perm(vocab: int) -> np.ndarray:
    return np.random.default_rng(42).permutation(vocab)  # any fixed order exercises the baking of pi


@pytest.fixture(scope="module")
def worker(tiny: LoadedModel) -> Iterator[EncryptedWorker]:
    """Two ranks: the split sampler, its exchanges and the merged oracle calls."""
    model = start_worker(tiny, tiny_perm(tiny.model.config.vocab_size), "test-order", 2)
    yield model
    model.close()


@pytest.fixture(scope="module")
def single(tiny: LoadedModel) -> Iterator[EncryptedWorker]:
    """One rank: the sampler on the whole vocabulary, nothing to exchange."""
    model = start_worker(tiny, tiny_perm(tiny.model.config.vocab_size), "test-order", 1)
    yield model
    model.close()


def key_holder(tiny: LoadedModel, worker: EncryptedWorker, session: str) -> KeyHolderSide:
    return open_session(worker, tiny, tiny_perm(tiny.model.config.vocab_size), session, PRESET)


def simulate(loaded: LoadedModel, perm: np.ndarray, prompt: list[int], n: int, seed: int) -> list[int]:
    selector = SimulateSelector(loaded.input_embeddings(), perm, SamplerConfig(tsp=True, pp=True))
    settings = GenerationSettings(max_new_tokens=n, temperature=1.0, seed=seed)
    # generate() stops at EOS; the worker does not (the key holder cancels), so compare the common prefix
    return [s.token_id for s in generate(loaded, prompt, selector, settings)]


def test_encrypted_matches_simulate_token_for_token(tiny: LoadedModel, worker: EncryptedWorker) -> None:
    perm = tiny_perm(tiny.model.config.vocab_size)
    n = 6
    seen: list[OracleCall] = []
    for seed, text in enumerate(PROMPTS[:2]):
        keys = key_holder(tiny, worker, f"s{seed}")
        prompt = build_prompt(tiny, [{"role": "user", "content": text}])[
            -9:
        ]  # quick, and odd: 4 positions per rank and one split by block
        reply, finish = run_reply(worker, keys, f"s{seed}", prompt, n, seed, record=True)
        encrypted, telemetry = reply.tokens, reply.telemetry
        seen += reply.calls
        assert finish == "length"
        expected = simulate(tiny, perm, prompt, n, seed)
        assert encrypted[: len(expected)] == expected, f"prompt {text!r}"
        assert len(encrypted) == n
        assert keys.commit() == len(prompt) + n - 1  # every token but the last was fed back
    calls = telemetry[-1]["oracle_calls"]
    layers = tiny.model.config.num_hidden_layers
    assert calls["rmsnorm"] == 2 * layers and calls["attention"] == layers and calls["swiglu"] == layers
    assert calls["softmax"] == 1
    # the default preset's sampler tail: 7 sharp cubics, shift and product, PP, the mixture in the
    # session's parameters; the other 18 cubics two per refresh in the tail
    assert (calls["refresh"], calls["refresh_tail"]) == (7 + 2 + 1, 9)
    assert telemetry[-1]["bytes_to_key_holder"] > 0 and telemetry[-1]["rotations"] > 0
    assert telemetry[-1]["processes"] == worker.pool.world
    assert set(keys.evaluated) <= set(ORACLE_FUNCTIONS)
    # the residual stream of a position split by block is a sum of two ranks' shares: the worker adds
    # them, so every place reaches the key holder once
    norms = [c for c in seen if c.fn == "rmsnorm"]
    assert norms and all(len(set(c.parts)) == len(c.parts) for c in norms)
    assert sum(len(c.parts) for c in norms[-2 * layers :]) == 2 * layers  # a decoded token: one each


def test_a_continued_reply_equals_reading_everything_at_once(
    tiny: LoadedModel, single: EncryptedWorker
) -> None:
    """The key holder's cache carries a conversation: prompt a, then b after it = the prompt a + b."""
    prompt = build_prompt(tiny, [{"role": "user", "content": "Tell me a story."}])[-9:]
    perm = tiny_perm(tiny.model.config.vocab_size)
    expected = simulate(tiny, perm, prompt, 3, 3)
    parts = key_holder(tiny, single, "parts")
    assert run_reply(single, parts, "parts", prompt[:5], 1, 0)[1] == "length"
    assert parts.commit() == 5  # the first reply's only token was shown, never fed back
    continued, finish = run_reply(single, parts, "parts", prompt[5:], 3, 3, start=5)
    assert finish == "length" and continued.tokens[: len(expected)] == expected


def test_the_worker_never_holds_a_secret_key(tiny: LoadedModel, worker: EncryptedWorker) -> None:
    keys = key_holder(tiny, worker, "secret-check")
    plan = worker.rotation_plan(PRESET)
    public = load_public_context(keys.public_context(sorted(plan.steps), plan.conjugate))
    assert not public.tenseal_context.is_private() and not public.tenseal_context.has_secret_key()
    embed = tiny.input_embeddings()[torch.from_numpy(keys.perm)].numpy()
    assert np.array_equal(WorkerSpec.from_loaded(tiny, keys.perm, "x").weights.embed[True], embed)


def test_pieces_come_at_the_level_asked_for_and_another_level_is_refused(
    tiny: LoadedModel, single: EncryptedWorker
) -> None:
    keys = key_holder(tiny, single, "levels")
    top = keys.engine.top_level
    asked: list[int] = []

    def answer_one_level_up(call: OracleCall) -> list[bytes]:  # a key holder that ignores the level
        blobs = keys.answer(call)
        if call.fn != "rmsnorm":
            return blobs
        spec = call.pieces[0]
        asked.append(spec.level)
        values = decrypt_vector(keys.secret, vector_from_bytes(keys.secret, blobs[0]))
        wrong = top if spec.level != top else 0
        return [encrypt_vector_bytes(keys.secret, values, level=wrong, engine=keys.engine), *blobs[1:]]

    job = reply_job(keys, "levels", [3, 4], 1, 0, oracle=answer_one_level_up).job
    with pytest.raises(JobFailed, match=r"at level \d, expected level \d") as failed:
        single.run(job)
    assert failed.value.code == CODE_BAD_CIPHERTEXT  # the typed error the session reports
    assert asked and all(level in (-1, *range(top + 1)) for level in asked)
