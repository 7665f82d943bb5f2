"""An encrypted reply on the key holder's side (app/chat/encrypted.py): padding, a read-ahead, Stop, and a
worker lost between two turns, each over a real websocket worker on the tiny model.

What every mode shares (turn after turn, the same tokens as simulate) is tested in test_service.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from urllib.parse import urlsplit

from app.chat.encrypted import LOST_NOTICE
from app.chat.replies import ChatMemory
from app.chat.service import ChatService, ChatSettings
from app.worker.background import BackgroundWorker
from app.worker.encrypted import EncryptedWorker, WorkerSpec
from model.loading import LoadedModel
from tests.app.chat.conftest import TURNS


class EndsAt(LoadedModel):
    """The tiny model with one more end-of-reply token (its random weights seldom pick EOS itself)."""

    def __init__(self, loaded: LoadedModel, token: int) -> None:
        super().__init__(loaded.model, loaded.tokenizer, loaded.name, loaded.source)
        self.token = token

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({self.token})


def test_a_padded_reply_hides_its_length_and_the_chat_goes_on(
    chat_worker: tuple[ChatService, BackgroundWorker],
) -> None:
    service, _ = chat_worker
    messages = [{"role": "user", "content": TURNS[0]}]
    probe = ChatMemory()
    list(service.reply(messages, ChatSettings(mode="simulate", max_new_tokens=4, seed=3), None, probe))
    assert probe.conversation is not None
    second = probe.conversation.ids[-2]  # the reply's tokens 1..3 were fed back; the 4th was not
    early = replace(service, loaded=EndsAt(service.loaded, second))
    session = early.open_encrypted()
    runs = {}
    for pad in (False, True):
        memory = ChatMemory()
        settings = ChatSettings(mode="encrypted", max_new_tokens=5, seed=3, pad=pad)
        runs[pad] = (list(early.reply(messages, settings, session, memory)), memory)
    (unpadded, _), (padded, memory) = runs[False], runs[True]
    assert unpadded[-1].finish == padded[-1].finish == "eos" and padded[-1].text == unpadded[-1].text
    assert padded[-1].tokens == unpadded[-1].tokens == 2
    hidden = [u.stage for u in padded if u.stage.startswith("padding:")]
    assert hidden == [f"padding: {k} of 3 hidden tokens" for k in (1, 2, 3)]  # the worker went on to 5
    assert not any(u.stage.startswith("padding") for u in unpadded)
    assert memory.conversation is not None and memory.conversation.ids == probe.conversation.ids[:-2]
    follow = [*messages, {"role": "assistant", "content": padded[-1].text}, {"role": "user", "content": "Ok"}]
    assert list(
        early.reply(follow, ChatSettings(mode="encrypted", max_new_tokens=1, seed=3), session, memory)
    )[-1].continued  # the padding left nothing in the key holder's cache
    session.close()


def test_a_stopped_read_ahead_leaves_the_state_as_it_was(
    chat_worker: tuple[ChatService, BackgroundWorker],
) -> None:
    service, _ = chat_worker
    session = service.open_encrypted()
    settings = ChatSettings(mode="encrypted", max_new_tokens=2, seed=0)
    memory = ChatMemory()
    messages = [{"role": "user", "content": TURNS[0]}]
    first = list(service.reply(messages, settings, session, memory))[-1]
    state, held = memory.conversation, session.keys.positions
    assert service.read_ahead(messages, first.text, settings, session, memory, should_stop=lambda: True) == 0
    assert memory.conversation is state and session.keys.positions == held
    follow = [*messages, {"role": "assistant", "content": first.text}, {"role": "user", "content": TURNS[1]}]
    again = list(service.reply(follow, settings, session, memory))[-1]
    assert again.continued and again.start == held
    session.close()


def test_stop_ends_an_encrypted_prompt_at_once_and_keeps_the_state(
    chat_worker: tuple[ChatService, BackgroundWorker],
) -> None:
    service, worker = chat_worker
    session = service.open_encrypted()
    memory = ChatMemory()
    settings = ChatSettings(mode="encrypted", max_new_tokens=2, seed=0)
    first = list(service.reply([{"role": "user", "content": TURNS[0]}], settings, session, memory))[-1]
    held = session.keys.positions
    messages = [
        {"role": "user", "content": TURNS[0]},
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "Tell me about " + "the sea, " * 6},
    ]
    stop = threading.Event()
    stopped_at, final = 0.0, None
    for update in service.reply(messages, settings, session, memory, stop.is_set):
        if "layer" in update.stage and not stop.is_set():
            stop.set()  # Stop in the middle of the second turn's prompt
            stopped_at = time.perf_counter()
        final = update
    assert stop.is_set() and final is not None and final.finish == "cancelled"
    assert time.perf_counter() - stopped_at < 10  # bench/bench_chat.py measures it: well under 2 s
    assert session.keys.positions == held  # the cut prompt left no half-written position behind
    deadline = time.monotonic() + 10
    while worker.worker.busy is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.worker.busy is None  # the worker's job ended, not only the stream
    again = list(service.reply(messages, settings, session, memory))[-1]
    assert again.continued and again.start == held and again.finish == "length"  # the first turn's state
    session.close()


def test_a_restarted_worker_is_reached_again_and_the_chat_goes_on(tiny: LoadedModel) -> None:
    service = ChatService.create(tiny)
    spec = WorkerSpec.from_loaded(tiny, service.ordering.perm, service.ordering.order_id, 1)
    worker = BackgroundWorker(EncryptedWorker(spec, threads=True))
    port, access = urlsplit(worker.url).port, worker.worker.access
    service.worker_url = worker.url
    session = service.open_encrypted()
    memory = ChatMemory()
    settings = ChatSettings(mode="encrypted", max_new_tokens=2, seed=0)
    first = list(service.reply([{"role": "user", "content": TURNS[0]}], settings, session, memory))[-1]
    worker.stop()  # the worker restarts between two turns: same address, no memory of the session
    worker = BackgroundWorker(
        EncryptedWorker(spec, threads=True), port=port or 0, access=access
    )  # same token
    try:
        messages = [
            {"role": "user", "content": TURNS[0]},
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": TURNS[1]},
        ]
        second = list(service.reply(messages, settings, session, memory))[-1]
        assert second.continued and second.finish == "length"  # the key holder's state carried the chat
        assert second.notice == LOST_NOTICE
    finally:
        session.close()
        worker.stop()
