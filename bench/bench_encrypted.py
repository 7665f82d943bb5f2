"""Benchmark: encrypted decode on the default model over a real loopback websocket, by stage.

    python bench/bench_encrypted.py                 # 4 tokens after an 8-token prompt, preset "default"
    python bench/bench_encrypted.py --tokens 6 --prompt-tokens 4
    python bench/bench_encrypted.py --tiny          # the tiny model (quick check of the harness)

The worker runs as `make run` runs it (a process of its own with its compute processes, warmed before
the first request); the first token also pays for the prompt; the decode figure is the median over the
later tokens. Baselines measured in the same run: plain decode
of the same model (exact, plaintext) and the estimated naive TenSEAL path (`CKKSVector.mm` at 5-10 ms
per input row, DESIGN.md section 7, here timed on one 576-row product and scaled to the model's rows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import tenseal as ts  # noqa: E402

from app.chat.keyholder import KeyHolderClient, ReplyRequest, TokenEvent  # noqa: E402
from app.worker.encrypted import EmbeddedWorker, WorkerSpec  # noqa: E402
from model.generate import ExactSelector, GenerationSettings, build_prompt, generate  # noqa: E402
from model.key_holder import KeyHolderSide  # noqa: E402
from model.loading import build_tiny_model, load_default  # noqa: E402


def naive_mm_seconds_per_row() -> float:
    """TenSEAL's CKKSVector.mm on a 576x576 matrix, per input row (the naive baseline)."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, -1, [60, 40, 40, 60])
    ctx.global_scale = 2**40
    ctx.generate_galois_keys()
    rng = np.random.default_rng(0)
    vec = ts.ckks_vector(ctx, rng.standard_normal(576).tolist())
    mat = rng.standard_normal((576, 576)).tolist()
    start = time.perf_counter()
    vec.mm(mat)
    return (time.perf_counter() - start) / 576


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=8, help="keep the last N prompt tokens")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--processes", type=int, default=None, help="the worker's compute processes")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()

    loaded = build_tiny_model() if args.tiny else load_default()
    vocab = loaded.model.config.vocab_size
    perm = np.random.default_rng(0).permutation(vocab)  # the order does not change the cost
    prompt = build_prompt(loaded, [{"role": "user", "content": "What is the capital of France?"}])
    prompt = prompt[-args.prompt_tokens :]

    # plain baseline, same model, same prompt
    selector = ExactSelector(loaded.input_embeddings(), 1.0)
    steps = list(generate(loaded, prompt, selector, GenerationSettings(max_new_tokens=16, seed=0)))
    plain = statistics.median(s.seconds for s in steps[1:]) if len(steps) > 1 else steps[0].seconds

    spec = WorkerSpec.from_loaded(loaded, perm, "bench", args.processes, (args.preset,))
    started = time.perf_counter()
    worker = EmbeddedWorker(spec)
    while worker.readiness()[0] < worker.readiness()[1]:
        time.sleep(0.5)
    warm = time.perf_counter() - started
    rss = sum(
        int(p.memory_full_info().pss)
        for p in [psutil.Process(worker.process.pid)]
        + psutil.Process(worker.process.pid).children(recursive=True)
    )
    keys = KeyHolderSide(args.preset, spec.weights.shape, loaded.input_embeddings(), perm)
    start_keys = time.perf_counter()
    client = KeyHolderClient(worker.url, keys)
    print(f"model {loaded.name}, preset {args.preset}, prompt {len(prompt)} tokens, {args.tokens} tokens")
    print(
        f"worker: {worker.processes} compute processes, warm after {warm:.0f} s, {rss / 2**30:.1f} GiB (PSS)"
    )
    print(
        f"key generation + upload: {time.perf_counter() - start_keys:.1f} s, {client.key_bytes / 1e6:.1f} MB"
    )
    events = []
    for event in client.generate(prompt, 0, "", ReplyRequest(max_new_tokens=args.tokens, seed=0)):
        if isinstance(event, TokenEvent):
            events.append(event)
            stages = ", ".join(f"{k} {v:.1f}" for k, v in event.worker["seconds"].items())
            print(
                f"  token {event.index}: {event.seconds:6.1f} s  [{stages}]  oracle calls "
                f"{sum(event.worker['oracle_calls'].values())}, up {event.local.bytes_up / 1e6:.0f} MB, "
                f"down {event.local.bytes_down / 1e6:.0f} MB, key holder {event.local.oracle_seconds:.1f} s",
                flush=True,
            )
    client.close()
    worker.stop()
    last = events[-1].local  # a decode token: where its oracle traffic goes, by function
    print("  oracle traffic of the last token, MB up / down (calls):")
    for fn, (up, down) in sorted(last.fn_bytes.items(), key=lambda item: -sum(item[1])):
        print(f"    {fn:>12}: {up / 1e6:6.1f} / {down / 1e6:6.1f}  ({last.by_fn[fn]})")
    decode = [e.seconds for e in events[1:]] or [events[0].seconds]
    median = statistics.median(decode)
    naive = naive_mm_seconds_per_row()
    s = spec.weights.shape
    rows = s.layers * (4 * s.d + 2 * s.d + s.ffn) + s.d + s.vocab  # input rows of every product per token
    print(f"first token (prompt of {len(prompt)} positions, warm worker): {events[0].seconds:.1f} s")
    print(f"encrypted decode, median of {len(decode)}: {median:.1f} s/token (target <= 60 s)")
    print(
        f"plain decode (same run): {plain * 1000:.1f} ms/token -> encrypted is {median / plain:,.0f}x slower"
    )
    print(
        f"naive TenSEAL mm estimate: {naive * 1000:.2f} ms/row x {rows:,} rows = {naive * rows:.0f} s/token "
        f"-> {naive * rows / median:.1f}x faster than naive (products only)"
    )


if __name__ == "__main__":
    main()
