"""The real pipeline as the worker server's model, and the worker in a process of its own.

`WorkerSpec` is everything a worker needs, made once from a loaded model (here, with torch): the weights
in both vocabulary orders, the model's name and order, and the public prefixes with their keys and
values, computed in the clear. It pickles, so the worker can start in another process.

`EncryptedWorker` is the `app.worker.session.WorkerModel` over a `ComputePool`
(app/worker/compute_pool.py): the Galois keys the plan needs, the sessions' keys, and `run`, which turns a
Generate request into a pool job.

`EmbeddedWorker` runs the websocket server and its pool in a spawned process on 127.0.0.1 (what `make
run` starts beside the page): the page's process is then only the key holder, and TenSEAL's hold on the
GIL there never delays the worker's routing. It stops when the page stops, or when the page's process
dies (the pipe closes).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app import protocol as p
from app.worker.compute_pool import ComputePool
from core.errors import ChatError, UnknownSession, WorkerUnavailable
from crypto.keys_wire import RotationPlan
from crypto.ops import sampler_rotation_plan
from crypto.params import CKKSParams, preset
from model.conversation import PublicPrefix, public_prefixes
from model.encrypted import Layout, WorkerWeights, cache_to_bytes
from model.encrypted_rank import RankRequest
from model.forward import PreparedModel, prefix_cache
from model.loading import LoadedModel
from model.sampler import SamplerConfig

log = logging.getLogger("he_chat.worker")
START_SECONDS = 300.0  # an embedded worker reports its address once its model is built


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker serves: weights, identity and public prefixes (picklable, no torch objects)."""

    weights: WorkerWeights
    name: str  # the model's name, checked by the key holder
    ordering: str  # fingerprint of the vocabulary order
    context_window: int
    prefixes: dict[str, tuple[PublicPrefix, list[bytes]]]  # id -> prefix, its keys and values (float32)
    presets: tuple[str, ...] = ("default",)  # CKKS presets whose weight plaintexts are warmed at start
    processes: int | None = None  # compute processes (default: one per core)

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedModel,
        perm: Any,
        ordering: str,
        processes: int | None = None,
        presets: Sequence[str] = ("default",),
    ) -> WorkerSpec:
        prepared = PreparedModel.from_loaded(loaded, perm)
        identity = prepared.reordered(np.arange(prepared.shape.vocab))
        embeddings = loaded.input_embeddings()
        prefixes = {}
        for prefix in public_prefixes(loaded.tokenizer):
            keys, values = prefix_cache(prepared, embeddings[list(prefix.ids)])
            prefixes[prefix.id] = (prefix, cache_to_bytes(keys, values))
        weights = WorkerWeights.from_prepared(prepared, identity)
        return cls(weights, loaded.name, ordering, loaded.context_window, prefixes, tuple(presets), processes)


class EncryptedWorker:
    """`app.worker.session.WorkerModel` for the real pipeline: a model on a pool of compute processes."""

    def __init__(self, spec: WorkerSpec, threads: bool = False) -> None:
        self.shape = spec.weights.shape
        self.name = spec.name
        self.vocab = self.shape.vocab
        self.ordering = spec.ordering
        self.context_window = spec.context_window
        self.prefixes = dict(spec.prefixes)
        self.spec, self.threads = spec, threads
        self.epoch = 0  # counts pool restarts: keys loaded before a restart are gone
        self._epochs: dict[str, int] = {}  # session -> the epoch its keys were loaded in
        self._lock = threading.Lock()
        self.pool = self._new_pool()

    def _new_pool(self) -> ComputePool:
        count = self.spec.processes if self.spec.processes is not None else (os.cpu_count() or 1)
        presets = [preset(name) for name in self.spec.presets]
        # TSP off (the research toggle) is encoded on first use, on the rank that needs it: warming both
        # orders would add about 2 GB to a worker that must fit a 16 GB machine beside the page.
        return ComputePool(self.spec.weights, count, presets, (True,), self.threads)

    def _heal(self) -> None:
        """A compute process died: start a new pool (it warms again); every session's keys are gone."""
        with self._lock:
            if self.pool.failed:
                log.error("%s; restarting the compute processes", self.pool.failed)
                self.pool.close()
                self.pool = self._new_pool()
                self.epoch += 1

    def rotation_plan(self, preset_name: str) -> RotationPlan:
        """The Galois keys of every planned product and of the sampler (raises ParamsError if unknown)."""
        slots = preset(preset_name).slot_count
        plan = sampler_rotation_plan(slots)
        for block in Layout(self.shape, slots, self.pool.world).blocks():
            plan = plan.union(block.plan.rotation_plan())
        return plan

    def readiness(self) -> tuple[int, int]:
        return self.pool.readiness()

    def load_keys(self, session: str, data: bytes, params: CKKSParams) -> None:
        self._heal()
        self.pool.load_keys(session, data, params)
        self._epochs[session] = self.epoch

    def drop_keys(self, session: str) -> None:
        self._epochs.pop(session, None)
        self.pool.drop_keys(session)

    def run(self, job: Any) -> str:
        """One Generate request (validated by the worker) as a pool job; returns the finish reason.

        Raises:
            UnknownSession: the session's keys were lost when the compute processes restarted (the key
                holder reconnects and uploads them again).
        """
        self._heal()
        if self._epochs.get(job.session) != self.epoch:
            raise UnknownSession(
                "the worker restarted its compute processes and lost this session's keys; reconnect"
            )
        g: p.Generate = job.request
        budget = min(g.max_new_tokens, self.context_window - g.start - g.positions)
        if budget < 1 and g.max_new_tokens > 0:  # (0 asks for a read-ahead: the positions, no token)
            raise ChatError(
                f"positions {g.start} + {g.positions} fill the context window of {self.context_window}"
            )
        request = RankRequest(
            positions=g.positions,
            prompt={},
            budget=budget,
            finish="length" if budget == g.max_new_tokens else "context",
            seed=g.seed,
            first_index=g.first_index,
            sampler=SamplerConfig.from_dict(g.sampler),
        )
        return self.pool.run(
            job.session,
            g.blobs,
            request,
            job.oracle,
            lambda update: job.emit(p.Progress(g.request, update.stage, update.done, update.total)),
            lambda index, tel, blobs: job.emit(p.Token(g.request, index, tel, blobs)),
            job.cancelled,
        )

    def close(self) -> None:
        self.pool.close()


def _serve(spec: WorkerSpec, conn: Any) -> None:
    """The embedded worker's process: the server on 127.0.0.1, its pool; stop on "stop" or a closed pipe."""
    from app.worker.admission import with_token
    from app.worker.background import start
    from app.worker.server import Worker

    model = EncryptedWorker(spec)

    async def main() -> None:
        worker = Worker(model)  # with a new access token, handed to the page through the pipe
        server = await start(worker, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        conn.send(("url", with_token(f"ws://{host}:{port}", worker.access.token), model.pool.world))
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()

        def watch() -> None:  # readiness to the page, then wait for the page to go
            while not model.pool.wait_ready(0.5):
                conn.send(("warm", *model.readiness()))
            conn.send(("warm", 1, 1))
            try:
                conn.recv()
            except (EOFError, OSError):
                pass

            def finish() -> None:
                if not stopped.done():
                    stopped.set_result(None)

            loop.call_soon_threadsafe(finish)

        threading.Thread(target=watch, name="he-chat-embedded-watch", daemon=True).start()
        await stopped
        server.close()
        await server.wait_closed()

    try:
        asyncio.run(main())
    finally:
        model.close()


class EmbeddedWorker:
    """A worker in a process of its own on 127.0.0.1; `url` to connect, `readiness()`, `stop()`.

    Raises:
        WorkerUnavailable: the process did not start serving in time.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(spec, theirs), name="he-chat-worker")
        self.process.start()
        theirs.close()
        self.ready = (0, 1)
        if not self._conn.poll(START_SECONDS):
            self.stop()
            raise WorkerUnavailable("the embedded worker did not start within five minutes")
        _, self.url, self.processes = self._conn.recv()
        threading.Thread(target=self._watch, name="he-chat-embedded", daemon=True).start()

    def _watch(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "warm":
                self.ready = (message[1], message[2])

    def readiness(self) -> tuple[int, int]:
        """(done, total) of the worker's warm-up."""
        return self.ready

    def stop(self) -> None:
        try:
            self._conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
