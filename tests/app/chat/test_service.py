"""The chat service turn after turn: every mode continues its state, encrypted over a real websocket worker.

The encrypted tests run the real pipeline on the tiny model: a `BackgroundWorker` serving an
`EncryptedWorker` whose two ranks are threads (tests/app/chat/conftest.py), and the key holder of
`ChatService.open_encrypted`, over loopback websockets. The encrypted path's own cases (padding, a stopped
read-ahead, Stop, a lost worker) are in test_encrypted.py.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from websockets.sync.client import connect

from app import protocol as p
from app.chat.keyholder import Expected, KeyHolderClient
from app.chat.replies import ChatMemory, ReplyUpdate
from app.chat.service import ChatService, ChatSettings
from app.worker.background import BackgroundWorker
from core.errors import WorkerMismatch
from crypto.keys import create_secret_context, public_context_bytes
from crypto.keys_wire import RotationPlan
from crypto.params import preset
from model.loading import LoadedModel
from tests.app.chat.conftest import TURNS


def converse(
    service: ChatService,
    settings: ChatSettings,
    turns: list[str],
    session: Any = None,
    ahead: list[int] | None = None,
) -> list[ReplyUpdate]:
    """The replies to `turns`, each continuing the last; with `ahead`, a read-ahead after each reply
    (the positions it read are appended to `ahead`)."""
    memory, history, finals = ChatMemory(), [], []
    for message in turns:
        messages = [*history, {"role": "user", "content": message}]
        final = list(service.reply(messages, settings, session, memory))[-1]
        finals.append(final)
        if ahead is not None:
            ahead.append(service.read_ahead(messages, final.text, settings, session, memory))
        history = [*messages, {"role": "assistant", "content": final.text}]
    return finals


def test_plain_and_simulate_continue_their_state_instead_of_rereading(tiny: LoadedModel) -> None:
    service = ChatService.create(tiny)
    for mode in ("plain", "simulate"):
        settings = ChatSettings(mode=mode, max_new_tokens=6, temperature=0.0)  # type: ignore[arg-type]
        first, second = converse(service, settings, TURNS)
        assert not first.continued and first.start == 0
        assert second.continued and second.start == first.new_positions + 5  # 6 tokens shown, 5 fed back
        assert second.new_positions < 20 < first.new_positions + second.new_positions


def test_a_continued_plain_turn_says_what_rereading_says(tiny: LoadedModel) -> None:
    service = ChatService.create(tiny)
    settings = ChatSettings(mode="plain", max_new_tokens=5, temperature=0.0)
    first, second = converse(service, settings, TURNS)
    history = [
        {"role": "user", "content": TURNS[0]},
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": TURNS[1]},
    ]
    reread = list(service.reply(history, settings))[-1]  # no memory: the whole prompt
    assert not reread.continued and reread.text == second.text


def test_encrypted_turns_continue_and_say_what_simulate_says(
    chat_worker: tuple[ChatService, BackgroundWorker],
) -> None:
    """Each turn continues the last, with and without a read-ahead of the next turn's markers; the
    tokens are simulate's either way."""
    service, worker = chat_worker
    session = service.open_encrypted()
    settings = ChatSettings(mode="encrypted", max_new_tokens=3, seed=0)
    encrypted = converse(service, settings, TURNS, session)
    ahead: list[int] = []
    read = converse(service, settings, TURNS, session, ahead)
    simulated = converse(service, ChatSettings(mode="simulate", max_new_tokens=3, seed=0), TURNS)
    assert [u.text for u in encrypted] == [u.text for u in read] == [u.text for u in simulated]
    first, second = encrypted
    assert first.start > 0 and not first.continued  # began from the public prefix
    assert first.wire is not None and first.wire.public_positions == first.start
    assert "You are a helpful AI assistant" in first.wire.public_text
    assert second.continued and second.start == first.start + first.new_positions + 2
    assert second.wire is not None and second.wire.new_positions == second.new_positions
    assert ahead[0] >= 5  # the reply's last token, <|im_end|>, \n, <|im_start|>user, \n
    assert read[1].continued and read[1].start == second.start + ahead[0]
    assert read[1].new_positions == second.new_positions - ahead[0] and read[1].ahead == ahead[0]
    assert second.ahead == 0
    assert worker.worker.busy is None
    session.close()


def test_a_worker_for_another_order_is_refused(
    tiny: LoadedModel, chat_worker: tuple[ChatService, BackgroundWorker]
) -> None:
    service, _ = chat_worker
    keys = service.open_encrypted().keys  # a working session: the same keys, a key holder that expects more
    with pytest.raises(WorkerMismatch, match="ordering: the worker has"):
        KeyHolderClient(str(service.worker_url), keys, Expected(ordering="another order"))


def test_keys_of_another_preset_under_the_default_name_are_refused_and_poison_nothing(
    chat_worker: tuple[ChatService, BackgroundWorker],
) -> None:
    """The cache-poisoning attack on the real pipeline: real keys of `n8192-s40` (same N, other primes),
    sent as they are and with their header relabelled `default`, under a Hello for `default`."""
    service, worker = chat_worker
    settings = ChatSettings(mode="encrypted", max_new_tokens=2, seed=0)
    before = converse(service, settings, TURNS[:1], service.open_encrypted())
    other = create_secret_context(preset("n8192-s40"))
    plan = worker.worker.model.rotation_plan("default")
    data = public_context_bytes(
        other, RotationPlan.of(plan.steps, preset("default").slot_count, plan.conjugate)
    )
    head = struct.unpack_from(">6sHI", data)[2]
    header = json.loads(data[12 : 12 + head])
    header["params"] = preset("default").to_dict()
    relabelled = json.dumps(header, sort_keys=True).encode()
    forged = data[:8] + struct.pack(">I", len(relabelled)) + relabelled + data[12 + head :]
    for upload in (data, forged):
        with connect(str(service.worker_url), max_size=None, compression=None) as conn:
            conn.send(p.encode(p.Hello(p.PROTOCOL_VERSION, "default")))
            welcome = p.decode(conn.recv(timeout=30))
            assert isinstance(welcome, p.Welcome)
            size = welcome.key_chunk_bytes
            chunks = [upload[i : i + size] for i in range(0, len(upload), size)]
            for index, chunk in enumerate(chunks):
                conn.send(p.encode(p.KeyChunk(welcome.session, index, len(chunks), [chunk])))
            refusal = p.decode(conn.recv(timeout=120))
            assert isinstance(refusal, p.Error) and refusal.code in (4006, 4009), refusal
    after = converse(service, settings, TURNS[:1], service.open_encrypted())
    assert [u.text for u in after] == [u.text for u in before]  # honest sessions are untouched


@pytest.mark.slow
def test_the_default_model_says_the_same_encrypted_and_simulated_over_two_turns() -> None:
    """Two turns of 12 tokens, each mode from its own state: the key holder's cache (encrypted, with
    the public prefix) and transformers' (simulate). bench/agreement.py measures more conversations."""
    from app.chat.service import start_local_worker
    from model.loading import load_default

    service = ChatService.create(load_default())
    worker = start_local_worker(service)
    try:
        session = service.open_encrypted()
        encrypted = converse(
            service, ChatSettings(mode="encrypted", max_new_tokens=12, seed=0), TURNS, session
        )
        simulated = converse(service, ChatSettings(mode="simulate", max_new_tokens=12, seed=0), TURNS)
        assert [u.text for u in encrypted] == [u.text for u in simulated]
        assert all(u.tokens == 12 or u.finish == "eos" for u in encrypted)
        assert encrypted[1].continued and encrypted[0].wire is not None and encrypted[0].wire.public_positions
        session.close()
    finally:
        worker.stop()
