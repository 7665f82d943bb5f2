"""`python -m app pool`: worker replicas on Ray Serve behind one websocket address (app/pool/serve.py).

python -m app pool --replicas 3                          # a local Ray instance, 3 replicas
python -m app pool --replicas 2 --max-replicas 6 --address auto --host 0.0.0.0   # a Ray cluster
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from app.pool.serve import GIB, PoolConfig, capacity_text
from app.worker.admission import with_token
from app.worker.cli import add_policy_arguments, check_port, policy
from app.worker.tls import scheme, server_tls


def add_pool_arguments(pool: argparse.ArgumentParser) -> None:
    pool.add_argument("--replicas", type=int, default=2, help="replicas started at once (and kept at least)")
    pool.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="scale up to this many on open sessions (default: fixed)",
    )
    pool.add_argument(
        "--sessions-per-replica",
        type=int,
        default=2,
        help="open sessions one replica holds; their replies take turns (default 2)",
    )
    pool.add_argument("--processes", type=int, default=1, help="compute processes per replica (default 1)")
    pool.add_argument("--cpus-per-replica", type=float, default=None, help="CPUs Ray reserves per replica")
    pool.add_argument(
        "--memory-gib", type=float, default=None, help="memory Ray reserves per replica (default: measured)"
    )
    pool.add_argument(
        "--address",
        default=None,
        help="a running Ray cluster (`auto`, or head:6379; see `ray start`); default: start Ray here",
    )
    pool.add_argument("--host", default="127.0.0.1", help="the front's address (0.0.0.0: every interface)")
    pool.add_argument("--port", type=int, default=8765)
    add_policy_arguments(pool)


def config_from(args: argparse.Namespace) -> PoolConfig:
    limits, access = policy(args)
    return PoolConfig(
        access=access,
        limits=limits,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        sessions_per_replica=args.sessions_per_replica,
        processes=args.processes,
        cpus=args.cpus_per_replica,
        memory_gib=args.memory_gib,
        tiny=args.tiny,
        model_path=str(args.model_path) if args.model_path is not None else None,
        cache_dir=str(args.cache_dir) if args.cache_dir is not None else None,
        preset=args.preset,
    )


def run_pool(args: argparse.Namespace) -> int:
    from app.pool.front import PoolFront, start_front
    from app.pool.serve import deploy, running_replicas, shutdown

    check_port(args.port)
    config = config_from(args)
    tls = server_tls(args.tls_cert, args.tls_key)
    per = config.deployment_options()["ray_actor_options"]
    print(
        f"Starting {config.replicas} replica(s) (up to {config.most}), {config.sessions_per_replica} "
        f"session(s) each; each reserves {per['num_cpus']:g} CPU and {per['memory'] / GIB:.1f} GiB and "
        "warms its weight caches before its first session",
        file=sys.stderr,
    )
    handle = deploy(config, args.address)
    capacity = capacity_text(config)
    front = PoolFront(handle, config.access, config.sessions_per_replica, running_replicas, capacity)

    async def serve_forever() -> None:
        server = await start_front(front, args.host, args.port, tls)
        url = with_token(f"{scheme(tls)}://{args.host}:{args.port}", config.access.token)
        print(f"Pool of workers on {url}", file=sys.stderr)
        print(
            f"Connect with --worker-url '{url}' (or HE_CHAT_WORKER_URL); keep the token secret",
            file=sys.stderr,
        )
        await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the replicas too (finally)
    try:
        asyncio.run(serve_forever())
    finally:
        shutdown()
    return 0
