"""A compute process of the worker: the warm weight caches, the sessions' public keys, one rank of a reply.

The worker's main process (app/worker/compute_pool.py) talks to `world` ranks over pipes. Rank 0 is spawned
clean, encodes every weight plaintext (reporting progress), then forks ranks 1 .. world-1, which share
those caches copy-on-write (gc.freeze keeps the pages untouched) and so cost no extra memory for them.
TenSEAL holds the GIL, so only processes put several cores on one reply.

Messages (Python tuples over a multiprocessing pipe; nothing here faces the network):

    main -> rank   ("keys", session, bytes, params)  ("drop", session)  ("job", job, session, RankRequest)
                   ("result", job, seq, payload)  ("stop",)
    rank -> main   ("warm", done, total)  ("ready", rank)  ("keys", session, ok, code, message)
                   ("collective", job, seq, kind, payload)  ("progress", job, Progress)
                   ("done", job, reason)  ("cancelled", job)  ("error", job, code, message)

A rank inside a job keeps answering key uploads while it waits at a collective, and gives up a wait as
soon as the shared cancel event is set.
"""

from __future__ import annotations

import gc
import logging
import os
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from app import protocol as p
from core.errors import ChatError, JobCancelled
from core.progress import OnProgress, Progress
from crypto.keys import PublicContext, load_public_context
from crypto.params import CKKSParams
from model.encrypted import Layout, OracleCall, RankCaches, WorkerWeights
from model.encrypted_rank import RankRequest, run_rank

log = logging.getLogger("he_chat.worker")
POLL_SECONDS = 0.05  # how often a waiting rank looks at the cancel event


class Channel(Protocol):
    """One end of a pipe (multiprocessing.connection.Connection, or a queue pair in tests)."""

    def send(self, obj: Any) -> None: ...

    def recv(self) -> Any: ...

    def poll(self, timeout: float) -> bool: ...


class Flag(Protocol):
    """The shared cancel event (multiprocessing.Event, or threading.Event in tests)."""

    def is_set(self) -> bool: ...


class ChannelLink:
    """`model.encrypted_rank.RankLink` over this rank's pipe to the worker's main process."""

    def __init__(
        self,
        channel: Channel,
        rank: int,
        world: int,
        job: int,
        cancel: Flag,
        on_control: Callable[[Any], None],
    ) -> None:
        self.channel = channel
        self.rank = rank
        self.world = world
        self.job = job
        self.cancel = cancel
        self.on_control = on_control
        self.seq = 0

    def _collective(self, kind: str, payload: Any, wait: bool = True) -> Any:
        self.seq += 1
        self.channel.send(("collective", self.job, self.seq, kind, payload))
        while wait:
            if self.channel.poll(POLL_SECONDS):
                message = self.channel.recv()
                if message[0] == "result" and message[1:3] == (self.job, self.seq):
                    return message[3]
                if message[0] in ("keys", "drop"):
                    self.on_control(message)
                elif message[0] == "stop":
                    raise JobCancelled()
            elif self.cancel.is_set():
                raise JobCancelled()
        return None

    def oracle(self, call: OracleCall) -> list[bytes]:
        result: list[bytes] = self._collective("oracle", call)
        return result

    def exchange(self, tag: str, blobs: list[bytes]) -> list[list[bytes]]:
        result: list[list[bytes]] = self._collective("exchange", (tag, blobs))
        return result

    def token(self, index: int, telemetry: dict[str, Any], blobs: list[bytes]) -> None:
        self._collective("token", (index, telemetry, blobs), wait=False)

    def progress(self, update: Progress) -> None:
        if self.rank == 0:
            self.channel.send(("progress", self.job, update))

    def check(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled()


class Rank:
    """One rank's loop: keys per session, then each job's share of the reply."""

    def __init__(
        self,
        channel: Channel,
        rank: int,
        world: int,
        weights: WorkerWeights,
        caches: RankCaches,
        cancel: Flag,
    ) -> None:
        self.channel = channel
        self.rank = rank
        self.world = world
        self.weights = weights
        self.caches = caches
        self.cancel = cancel
        self.sessions: dict[str, PublicContext] = {}
        self.layouts: dict[int, Layout] = {}

    def layout(self, params: CKKSParams) -> Layout:
        if params.slot_count not in self.layouts:
            self.layouts[params.slot_count] = Layout(self.weights.shape, params.slot_count, self.world)
        return self.layouts[params.slot_count]

    def control(self, message: Any) -> None:
        """A key upload or a session's end (also handled while a job waits at a collective)."""
        if message[0] == "drop":
            self.sessions.pop(message[1], None)
            return
        _, session, data, params = message
        try:
            public = load_public_context(data, expected=params)
            self.layout(public.params)
            self.sessions[session] = public
            self.channel.send(("keys", session, True, 0, ""))
        except ChatError as exc:
            error = p.error_message(exc)
            self.channel.send(("keys", session, False, error.code, error.message))

    def serve(self) -> None:
        self.channel.send(("ready", self.rank))
        while True:
            try:
                message = self.channel.recv()
            except (EOFError, OSError):
                return  # the main process went away
            if message[0] == "stop":
                return
            if message[0] == "job":
                self.job(*message[1:])
            elif message[0] in ("keys", "drop"):
                self.control(message)

    def job(self, job: int, session: str, request: RankRequest) -> None:
        link = ChannelLink(self.channel, self.rank, self.world, job, self.cancel, self.control)
        try:
            public = self.sessions.get(session)
            if public is None:
                raise ChatError("this session's keys are not loaded on the worker; reconnect")
            reason = run_rank(link, public, self.weights, self.caches, self.layout(public.params), request)
            self.channel.send(("done", job, reason))
        except JobCancelled:
            self.channel.send(("cancelled", job))
        except Exception as exc:  # noqa: BLE001 - reported to the key holder; the rank keeps serving
            if not isinstance(exc, ChatError):
                log.error("rank %d failed a reply:\n%s", self.rank, traceback.format_exc())
            error = p.error_message(exc)
            self.channel.send(("error", job, error.code, error.message))


def warm(
    weights: WorkerWeights,
    presets: list[CKKSParams],
    orders: list[bool],
    world: int,
    report: OnProgress,
) -> RankCaches:
    """Encode every plaintext of the given presets and vocabulary orders (before any session).

    `report` gets Progress("warm", blocks done, blocks) over all presets together."""
    caches = RankCaches(weights)
    layouts = [Layout(weights.shape, params.slot_count, world) for params in presets]
    totals = [len(layout.blocks_for(orders)) for layout in layouts]
    done_before = 0
    for params, layout, total in zip(presets, layouts, totals, strict=True):

        def on_block(event: Progress, base: int = done_before) -> None:
            report(Progress("warm", base + event.done, sum(totals)))

        caches.warm(params, layout, orders, on_block)
        done_before += total
    return caches


def master_main(
    channels: list[Any],
    weights: WorkerWeights,
    presets: list[CKKSParams],
    orders: list[bool],
    cancel: Flag,
) -> None:
    """Rank 0's process (spawned): warm the caches, fork the other ranks, then serve as rank 0."""
    world = len(channels)
    try:
        caches = warm(weights, presets, orders, world, lambda e: channels[0].send(("warm", e.done, e.total)))
    except Exception:  # noqa: BLE001 - the main process sees the pipe close and reports it
        log.error("warming the weight caches failed:\n%s", traceback.format_exc())
        return
    gc.collect()
    gc.freeze()  # the caches are shared with the forked ranks: keep the collector off their pages
    for rank in range(1, world):
        if os.fork() == 0:
            for other, channel in enumerate(channels):
                if other != rank:
                    channel.close()
            Rank(channels[rank], rank, world, weights, caches, cancel).serve()
            os._exit(0)
    for channel in channels[1:]:
        channel.close()
    Rank(channels[0], 0, world, weights, caches, cancel).serve()
