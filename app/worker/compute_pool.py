"""The worker's compute processes, and the encrypted model the websocket server (app/worker/server.py) drives.

`ComputePool` starts `world` ranks (app/worker/compute_rank.py): rank 0 warms every weight plaintext before
the first user (progress in `readiness`), then forks the others, which share its caches. The pool loads each
session's public keys into every rank, and runs one reply at a time: it sends each rank its share of the
prompt, then routes what the ranks send back. The ranks never talk to each other or to the key holder; the
pool merges their shares of each oracle call into one call (`model.encrypted_router.merge_calls`), hands each
rank its answers, relays the exchanges of the split sampler, and turns the ranks' token parts and rank 0's
progress into protocol messages. Ciphertexts pass through here as bytes, except the shares several ranks hold
of one place, which are added here, and side-by-side shares, which are packed two to a ciphertext
(`model.encrypted_router.share_combiner`: neither needs a key), so the key holder receives fewer ciphertexts.

With `threads=True` the ranks run as threads of this process (tests: the same routing, no spawn cost;
TenSEAL holds the GIL, so threads give no speed).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from app.worker.compute_rank import Channel, Rank, master_main, warm
from core.errors import CODE_INTERNAL, JobCancelled, JobFailed
from core.progress import OnProgress, Progress
from crypto.engine import Engine
from crypto.params import CKKSParams
from model.encrypted import OracleCall, WorkerWeights, positions_of
from model.encrypted_rank import RankRequest
from model.encrypted_router import Combine, merge_calls, share_combiner, split_answers
from model.generate import FinishReason

log = logging.getLogger("he_chat.worker")
KEY_LOAD_SECONDS = 300.0  # a rank busy with a long product answers a key upload at its next collective


class _QueueChannel:
    """One end of an in-process pipe (the ranks-as-threads mode of the tests)."""

    def __init__(self, inbox: queue.Queue[Any], outbox: queue.Queue[Any]) -> None:
        self.inbox, self.outbox = inbox, outbox
        self._next: list[Any] = []

    def send(self, obj: Any) -> None:
        self.outbox.put(obj)

    def poll(self, timeout: float) -> bool:
        if not self._next:
            try:
                self._next.append(self.inbox.get(timeout=timeout))
            except queue.Empty:
                return False
        return True

    def recv(self) -> Any:
        return self._next.pop() if self._next else self.inbox.get()

    def close(self) -> None:
        self.outbox.put(("stop",))


class ComputePool:
    """`world` compute processes with shared warm caches; one reply at a time."""

    def __init__(
        self,
        weights: WorkerWeights,
        processes: int,
        presets: Sequence[CKKSParams],
        orders: Sequence[bool] = (True, False),
        threads: bool = False,
    ) -> None:
        most = min(-(-weights.shape.vocab // params.slot_count) for params in presets)  # a chunk per rank
        self.world = max(1, min(processes, most))
        self.started = time.monotonic()
        self.warm_seconds: float | None = None
        self.warm_done, self.warm_total = 0, 1
        self.failed = ""
        self._ready: set[int] = set()
        self._ready_event = threading.Event()
        self._jobs: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._keys: dict[str, queue.Queue[tuple[int, bool, int, str]]] = {}
        self._combiners: dict[str, Combine] = {}  # session -> fewer ciphertexts per call (merge_calls)
        self._job_lock = threading.Lock()
        self._job = 0
        self._locks = [threading.Lock() for _ in range(self.world)]
        if threads:
            self.cancel: Any = threading.Event()
            self.channels: list[Channel] = self._start_threads(weights, list(presets), list(orders))
        else:
            context = multiprocessing.get_context("spawn")
            self.cancel = context.Event()
            pipes = [context.Pipe() for _ in range(self.world)]
            self.channels = [mine for mine, _ in pipes]
            saved = {
                k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            }
            os.environ.update({k: "1" for k in saved})  # one thread per rank: the ranks are the parallelism
            try:
                self.process = context.Process(
                    target=master_main,
                    args=([theirs for _, theirs in pipes], weights, list(presets), list(orders), self.cancel),
                    name="he-chat-rank-0",
                    daemon=True,
                )
                self.process.start()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            for _, theirs in pipes:
                theirs.close()
        for rank, channel in enumerate(self.channels):
            threading.Thread(
                target=self._read, args=(rank, channel), name=f"he-chat-rank-{rank}-reader", daemon=True
            ).start()

    def _start_threads(
        self, weights: WorkerWeights, presets: list[CKKSParams], orders: list[bool]
    ) -> list[Channel]:
        pairs: list[tuple[queue.Queue[Any], queue.Queue[Any]]] = [
            (queue.Queue(), queue.Queue()) for _ in range(self.world)
        ]  # (to rank, to main)
        mine: list[Channel] = [_QueueChannel(to_main, to_rank) for to_rank, to_main in pairs]
        theirs = [_QueueChannel(to_rank, to_main) for to_rank, to_main in pairs]

        def start() -> None:
            def report(event: Progress) -> None:
                theirs[0].send(("warm", event.done, event.total))

            caches = warm(weights, presets, orders, self.world, report)
            for rank in range(self.world):
                worker = Rank(theirs[rank], rank, self.world, weights, caches, self.cancel)
                threading.Thread(target=worker.serve, name=f"he-chat-rank-{rank}", daemon=True).start()

        threading.Thread(target=start, name="he-chat-warm", daemon=True).start()
        return mine

    # --- the pipes ---------------------------------------------------------------------------------

    def _send(self, rank: int, message: Any) -> None:
        """Raises JobFailed if the rank is gone."""
        try:
            with self._locks[rank]:
                self.channels[rank].send(message)
        except (OSError, ValueError) as exc:
            self._lost(rank)
            raise JobFailed(
                CODE_INTERNAL, f"{self.failed}; the worker restarts its compute processes"
            ) from exc

    def _lost(self, rank: int) -> None:
        self.failed = self.failed or f"compute process {rank} of the worker stopped"

    def _broken(self) -> JobFailed:
        return JobFailed(CODE_INTERNAL, f"{self.failed}; restart the worker")

    def _read(self, rank: int, channel: Channel) -> None:
        while True:
            try:
                message = channel.recv()
            except (EOFError, OSError):
                self._lost(rank)
                self._jobs.put((rank, ("died", self._job)))
                for waiting in list(self._keys.values()):
                    waiting.put((rank, False, CODE_INTERNAL, self.failed))
                return
            kind = message[0]
            if kind == "warm":
                self.warm_done, self.warm_total = message[1], message[2]
                log.info("worker warming up: %d/%d weight blocks", message[1], message[2])
            elif kind == "ready":
                self._ready.add(message[1])
                if len(self._ready) == self.world:
                    self.warm_seconds = time.monotonic() - self.started
                    self._ready_event.set()
            elif kind == "keys":
                asked = self._keys.get(message[1])
                if asked is not None:
                    asked.put((rank, *message[2:]))
            else:
                self._jobs.put((rank, message))

    # --- what the worker asks ----------------------------------------------------------------------

    def readiness(self) -> tuple[int, int]:
        """(done, total) of the warm-up; done == total once every rank serves."""
        if self._ready_event.is_set():
            return (1, 1)
        return (min(self.warm_done, self.warm_total - 1), self.warm_total)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready_event.wait(timeout)

    def load_keys(self, session: str, data: bytes, params: CKKSParams) -> None:
        """Load a session's public context, which must be for `params`, into every rank (blocks; a job in
        progress delays it).

        Raises:
            JobFailed: with the code of the first rank's refusal (a secret key, garbage, other parameters).
        """
        waiting: queue.Queue[tuple[int, bool, int, str]] = queue.Queue()
        self._keys[session] = waiting
        try:
            for rank in range(self.world):
                self._send(rank, ("keys", session, data, params))
            answers = [waiting.get(timeout=KEY_LOAD_SECONDS) for _ in range(self.world)]
        except queue.Empty as exc:
            raise JobFailed(
                CODE_INTERNAL, "the worker's compute processes did not load the keys in time"
            ) from exc
        finally:
            self._keys.pop(session, None)
        refused = [a for a in answers if not a[1]]
        if refused:
            self.drop_keys(session)
            raise JobFailed(refused[0][2], refused[0][3])
        self._combiners[session] = share_combiner(Engine.for_params(params))

    def drop_keys(self, session: str) -> None:
        self._combiners.pop(session, None)
        for rank in range(self.world):
            try:
                self._send(rank, ("drop", session))
            except JobFailed:
                pass  # a rank that is gone holds nothing any more

    def run(
        self,
        session: str,
        prompt: Sequence[bytes],
        request: RankRequest,
        oracle: Callable[[OracleCall], list[bytes]],
        progress: OnProgress,
        token: Callable[[int, dict[str, Any], list[bytes]], None],
        cancelled: threading.Event,
    ) -> FinishReason:
        """One reply on every rank. Raises JobCancelled, JobFailed, or the oracle's error."""
        while not self._ready_event.wait(0.5):
            if cancelled.is_set():
                raise JobCancelled()
            if self.failed:
                raise self._broken()
            done, total = self.readiness()
            progress(Progress(f"worker warming up: {100 * done // max(total, 1)}%", done, total))
        with self._job_lock:
            if self.failed:
                raise self._broken()
            return self._route(session, prompt, request, oracle, progress, token, cancelled)

    def _route(
        self,
        session: str,
        prompt: Sequence[bytes],
        request: RankRequest,
        oracle: Callable[[OracleCall], list[bytes]],
        progress: OnProgress,
        token: Callable[[int, dict[str, Any], list[bytes]], None],
        cancelled: threading.Event,
    ) -> FinishReason:
        """Send each rank its share of the prompt, then route what the ranks send until they finish."""
        self.cancel.clear()
        self._job += 1
        job = self._job
        try:
            for rank in range(self.world):
                mine = {i: prompt[i] for i in positions_of(rank, self.world, request.positions)}
                self._send(rank, ("job", job, session, replace(request, prompt=mine)))
        except JobFailed:
            self.cancel.set()  # the ranks that got the job must not wait for the one that did not
            raise
        pending: dict[int, dict[int, tuple[str, Any]]] = {}
        finished: dict[int, Any] = {}
        failure: BaseException | None = None
        while len(finished) < self.world:
            if cancelled.is_set() and not self.cancel.is_set():
                self.cancel.set()
            try:
                rank, message = self._jobs.get(timeout=0.05)
            except queue.Empty:
                continue
            if message[1] != job:
                continue  # left over from a cancelled job
            kind = message[0]
            if kind == "progress":
                progress(message[2])
            elif kind == "collective":
                seq, what, payload = message[2:]
                pending.setdefault(seq, {})[rank] = (what, payload)
                if len(pending[seq]) == self.world and failure is None:
                    try:
                        self._resolve(job, seq, pending.pop(seq), oracle, token, self._combiners.get(session))
                    except BaseException as exc:  # noqa: BLE001 - stop the ranks first, then raise
                        failure = exc
                        self.cancel.set()
            else:
                finished[rank] = message
                if kind in ("died", "error"):
                    self.cancel.set()  # the others would wait for it at their next collective
        if failure is not None:
            raise failure
        outcomes = list(finished.values())
        errors = [m for m in outcomes if m[0] == "error"]
        if errors:
            raise JobFailed(errors[0][2], errors[0][3])
        if any(m[0] == "died" for m in outcomes):
            raise self._broken()
        if cancelled.is_set() or any(m[0] == "cancelled" for m in outcomes):
            raise JobCancelled()
        reason: FinishReason = outcomes[0][2]
        return reason

    def _resolve(
        self,
        job: int,
        seq: int,
        shares: dict[int, tuple[str, Any]],
        oracle: Callable[[OracleCall], list[bytes]],
        token: Callable[[int, dict[str, Any], list[bytes]], None],
        combine: Combine | None,
    ) -> None:
        kinds = {what for what, _ in shares.values()}
        payloads = [shares[rank][1] for rank in range(self.world)]
        if len(kinds) != 1:
            raise JobFailed(
                CODE_INTERNAL, f"the worker's compute processes are out of step ({sorted(kinds)})"
            )
        kind = kinds.pop()
        if kind == "oracle":
            call, answers = merge_calls(payloads, combine)
            for rank, blobs in enumerate(split_answers(answers, oracle(call))):
                self._send(rank, ("result", job, seq, blobs))
        elif kind == "exchange":
            everyone = [blobs for _, blobs in payloads]
            for rank in range(self.world):
                self._send(rank, ("result", job, seq, everyone))
        else:  # a token: every rank's part of I', in order
            index = payloads[0][0]
            token(
                index,
                merge_telemetry([tel for _, tel, _ in payloads]),
                [b for _, _, bs in payloads for b in bs],
            )

    def close(self) -> None:
        for rank in range(self.world):
            try:
                self._send(rank, ("stop",))
            except JobFailed:
                pass
        process = getattr(self, "process", None)
        if process is not None:
            process.join(5)
            if process.is_alive():
                process.terminate()


def merge_telemetry(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ranks' reports of one token as one: wall time by stage is the slowest rank's, work is summed."""
    merged = dict(reports[0])
    stages = {stage for r in reports for stage in r["seconds"]}
    merged["seconds"] = {
        stage: max(r["seconds"].get(stage, 0.0) for r in reports) for stage in sorted(stages)
    }
    for field in ("bytes_to_key_holder", "bytes_from_key_holder", "rotations"):
        merged[field] = sum(int(r.get(field, 0)) for r in reports)
    merged["processes"] = len(reports)
    return merged
