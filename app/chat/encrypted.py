"""An encrypted reply on the key holder's side: continue the chat's state, stream, survive a lost worker.

The key holder keeps the conversation's attention cache (`EncryptedSession.keys`), so a new turn sends the
worker only the positions it has not seen, with `start` saying where they begin; a fresh chat starts from
a public prefix whose keys and values the worker computed in the clear (its Welcome carries them), when
the worker and this side agree on its tokens. The worker cannot see EOS: this side stops the reply when
it decrypts it (closing the stream sends Cancel).

If the worker goes away mid-reply (it restarted, or its replica in a pool died), the key holder reconnects
(a pool's front sends it to a replica that lives, app/pool/front.py), uploads the same public keys
again and continues the reply from its own state: the positions the cache does not hold yet (the prompt
if it was cut, the tokens shown since) go up again, and the worker skips the uniforms already used. The
reply says so in one line (`ReplyUpdate.notice`); nothing is lost.

Read-ahead: when a reply ends, the template text that opens the user's next message (the reply's end,
`<|im_end|>`, `<|im_start|>user`) is already known; `read_ahead` has the worker read it into the cache
while the user reads and types (a Generate for no token), so the next turn sends only the new message
and the markers after it. The worker learns nothing it would not learn at the next turn.

References: DESIGN.md section 4; model/conversation.py (what a turn adds); app/chat/keyholder.py (the wire).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from app.chat.keyholder import (
    DoneEvent,
    KeyHolderClient,
    ReplyRequest,
    TokenEvent,
)
from app.chat.replies import ChatMemory, ReplyUpdate, WireReport
from core.errors import WorkerError, WorkerUnavailable
from core.progress import OnProgress, Progress
from model.conversation import (
    PublicPrefix,
    Turn,
    extend,
    finish_turn,
    plan_turn,
    public_prefixes,
    read_ahead_text,
)
from model.encrypted import cache_from_bytes
from model.key_holder import KeyHolderSide
from model.loading import LoadedModel
from model.repetition import conversation_guard
from model.text import StreamDecoder

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 30.0  # how long a reply keeps trying to reach a worker that went away (a restart)
START_SECONDS = 3.0  # ... and a reply that starts on a closed connection (the worker may just be down)
RETRY_SECONDS = 1.0
LOST_NOTICE = (
    "The worker went away during this reply (it restarted, or its replica in a pool stopped); the key "
    "holder reconnected, uploaded its public keys again and went on from its own state."
)


@dataclass
class EncryptedSession:
    """One key holder: a secret key, the chat's attention cache, and a connection to the worker. Never
    logged, never saved. The connection can be replaced (`KeyHolderClient.reconnect`); the keys and the
    conversation stay."""

    client: KeyHolderClient
    keys: KeyHolderSide

    def close(self) -> None:
        self.client.close()


def usable_prefixes(loaded: LoadedModel, session: EncryptedSession) -> list[PublicPrefix]:
    """The public prefixes this side and the worker agree on (same template text, same tokens)."""
    return [
        prefix
        for prefix in public_prefixes(loaded.tokenizer)
        if (offered := session.client.prefix(prefix.id)) is not None and tuple(offered[0]) == prefix.ids
    ]


def _start_state(session: EncryptedSession, turn: Turn) -> None:
    """A fresh chat: an empty cache, or the public prefix's keys and values from the worker."""
    if not turn.base.prefix:
        session.keys.reset()
        return
    offered = session.client.prefix(turn.base.prefix)
    assert offered is not None  # usable_prefixes only keeps prefixes the worker offered
    session.keys.reset(cache_from_bytes(session.keys.shape, offered[1], len(offered[0])))


def reconnect(
    session: EncryptedSession, seconds: float, should_stop: Callable[[], bool] | None = None
) -> Generator[float, None, None]:
    """Reach the worker again (it may be restarting) for up to `seconds`, yielding the seconds left
    before each try. Raises WorkerUnavailable when time is up or Stop is pressed."""
    deadline = time.monotonic() + seconds
    while True:
        yield max(deadline - time.monotonic(), 0.0)
        try:
            session.client.reconnect()
            return
        except WorkerUnavailable:
            if time.monotonic() + RETRY_SECONDS > deadline or (should_stop is not None and should_stop()):
                raise
            time.sleep(RETRY_SECONDS)


def encrypted_reply(
    loaded: LoadedModel,
    key: tuple[str, ...],
    messages: Sequence[dict[str, str]],
    request: ReplyRequest,
    session: EncryptedSession,
    memory: ChatMemory | None,
    should_stop: Callable[[], bool] | None,
) -> Generator[ReplyUpdate, None, None]:
    """`app.chat.service.ChatService.reply` in encrypted mode (see the module docstring).

    Args:
        key: the state key of these settings (`ChatService.state_key`).
        request: the reply's settings as the worker gets them (plus the key holder's temperature and
            repetition penalty: the guard covers the conversation's tokens and the reply's own).
    """
    keys, tokenizer = session.keys, loaded.tokenizer
    if session.client.closed:
        for _ in reconnect(session, START_SECONDS, should_stop):
            pass
    state = memory.conversation if memory is not None else None
    if state is not None and keys.positions != len(state.ids):
        state = None  # the key holder's cache does not hold what the state says (new keys): start again
    window = session.client.welcome.context_window
    turn = plan_turn(tokenizer, messages, key, state, window, usable_prefixes(loaded, session))
    if not turn.continued:
        _start_state(session, turn)
    offered = session.client.prefix(turn.base.prefix) if turn.base.prefix else None
    public = (len(offered[0]), str(tokenizer.decode(offered[0]))) if offered is not None else (0, "")
    decoder = StreamDecoder(tokenizer)
    reply_ids: list[int] = []
    began = time.perf_counter()
    first = 0.0
    wire: WireReport | None = None
    notice = ""
    new_ids, start = list(turn.new_ids), turn.start
    guard = conversation_guard(tokenizer, request.repetition_penalty, [*turn.base.ids, *new_ids])
    ended: int | None = None  # padding: the reply's length at its EOS; the tokens after it are hidden
    hidden = 0

    def update(finish: Any = None, stage: str = "", done: tuple[int, int] = (0, 0), delta: str = "") -> Any:
        now = time.perf_counter() - began
        return ReplyUpdate(
            decoder.emitted, delta, len(reply_ids), now, first, finish, stage, done, wire,
            turn.start, len(turn.new_ids), turn.continued, notice, turn.base.ahead if turn.continued else 0,
        )  # fmt: skip

    try:
        while True:
            remaining = request.max_new_tokens - len(reply_ids)
            if remaining <= 0:
                yield update("length", delta=decoder.flush())
                return
            resumed = replace(request, max_new_tokens=remaining, first_index=len(reply_ids))
            stream = session.client.generate(new_ids, start, turn.base.prefix, resumed, should_stop, guard)
            try:
                for event in stream:
                    if isinstance(event, Progress):
                        yield update(stage=event.stage, done=(event.done, event.total))
                    elif isinstance(event, TokenEvent) and ended is not None:
                        hidden, pad = hidden + 1, request.max_new_tokens - ended
                        yield update(stage=f"padding: {hidden} of {pad} hidden tokens", done=(hidden, pad))
                    elif isinstance(event, TokenEvent):
                        reply_ids.append(event.token_id)
                        first = first or time.perf_counter() - began
                        wire = _wire(session, event, turn, public)
                        if event.token_id in loaded.eos_token_ids and not request.pad:
                            yield update("eos", delta=decoder.flush())
                            return  # closing the stream (finally) cancels the worker's next token
                        if event.token_id in loaded.eos_token_ids:
                            ended = len(reply_ids)  # the worker computes on to the budget
                            yield update(stage="padding the reply to its budget", delta=decoder.flush())
                            continue
                        yield update(delta=decoder.push(event.token_id))
                    elif isinstance(event, DoneEvent):
                        yield update(event.reason if ended is None else "eos", delta=decoder.flush())
                        return
                # should_stop: the worker was cancelled (while padding, the reply itself was whole)
                yield update("cancelled" if ended is None else "eos", delta=decoder.flush())
                return
            except WorkerUnavailable:
                if ended is not None:  # lost while padding: the reply is whole
                    yield update("eos", delta=decoder.flush())
                    return
                if should_stop is not None and should_stop():
                    raise
                for left in reconnect(session, RECONNECT_SECONDS, should_stop):
                    yield update(stage=f"the worker went away; reconnecting ({left:.0f} s left)")
                held = keys.commit()
                everything = [*turn.base.ids, *turn.new_ids, *reply_ids]
                new_ids, start = everything[held:], held
                notice = LOST_NOTICE
            finally:
                stream.close()
    finally:
        # whole positions only (a Stop can cut a forward pass half-way), none of the padding
        held = keys.commit(None if ended is None else turn.start + len(turn.new_ids) + ended - 1)
        if memory is not None:
            memory.conversation = state = finish_turn(tokenizer, turn, reply_ids, held)
            if state is not None:
                keys.commit(len(state.ids))


def read_ahead(
    loaded: LoadedModel,
    messages: Sequence[dict[str, str]],
    reply: str,
    request: ReplyRequest,
    session: EncryptedSession,
    memory: ChatMemory,
    should_stop: Callable[[], bool] | None = None,
    on_progress: OnProgress | None = None,
) -> int:
    """After a reply: read the next turn's opening markers into the cache (see the module docstring).

    Args:
        messages, reply: the conversation the reply answered, and the reply's text as the page shows it.
        memory: the chat's state after the reply; it gains the positions read.
        should_stop: polled while the worker reads; True cancels (the state stays as it was).

    Returns:
        The positions read (0: nothing to read, the state does not match, or stopped, or the worker
        failed; a failure is logged and the next turn sends the markers itself).
    """
    state, keys = memory.conversation, session.keys
    if state is None or keys.positions != len(state.ids) or session.client.closed:
        return 0
    text, ids = read_ahead_text(loaded.tokenizer, state, messages, reply)
    if not ids or len(state.ids) + len(ids) + 1 > session.client.welcome.context_window:
        return 0
    ahead = replace(request, max_new_tokens=0, first_index=0)
    read = extended = False
    stream = session.client.generate(ids, len(state.ids), state.prefix, ahead, should_stop)
    try:
        for event in stream:
            if isinstance(event, Progress) and on_progress is not None:
                on_progress(event)
            elif isinstance(event, DoneEvent):
                read = event.reason != "cancelled"
    except (WorkerError, WorkerUnavailable) as exc:  # busy with another session, or gone: not needed
        log.info("read-ahead of %d positions did not run: %s", len(ids), exc)
    finally:
        stream.close()
        held = keys.commit()
        if read and held == len(state.ids) + len(ids) and memory.conversation is state:
            memory.conversation, extended = extend(state, text, ids), True
        else:
            keys.commit(len(state.ids))  # a layer-only part of the positions: drop it
    return len(ids) if extended else 0


def _wire(session: EncryptedSession, event: TokenEvent, turn: Turn, public: tuple[int, str]) -> WireReport:
    return WireReport(
        key_upload_bytes=session.client.key_bytes,
        bytes_to_worker=event.local.bytes_up,
        bytes_from_worker=event.local.bytes_down,
        oracle_calls=dict(event.local.by_fn),
        worker_seconds=dict(event.worker.get("seconds", {})),
        ciphertext_hex=event.last_frame_hex,
        preset=session.keys.preset,
        params=session.keys.secret.params.to_dict(),
        public_positions=public[0],
        public_text=public[1],
        start=turn.start,
        new_positions=len(turn.new_ids),
        processes=int(event.worker.get("processes", 1)),  # checked by app.chat.keyholder.worker_telemetry
    )
