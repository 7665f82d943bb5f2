"""A key holder and an encrypted worker in one process: the encrypted pipeline without the websocket.

The worker's ranks run as threads (`EncryptedWorker(spec, threads=True)`) or as its compute processes; the
oracle is a direct call into the key holder (`KeyHolderSide.answer`), and the worker's Token messages go
straight to the key holder, which reads each token as it is emitted. Everything between the two sides is
the real thing (the routing of shares, the split sampler, the collectives, the key holder's checks) except
the transport, which `app.worker.server` and `app.chat.keyholder` add.

Tests of the pipeline drive it this way (tests/model/test_encrypted.py and
tests/app/worker/test_compute_pool.py); the websocket path is tested in tests/app/worker/test_server.py
and tests/app/chat/test_service.py.

References: DESIGN.md section 4 (the oracle calls); `app.worker.session.JobContext`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from app import protocol as p
from app.worker.encrypted import EncryptedWorker, WorkerSpec
from app.worker.session import JobContext
from core.errors import WorkerUnavailable
from crypto.params import preset
from model.encrypted import OracleCall
from model.key_holder import KeyHolderSide
from model.loading import LoadedModel
from model.sampler import SamplerConfig

READY_SECONDS = 300.0  # warming the tiny model's caches takes seconds; the default model's, minutes
REPLY_TEMPERATURE = 1.0  # the sampler at the model's own distribution, as simulate's default
REPLY_TSP = True  # the worker bakes the order in: the key holder undoes it


def start_worker(
    loaded: LoadedModel,
    perm: npt.ArrayLike,
    order: str,
    ranks: int,
    threads: bool = True,
    timeout: float = READY_SECONDS,
) -> EncryptedWorker:
    """A warm worker for `loaded` with the vocabulary order `perm` (named `order`) baked in.

    Args:
        ranks: compute ranks (the vocabulary and the positions are split among them).
        threads: ranks as threads of this process (no spawn); False: the worker's compute processes.

    Raises:
        WorkerUnavailable: the ranks were not warm after `timeout` seconds (the worker is closed).
    """
    worker = EncryptedWorker(WorkerSpec.from_loaded(loaded, perm, order, ranks), threads=threads)
    if not worker.pool.wait_ready(timeout):
        failed = worker.pool.failed or "still warming"
        worker.close()
        raise WorkerUnavailable(
            f"the worker's {ranks} rank(s) were not ready after {timeout:.0f} s: {failed}"
        )
    return worker


def open_session(
    worker: EncryptedWorker, loaded: LoadedModel, perm: npt.ArrayLike, session: str, preset_name: str
) -> KeyHolderSide:
    """A key holder for `loaded` whose public keys (for the worker's rotation plan) the worker holds as
    `session`; `perm` must be the order the worker was built with."""
    keys = KeyHolderSide(preset_name, worker.shape, loaded.input_embeddings(), perm)
    plan = worker.rotation_plan(preset_name)
    worker.load_keys(session, keys.public_context(sorted(plan.steps), plan.conjugate), preset(preset_name))
    return keys


@dataclass
class InProcessReply:
    """One reply's job, wired to the key holder, and what came back while it ran."""

    job: JobContext
    tokens: list[int] = field(default_factory=list)  # read by the key holder, in order
    telemetry: list[dict[str, Any]] = field(default_factory=list)  # the worker's, one per token
    calls: list[OracleCall] = field(default_factory=list)  # every oracle call, in order, if recorded


def reply_job(
    keys: KeyHolderSide,
    session: str,
    prompt: Sequence[int],
    max_new_tokens: int,
    seed: int,
    start: int = 0,
    oracle: Callable[[OracleCall], list[bytes]] | None = None,
    record: bool = False,
) -> InProcessReply:
    """The Generate job of a reply at temperature 1: `prompt` read from position `start` (0: a new
    conversation; the key holder's cache carries what came before), then `max_new_tokens` tokens.

    Args:
        oracle: answers the worker's oracle calls instead of `keys.answer` (a key holder that misbehaves).
        record: keep every oracle call in `calls` (with its ciphertexts: megabytes per token).
    """
    keys.begin_reply(REPLY_TEMPERATURE, REPLY_TSP)
    sampler = SamplerConfig(tsp=REPLY_TSP, temperature=REPLY_TEMPERATURE).to_dict()
    blobs = keys.encrypt_prompt(prompt)
    request = p.Generate(session, "r", start, "", len(prompt), max_new_tokens, seed, 0, sampler, blobs)
    answer = oracle if oracle is not None else keys.answer

    def emit(message: p.Message) -> None:
        if isinstance(message, p.Token):
            reply.tokens.append(keys.read_token(message.blobs))
            reply.telemetry.append(message.telemetry)

    def call(c: OracleCall) -> list[bytes]:
        if record:
            reply.calls.append(c)
        return answer(c)

    reply = InProcessReply(JobContext(session, request, call, emit, threading.Event()))
    return reply


def run_reply(
    worker: EncryptedWorker,
    keys: KeyHolderSide,
    session: str,
    prompt: Sequence[int],
    max_new_tokens: int,
    seed: int,
    start: int = 0,
    record: bool = False,
) -> tuple[InProcessReply, str]:
    """Run `reply_job(...)` on `worker`; returns the reply and the finish reason ("length" or "context")."""
    reply = reply_job(keys, session, prompt, max_new_tokens, seed, start, record=record)
    return reply, worker.run(reply.job)
