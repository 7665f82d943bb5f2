"""The worker's compute processes for real (spawned, forked, pipes) on the tiny model.

What crosses between the processes is the same as in the threads mode of tests/model/test_encrypted.py;
here the pool itself: a Cancel that reaches every rank at once, and a rank that dies. The ranks' own side
(the warm-up before the first reply, keys that a rank refuses) is in test_compute_rank.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from app.worker.encrypted import EncryptedWorker
from core.errors import CODE_INTERNAL, JobCancelled, JobFailed
from model.loading import LoadedModel
from tests.app.worker.conftest import pool_job, worker_spec


def test_a_cancel_reaches_every_rank_at_once(tiny: LoadedModel, pool_worker: EncryptedWorker) -> None:
    _, job, tokens = pool_job(tiny, pool_worker, "b", 200)
    threading.Timer(2.0, job.cancelled.set).start()
    start = time.perf_counter()
    with pytest.raises(JobCancelled):
        pool_worker.run(job)
    assert time.perf_counter() - start < 30
    _, job, tokens = pool_job(tiny, pool_worker, "c", 1)  # and the pool serves the next reply
    assert pool_worker.run(job) == "length" and len(tokens) == 1


def test_a_rank_that_dies_fails_the_reply_with_a_clear_error(tiny: LoadedModel) -> None:
    worker = EncryptedWorker(worker_spec(tiny))
    try:
        assert worker.pool.wait_ready(300)
        _, job, _ = pool_job(tiny, worker, "d", 50)
        rank1 = psutil.Process(worker.pool.process.pid).children()[0]
        threading.Timer(2.0, os.kill, (rank1.pid, signal.SIGKILL)).start()
        with pytest.raises(JobFailed, match="compute process 1 of the worker stopped") as failed:
            worker.run(job)
        assert failed.value.code == CODE_INTERNAL
        _, job, tokens = pool_job(tiny, worker, "d", 1)  # new keys: the worker restarted its processes
        assert worker.epoch == 1 and worker.run(job) == "length" and len(tokens) == 1
    finally:
        worker.close()
