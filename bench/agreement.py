"""Measure how often encrypted mode picks the same token as simulate mode (same seed, same order).

    python bench/agreement.py                       # default model, 2 prompts x 12 tokens
    python bench/agreement.py --tiny --tokens 20    # the tiny model

The worker job and the key holder run in one process (the oracle is a direct call; the websocket path
is the same math and is tested in tests/test_worker.py). Prompts are cut to their last
`--prompt-tokens` tokens because the encrypted prompt runs one position at a time (~25 s each on the
default model). Where the two modes differ, the step's probabilities show whether the draw sat in
the sampler's ambiguity window (r within ~1e-6 of a prefix sum c_j), i.e. where CKKS noise can move it.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from app import protocol as p  # noqa: E402
from app.worker import JobContext  # noqa: E402
from crypto.keys import load_public_context  # noqa: E402
from model.encrypted import KeyHolderSide, worker_model_for  # noqa: E402
from model.generate import GenerationSettings, build_prompt, generate  # noqa: E402
from model.loading import build_tiny_model, load_default  # noqa: E402
from model.ordering import ordering_for_model  # noqa: E402
from model.sampler import SamplerConfig  # noqa: E402
from model.simulate import SimulateSelector  # noqa: E402

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Name three primary colours."]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--prompt-tokens", type=int, default=6)
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()
    loaded = build_tiny_model() if args.tiny else load_default()
    ordering = ordering_for_model(loaded)
    perm = np.asarray(ordering.perm, dtype=np.int64)
    worker = worker_model_for(loaded, perm, ordering.order_id)
    plan = worker.rotation_plan(args.preset)
    agree = total = 0
    for seed, text in enumerate(PROMPTS[: args.prompts]):
        prompt = build_prompt(loaded, [{"role": "user", "content": text}])[-args.prompt_tokens :]
        selector = SimulateSelector(loaded.input_embeddings(), perm, SamplerConfig(), record=True)
        settings = GenerationSettings(max_new_tokens=args.tokens, temperature=1.0, seed=seed)
        simulated = [s.token_id for s in generate(loaded, prompt, selector, settings)]
        keys = KeyHolderSide(args.preset, worker.shape, loaded.input_embeddings(), perm)
        public = load_public_context(keys.public_context(sorted(plan.steps), plan.conjugate))
        keys.new_reply({"temperature": 1.0, "tsp": True})
        request = p.Generate(
            "s", "r", len(prompt), args.tokens, seed, True, True, 3, keys.encrypt_prompt(prompt)
        )
        encrypted: list[int] = []
        start = time.perf_counter()

        def emit(
            message: p.Message, out: list[int] = encrypted, k: KeyHolderSide = keys, t0: float = start
        ) -> None:
            if isinstance(message, p.Token):
                out.append(k.read_token(message.blobs))
                print(f"    token {len(out)} after {time.perf_counter() - t0:.0f} s", flush=True)

        worker.run(JobContext(public, request, keys.answer, emit, threading.Event()))
        n = len(simulated)  # simulate stops at EOS; compare up to there
        first_diff = next((i for i in range(n) if encrypted[i] != simulated[i]), None)
        same = (
            n if first_diff is None else first_diff
        )  # after a difference the two feed back different inputs
        agree += same
        total += n
        print(f"prompt {text!r}: first {same}/{n} tokens identical; first difference at {first_diff}")
        print(f"  simulate : {loaded.tokenizer.decode(simulated)!r}")
        print(f"  encrypted: {loaded.tokenizer.decode(encrypted[:n])!r}")
        if first_diff is not None:
            step = selector.trace[first_diff]
            print(
                f"  step {first_diff}: simulate max weight error {step.max_error:.2e}, "
                f"sum(I') {step.weight_sum:.3f}"
            )
    print(
        f"agreement (identical prefix): {agree}/{total} = {agree / max(total, 1):.1%} "
        f"({loaded.name}, preset {args.preset})"
    )


if __name__ == "__main__":
    main()
