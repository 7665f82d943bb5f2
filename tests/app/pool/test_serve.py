"""A pool of workers on Ray Serve: a local Ray instance, three replicas of the tiny model, the front.

The module starts Ray and the pool once (about 15 s here) and stops both at the end. Each replica is the
real worker (its two compute ranks as threads, as in test_chat.py), placed and restarted by Serve; the key
holders are `ChatService.open_encrypted` sessions reaching the front over loopback websockets. Replies are
compared with the same requests on one worker outside the pool.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.chat.encrypted import LOST_NOTICE
from app.chat.keyholder import KeyHolderClient
from app.chat.replies import ReplyUpdate
from app.chat.service import ChatService, ChatSettings
from app.worker.admission import WorkerAccess, new_token
from app.worker.background import BackgroundWorker
from app.worker.encrypted import EncryptedWorker, WorkerSpec
from core.errors import WorkerError
from model.loading import LoadedModel

ray = pytest.importorskip("ray", reason="pip install 'ray[serve]' (the pool)")

REPLICAS, PLACES = 3, 2
# The requests ("Tell me about the number k.", seed k): k = 5 is left out because its second token is drawn
# within CKKS noise of a boundary of the ordered distribution and flips between runs on one worker too.
REQUESTS = [0, 1, 2, 3, 4, 7]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"replicas": 0}, "--replicas"),
        ({"replicas": 3, "max_replicas": 2}, "--max-replicas"),
        ({"sessions_per_replica": 0}, "--sessions-per-replica"),
        ({"processes": 0}, "--processes"),
        ({"cpus": 0.0}, "--cpus-per-replica"),
        ({"memory_gib": -1.0}, "--memory-gib"),
    ],
)
def test_pool_settings_out_of_range_name_their_option(change: dict[str, Any], named: str) -> None:
    from app.pool.serve import PoolConfig
    from core.errors import ChatError

    with pytest.raises(ChatError, match=named):
        PoolConfig(access=WorkerAccess(new_token()), **change)


def test_the_cluster_must_hold_the_stated_replicas_and_autoscaling_aims_at_half_full() -> None:
    from app.pool.serve import GIB, PoolConfig, check_resources
    from core.errors import ChatError

    config = PoolConfig(access=WorkerAccess(new_token()), replicas=2, max_replicas=4, processes=2)
    options = config.deployment_options()
    assert options["ray_actor_options"] == {"num_cpus": 2.0, "memory": int(config.stated_memory_gib * GIB)}
    assert options["max_ongoing_requests"] == 2 and options["autoscaling_config"]["max_replicas"] == 4
    assert options["autoscaling_config"]["target_ongoing_requests"] == 1.0
    enough = {"CPU": 4.0, "memory": 2 * config.stated_memory_gib * GIB}
    check_resources(config, enough)
    with pytest.raises(ChatError, match="need 4 CPUs"):
        check_resources(config, {**enough, "CPU": 3.0})
    with pytest.raises(ChatError, match=r"need 21\.0 GiB"):
        check_resources(config, {**enough, "memory": 20.0 * GIB})
    fixed = PoolConfig(access=config.access, replicas=3).deployment_options()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed


@pytest.fixture(scope="module")
def pool(tiny: LoadedModel) -> Iterator[dict[str, Any]]:
    from app.pool.front import BackgroundFront, PoolFront
    from app.pool.serve import PoolConfig, capacity_text, deploy, running_replicas, shutdown

    ray.init(num_cpus=2 * REPLICAS, include_dashboard=False, logging_level="WARNING")
    config = PoolConfig(
        access=WorkerAccess(new_token()),
        replicas=REPLICAS,
        sessions_per_replica=PLACES,
        tiny=True,
        threads=True,
        processes=2,
    )
    front = None
    try:
        handle = deploy(config)
        door = PoolFront(handle, config.access, PLACES, running_replicas, capacity_text(config))
        front = BackgroundFront(door)
        yield {"front": front, "config": config}
    finally:
        if front is not None:
            front.stop()
        shutdown()


@pytest.fixture(scope="module")
def one_worker(tiny: LoadedModel) -> Iterator[ChatService]:
    """The same worker outside the pool: what every pooled reply must equal."""
    service = ChatService.create(tiny)
    spec = WorkerSpec.from_loaded(tiny, service.ordering.perm, service.ordering.order_id, 2)
    worker = BackgroundWorker(EncryptedWorker(spec, threads=True))
    service.worker_url = worker.url
    yield service
    worker.stop()


def _reply(service: ChatService, session: Any, k: int, tokens: int = 2) -> list[ReplyUpdate]:
    messages = [{"role": "user", "content": f"Tell me about the number {k}."}]
    return list(
        service.reply(messages, ChatSettings(mode="encrypted", max_new_tokens=tokens, seed=k), session)
    )


def _reference(service: ChatService, k: int, tokens: int = 2) -> str:
    session = service.open_encrypted()
    try:
        return _reply(service, session, k, tokens)[-1].text
    finally:
        session.close()


def test_six_sessions_fill_three_replicas_a_seventh_is_refused_at_once_and_every_reply_matches_one_worker(
    tiny: LoadedModel, pool: dict[str, Any], one_worker: ChatService
) -> None:
    front = pool["front"]
    service = ChatService.create(tiny, front.url)
    count = REPLICAS * PLACES
    sessions: list[Any] = [None] * count
    texts: list[str] = [""] * count
    errors: list[BaseException] = []
    opened = threading.Barrier(count + 1, timeout=300)
    checked = threading.Event()

    def run(k: int) -> None:
        try:
            sessions[k] = service.open_encrypted()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        opened.wait()
        checked.wait(300)
        try:
            if sessions[k] is not None:
                texts[k] = _reply(service, sessions[k], REQUESTS[k])[-1].text
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    try:
        opened.wait()
        assert not errors, errors
        placed = list(front.front.placed.values())
        per_replica = {pid: sum(1 for q in placed if q.pid == pid) for pid in {q.pid for q in placed}}
        assert sorted(per_replica.values()) == [PLACES] * REPLICAS  # Serve spread them, two per replica
        began = time.perf_counter()
        with pytest.raises(WorkerError, match="every worker of the pool is busy") as refused:
            KeyHolderClient(front.url, sessions[0].keys, service.expected())
        assert time.perf_counter() - began < 1.0  # the front counts places: no wait
        assert refused.value.code == 4010
    finally:
        checked.set()
        for thread in threads:
            thread.join(600)
        for session in sessions:
            if session is not None:
                session.close()
    assert not errors, errors
    assert all(texts)
    assert texts == [_reference(one_worker, k) for k in REQUESTS]


def test_a_replica_killed_mid_reply_costs_a_notice_and_nothing_else(
    tiny: LoadedModel, pool: dict[str, Any], one_worker: ChatService
) -> None:
    front = pool["front"]
    service = ChatService.create(tiny, front.url)
    deadline = time.monotonic() + 30
    while front.front.placed and time.monotonic() < deadline:  # the last test's places are given back
        time.sleep(0.2)
    session = service.open_encrypted()
    killed: list[int] = []
    try:
        messages = [{"role": "user", "content": "Tell me about the number 7."}]
        updates = []
        for update in service.reply(
            messages, ChatSettings(mode="encrypted", max_new_tokens=3, seed=7), session
        ):
            updates.append(update)
            if update.tokens == 1 and not killed:
                (place,) = front.front.placed.values()
                os.kill(place.pid, signal.SIGKILL)  # the replica's process, its worker with it
                killed.append(place.pid)
        final = updates[-1]
        assert killed and final.tokens == 3 and final.finish == "length"
        assert final.notice == LOST_NOTICE
        (place,) = front.front.placed.values()
        assert place.pid != killed[0]  # the session goes on on another replica
    finally:
        session.close()
    assert final.text == _reference(one_worker, 7, 3)


def test_an_autoscaled_pool_adds_a_replica_when_its_sessions_fill_it(
    tiny: LoadedModel, pool: dict[str, Any]
) -> None:
    """The last test: it replaces the module's three replicas with a pool of one to two."""
    from dataclasses import replace

    from app.pool.front import BackgroundFront, PoolFront
    from app.pool.serve import capacity_text, deploy, running_replicas

    config = replace(pool["config"], replicas=1, max_replicas=2, sessions_per_replica=1)
    handle = deploy(config)
    front = BackgroundFront(PoolFront(handle, config.access, 1, running_replicas, capacity_text(config)))
    service = ChatService.create(tiny, front.url)
    first = service.open_encrypted()
    second = None
    try:
        with pytest.raises(WorkerError, match="it adds replicas as sessions open"):
            service.open_encrypted()  # one replica, one place, taken
        deadline = time.monotonic() + 120  # Serve looks back 30 s, then starts the replica (about 10 s)
        while second is None and time.monotonic() < deadline:
            time.sleep(3)
            try:
                second = service.open_encrypted()
            except WorkerError:
                continue
        assert second is not None, "the pool did not grow to its second replica within two minutes"
        pids = {q.pid for q in front.front.placed.values()}
        assert len(pids) == 2
    finally:
        for session in (first, second):
            if session is not None:
                session.close()
        front.stop()
