"""The worker's compute processes for real (spawned, forked, pipes) on the tiny model.

What crosses between the processes is the same as in the threads mode of test_encrypted.py; here the
processes themselves: the warm-up before the first reply, keys loaded in every rank, a Cancel that
reaches every rank at once, a rank that dies, and keys that a rank refuses.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest

from app.worker.encrypted import EncryptedWorker, WorkerSpec
from app.worker.in_process import open_session, reply_job
from app.worker.session import JobContext
from core.errors import CODE_BAD_CIPHERTEXT, CODE_INTERNAL, CODE_SECRET_KEY, JobCancelled, JobFailed
from crypto.params import CKKS_DEFAULT
from model.generate import GenerationSettings, build_prompt, generate
from model.key_holder import KeyHolderSide
from model.loading import LoadedModel
from model.sampler import SamplerConfig
from model.simulate import SimulateSelector
from tests.conftest import private_context_bytes


def _spec(tiny: LoadedModel) -> WorkerSpec:
    return WorkerSpec.from_loaded(tiny, np.arange(tiny.model.config.vocab_size), "ids", processes=2)


@pytest.fixture(scope="module")
def pool_worker(tiny: LoadedModel) -> Iterator[EncryptedWorker]:
    worker = EncryptedWorker(_spec(tiny))
    assert worker.pool.wait_ready(300), worker.pool.failed
    yield worker
    worker.close()


def _job(
    tiny: LoadedModel, worker: EncryptedWorker, session: str, n: int
) -> tuple[KeyHolderSide, JobContext, list[int]]:
    keys = open_session(worker, tiny, np.arange(worker.vocab), session, "default")
    prompt = build_prompt(tiny, [{"role": "user", "content": "Hi there"}])[-4:]
    reply = reply_job(keys, session, prompt, n, 5)
    return keys, reply.job, reply.tokens


def test_the_ranks_warm_first_then_reply_as_simulate_does(
    tiny: LoadedModel, pool_worker: EncryptedWorker
) -> None:
    assert pool_worker.readiness() == (1, 1) and pool_worker.pool.world == 2
    assert pool_worker.pool.warm_seconds is not None
    master = psutil.Process(pool_worker.pool.process.pid)
    assert len(master.children()) == 1  # rank 1 is forked from rank 0, after the caches were warmed
    _, job, tokens = _job(tiny, pool_worker, "a", 3)
    assert pool_worker.run(job) == "length"
    selector = SimulateSelector(tiny.input_embeddings(), np.arange(49152), SamplerConfig())
    prompt = build_prompt(tiny, [{"role": "user", "content": "Hi there"}])[-4:]
    expected = [s.token_id for s in generate(tiny, prompt, selector, GenerationSettings(3, 1.0, 5))]
    assert tokens[: len(expected)] == expected


def test_a_cancel_reaches_every_rank_at_once(tiny: LoadedModel, pool_worker: EncryptedWorker) -> None:
    _, job, tokens = _job(tiny, pool_worker, "b", 200)
    threading.Timer(2.0, job.cancelled.set).start()
    start = time.perf_counter()
    with pytest.raises(JobCancelled):
        pool_worker.run(job)
    assert time.perf_counter() - start < 30
    _, job, tokens = _job(tiny, pool_worker, "c", 1)  # and the pool serves the next reply
    assert pool_worker.run(job) == "length" and len(tokens) == 1


def test_keys_the_ranks_refuse_come_back_as_typed_errors(pool_worker: EncryptedWorker) -> None:
    with pytest.raises(JobFailed) as garbage:
        pool_worker.load_keys("bad", b"HECKKS garbage", CKKS_DEFAULT)
    assert garbage.value.code == CODE_BAD_CIPHERTEXT
    data = private_context_bytes(CKKS_DEFAULT)
    with pytest.raises(JobFailed) as secret:
        pool_worker.load_keys("secret", data, CKKS_DEFAULT)
    assert secret.value.code == CODE_SECRET_KEY


def test_a_rank_that_dies_fails_the_reply_with_a_clear_error(tiny: LoadedModel) -> None:
    worker = EncryptedWorker(_spec(tiny))
    try:
        assert worker.pool.wait_ready(300)
        _, job, _ = _job(tiny, worker, "d", 50)
        rank1 = psutil.Process(worker.pool.process.pid).children()[0]
        threading.Timer(2.0, os.kill, (rank1.pid, signal.SIGKILL)).start()
        with pytest.raises(JobFailed, match="compute process 1 of the worker stopped") as failed:
            worker.run(job)
        assert failed.value.code == CODE_INTERNAL
        _, job, tokens = _job(tiny, worker, "d", 1)  # new keys: the worker restarted its processes
        assert worker.epoch == 1 and worker.run(job) == "length" and len(tokens) == 1
    finally:
        worker.close()
