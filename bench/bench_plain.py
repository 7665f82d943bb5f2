"""Benchmark: default-model load time (cold conversion and warm cache) and plain decode speed.

    python bench/bench_plain.py            # 5 warm loads, 3 decode runs of 64 tokens
    python bench/bench_plain.py --quick    # fewer repetitions
    python bench/bench_plain.py --cold     # also time the one-off GGUF -> safetensors conversion

Prints medians (this machine is noisy) and, as the in-run baseline, the ratio of the warm cache load
to loading straight from the GGUF file, which is what the cache exists to avoid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from model.generate import ExactSelector, GenerationSettings, build_prompt, generate  # noqa: E402
from model.loading import find_default_gguf, load_default  # noqa: E402

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def median_seconds(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    loads, runs = (2, 1) if args.quick else (5, 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory() as tmp:
        if args.cold:
            start = time.perf_counter()
            load_default(Path(tmp))
            print(f"cold load (GGUF -> safetensors cache, once):  {time.perf_counter() - start:6.2f} s")
        load_default()  # make sure the default cache exists
        warm = median_seconds(load_default, loads)
        gguf = find_default_gguf()
        direct = median_seconds(
            lambda: AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name), max(1, loads // 2)
        )
    print(f"warm load from the safetensors cache (median): {warm:6.2f} s")
    print(
        f"baseline: load straight from GGUF (median):   {direct:6.2f} s"
        f"   -> cache is {direct / warm:.1f}x faster"
    )

    loaded = load_default()
    prompt = build_prompt(loaded, PROMPT)
    rates, firsts = [], []
    for seed in range(runs):
        selector = ExactSelector(loaded.input_embeddings(), temperature=1.0)
        settings = GenerationSettings(max_new_tokens=args.tokens, temperature=1.0, seed=seed)
        steps = list(generate(loaded, prompt, selector, settings))
        firsts.append(steps[0].seconds)
        decode = sum(s.seconds for s in steps[1:])
        rates.append((len(steps) - 1) / decode)
    print(f"plain decode, {args.tokens} tokens, prompt {len(prompt)} tokens, {runs} runs:")
    print(f"  time to first token (median): {statistics.median(firsts) * 1000:7.1f} ms")
    print(
        f"  decode speed (median):        {statistics.median(rates):7.1f} tokens/s "
        f"({1000 / statistics.median(rates):.1f} ms/token)"
    )


if __name__ == "__main__":
    main()
