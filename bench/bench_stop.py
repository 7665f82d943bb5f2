"""Benchmark: how long Stop takes to end an encrypted reply, during the prompt and during decode.

    python bench/bench_stop.py                     # default model, Stop at 5 points, then a follow-up turn
    python bench/bench_stop.py --tiny              # the harness on the tiny model

The worker runs as `make run` runs it (its own process and compute processes, warm). Each point starts
a new chat with a one-line question and presses Stop (the reply's `should_stop` turns true) a given
number of seconds after sending, or a given number of tokens into the reply. Reported: the seconds from
Stop to the end of the reply on the key holder's side, which waits for the worker's Done, so the worker
is free again (issue 13's target: within 2 s). The landed baseline is the cancel check once per layer,
about one prompt layer (~40 s) at worst; it is not rerun here. After the last point a follow-up turn
checks that the stopped chat's state is still usable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.chat.encrypted import EncryptedSession  # noqa: E402
from app.chat.replies import ChatMemory, ReplyUpdate  # noqa: E402
from app.chat.service import (  # noqa: E402
    ChatService,
    ChatSettings,
    start_local_worker,  # noqa: E402
)
from model.loading import build_tiny_model, load_default  # noqa: E402

QUESTION = "What is the capital of France?"
# (label, seconds after sending or None, tokens into the reply or None)
POINTS = [
    ("prompt, 5 s in", 5.0, None),
    ("prompt, 40 s in", 40.0, None),
    ("prompt, 90 s in", 90.0, None),
    ("decode, after token 1", None, 1),
    ("decode, after token 2", None, 2),
]


def stop_once(
    service: ChatService,
    session: EncryptedSession,
    memory: ChatMemory,
    after: float | None,
    tokens: int | None,
) -> tuple[float, ReplyUpdate]:
    """One reply stopped at a point; (seconds from Stop to the reply's end, its last update)."""
    # the moment the user presses Stop: a clock time, or when the n-th token reaches the screen; the
    # key holder notices it at its next poll, which is part of what is measured
    sent = time.perf_counter()
    pressed = sent + after if after is not None else None

    def should_stop() -> bool:
        return pressed is not None and time.perf_counter() >= pressed

    settings = ChatSettings(mode="encrypted", max_new_tokens=64, seed=0)
    last = None
    for update in service.reply(
        [{"role": "user", "content": QUESTION}], settings, session, memory, should_stop
    ):
        if tokens is not None and pressed is None and update.tokens >= tokens:
            pressed = time.perf_counter()
        last = update
    ended = time.perf_counter()
    assert last is not None
    if pressed is None or ended < pressed:  # the reply ended before its Stop point
        return float("nan"), last
    return ended - pressed, last


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--processes", type=int, default=None, help="the worker's compute processes")
    args = parser.parse_args()
    loaded = build_tiny_model() if args.tiny else load_default()
    service = ChatService.create(loaded)
    worker = start_local_worker(service, args.processes)
    while worker.readiness()[0] < worker.readiness()[1]:
        time.sleep(0.5)
    session = service.open_encrypted()
    try:
        figures = []
        for label, after, tokens in POINTS:
            memory = ChatMemory()
            seconds, stopped = stop_once(service, session, memory, after, tokens)
            figures.append(seconds)
            print(f"Stop {label}: reply ended {seconds:.2f} s later (finish {stopped.finish})", flush=True)
        messages = [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": stopped.text},
        ]
        done = [f for f in figures if f == f]  # nan: the reply ended before its Stop point
        print(f"Stop to end of reply: median {statistics.median(done):.2f} s, worst {max(done):.2f} s")
        follow = ChatSettings(mode="encrypted", max_new_tokens=2, seed=0)
        last = None
        for update in service.reply(
            [*messages, {"role": "user", "content": "And of Spain?"}], follow, session, memory
        ):
            last = update
        assert last is not None
        print(f"follow-up after the last Stop: {last.tokens} tokens, continued={last.continued}")
    finally:
        session.close()
        worker.stop()


if __name__ == "__main__":
    main()
