"""Benchmark: encrypted sessions completed per minute by a pool of 1, 2 and 3 replicas, one worker beside.

    python bench/bench_pool.py                      # tiny model: 12 sessions per setting
    python bench/bench_pool.py --sessions 6 --replicas 1,2
    python bench/bench_pool.py --default-resident-gib 9.8 --default-seconds-per-token 18.7

A session is what a chat visitor costs: new keys, their upload, a one-line prompt, a reply of `--tokens`
tokens, close. Clients are separate processes (a key holder's CKKS work holds its process's GIL), as many
as the setting has places, so every place stays busy. The baseline is one worker outside Ray, measured
in the same run with two clients (its replies take turns). Each replica runs one compute process.

Then a table of what the default model needs per replica and what N machines would serve, computed from
the measured memory of a default-model worker and its seconds per token (the worker's own start-up
report and `bench/bench_traffic.py`; pass yours with the two options above).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.worker.admission import WorkerAccess, new_token  # noqa: E402

PROMPT = "Tell me about the sea."
MACHINES = {"this machine (2 cores, 24 GiB)": (2, 24.0), "HF free Space (2 vCPU, 16 GB)": (2, 14.9)}

_service: Any = None


def _client_init() -> None:
    global _service
    from app.chat.service import ChatService
    from model.loading import build_tiny_model

    logging.disable(logging.WARNING)
    _service = ChatService.create(build_tiny_model())


def _session(job: tuple[str, int, int]) -> float:
    """One session against `url`; returns its wall seconds."""
    from app.chat.service import ChatSettings

    url, seed, tokens = job
    began = time.perf_counter()
    _service.worker_url = url
    session = _service.open_encrypted()
    try:
        settings = ChatSettings(mode="encrypted", max_new_tokens=tokens, seed=seed)
        final = list(_service.reply([{"role": "user", "content": PROMPT}], settings, session))[-1]
        assert final.tokens == tokens, final
    finally:
        session.close()
    return time.perf_counter() - began


def _ready(_: int) -> None:
    time.sleep(0.5)


def measure(clients: Any, url: str, sessions: int, tokens: int, width: int) -> tuple[float, float]:
    """(sessions per minute, median session seconds) with `width` sessions at a time."""
    places = threading.BoundedSemaphore(width)
    seconds: list[float] = []
    failed: list[BaseException] = []

    def done(result: float) -> None:
        seconds.append(result)
        places.release()

    def lost(exc: BaseException) -> None:
        failed.append(exc)
        places.release()

    began = time.perf_counter()
    for seed in range(sessions):
        places.acquire()
        clients.apply_async(_session, ((url, seed, tokens),), callback=done, error_callback=lost)
    for _ in range(width):
        places.acquire()
    wall = time.perf_counter() - began
    if failed:
        raise RuntimeError(f"{len(failed)} of {sessions} sessions failed; the first: {failed[0]!r}")
    return 60.0 * sessions / wall, statistics.median(seconds)


def one_worker() -> Any:
    from app.chat.service import ChatService
    from app.worker.background import BackgroundWorker
    from app.worker.encrypted import EncryptedWorker, WorkerSpec
    from model.loading import build_tiny_model

    tiny = build_tiny_model()
    ordering = ChatService.create(tiny).ordering
    spec = WorkerSpec.from_loaded(tiny, ordering.perm, ordering.order_id, 1)
    worker = BackgroundWorker(EncryptedWorker(spec))
    assert worker.worker.model.pool.wait_ready(600)  # type: ignore[attr-defined]
    return worker


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=2)
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--places", type=int, default=2, help="sessions per replica")
    parser.add_argument(
        "--default-resident-gib", type=float, default=9.8, help="the worker's start-up report"
    )
    parser.add_argument("--default-processes", type=int, default=2)
    parser.add_argument(
        "--default-seconds-per-token", type=float, default=18.7, help="bench_traffic, unshaped"
    )
    args = parser.parse_args()
    counts = [int(r) for r in args.replicas.split(",")]
    if args.sessions < 1 or args.tokens < 1 or args.places < 1 or min(counts) < 1:
        parser.error("--sessions, --tokens, --places and every --replicas count must be at least 1")

    import ray

    from app.pool.front import BackgroundFront, PoolFront
    from app.pool.serve import GIB, PoolConfig, deploy, running_replicas, shutdown

    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    width = max(counts) * args.places
    context = multiprocessing.get_context("spawn")
    rows: list[tuple[str, float, float]] = []
    resident = 0.0
    with context.Pool(width, initializer=_client_init) as clients:
        clients.map(_ready, range(2 * width), chunksize=1)  # every client has loaded the model
        worker = one_worker()
        try:
            per_minute, median = measure(clients, worker.url, args.sessions, args.tokens, 2)
            rows.append(("one worker, no Ray (baseline)", per_minute, median))
            print(f"baseline: {per_minute:.1f} sessions/min", flush=True)
        finally:
            worker.stop()
        ray.init(num_cpus=2 * max(counts), include_dashboard=False, logging_level="ERROR")
        try:
            for count in counts:
                access, places = WorkerAccess(new_token()), args.places
                config = PoolConfig(access=access, replicas=count, sessions_per_replica=places, tiny=True)
                handle = deploy(config)
                resident = max(resident, max(_replica_resident(handle, count)))
                door = PoolFront(handle, access, places, running_replicas, f"{count} replicas")
                front = BackgroundFront(door)
                try:
                    width = count * places
                    per_minute, median = measure(clients, front.url, args.sessions, args.tokens, width)
                finally:
                    front.stop()
                rows.append((f"pool, {count} replica(s)", per_minute, median))
                print(f"{count} replica(s): {per_minute:.1f} sessions/min", flush=True)
        finally:
            shutdown()

    base = rows[0][1]
    load = os.getloadavg()[0]
    print(f"\nTiny model, {args.sessions} sessions of {args.tokens} tokens each; load {load:.1f} at the end")
    print("| setting | sessions/min | x one worker | median session s |")
    print("|---|---|---|---|")
    for name, per_minute, median in rows:
        print(f"| {name} | {per_minute:.1f} | {per_minute / base:.2f} | {median:.1f} |")
    print(f"\nA tiny-model replica holds {resident / GIB:.2f} GiB (measured after its warm-up).")
    default_table(args.default_resident_gib, args.default_processes, args.default_seconds_per_token)


def _replica_resident(handle: Any, count: int) -> list[float]:
    """Each replica's measured resident bytes (asked until every replica answered once)."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 60
    while len(seen) < count and time.monotonic() < deadline:
        status = handle.status.remote().result()
        seen[status["pid"]] = status["resident"]
    return list(seen.values())


def default_table(resident_gib: float, processes: int, seconds_per_token: float) -> None:
    """Replicas per machine and tokens served, from the default model's measured figures."""
    print(
        f"\nDefault model, per replica: {resident_gib:.1f} GiB resident, {processes} compute processes "
        f"(one core each), {seconds_per_token:.1f} s per token; one reply at a time per replica"
    )
    print("| machines | replicas each | replies at once | tokens/min | 30-token replies/hour |")
    print("|---|---|---|---|---|")
    for name, (cores, memory) in MACHINES.items():
        each = min(int(memory // resident_gib), max(cores // processes, 1))
        for n in (1, 4, 16):
            at_once = n * each
            per_minute = 60.0 * at_once / seconds_per_token
            print(f"| {n} x {name} | {each} | {at_once} | {per_minute:.1f} | {per_minute * 60 / 30:.0f} |")


if __name__ == "__main__":
    main()
