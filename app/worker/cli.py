"""The worker command's access and fair-use options, and its start-up report (app/cli.py runs it).

python -m app worker --token "$TOKEN" --allow-origin https://page.example --oracle-timeout 60
python -m app worker --host 0.0.0.0 --tls-cert fullchain.pem --tls-key privkey.pem
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import Any

from app.worker.admission import WorkerAccess, WorkerLimits, new_token
from core.errors import ChatError

ENV_WORKER_TOKEN = "HE_CHAT_WORKER_TOKEN"


def add_policy_arguments(worker: argparse.ArgumentParser) -> None:
    """The worker command's access and fair-use options."""
    worker.add_argument(
        "--token",
        default=os.environ.get(ENV_WORKER_TOKEN),
        help=f"the access token clients must give (default: ${ENV_WORKER_TOKEN}, else a new one, printed)",
    )
    worker.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web page origin allowed to connect (repeatable); by default only programs (no Origin) may",
    )
    worker.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate chain")
    worker.add_argument("--tls-key", metavar="PEM", help="the certificate's private key (unencrypted)")
    worker.add_argument(
        "--oracle-timeout",
        type=float,
        default=WorkerLimits.oracle_timeout,
        help="seconds a key holder has to answer one oracle call before its reply loses the slot",
    )
    worker.add_argument(
        "--session-compute",
        type=float,
        default=WorkerLimits.session_compute_seconds,
        help="seconds of replies one session may use",
    )


def policy(args: argparse.Namespace) -> tuple[WorkerLimits, WorkerAccess]:
    """The worker's limits and access rules from its command line (ChatError names a bad value)."""
    for name in ("oracle_timeout", "session_compute"):
        value = getattr(args, name)
        if not value > 0 or value == float("inf"):
            raise ChatError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}")
    token = args.token if args.token is not None else new_token()
    if len(token) < 16 or not token.isascii() or not token.replace("-", "").replace("_", "").isalnum():
        raise ChatError("--token must be 16 or more letters, digits, '-' or '_' (leave it out for a new one)")
    for origin in args.allow_origin:
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise ChatError(f"--allow-origin takes an origin such as https://example.org, got {origin!r}")
    limits = replace(
        WorkerLimits(), oracle_timeout=args.oracle_timeout, session_compute_seconds=args.session_compute
    )
    return limits, WorkerAccess(token, tuple(args.allow_origin))


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ChatError(f"--port must be between 0 and 65535, got {port}")


def report_warm_up(model: Any) -> None:
    """A progress bar on stderr while the worker encodes its weight plaintexts, then what it took."""
    from tqdm import tqdm

    with tqdm(total=1, desc="worker warming up", unit="block", file=sys.stderr) as bar:
        while not model.pool.wait_ready(0.5):
            done, total = model.readiness()
            bar.total, bar.n = total, done
            bar.refresh()
        bar.n = bar.total
    rss = resident_bytes(model)
    print(
        f"worker ready after {model.pool.warm_seconds:.0f} s; {rss / 2**30:.1f} GiB resident in all "
        f"(this process and {model.pool.world} compute processes, which share the weight caches)",
        file=sys.stderr,
    )


def resident_bytes(model: Any) -> int:
    """Memory a worker holds: this process and its compute processes (proportional set size, so the
    weight caches they share count once)."""
    return sum(_rss(pid) for pid in [os.getpid(), *_pool_pids(model)])


def _pool_pids(model: Any) -> list[int]:
    import psutil

    process = getattr(model.pool, "process", None)
    if process is None or process.pid is None:
        return []
    try:
        master = psutil.Process(process.pid)
        return [master.pid, *(child.pid for child in master.children())]
    except psutil.Error:
        return []


def _rss(pid: int) -> int:
    import psutil

    try:
        return int(psutil.Process(pid).memory_full_info().pss)  # shared pages counted once, in shares
    except psutil.Error:
        return 0
