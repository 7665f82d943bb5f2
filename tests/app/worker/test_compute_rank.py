"""Tests for app/worker/compute_rank.py: a rank's side of the pipe, the warm-up before the first reply, and
the keys a rank refuses.

`ChannelLink` on its own over a queue pair, fast; then the ranks for real (rank 0 spawned, warming, rank 1
forked from it) through the package's `pool_worker` (tests/app/worker/conftest.py). What the pool does
with its ranks (a Cancel, a rank that dies) is tested in test_compute_pool.py.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np
import psutil
import pytest

from app.worker.compute_rank import ChannelLink
from app.worker.encrypted import EncryptedWorker
from core.errors import CODE_BAD_CIPHERTEXT, CODE_SECRET_KEY, JobCancelled, JobFailed
from core.progress import Progress
from crypto.params import CKKS_DEFAULT
from model.generate import GenerationSettings, build_prompt, generate
from model.loading import LoadedModel
from model.sampler import SamplerConfig
from model.simulate import SimulateSelector
from tests.app.worker.conftest import pool_job
from tests.conftest import private_context_bytes


class Pipe:
    """One end of a pipe for `ChannelLink`: what the rank sends is kept, what it receives is queued."""

    def __init__(self, *incoming: Any) -> None:
        self.sent: list[Any] = []
        self.incoming: queue.Queue[Any] = queue.Queue()
        for message in incoming:
            self.incoming.put(message)

    def send(self, obj: Any) -> None:
        self.sent.append(obj)

    def recv(self) -> Any:
        return self.incoming.get_nowait()

    def poll(self, timeout: float) -> bool:
        return not self.incoming.empty()


def test_a_link_waits_for_its_own_result_and_handles_keys_meanwhile() -> None:
    controls: list[Any] = []
    pipe = Pipe(("keys", "s2", b"k", None), ("result", 7, 99, "stale"), ("result", 7, 1, [b"answer"]))
    link = ChannelLink(pipe, 1, 2, 7, threading.Event(), controls.append)
    assert link.exchange("tag", [b"x"]) == [b"answer"]  # the result for another seq was not it
    assert pipe.sent == [("collective", 7, 1, "exchange", ("tag", [b"x"]))]
    assert controls == [("keys", "s2", b"k", None)]  # a key upload is served while the rank waits
    link.token(0, {}, [b"t"])  # tokens do not wait for an answer
    assert pipe.sent[-1] == ("collective", 7, 2, "token", (0, {}, [b"t"]))
    link.progress(Progress("layer", 1, 2))
    assert len(pipe.sent) == 2  # only rank 0 reports progress


def test_a_link_gives_up_on_stop_or_cancel() -> None:
    stopped = ChannelLink(Pipe(("stop",)), 0, 2, 1, threading.Event(), lambda message: None)
    with pytest.raises(JobCancelled):
        stopped.exchange("tag", [])
    cancel = threading.Event()
    waiting = ChannelLink(Pipe(), 0, 2, 1, cancel, lambda message: None)
    waiting.check()
    cancel.set()
    with pytest.raises(JobCancelled):
        waiting.exchange("tag", [])
    with pytest.raises(JobCancelled):
        waiting.check()
    rank0 = ChannelLink(Pipe(), 0, 2, 3, threading.Event(), lambda message: None)
    rank0.progress(Progress("layer", 1, 2))
    assert rank0.channel.sent == [("progress", 3, Progress("layer", 1, 2))]  # type: ignore[attr-defined]


def test_the_ranks_warm_first_then_reply_as_simulate_does(
    tiny: LoadedModel, pool_worker: EncryptedWorker
) -> None:
    assert pool_worker.readiness() == (1, 1) and pool_worker.pool.world == 2
    assert pool_worker.pool.warm_seconds is not None
    master = psutil.Process(pool_worker.pool.process.pid)
    assert len(master.children()) == 1  # rank 1 is forked from rank 0, after the caches were warmed
    _, job, tokens = pool_job(tiny, pool_worker, "a", 3)
    assert pool_worker.run(job) == "length"
    selector = SimulateSelector(tiny.input_embeddings(), np.arange(49152), SamplerConfig())
    prompt = build_prompt(tiny, [{"role": "user", "content": "Hi there"}])[-4:]
    expected = [s.token_id for s in generate(tiny, prompt, selector, GenerationSettings(3, 1.0, 5))]
    assert tokens[: len(expected)] == expected


def test_keys_the_ranks_refuse_come_back_as_typed_errors(pool_worker: EncryptedWorker) -> None:
    with pytest.raises(JobFailed) as garbage:
        pool_worker.load_keys("bad", b"HECKKS garbage", CKKS_DEFAULT)
    assert garbage.value.code == CODE_BAD_CIPHERTEXT
    data = private_context_bytes(CKKS_DEFAULT)
    with pytest.raises(JobFailed) as secret:
        pool_worker.load_keys("secret", data, CKKS_DEFAULT)
    assert secret.value.code == CODE_SECRET_KEY
