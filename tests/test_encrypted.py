"""The encrypted pipeline on the tiny model: real CKKS, the same tokens as simulate mode for a seed."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

from app import protocol as p
from app.worker import JobContext
from crypto.keys import load_public_context
from model.encrypted import EncryptedWorkerModel, KeyHolderSide, worker_model_for
from model.generate import GenerationSettings, build_prompt, generate
from model.loading import LoadedModel
from model.sampler import SamplerConfig
from model.simulate import SimulateSelector

PRESET = "default"
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "2+2="]


def tiny_perm(vocab: int) -> np.ndarray:
    return np.random.default_rng(42).permutation(vocab)  # any fixed order exercises the baking of pi


def make_sides(loaded: LoadedModel, perm: np.ndarray) -> tuple[EncryptedWorkerModel, KeyHolderSide]:
    worker = worker_model_for(loaded, perm, "test-order")
    keys = KeyHolderSide(PRESET, worker.shape, loaded.input_embeddings(), perm)
    return worker, keys


def run_in_process(
    worker: EncryptedWorkerModel, keys: KeyHolderSide, prompt: list[int], n: int, seed: int
) -> tuple[list[int], list[dict[str, Any]]]:
    """The worker job with the oracle wired straight to the key holder (websockets: test_worker.py)."""
    plan = worker.rotation_plan(PRESET)
    public = load_public_context(keys.public_context(sorted(plan.steps), plan.conjugate))
    keys.new_reply({"temperature": 1.0, "tsp": True})
    request = p.Generate("s", "r", len(prompt), n, seed, True, True, 3, keys.encrypt_prompt(prompt))
    tokens: list[int] = []
    telemetry: list[dict[str, Any]] = []

    def emit(message: p.Message) -> None:
        if isinstance(message, p.Token):
            tokens.append(keys.read_token(message.blobs))
            telemetry.append(message.telemetry)

    job = JobContext(public, request, keys.answer, emit, threading.Event())
    assert worker.run(job) == "length"
    return tokens, telemetry


def simulate(loaded: LoadedModel, perm: np.ndarray, prompt: list[int], n: int, seed: int) -> list[int]:
    selector = SimulateSelector(loaded.input_embeddings(), perm, SamplerConfig(tsp=True, pp=True))
    settings = GenerationSettings(max_new_tokens=n, temperature=1.0, seed=seed)
    # generate() stops at EOS; the worker does not (the key holder cancels), so compare the common prefix
    return [s.token_id for s in generate(loaded, prompt, selector, settings)]


def test_encrypted_matches_simulate_token_for_token(tiny: LoadedModel) -> None:
    perm = tiny_perm(tiny.model.config.vocab_size)
    worker, keys = make_sides(tiny, perm)
    n = 20
    for seed, text in enumerate(PROMPTS):
        prompt = build_prompt(tiny, [{"role": "user", "content": text}])[-12:]  # keep the test quick
        encrypted, telemetry = run_in_process(worker, keys, prompt, n, seed)
        expected = simulate(tiny, perm, prompt, n, seed)
        assert encrypted[: len(expected)] == expected, f"prompt {text!r}"
        assert len(encrypted) == n
    calls = telemetry[-1]["oracle_calls"]
    layers = tiny.model.config.num_hidden_layers
    assert calls["rmsnorm"] == 2 * layers and calls["attention"] == layers and calls["swiglu"] == layers
    assert calls["softmax"] == 1 and calls["refresh"] >= 25
    assert telemetry[-1]["bytes_to_key_holder"] > 0 and telemetry[-1]["rotations"] > 0
    assert set(keys.evaluated) <= {"refresh", "rmsnorm", "attention", "swiglu", "final_norm", "softmax"}


def test_the_key_holder_refuses_calls_off_the_allow_list(tiny: LoadedModel) -> None:
    from model.errors import InputError

    _, keys = make_sides(tiny, tiny_perm(tiny.model.config.vocab_size))
    with pytest.raises(InputError, match="not an allowed"):
        keys.answer("argmax", -1, [b"x"])
    with pytest.raises(InputError, match="not an allowed"):
        keys.answer("attention", 0, [b"x", b"y"])


def test_the_worker_never_holds_a_secret_key(tiny: LoadedModel) -> None:
    worker, keys = make_sides(tiny, tiny_perm(tiny.model.config.vocab_size))
    plan = worker.rotation_plan(PRESET)
    public = load_public_context(keys.public_context(sorted(plan.steps), plan.conjugate))
    assert not public.tenseal_context.is_private() and not public.tenseal_context.has_secret_key()
    assert torch.equal(worker.by_tsp[True].embed_pi, tiny.input_embeddings()[torch.from_numpy(keys.perm)])
