"""The chat page's handlers: Send (a chat reply, streamed), Compare (two replies side by side), and the
small ones (Stop, Forget my keys, the mode's hint and token cap, the embedded worker's warm-up line).

Send and Compare are generators (STYLE.md rule 13): each yield replaces the chat with the history plus
the reply so far (`app.chat.ui_view.ReplyView`, from `app.chat.ui_parts.stream_reply`). Compare runs its
two sides in threads and renders whatever both have sent since the last frame. The layout that wires
them to the page's components is app/chat/ui.py.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from app.chat.service import ChatService, ChatSettings, to_messages
from app.chat.ui_panel import worker_panel
from app.chat.ui_parts import Keyring, OpenKeyrings, error_title, read_settings, stream_reply
from app.chat.ui_view import ReplyView, error_message, plain, refused_message, verbatim
from core.errors import InputError

ENCRYPTED_TOKENS = 64  # max new tokens when encrypted is picked: 12-20 minutes at most on 2 cores
MODE_INFO = {
    "plain": "plain: the exact model and exact sampling, in the clear on this server (the baseline).",
    "simulate": "simulate: the paper's polynomial sampler in floating point, mixture-embedding feedback.",
    "encrypted": (
        "encrypted: the model runs on CKKS ciphertexts on the worker. On a 2-core machine the first token "
        "takes one and a half to two and a half minutes and each further one 11-20 s; a follow-up "
        "continues from the key holder's state and sends only the positions the model has not read yet "
        "(the markers before your next message are read while you type). Max new tokens "
        f"is set to {ENCRYPTED_TOKENS} when you pick it "
        "(a reply ends sooner at the model's end-of-reply token); raise it if you are patient."
    ),
}
FRAME_SECONDS = 0.05  # at most ~20 chat redraws per second (the browser lags behind faster streams)


def _user(message: str) -> dict[str, Any]:
    return {"role": "user", "content": verbatim(message)}


def make_chat(service: ChatService, rings: OpenKeyrings):  # type: ignore[no-untyped-def]
    """The Send handler: validates, streams the reply as chat messages, updates the worker panel."""

    def chat(
        message: str | None,
        history: list[Any] | None,
        ring: Keyring,
        mode: str,
        temperature: float,
        max_new_tokens: float,
        seed: float,
        tsp: bool,
        pp: bool,
        penalty: float,
        pad: bool,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        ring = ring if isinstance(ring, Keyring) else Keyring()
        rings.track(getattr(request, "session_hash", None), ring)
        history = list(history or [])
        message = message or ""
        busy = (gr.update(value="", interactive=False), gr.update(interactive=False))
        ready = (gr.update(interactive=True), gr.update(interactive=True))
        try:
            if not message.strip():
                raise InputError("the message is empty; type some text before sending")
            settings = read_settings(mode, temperature, max_new_tokens, seed, tsp, pp, penalty, pad)
        except InputError as exc:
            shown = [*history, *([refused_message(message)] if message.strip() else [])]
            yield (
                [*shown, error_message(error_title(exc), plain(str(exc)))],
                *ready,
                ring,
                worker_panel(ring, service.worker_url),
            )
            return
        messages = to_messages(history, message)
        history.append(_user(message))
        stop = ring.stop["chat"]
        stop.clear()
        view: ReplyView | None = None
        shown_at = 0.0
        for view in stream_reply(service, ring, messages, settings, stop, ring.memory):
            if time.monotonic() - shown_at >= FRAME_SECONDS or view.note or view.stopping:
                shown_at = time.monotonic()  # fast plain replies: one frame per 50 ms, not per token
                yield [*history, *view.messages()], *busy, ring, worker_panel(ring, service.worker_url)
        if view is not None:
            if view.refused:  # not part of the conversation: the next message is built without it
                history[-1], ready = (
                    refused_message(message),
                    (gr.update(value=message, interactive=True), ready[1]),
                )
            yield [*history, *view.messages()], *ready, ring, worker_panel(ring, service.worker_url)

    return chat


def make_compare(service: ChatService, rings: OpenKeyrings):  # type: ignore[no-untyped-def]
    """The Compare handler: two replies to the same prompt and seed, streamed side by side (threads)."""

    def compare(
        prompt: str | None,
        ring: Keyring,
        mode_a: str,
        tsp_a: bool,
        pp_a: bool,
        mode_b: str,
        tsp_b: bool,
        pp_b: bool,
        temperature: float,
        max_new_tokens: float,
        seed: float,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        ring = ring if isinstance(ring, Keyring) else Keyring()
        rings.track(getattr(request, "session_hash", None), ring)
        prompt = prompt or ""
        if seed is None:  # both sides share one seed, drawn here
            seed = secrets.randbelow(2**32)
        shown: list[list[dict[str, Any]]] = [[_user(prompt)] if prompt.strip() else [], []]
        shown[1] = list(shown[0])
        chats: list[list[dict[str, Any]]] = [list(shown[0]), list(shown[1])]
        sides: list[ChatSettings | None] = [None, None]
        for i, (mode, tsp, pp) in enumerate(((mode_a, tsp_a, pp_a), (mode_b, tsp_b, pp_b))):
            try:
                if not prompt.strip():
                    raise InputError("the prompt is empty; type some text before comparing")
                sides[i] = read_settings(mode, temperature, max_new_tokens, seed, tsp, pp)
            except InputError as exc:
                chats[i] = [*shown[i], error_message(error_title(exc), plain(str(exc)))]
        a, b = sides
        if a is not None and b is not None and a.mode == b.mode == "encrypted":
            sides[1] = None
            chats[1] = [
                *shown[1],
                error_message(
                    "Only one side can be encrypted",
                    "The worker runs one encrypted job at a time; compare encrypted with plain or simulate.",
                ),
            ]
        stop = ring.stop["compare"]
        stop.clear()
        updates: queue.Queue[tuple[int, list[dict[str, Any]] | None]] = queue.Queue()
        messages = to_messages([], prompt)  # the model gets the prompt as a string, not a page part

        def pump(side: int, settings: ChatSettings) -> None:
            try:
                for view in stream_reply(service, ring, messages, settings, stop):
                    updates.put((side, view.messages()))
            finally:
                updates.put((side, None))

        running = 0
        for i, settings in enumerate(sides):
            if settings is not None:
                threading.Thread(
                    target=pump, args=(i, settings), name=f"he-chat-compare-{i}", daemon=True
                ).start()
                running += 1
        panel = worker_panel(ring, service.worker_url)
        yield chats[0], chats[1], gr.update(interactive=running == 0), ring, panel
        try:
            while running:
                side, rendered = updates.get()
                while True:  # take everything queued so far, then render once
                    if rendered is None:
                        running -= 1
                    else:
                        chats[side] = [*shown[side], *rendered]
                    try:
                        side, rendered = updates.get_nowait()
                    except queue.Empty:
                        break
                yield (
                    chats[0],
                    chats[1],
                    gr.update(interactive=False),
                    ring,
                    worker_panel(ring, service.worker_url),
                )
        finally:
            stop.set()  # the page went away mid-compare: let both threads wind down (and cancel the worker)
        yield chats[0], chats[1], gr.update(interactive=True), ring, worker_panel(ring, service.worker_url)

    return compare


def cap_for_encrypted(mode: str, max_new_tokens: float) -> tuple[Any, Any]:
    """The mode's hint, and max new tokens lowered to `ENCRYPTED_TOKENS` when encrypted is picked."""
    capped = mode == "encrypted" and (max_new_tokens or 0) > ENCRYPTED_TOKENS
    return (
        gr.update(value=ENCRYPTED_TOKENS) if capped else gr.update(),
        MODE_INFO.get(mode, ""),
    )


def worker_status(readiness: Callable[[], tuple[int, int]] | None) -> tuple[str, Any]:
    """The embedded worker's warm-up, while it lasts (an encrypted reply meanwhile waits for it)."""
    if readiness is None:
        return "", gr.Timer(active=False)
    done, total = readiness()
    if done >= total:
        return "Worker ready: its weight plaintexts are warm.", gr.Timer(active=False)
    return (
        f"⏳ Worker warming up: {100 * done // max(total, 1)}% of its weight plaintexts encoded "
        "(once, at start-up; an encrypted reply waits for it)."
    ), gr.Timer(active=True)


def request_stop(ring: Keyring, which: str) -> None:
    """Stop (`which`: "chat" or "compare"): the running reply sees the flag at its next update."""
    if isinstance(ring, Keyring):
        ring.stop[which].set()


def forget_keys(ring: Keyring, service: ChatService) -> tuple[Keyring, str]:
    """Forget my keys: drop the session's keys and state, and redraw the panel."""
    ring.drop()
    ring.last_wire = None
    return ring, worker_panel(ring, service.worker_url)
