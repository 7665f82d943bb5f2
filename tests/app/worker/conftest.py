"""Fixtures of the worker's tests: the real pipeline's worker on the tiny model, its compute processes
spawned and forked for real (one pool for the package: warming it is the slow part).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from app.worker.encrypted import EncryptedWorker, WorkerSpec
from app.worker.in_process import open_session, reply_job
from app.worker.session import JobContext
from model.generate import build_prompt
from model.key_holder import KeyHolderSide
from model.loading import LoadedModel


def worker_spec(tiny: LoadedModel) -> WorkerSpec:
    """The tiny model's worker in the identity vocabulary order, on two compute processes."""
    return WorkerSpec.from_loaded(tiny, np.arange(tiny.model.config.vocab_size), "ids", processes=2)


@pytest.fixture(scope="package")
def pool_worker(tiny: LoadedModel) -> Iterator[EncryptedWorker]:
    """An `EncryptedWorker` over two real compute processes, warm (shared by the package's tests)."""
    worker = EncryptedWorker(worker_spec(tiny))
    assert worker.pool.wait_ready(300), worker.pool.failed
    yield worker
    worker.close()


def pool_job(
    tiny: LoadedModel, worker: EncryptedWorker, session: str, n: int
) -> tuple[KeyHolderSide, JobContext, list[int]]:
    """A reply of `n` tokens to a short prompt on `worker`, under a new session's keys (not yet run)."""
    keys = open_session(worker, tiny, np.arange(worker.vocab), session, "default")
    prompt = build_prompt(tiny, [{"role": "user", "content": "Hi there"}])[-4:]
    reply = reply_job(keys, session, prompt, n, 5)
    return keys, reply.job, reply.tokens
