"""Many workers behind one websocket address: worker replicas on Ray Serve (`python -m app pool`).

Each replica is an ordinary worker (app/worker/server.py, the same protocol and session logic; its compute
processes warm the weight plaintexts before the replica takes a session) serving on its node's address.
Ray Serve owns the replicas: it starts them where the stated CPUs and memory are free, restarts one
that dies, scales between a minimum and a maximum on the number of open sessions, and routes: a session
holds one of its replica's `max_ongoing_requests` places for its whole life (a streaming call,
`WorkerReplica.session`, that ends when the session does).

The one address key holders connect to is the front (app/pool/front.py): it checks the access token,
asks Serve for a place, then relays the connection's frames to that replica's worker. A session stays on
its replica; if the replica dies, the front closes the connection and the key holder reconnects, lands
on another replica, uploads its keys again and goes on from its own state (app/chat/encrypted.py).

Inside the cluster the front reaches each replica's worker at the node's address without TLS (public
keys, ciphertexts and the token only): run the cluster on a private network. The front serves `wss://`
when given a certificate.

References: Ray Serve (deployments, autoscaling_config, max_ongoing_requests, streaming handles).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from app.worker.admission import WorkerAccess, WorkerLimits
from app.worker.cli import resident_bytes
from core.errors import ChatError

log = logging.getLogger("he_chat.pool")
APP_NAME = "he-chat-pool"
DEPLOYMENT = "worker"
WARM_SECONDS = 1800.0  # a replica that has not warmed its weight caches in this long fails to start
WARM_REPORT_SECONDS = 10.0
OBJECT_STORE_BYTES = 2**30  # a local Ray's object store: the pool passes only handles and small records
GIB = 2**30


@dataclass(frozen=True)
class PoolConfig:
    """What every replica serves and what it may take (picklable: it travels to each replica)."""

    access: WorkerAccess  # the token (and web origins) key holders must show, at the front and each worker
    limits: WorkerLimits = WorkerLimits()  # each replica's worker (its session cap is set from below)
    replicas: int = 2  # started at once, and the fewest the pool scales down to
    max_replicas: int | None = None  # the most it scales up to on open sessions (None: `replicas`)
    sessions_per_replica: int = 2  # open sessions one replica holds (its replies run one at a time)
    processes: int = 1  # compute processes per replica
    cpus: float | None = None  # CPUs Ray reserves per replica (None: `processes`)
    memory_gib: float | None = None  # memory Ray reserves per replica (None: `stated_memory_gib`)
    tiny: bool = False
    model_path: str | None = None
    cache_dir: str | None = None
    preset: str = "default"
    threads: bool = False  # compute ranks as threads of the replica (tests: no spawn cost)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ChatError(f"--replicas must be at least 1, got {self.replicas}")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ChatError(
                f"--max-replicas ({self.max_replicas}) must be at least --replicas ({self.replicas})"
            )
        if not 1 <= self.sessions_per_replica <= 16:
            raise ChatError(
                f"--sessions-per-replica must be between 1 and 16, got {self.sessions_per_replica}"
            )
        if not 1 <= self.processes <= 64:
            raise ChatError(f"--processes must be between 1 and 64, got {self.processes}")
        if self.cpus is not None and not 0 < self.cpus <= 64:
            raise ChatError(f"--cpus-per-replica must be above 0 and at most 64, got {self.cpus}")
        if self.memory_gib is not None and self.memory_gib <= 0:
            raise ChatError(f"--memory-gib must be positive, got {self.memory_gib}")

    @property
    def most(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas

    @property
    def stated_memory_gib(self) -> float:
        """Memory one replica needs, measured here after its warm-up (`python bench/bench_pool.py`
        prints the tiny model's; the default model's is the worker's own report at start-up)."""
        if self.memory_gib is not None:
            return self.memory_gib
        if self.tiny:
            return 1.5  # 1.10 GiB measured (0.82 with the ranks as threads)
        return 9.5 + 0.5 * self.processes  # 9.35 GiB measured with one process, 9.8 with two

    def deployment_options(self) -> dict[str, Any]:
        """The Serve options: one place per session, autoscaled on open sessions, stated resources."""
        options: dict[str, Any] = {
            "name": DEPLOYMENT,
            "max_ongoing_requests": self.sessions_per_replica,
            "max_queued_requests": -1,  # the front asks only for a place its count says is free
            "ray_actor_options": {
                "num_cpus": self.cpus if self.cpus is not None else float(self.processes),
                "memory": int(self.stated_memory_gib * GIB),
            },
            "health_check_period_s": 5,
            "health_check_timeout_s": 30,
            "graceful_shutdown_timeout_s": 5,
            "logging_config": {"enable_access_log": False},  # a session's end is not news
        }
        if self.most > self.replicas:
            options["autoscaling_config"] = {
                "min_replicas": self.replicas,
                "initial_replicas": self.replicas,
                "max_replicas": self.most,
                # half full is the target: the pool grows while its replicas still have room, so a new
                # session rarely finds it full (below the maximum)
                "target_ongoing_requests": self.sessions_per_replica / 2,
                "upscale_delay_s": 5,
                "downscale_delay_s": 300,
            }
        else:
            options["num_replicas"] = self.replicas
        return options


def capacity_text(config: PoolConfig) -> str:
    """What the pool holds, for the message a refused key holder reads."""
    places = f"{config.sessions_per_replica} session(s) each"
    if config.most > config.replicas:
        return f"{config.replicas} to {config.most} replicas, {places}; it adds replicas as sessions open"
    return f"{config.replicas} replica(s), {places}"


class WorkerReplica:
    """One replica: a warmed worker serving on this node, and the places its sessions hold."""

    def __init__(self, config: PoolConfig) -> None:
        from ray.util import get_node_ip_address

        from app.worker.background import BackgroundWorker
        from app.worker.encrypted import EncryptedWorker, WorkerSpec
        from model.loading import load_chosen
        from model.tsp.store import ordering_for_model

        began = time.perf_counter()
        logging.basicConfig(level=logging.WARNING)
        log.setLevel(logging.INFO)
        loaded = load_chosen(config.tiny, config.model_path, config.cache_dir)
        ordering = ordering_for_model(loaded)
        spec = WorkerSpec.from_loaded(
            loaded, ordering.perm, ordering.order_id, config.processes, (config.preset,)
        )
        model = EncryptedWorker(spec, threads=config.threads)
        while not model.pool.wait_ready(WARM_REPORT_SECONDS):
            done, total = model.readiness()
            log.info("replica warming its weight caches: %d of %d blocks", done, total)
            if time.perf_counter() - began > WARM_SECONDS:
                raise ChatError(f"the replica did not warm its weight caches in {WARM_SECONDS:.0f} s")
        sessions = config.sessions_per_replica
        limits = replace(config.limits, max_sessions=sessions, max_connections=4 * sessions)
        host = str(get_node_ip_address())  # type: ignore[no-untyped-call]  # reachable from the front
        self.worker = BackgroundWorker(model, host=host, limits=limits, access=config.access)
        self.config = config
        self.open = 0
        self.resident = resident_bytes(model)
        stated = config.stated_memory_gib
        verdict = "within" if self.resident <= stated * GIB else "ABOVE"
        log.info(
            "replica ready in %.0f s on %s: %.2f GiB resident, %s the stated %.1f GiB per replica",
            time.perf_counter() - began,
            self.worker.url.split("?")[0],
            self.resident / GIB,
            verdict,
            stated,
        )

    async def session(self) -> AsyncIterator[dict[str, Any]]:
        """A session's place on this replica, held until the front cancels the call (the session ended)
        or this replica dies (the call fails). Yields where the worker serves, once."""
        self.open += 1
        try:
            yield {"url": self.worker.url, "pid": os.getpid(), "resident": self.resident}
            await asyncio.Event().wait()
        finally:
            self.open -= 1

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "open": self.open, "resident": self.resident, "url": self.worker.url}

    def check_health(self) -> None:
        """Serve restarts a replica whose worker stopped serving or whose compute processes failed."""
        if not self.worker.thread.is_alive():
            raise RuntimeError("the replica's worker stopped serving")
        failed = getattr(getattr(self.worker.worker.model, "pool", None), "failed", "")
        if failed:
            raise RuntimeError(f"the replica's compute processes failed: {failed}")

    def __del__(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop()


def deploy(config: PoolConfig, address: str | None = None) -> Any:
    """Start (or join) Ray, check the stated memory fits, and run the replicas; returns the handle.

    Raises:
        ChatError: Ray cannot start or be reached, or the cluster cannot hold `replicas` replicas.
    """
    import ray
    from ray import serve
    from ray.serve.config import ProxyLocation

    if not ray.is_initialized():
        try:
            store: dict[str, Any] = {} if address else {"object_store_memory": OBJECT_STORE_BYTES}
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **store)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise ChatError(f"cannot start or reach {where} ({exc}); see `ray start --help`") from exc
    check_resources(config, ray.cluster_resources())  # type: ignore[no-untyped-call]
    serve.start(proxy_location=ProxyLocation.Disabled)
    deployment: Any = serve.deployment(WorkerReplica)
    deployment = deployment.options(**config.deployment_options())
    return serve.run(deployment.bind(config), name=APP_NAME, route_prefix=None)


def running_replicas() -> int:
    """How many of the pool's replicas run now (Serve's own count; 0 while none is ready)."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    application = serve.status().applications.get(APP_NAME)
    deployment = application.deployments.get(DEPLOYMENT) if application is not None else None
    return int(deployment.replica_states.get(ReplicaState.RUNNING, 0)) if deployment is not None else 0


def check_resources(config: PoolConfig, resources: dict[str, float]) -> None:
    """The cluster must hold the starting replicas' stated CPUs and memory (Ray would leave the rest
    pending for ever, and the pool would start with fewer replicas than asked)."""
    options = config.deployment_options()["ray_actor_options"]
    need_memory = config.replicas * options["memory"]
    need_cpus = config.replicas * options["num_cpus"]
    have_memory, have_cpus = resources.get("memory", 0.0), resources.get("CPU", 0.0)
    if need_memory > have_memory:
        raise ChatError(
            f"{config.replicas} replicas need {need_memory / GIB:.1f} GiB ({config.stated_memory_gib:.1f} "
            f"GiB each) but the Ray cluster offers {have_memory / GIB:.1f} GiB; start fewer replicas or "
            "join more machines (README, Serve many users)"
        )
    if need_cpus > have_cpus:
        raise ChatError(
            f"{config.replicas} replicas need {need_cpus:g} CPUs ({options['num_cpus']:g} each) but the Ray "
            f"cluster offers {have_cpus:g}; start fewer replicas, give --cpus-per-replica, or join more "
            "machines"
        )


def shutdown() -> None:
    """Stop the replicas (and Ray, if this process started it)."""
    import ray
    from ray import serve

    try:
        serve.delete(APP_NAME)
        serve.shutdown()  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()
