"""Tests for app/worker/encrypted.py: the worker's spec (made once, pickled to another process) and the
`EncryptedWorker` over the package's warm pool (tests/app/worker/conftest.py): the keys it asks for and the
requests it turns away before any rank computes.

Its replies are tested in test_compute_rank.py and test_compute_pool.py, over websockets in
tests/app/chat/test_service.py.
"""

from __future__ import annotations

import pickle
import threading
from dataclasses import replace

import pytest

from app import protocol as p
from app.worker.encrypted import EncryptedWorker
from app.worker.session import JobContext
from core.errors import ChatError, ParamsError, UnknownSession
from crypto.ops import sampler_rotation_plan
from crypto.params import preset
from model.conversation import public_prefixes
from model.loading import LoadedModel
from model.sampler import SamplerConfig
from tests.app.worker.conftest import pool_job, worker_spec


def test_a_spec_carries_the_model_and_its_public_prefixes_through_a_pickle(tiny: LoadedModel) -> None:
    spec = worker_spec(tiny)
    again = pickle.loads(pickle.dumps(spec))
    assert (again.name, again.ordering, again.context_window) == (tiny.name, "ids", tiny.context_window)
    assert again.processes == 2 and again.presets == ("default",)
    expected = {prefix.id: prefix for prefix in public_prefixes(tiny.tokenizer)}
    assert {k: prefix for k, (prefix, _) in again.prefixes.items()} == expected
    for prefix_id, (_, cache) in again.prefixes.items():
        assert cache == spec.prefixes[prefix_id][1] and all(cache)  # the keys and values, as bytes


def test_the_worker_asks_for_the_keys_of_its_plan_and_the_sampler(pool_worker: EncryptedWorker) -> None:
    plan = pool_worker.rotation_plan("default")
    sampler = sampler_rotation_plan(preset("default").slot_count)
    assert sampler.steps <= plan.steps and len(plan.steps) > len(sampler.steps)
    with pytest.raises(ParamsError):
        pool_worker.rotation_plan("no-such-preset")


def test_a_request_without_keys_or_room_is_turned_away_before_the_ranks(
    tiny: LoadedModel, pool_worker: EncryptedWorker
) -> None:
    request = p.Generate("nobody", "r", 0, "", 1, 2, 0, 0, SamplerConfig().to_dict(), [b""])
    stranger = JobContext("nobody", request, lambda call: [], lambda message: None, threading.Event())
    with pytest.raises(UnknownSession, match="lost this session's keys; reconnect"):
        pool_worker.run(stranger)
    _, job, tokens = pool_job(tiny, pool_worker, "full", 2)
    full = replace(job, request=replace(job.request, start=tiny.context_window - job.request.positions))
    with pytest.raises(ChatError, match="fill the context window"):
        pool_worker.run(full)
    assert pool_worker.run(job) == "length" and len(tokens) == 2  # the session itself is served
