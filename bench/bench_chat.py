"""Benchmark: an encrypted chat turn after turn, beside the landed path measured in the same run.

    python bench/bench_chat.py                      # default model, 3 runs of a 3-turn chat, landed path too
    python bench/bench_chat.py --runs 2 --tokens 6 --landed-runs 1   # the README's figures
    python bench/bench_chat.py --skip-landed --runs 1 --tokens 6
    python bench/bench_chat.py --tiny --skip-landed # the harness on the tiny model

New path: the embedded worker (a process of its own with its compute processes, warm before the first
user) and the key holder in this process, over loopback websockets, exactly as `make run` runs them. Each
run opens a new encrypted session (key generation and upload are part of the first turn) and holds a
3-turn conversation of one-line messages; every turn continues from the key holder's state. Reported per
turn: time to the first token, positions sent, and seconds per token (median of the gaps after the
first token). With `--read-ahead both` (the default) each run is held twice, without and with the
read-ahead the page does while the user types (the next turn's opening markers read as soon as a reply
ends); the read-ahead's own time is the think time a turn needs to find them read. Then simulate mode
holds the same two-turn conversation from its own state, and the tokens of every run are compared.

Landed path (`--landed REV`, default the commit before this work): the code of that commit, checked out
into a temporary git worktree and run in a subprocess on this machine, warm (one reply first): the whole
37-position prompt one position at a time, then decode. Its time to first token and seconds per token are
the baselines of the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from app.chat.replies import ChatMemory  # noqa: E402
from app.chat.service import ChatService, ChatSettings, start_local_worker  # noqa: E402
from model.loading import build_tiny_model, load_default  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LANDED = "636c11f"  # main before the interactive-chat work: one position at a time, no state, one process
TURNS = ["What is the capital of France?", "And of Spain?", "Which one is bigger?"]

LANDED_SCRIPT = r"""
import json, sys, time, asyncio, threading, statistics
import numpy as np
from app.keyholder import KeyHolderClient, ReplyRequest, TokenEvent
from app.worker import Worker, WorkerLimits, start
from model.encrypted import KeyHolderSide, worker_model_for
from model.generate import build_prompt
from model.loading import load_default
from model.ordering import ordering_for_model
runs, tokens = int(sys.argv[1]), int(sys.argv[2])
loaded = load_default()
ordering = ordering_for_model(loaded)
model = worker_model_for(loaded, ordering.perm, ordering.order_id)
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
server = asyncio.run_coroutine_threadsafe(start(Worker(model, WorkerLimits())), loop).result()
url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
keys = KeyHolderSide("default", model.shape, loaded.input_embeddings(), np.asarray(ordering.perm))
client = KeyHolderClient(url, keys)
prompt = build_prompt(loaded, [{"role": "user", "content": sys.argv[3]}])
def reply(ids, n):
    t0 = time.perf_counter(); times = []
    for event in client.generate(ids, ReplyRequest(max_new_tokens=n, seed=0, temperature=0.3)):
        if isinstance(event, TokenEvent):
            times.append(time.perf_counter() - t0)
    return times
reply(prompt[-1:], 2)  # warm: every weight diagonal is encoded on first use
out = []
for _ in range(runs):
    times = reply(prompt, tokens)
    gaps = [b - a for a, b in zip(times, times[1:])]
    out.append({"ttft": times[0], "gaps": gaps, "positions": len(prompt)})
    print(json.dumps(out[-1]), file=sys.stderr, flush=True)
print(json.dumps(out))
"""


def pss_of_tree(pid: int) -> int:
    """Resident memory of a process and its children, shared pages counted once (PSS)."""
    total = 0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            total += int(proc.memory_full_info().pss)
    except psutil.Error:
        pass
    return total


def run_landed(rev: str, runs: int, tokens: int) -> list[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="he-chat-landed-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev], check=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(folder)}
        done = subprocess.run(
            [sys.executable, "-c", LANDED_SCRIPT, str(runs), str(tokens), TURNS[0]],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            check=True,
            text=True,
        )
        result: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False)


def chat(
    service: ChatService,
    mode: str,
    tokens: int,
    turns: list[str],
    session: Any = None,
    read_ahead: bool = False,
) -> list[dict[str, Any]]:
    """One conversation; per turn: time to first token, positions, seconds per token, text. With
    `read_ahead`, after each reply the next turn's opening markers are read ahead, as the page does
    while the user types; its time is the think time a turn needs to find them read ("ahead_seconds"
    of the next turn)."""
    memory, history, out = ChatMemory(), [], []
    ahead: tuple[int, float] = (0, 0.0)
    for message in turns:
        messages = [*history, {"role": "user", "content": message}]
        settings = ChatSettings(mode=mode, max_new_tokens=tokens, seed=0)  # type: ignore[arg-type]
        times: list[float] = []
        last = None
        for update in service.reply(messages, settings, session, memory):
            if update.tokens > len(times):
                times.append(update.seconds)
            last = update
        assert last is not None
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        out.append(
            {
                "ttft": last.first_token_seconds,
                "per_token": statistics.median(gaps) if gaps else float("nan"),
                "positions": last.new_positions,
                "start": last.start,
                "continued": last.continued,
                "text": last.text,
                "finish": last.finish,
                "ahead_positions": ahead[0],
                "ahead_seconds": ahead[1],
            }
        )
        print(f"  {mode} turn {len(out)}: {json.dumps(out[-1])}", flush=True)
        if read_ahead and len(out) < len(turns):
            began = time.perf_counter()
            settings = ChatSettings(mode=mode, max_new_tokens=tokens, seed=0)  # type: ignore[arg-type]
            read = service.read_ahead(messages, last.text, settings, session, memory)
            ahead = (read, time.perf_counter() - began)
            print(f"  read ahead: {read} positions in {ahead[1]:.1f} s", flush=True)
        history = [*messages, {"role": "assistant", "content": last.text}]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=8, help="max new tokens per turn")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=None, help="the worker's compute processes")
    parser.add_argument("--landed", default=LANDED, help="the commit whose path is the baseline")
    parser.add_argument("--landed-runs", type=int, default=3)
    parser.add_argument("--skip-landed", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument(
        "--read-ahead",
        choices=("off", "on", "both"),
        default="both",
        help="read the next turn's opening markers after each reply, as the page does (both: runs of each)",
    )
    args = parser.parse_args()

    loaded = build_tiny_model() if args.tiny else load_default()
    service = ChatService.create(loaded)
    began = time.perf_counter()
    worker = start_local_worker(service, args.processes)
    while worker.readiness()[0] < worker.readiness()[1]:
        time.sleep(0.5)
    warm = time.perf_counter() - began
    memory = pss_of_tree(worker.process.pid)
    page = pss_of_tree(os.getpid()) - memory
    print(f"worker: {worker.processes} compute processes, warm after {warm:.0f} s, {memory / 2**30:.1f} GiB")
    print(f"this process (the page's key holder, model loaded): {page / 2**30:.1f} GiB")

    variants = {"off": [False], "on": [True], "both": [False, True]}[args.read_ahead]
    runs: dict[bool, list[list[dict[str, Any]]]] = {False: [], True: []}
    for run in range(args.runs):
        for ahead in variants:
            start = time.perf_counter()
            session = service.open_encrypted()
            keys_seconds = time.perf_counter() - start
            label = "with" if ahead else "without"
            print(f"run {run + 1} ({label} read-ahead): keys created and uploaded in {keys_seconds:.1f} s")
            turns = chat(service, "encrypted", args.tokens, TURNS, session, ahead)
            turns[0]["ttft_with_keys"] = turns[0]["ttft"] + keys_seconds
            runs[ahead].append(turns)
            session.close()
    simulated = chat(service, "simulate", args.tokens, TURNS[:2])
    worker.stop()

    landed = [] if args.skip_landed else run_landed(args.landed, args.landed_runs, max(args.tokens // 2, 3))
    landed_ttft = statistics.median(r["ttft"] for r in landed) if landed else None
    landed_gap = statistics.median(g for r in landed for g in r["gaps"]) if landed else None
    for ahead in variants:
        table(runs[ahead], ahead, landed, landed_ttft)
    every = [r for ahead in variants for r in runs[ahead]]
    first = statistics.median(r[0]["ttft"] for r in every)  # the first turn is the same in every variant
    versus = "landed: not measured"
    if landed_ttft is not None:
        versus = f"landed {landed_ttft:.0f} s, {landed_ttft / first:.1f}x"
    print(f"\nfirst turn, median of all {len(every)} runs: {first:.1f} s ({versus})")
    first_with_keys = statistics.median(r[0]["ttft_with_keys"] for r in every)
    print(f"first turn including key generation and upload: {first_with_keys:.1f} s")
    decode = statistics.median(r[i]["per_token"] for r in every for i in range(len(TURNS)))
    if landed_gap is not None:
        ratio = landed_gap / decode
        print(f"decode: {decode:.1f} s/token, landed {landed_gap:.1f} s/token ({ratio:.2f}x faster)")
    else:
        print(f"decode: {decode:.1f} s/token (landed path not measured)")
    same = [all(r[i]["text"] == simulated[i]["text"] for r in every) for i in range(2)]
    print(f"encrypted (every run) = simulate over a two-turn conversation, each from its own state: {same}")
    for i in range(2):
        print(f"  turn {i + 1}: encrypted {every[0][i]['text']!r} / simulate {simulated[i]['text']!r}")


def table(
    runs: list[list[dict[str, Any]]], ahead: bool, landed: list[dict[str, Any]], landed_ttft: float | None
) -> None:
    """Per turn: positions, time to first token and s/token (medians over runs), the landed baseline."""
    print(f"\n{'with' if ahead else 'without'} read-ahead of the next turn's opening markers:")
    print(
        f"| turn | positions sent | time to first token (median of {len(runs)}) | s/token "
        "| read ahead before it (think time it needs) | baseline |"
    )
    print("|---|---|---|---|---|---|")
    first = statistics.median(r[0]["ttft"] for r in runs)
    for i in range(len(TURNS)):
        ttft = statistics.median(r[i]["ttft"] for r in runs)
        per = statistics.median(r[i]["per_token"] for r in runs)
        positions = runs[0][i]["positions"]
        read = runs[0][i]["ahead_positions"]
        need = statistics.median(r[i]["ahead_seconds"] for r in runs)
        before = f"{read} positions ({need:.0f} s)" if read else ""
        if i > 0:
            base = f"turn 1: {first:.1f} s ({ttft / first:.2f}x of it)"
        elif landed_ttft is not None:
            count = landed[0]["positions"]
            base = f"landed {landed_ttft:.0f} s for {count} positions ({landed_ttft / ttft:.1f}x)"
        else:
            base = "landed: not measured"
        print(f"| {i + 1} | {positions} | {ttft:.1f} s | {per:.1f} s | {before} | {base} |")


if __name__ == "__main__":
    main()
