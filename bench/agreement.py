"""Measure how often encrypted mode says the same as simulate mode, turn after turn (same seed, same order).

    python bench/agreement.py                       # default model, 2 conversations x 2 turns x 12 tokens
    python bench/agreement.py --tiny --tokens 6     # the tiny model

Both modes hold the same conversations at the chat's defaults, each continuing from its own state (the
key holder's attention cache for encrypted, transformers' cache for simulate), with the worker as `make
run` runs it. A reply counts as identical when its text is; where the two differ, the first differing
position is printed (the sampler's ambiguity window is where CKKS noise can move a draw: DESIGN.md
section 2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.chat.replies import ChatMemory  # noqa: E402
from app.chat.service import (  # noqa: E402
    ChatService,
    ChatSettings,
    start_local_worker,  # noqa: E402
)
from model.loading import build_tiny_model, load_default  # noqa: E402

CONVERSATIONS = [
    ["What is the capital of France?", "And of Spain?"],
    ["Write a haiku about the sea.", "Now one about the mountains."],
    ["Name three primary colours.", "Which one is the warmest?"],
]


def converse(service: ChatService, mode: str, turns: list[str], tokens: int, session: object) -> list[str]:
    memory, history, texts = ChatMemory(), [], []
    for message in turns:
        messages = [*history, {"role": "user", "content": message}]
        settings = ChatSettings(mode=mode, max_new_tokens=tokens, seed=0)  # type: ignore[arg-type]
        text = ""
        for update in service.reply(messages, settings, session if mode == "encrypted" else None, memory):
            text = update.text
        texts.append(text)
        history = [*messages, {"role": "assistant", "content": text}]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--conversations", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=12)
    args = parser.parse_args()
    loaded = build_tiny_model() if args.tiny else load_default()
    service = ChatService.create(loaded)
    worker = start_local_worker(service)
    same = total = 0
    try:
        session = service.open_encrypted()
        for turns in CONVERSATIONS[: args.conversations]:
            start = time.perf_counter()
            encrypted = converse(service, "encrypted", turns, args.tokens, session)
            simulated = converse(service, "simulate", turns, args.tokens, None)
            for i, (e, s) in enumerate(zip(encrypted, simulated, strict=True)):
                total += 1
                same += e == s
                first = next((j for j, (a, b) in enumerate(zip(e, s, strict=False)) if a != b), None)
                verdict = "identical" if e == s else f"differs from character {first}"
                print(f"{turns[i]!r}: {verdict}\n  encrypted: {e!r}\n  simulate : {s!r}")
            print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
        session.close()
    finally:
        worker.stop()
    print(
        f"agreement: {same}/{total} replies identical ({loaded.name}, {args.tokens} tokens each, two turns)"
    )


if __name__ == "__main__":
    main()
