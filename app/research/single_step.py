"""The single-step study (issue 4, the paper's Fig. 10 setting), as run by `app/research/evaluate.py`.

For a few prompts, the distribution after the prompt and some greedy tokens, and many uniforms r: the
max-error of I and I' against the exact one-hot and the cosine distance of the mixture to the drawn token's
embedding, in the four cells (TSP on or off, PP on or off).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.research.collapse import PROMPTS, tsp_order
from app.research.jobs import AMBIGUOUS
from app.research.report import (
    CELLS,
    markdown_table,
    plot_bars,
    summarise_single_step,
    write_settings,
)
from app.tables import write_csv
from core.progress import OnProgress, Progress
from model.evaluation import NO_DRAW, single_step_draws
from model.generate import DecodeSession, ExactSelector, build_prompt
from model.loading import LoadedModel
from model.sampler import SamplerConfig, probabilities
from model.simulate import identity_perm


def context_logits(loaded: LoadedModel, prompt: str, prefix_tokens: int) -> np.ndarray:
    """Logits after the templated prompt and `prefix_tokens` greedy tokens of the plain model."""
    session = DecodeSession(loaded)
    logits = session.prefill(build_prompt(loaded, [{"role": "user", "content": prompt}]))
    greedy = ExactSelector(loaded.input_embeddings(), temperature=0.0)
    for _ in range(prefix_tokens):
        logits = session.step(greedy.select(logits, 0.0).next_input())
    return logits.numpy().astype(np.float64)


def _advance(bar: tqdm[Any], start: int) -> OnProgress:
    """Show one call's draws on `bar`, which counted `start` draws before the call."""

    def show(progress: Progress) -> None:
        bar.update(start + progress.done - bar.n)

    return show


def run_single_step(args: argparse.Namespace, loaded: LoadedModel, folder: Path) -> None:
    config = SamplerConfig(
        amp_rounds=args.amp_rounds, softmax_precision=args.precision, temperature=args.temperature
    )
    vocab = loaded.input_embeddings().shape[0]
    tsp_perm, tsp_source = tsp_order(loaded)
    orders = {"off": identity_perm(vocab), "on": tsp_perm}
    table = loaded.input_embeddings().numpy().astype(np.float64)
    rng = np.random.default_rng(args.seed)
    prompts = args.prompt or list(PROMPTS[: args.prompts])
    per_draw: list[dict[str, Any]] = []
    pooled: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {}
    bar = tqdm(total=len(prompts) * 2 * args.draws, desc="single-step draws", unit="draw")
    for index, prompt in enumerate(prompts):
        p = probabilities(
            context_logits(loaded, prompt, args.prefix_tokens),
            config.temperature,
            config.softmax_precision,
            config.renormalize,
        )
        rs = rng.random(args.draws)
        for tsp, perm in orders.items():
            draws = single_step_draws(
                p[perm], table[perm], rs, config.amp_rounds, on_progress=_advance(bar, bar.n)
            )
            for pp in ("off", "on"):
                cell = pooled.setdefault((tsp, pp), {"error": [], "cosine": [], "raw": [], "nodraw": []})
                cell["error"].append(draws.error_pp if pp == "on" else draws.error_raw)
                cell["cosine"].append(draws.cosine_pp if pp == "on" else draws.cosine_raw)
                cell["raw"].append(draws.error_raw)
                cell["nodraw"].append(draws.targets == NO_DRAW)
            per_draw += [
                {
                    "prompt": index,
                    "tsp": tsp,
                    "r": f"{rs[i]:.17g}",
                    "target": int(draws.targets[i]),
                    "err_I": f"{draws.error_raw[i]:.4g}",
                    "err_Ipp": f"{draws.error_pp[i]:.4g}",
                    "cos_I": f"{draws.cosine_raw[i]:.4g}",
                    "cos_Ipp": f"{draws.cosine_pp[i]:.4g}",
                    "sum_I": f"{draws.sum_raw[i]:.6g}",
                }
                for i in range(args.draws)
            ]
    bar.close()
    summary = summarise_single_step(pooled, np.random.default_rng(args.seed + 1), AMBIGUOUS)
    write_csv(folder / "draws.csv", per_draw)
    write_csv(folder / "summary.csv", summary)
    note = (
        f"{len(prompts)} prompts x {args.draws:,} draws of r, softmax {config.softmax_precision}, "
        f"T = {config.temperature}, amp_rounds = {config.amp_rounds}, "
        f"context = prompt + {args.prefix_tokens} greedy tokens; TSP order: {tsp_source}. "
        "Means with 95% bootstrap intervals; shares with 95% Wilson intervals. "
        f"Ambiguous: ||I - e_k||_inf > {AMBIGUOUS:g}.\n\n"
    )
    (folder / "summary.md").write_text(
        f"# Single-step error, {loaded.name}\n\n" + note + markdown_table(summary)
    )
    panels = (
        ("mean max-error of I' [95% CI]", "mean max-error"),
        ("mean cosine distance [95% CI]", "mean cosine distance to target"),
    )
    labels = [f"TSP {tsp}\nPP {pp}" for tsp, pp in CELLS]
    plot_bars(summary, labels, panels, folder / "single_step.png", f"Single-step error, {loaded.name}")
    write_settings(
        folder,
        loaded,
        {
            "sampler": config.to_dict(),
            "prompts": prompts,
            "draws": args.draws,
            "prefix_tokens": args.prefix_tokens,
            "seed": args.seed,
            "tsp_order": tsp_source,
        },
    )
