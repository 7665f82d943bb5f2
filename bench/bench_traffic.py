"""Benchmark: ciphertext traffic per token, and seconds per token over shaped links, old path beside.

    python bench/bench_traffic.py                        # default model: 2 tokens after 4 prompt tokens
    python bench/bench_traffic.py --links 100mbit --tokens 3
    python bench/bench_traffic.py --tiny --skip-landed   # the harness on the tiny model

The worker runs as `python -m app worker` in a network namespace of its own, joined to this one by a
veth pair; the key holder (this process) reaches it over that pair, first unshaped (the loopback
figure: veth costs what loopback does), then shaped with `tc netem rate R` on both ends for each
link. Each link gets a new session (key upload timed), a prompt and `--tokens` tokens; reported per
link: key upload seconds, seconds per token (median of the tokens after the first), its ratio to the
unshaped figure, and megabytes per token each way. Where namespaces cannot be made (no root, no
`ip`), it says so, measures on loopback and computes each link's seconds from the bytes.

The landed path (`--landed REV`, default the commit before the traffic work) is that commit's own
`bench/bench_encrypted.py`, checked out into a temporary git worktree and run in a subprocess on
loopback: its key upload and bytes per token are the baselines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.chat.keyholder import KeyHolderClient, ReplyRequest, TokenEvent  # noqa: E402
from app.chat.service import ChatService  # noqa: E402
from model.forward import LlamaShape  # noqa: E402
from model.generate import build_prompt  # noqa: E402
from model.key_holder import KeyHolderSide  # noqa: E402
from model.loading import build_tiny_model, load_default  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE, HOST_DEV, WORKER_DEV = "he-bench-worker", "hebench0", "hebench1"
HOST_IP, WORKER_IP, PORT = "10.231.0.1", "10.231.0.2", 8765
LANDED = "49cf819"  # the commit before the traffic work
RATES = {"1gbit": 1e9, "100mbit": 1e8, "20mbit": 2e7}


@dataclass
class Run:
    link: str
    key_mb: float
    key_seconds: float
    first_seconds: float
    per_token: float  # median seconds per token after the first
    up_mb: float  # per token, key holder -> worker (median)
    down_mb: float


def sh(*command: str, namespace: bool = False) -> None:
    prefix = ["ip", "netns", "exec", NAMESPACE] if namespace else []
    subprocess.run([*prefix, *command], check=True, capture_output=True)


@contextlib.contextmanager
def veth_pair() -> Iterator[bool]:
    """The worker's namespace and the veth pair to it; yields False where they cannot be made."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        yield False
        return
    try:
        subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True)  # a stale one
        sh("ip", "netns", "add", NAMESPACE)
        sh("ip", "link", "add", HOST_DEV, "type", "veth", "peer", "name", WORKER_DEV)
        sh("ip", "link", "set", WORKER_DEV, "netns", NAMESPACE)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_DEV)
        sh("ip", "link", "set", HOST_DEV, "up")
        sh("ip", "addr", "add", f"{WORKER_IP}/30", "dev", WORKER_DEV, namespace=True)
        sh("ip", "link", "set", WORKER_DEV, "up", namespace=True)
        sh("ip", "link", "set", "lo", "up", namespace=True)
    except subprocess.CalledProcessError as exc:
        print(f"network namespaces not available ({exc.stderr.decode().strip()}); computing from bytes")
        subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True)
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["ip", "link", "del", HOST_DEV], capture_output=True)
        subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True)


def shape(link: str) -> None:
    """A token bucket (`tc tbf`: netem is not in every kernel) on both ends of the pair, each shaping what
    it sends; the bucket holds 5 ms of the rate (at least 32 KB), the queue 50 ms."""
    burst = max(int(RATES[link] / 8 * 0.005), 32 * 1024)
    for dev, namespace in ((HOST_DEV, False), (WORKER_DEV, True)):
        sh("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", link, "burst", str(burst),
           "latency", "50ms", namespace=namespace)  # fmt: skip


def start_worker(args: argparse.Namespace, token: str, isolated: bool) -> tuple[subprocess.Popen[str], str]:
    """`python -m app worker` (in the namespace if `isolated`), warm; returns it and its URL."""
    host = WORKER_IP if isolated else "127.0.0.1"
    command = [sys.executable, "-m", "app", "worker", "--host", host, "--port", str(PORT), "--token", token]
    command += ["--tiny"] if args.tiny else []
    if isolated:
        command = ["ip", "netns", "exec", NAMESPACE, *command]
    worker = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert worker.stderr is not None
    for line in worker.stderr:
        if line.startswith("worker ready after"):
            print(f"  {line.strip()}", flush=True)
            break
    else:
        raise SystemExit(f"the worker ended before it was ready (exit {worker.wait()})")
    threading.Thread(target=worker.stderr.read, daemon=True).start()  # keep its pipe drained
    return worker, f"ws://{host}:{PORT}/?token={token}"


def session(url: str, service: ChatService, prompt: list[int], tokens: int, link: str) -> Run:
    shape_ = LlamaShape.from_config(service.loaded.model.config)
    keys = KeyHolderSide(service.preset, shape_, service.loaded.input_embeddings(), service.perm(True))
    start = time.perf_counter()
    client = KeyHolderClient(url, keys, service.expected(), open_timeout=60)
    key_seconds = time.perf_counter() - start
    events = [
        e
        for e in client.generate(prompt, 0, "", ReplyRequest(max_new_tokens=tokens, seed=0))
        if isinstance(e, TokenEvent)
    ]
    client.close()
    later = events[1:] or events
    run = Run(
        link,
        client.key_bytes / 1e6,
        key_seconds,
        events[0].seconds,
        statistics.median(e.seconds for e in later),
        statistics.median(e.local.bytes_up for e in later) / 1e6,
        statistics.median(e.local.bytes_down for e in later) / 1e6,
    )
    print(
        f"  {link}: keys {run.key_mb:.1f} MB in {run.key_seconds:.1f} s, first token "
        f"{run.first_seconds:.1f} s, {run.per_token:.1f} s/token, up {run.up_mb:.1f} MB + down "
        f"{run.down_mb:.1f} MB per token",
        flush=True,
    )
    return run


def landed(rev: str, tiny: bool) -> tuple[float, float, float] | None:
    """The old path's key upload MB and per-token MB up and down, from its own bench_encrypted.py."""
    folder = Path(tempfile.mkdtemp(prefix="he-landed-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev], check=True,
                   capture_output=True)  # fmt: skip
    try:
        command = [sys.executable, "bench/bench_encrypted.py", "--tokens", "2", "--prompt-tokens", "4"]
        done = subprocess.run(
            command + (["--tiny"] if tiny else []), cwd=folder, capture_output=True, text=True
        )
        keys = re.search(r"upload: [\d.]+ s, ([\d.]+) MB", done.stdout)
        token = re.findall(r"up (\d+) MB, down (\d+) MB", done.stdout)
        if keys is None or not token:
            print(
                f"  the landed path did not report its bytes (exit {done.returncode}): {done.stderr[-400:]}"
            )
            return None
        up, down = token[-1]
        return float(keys.group(1)), float(up), float(down)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tokens", type=int, default=2, help="tokens per link (the first also pays the prompt)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=4, help="keep the last N prompt tokens")
    parser.add_argument("--links", default="1gbit,100mbit,20mbit", help=f"comma-separated, of {list(RATES)}")
    parser.add_argument("--landed", default=LANDED, help="the old path's commit")
    parser.add_argument("--skip-landed", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    links = [link for link in args.links.split(",") if link]
    unknown = [link for link in links if link not in RATES]
    if unknown or args.tokens < 1 or args.prompt_tokens < 1:
        parser.error(f"--links takes {list(RATES)} (got {unknown}); --tokens and --prompt-tokens at least 1")

    loaded = build_tiny_model() if args.tiny else load_default()
    service = ChatService.create(loaded)
    prompt = build_prompt(loaded, [{"role": "user", "content": "What is the capital of France?"}])
    prompt = prompt[-args.prompt_tokens :]
    print(
        f"model {loaded.name}, preset {service.preset}, prompt {len(prompt)} tokens, "
        f"{args.tokens} tokens per link"
    )
    runs: list[Run] = []
    with veth_pair() as isolated:
        worker, url = start_worker(args, secrets.token_urlsafe(24), isolated)
        try:
            runs.append(session(url, service, prompt, args.tokens, "unshaped" if isolated else "loopback"))
            for link in links if isolated else []:
                shape(link)
                runs.append(session(url, service, prompt, args.tokens, link))
        finally:
            worker.terminate()
            worker.wait(60)
    base = runs[0]
    print(f"\n| link | s/token | x {base.link} | key upload | MB/token up + down |")
    print("|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {run.link} | {run.per_token:.1f} | {run.per_token / base.per_token:.2f} | "
            f"{run.key_mb:.1f} MB, {run.key_seconds:.1f} s | {run.up_mb:.1f} + {run.down_mb:.1f} |"
        )
    if not isolated:
        for link in links:
            seconds = base.per_token + (base.up_mb + base.down_mb) * 8e6 / RATES[link]
            print(f"| {link} (computed) | {seconds:.1f} | {seconds / base.per_token:.2f} | | |")
    old = None if args.skip_landed else landed(args.landed, args.tiny)
    total = base.up_mb + base.down_mb
    if old is not None:
        keys, up, down = old
        print(
            f"\nlanded path ({args.landed}, same run): keys {keys:.1f} MB, {up:.0f} + {down:.0f} MB per token"
        )
        print(
            f"key upload {base.key_mb:.1f} MB vs {keys:.1f} MB ({keys / base.key_mb:.1f}x less; target <= 20)"
        )
        less = (up + down) / total
        print(f"bytes per token {total:.1f} MB vs {up + down:.0f} MB ({less:.1f}x less; target <= 60 MB)")
    else:
        print(
            f"\nbytes per token {total:.1f} MB (target <= 60); key upload {base.key_mb:.1f} MB (target <= 20)"
        )


if __name__ == "__main__":
    main()
