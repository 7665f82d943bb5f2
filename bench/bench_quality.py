"""Benchmark: how often chat replies loop, at the old chat defaults and the new ones, in the same run.

    python bench/bench_quality.py                                   # old vs new defaults (~15 min)
    python bench/bench_quality.py --penalties 1.0,1.1,1.2,1.3 --modes plain   # the sweep behind them

Twenty everyday one-line requests (recipes, lists, explanations, letters), one 128-token reply each
through the chat service (`app.chat.service.ChatService.reply`, the page's path) in plain and simulate mode.
A reply loops when the evaluation module's loop rule finds a periodic suffix (`model.evaluation`:
period <= 32, at least 48 tokens and 3 repeats). Besides the share of looping replies (with a 95%
Wilson interval) it prints what a guard could cost: the share that end at EOS, the mean length, the
distinct-bigram share, and the mean negative log-likelihood of the reply under the unguarded plain
model (nats/token; higher = text the model itself finds less likely).

The baseline is the old chat default (temperature 0.3, no guard), measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.chat.service import CHAT_REPETITION_PENALTY, CHAT_TEMPERATURE, ChatService, ChatSettings  # noqa: E402
from model.evaluation import CollapseCriteria, score_generation, token_nll  # noqa: E402
from model.generate import build_prompt  # noqa: E402
from model.loading import load_default  # noqa: E402
from model.repetition import NO_PENALTY  # noqa: E402
from model.stats import wilson_interval  # noqa: E402

REQUESTS = (
    "Give me a simple recipe for tomato soup.",
    "How do I make pancakes from scratch?",
    "List five fruits that are high in vitamin C.",
    "Write a short letter to my landlord asking him to fix the heating.",
    "Explain why the sky is blue.",
    "What are some tips for sleeping better?",
    "Write a thank-you note to a friend who helped me move house.",
    "List the planets of the solar system in order.",
    "How do I boil an egg?",
    "Explain how a rainbow forms.",
    "Give me a packing list for a weekend camping trip.",
    "Write an email to my boss asking for next Friday off.",
    "What should I plant in a small vegetable garden?",
    "Explain photosynthesis in simple words.",
    "Suggest a weekly workout plan for a beginner.",
    "How can I save money on groceries?",
    "Write a birthday message for my grandmother.",
    "Give me a recipe for a quick vegetable stir-fry.",
    "List ten common English idioms and what they mean.",
    "Explain how to fix a flat bicycle tyre.",
)


def numbers(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"expected comma-separated numbers, got {text!r}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="plain,simulate", help="comma-separated: plain, simulate")
    ap.add_argument(
        "--penalties",
        default=f"{NO_PENALTY},{CHAT_REPETITION_PENALTY}",
        help="repetition penalties to compare (default: off, and the chat default)",
    )
    ap.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE)
    ap.add_argument("--tokens", type=int, default=128, help="reply length cap (default 128)")
    ap.add_argument("--requests", type=int, default=len(REQUESTS), help="use the first N requests")
    ap.add_argument("--seed", type=int, default=0, help="the chat's default seed")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"plain", "simulate"}:
        raise SystemExit(f"--modes takes plain and/or simulate, got {args.modes!r}")
    if not 1 <= args.requests <= len(REQUESTS):
        raise SystemExit(f"--requests must be between 1 and {len(REQUESTS)}")
    penalties = numbers(args.penalties)
    loaded = load_default()
    service = ChatService.create(loaded)
    criteria = CollapseCriteria()
    tokenizer = loaded.tokenizer
    print(
        f"{loaded.name}: {args.requests} requests, {args.tokens}-token cap, temperature {args.temperature}, "
        f"seed {args.seed}; loop rule: period <= {criteria.max_period}, >= {criteria.min_loop_tokens} "
        f"tokens, >= {criteria.min_loop_repeats} repeats"
    )
    print(
        "\n| mode | penalty | looping replies | 95% interval | end at EOS | mean tokens | distinct-2 "
        "| NLL (nats/token) | s/reply |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    examples: dict[tuple[str, float], str] = {}
    for mode in modes:
        for penalty in penalties:
            settings = ChatSettings(
                mode=mode,  # type: ignore[arg-type]
                temperature=args.temperature,
                max_new_tokens=args.tokens,
                seed=args.seed,
                repetition_penalty=penalty,
            )
            loops = ends = 0
            lengths, distinct, nlls, seconds = [], [], [], []
            for request in REQUESTS[: args.requests]:
                messages = [{"role": "user", "content": request}]
                start = time.perf_counter()
                *_, last = service.reply(messages, settings)
                seconds.append(time.perf_counter() - start)
                ids = [int(i) for i in tokenizer(last.text, add_special_tokens=False)["input_ids"]]
                ended = last.finish == "eos"
                score = score_generation(
                    ids, token_nll(loaded, build_prompt(loaded, messages), ids), criteria
                )
                looped = score.repetition(criteria)
                loops += looped
                ends += ended
                lengths.append(last.tokens)
                distinct.append(score.distinct_2)
                nlls.append(score.mean_nll)
                if looped and (mode, penalty) not in examples:
                    examples[(mode, penalty)] = f"{request!r} -> {last.text[-160:]!r}"
            n = args.requests
            low, high = wilson_interval(loops, n)
            print(
                f"| {mode} | {penalty:g}{' (old default)' if penalty == NO_PENALTY else ''} | "
                f"{loops}/{n} ({loops / n:.0%}) | {low:.0%}-{high:.0%} | {ends / n:.0%} | "
                f"{statistics.mean(lengths):.0f} | {statistics.mean(distinct):.2f} | "
                f"{statistics.mean(nlls):.2f} | {statistics.median(seconds):.1f} |",
                flush=True,
            )
    if examples:
        print("\nA looping reply per setting (its last 160 characters):")
        for (mode, penalty), text in examples.items():
            print(f"- {mode}, penalty {penalty:g}: {text}")


if __name__ == "__main__":
    main()
