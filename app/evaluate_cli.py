"""Evaluation commands for the sampler (issue 4): single-step error and the collapse study.

    python -m app.evaluate_cli single-step                     # 4 prompts x 10,000 draws, 4 cells
    python -m app.evaluate_cli single-step --precision fp32 --amp-rounds 2 --name ss-fp32-a2
    python -m app.evaluate_cli collapse                        # 5 conditions x 20 generations x 256 tokens
    python -m app.evaluate_cli collapse --n 8 --length 512 --amp-rounds 2 --name collapse-a2-512

Each command writes into results/<name>/: per-item CSV, summary CSV, summary Markdown, PNG plots and
settings.json (the sampler settings, the model, the ordering and the command line). A progress bar
shows on stderr. Errors print one line naming the problem and the fix, and exit with status 2.

The TSP order comes from `model.ordering.ordering_for_model` when that module is present; otherwise a
greedy nearest-neighbour path (cosine distance on L2-normalised input embeddings, open, from token 0, as in
the paper) is computed here once and cached in results/_cache/.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.errors import ChatError, InputError
from model.evaluation import (
    NO_DRAW,
    CollapseCriteria,
    bootstrap_mean_interval,
    generate_fixed_length,
    score_generation,
    single_step_draws,
    token_nll,
    wilson_interval,
)
from model.generate import DecodeSession, ExactSelector, Selector, build_prompt
from model.loading import LoadedModel, build_tiny_model, describe, load_default, load_local
from model.sampler import PRECISIONS, SamplerConfig, probabilities
from model.simulate import SimulateSelector, identity_perm

PROMPTS = (
    "Tell me a long story about a lighthouse keeper.",
    "Explain how photosynthesis works, step by step.",
    "Write a detailed travel guide for a weekend in Paris.",
    "What are the pros and cons of working from home? Discuss in depth.",
    "Describe the history of the printing press.",
)
CELLS = (("off", "off"), ("off", "on"), ("on", "off"), ("on", "on"))  # (TSP, PP)
CONDITIONS = ("plain", "neither", "pp", "tsp", "both")
AMBIGUOUS = 1e-3  # a draw is ambiguous when some weight is off by more than this (DESIGN.md's table)
RESULTS = Path("results")


# --- shared -------------------------------------------------------------------------------------


def load_model(args: argparse.Namespace) -> LoadedModel:
    if args.tiny:
        return build_tiny_model()
    if args.model_path is not None:
        return load_local(args.model_path)
    return load_default(on_progress=lambda line: print(line, file=sys.stderr))


def tsp_order(loaded: LoadedModel) -> tuple[np.ndarray, str]:
    """The TSP order for the model and where it came from."""
    try:
        from model.ordering import ordering_for_model  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return greedy_path_cached(loaded), "greedy nearest-neighbour path computed by app/evaluate_cli.py"
    ordering = ordering_for_model(loaded)
    source = f"model.ordering.ordering_for_model (method {ordering.config.method})"
    return np.asarray(ordering.perm, dtype=np.int64), source


def greedy_path_cached(loaded: LoadedModel) -> np.ndarray:
    cache = RESULTS / "_cache" / f"greedy-path-{loaded.name}.npy"
    if cache.is_file():
        return np.asarray(np.load(cache), dtype=np.int64)
    path = greedy_path(loaded.input_embeddings().numpy())
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, path)
    return path


def greedy_path(embeddings: np.ndarray) -> np.ndarray:
    """Open greedy nearest-neighbour path from token 0, cosine distance (stand-in for model.ordering)."""
    x = embeddings.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    vocab = x.shape[0]
    active = np.arange(1, vocab)  # ids not yet on the path
    rows = x[active]
    alive = np.ones(len(active), dtype=bool)
    path = [0]
    current = 0
    for step in tqdm(range(1, vocab), desc="greedy TSP path", unit="tok", mininterval=2.0):
        sims = rows @ x[current]
        sims[~alive] = -np.inf
        j = int(np.argmax(sims))
        alive[j] = False
        current = int(active[j])
        path.append(current)
        if step % 4096 == 0:  # drop visited rows so later steps scan less
            active, rows, alive = active[alive], rows[alive], alive[alive]
    return np.asarray(path, dtype=np.int64)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_settings(folder: Path, loaded: LoadedModel, extra: dict[str, Any]) -> None:
    settings = {"model": describe(loaded), "command": " ".join(sys.argv), **extra}
    (folder / "settings.json").write_text(json.dumps(settings, indent=2, default=str))


def interval_text(mean: float, low: float, high: float, digits: int = 3) -> str:
    return f"{mean:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"


# --- single step --------------------------------------------------------------------------------


def context_logits(loaded: LoadedModel, prompt: str, prefix_tokens: int) -> np.ndarray:
    """Logits after the templated prompt and `prefix_tokens` greedy tokens of the plain model."""
    session = DecodeSession(loaded)
    logits = session.prefill(build_prompt(loaded, [{"role": "user", "content": prompt}]))
    embeddings = loaded.input_embeddings()
    greedy = ExactSelector(embeddings, temperature=0.0)
    for _ in range(prefix_tokens):
        logits = session.step(greedy.select(logits, 0.0).next_input())
    return logits.numpy().astype(np.float64)


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
        p = probabilities(context_logits(loaded, prompt, args.prefix_tokens), config.temperature,
                          config.softmax_precision, config.renormalize)  # fmt: skip
        rs = rng.random(args.draws)
        for tsp, perm in orders.items():
            draws = single_step_draws(p[perm], table[perm], rs, config.amp_rounds, on_progress=bar.update)
            for pp in ("off", "on"):
                error = draws.error_pp if pp == "on" else draws.error_raw
                cosine = draws.cosine_pp if pp == "on" else draws.cosine_raw
                cell = pooled.setdefault((tsp, pp), {"error": [], "cosine": [], "raw": [], "nodraw": []})
                cell["error"].append(error)
                cell["cosine"].append(cosine)
                cell["raw"].append(draws.error_raw)
                cell["nodraw"].append(draws.targets == NO_DRAW)
            for i in range(args.draws):
                per_draw.append(
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
                    }  # fmt: skip
                )
    bar.close()
    summary = summarise_single_step(pooled, np.random.default_rng(args.seed + 1))
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
    plot_single_step(summary, folder / "single_step.png", loaded.name)
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
        },  # fmt: skip
    )


def summarise_single_step(
    pooled: dict[tuple[str, str], dict[str, list[np.ndarray]]], rng: np.random.Generator
) -> list[dict[str, Any]]:
    rows = []
    base_cos = float(np.concatenate(pooled[("off", "off")]["cosine"]).mean())
    for tsp, pp in CELLS:
        cell = {k: np.concatenate(v) for k, v in pooled[(tsp, pp)].items()}
        n = len(cell["error"])
        error_ci = bootstrap_mean_interval(cell["error"], rng)
        cos_mean = float(cell["cosine"].mean())
        cos_ci = bootstrap_mean_interval(cell["cosine"], rng)
        ambiguous = int((cell["raw"] > AMBIGUOUS).sum())
        amb_ci = wilson_interval(ambiguous, n)
        rows.append(
            {
                "TSP": tsp,
                "PP": pp,
                "draws": n,
                "mean max-error of I' [95% CI]": interval_text(float(cell["error"].mean()), *error_ci),
                "mean cosine distance [95% CI]": interval_text(cos_mean, *cos_ci),
                "cos. dist. vs neither": f"{100 * (cos_mean / base_cos - 1):+.0f}%"
                if base_cos > 0
                else "n/a",
                "ambiguous draws % [95% CI]": interval_text(
                    100 * ambiguous / n, 100 * amb_ci[0], 100 * amb_ci[1]
                ),
                "no token drawn (r >= sum p) %": f"{100 * cell['nodraw'].mean():.2f}",
            }
        )
    return rows


def plot_single_step(summary: list[dict[str, Any]], path: Path, model_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"TSP {row['TSP']}\nPP {row['PP']}" for row in summary]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in (
        (axes[0], "mean max-error of I' [95% CI]", "mean max-error"),
        (axes[1], "mean cosine distance [95% CI]", "mean cosine distance to target"),
    ):
        values = [_parse_interval(row[key]) for row in summary]
        means = [v[0] for v in values]
        err = [[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]]
        ax.bar(labels, means, yerr=err, capsize=4, color=["#999", "#6a9", "#69c", "#36a"])
        ax.set_title(title)
    fig.suptitle(f"Single-step error, {model_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse_interval(text: str) -> tuple[float, float, float]:
    mean, rest = text.split(" [")
    low, high = rest.rstrip("]").split(", ")
    return float(mean), float(low), float(high)


# --- collapse -----------------------------------------------------------------------------------


def condition_selector(
    condition: str, loaded: LoadedModel, tsp_perm: np.ndarray, base: SamplerConfig
) -> tuple[Selector, SamplerConfig | None]:
    embeddings = loaded.input_embeddings()
    if condition == "plain":
        return ExactSelector(embeddings, base.temperature), None
    tsp = condition in ("tsp", "both")
    pp = condition in ("pp", "both")
    config = SamplerConfig(**{**base.to_dict(), "tsp": tsp, "pp": pp})
    perm = tsp_perm if tsp else identity_perm(embeddings.shape[0])
    return SimulateSelector(embeddings, perm, config, record=True), config


def run_collapse(args: argparse.Namespace, loaded: LoadedModel, folder: Path) -> None:
    base = SamplerConfig(amp_rounds=args.amp_rounds, softmax_precision=args.precision,
                         temperature=args.temperature, noise_sigma=args.noise_sigma)  # fmt: skip
    conditions = args.conditions.split(",")
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise InputError(f"--conditions: unknown {sorted(unknown)}; choose from {','.join(CONDITIONS)}")
    tsp_perm, tsp_source = tsp_order(loaded) if {"tsp", "both"} & set(conditions) else (None, "unused")
    criteria = CollapseCriteria()
    prompts = args.prompt or list(PROMPTS)
    run_settings = {
        "sampler": base.to_dict(),
        "conditions": conditions,
        "n": args.n,
        "length": args.length,
        "prompts": prompts,
        "seed": args.seed,
        "criteria": asdict(criteria),
        "tsp_order": tsp_source,
    }
    write_settings(folder, loaded, run_settings)  # first, so a stopped run can still be summarised
    encoded = [build_prompt(loaded, [{"role": "user", "content": p}], reserve=args.length) for p in prompts]
    rows: list[dict[str, Any]] = []
    texts = (folder / "generations.jsonl").open("w")
    bar = tqdm(total=len(conditions) * args.n * args.length, desc="collapse study", unit="tok")
    started = time.perf_counter()
    for index in range(args.n):  # index-major: a run stopped early still has every condition ~equally often
        for condition in conditions:
            selector, config = condition_selector(condition, loaded, tsp_perm, base)  # type: ignore[arg-type]
            prompt = encoded[index % len(encoded)]
            seed = args.seed + index  # the same r stream for every condition (paired design)
            tokens = generate_fixed_length(
                loaded, prompt, selector, args.length, seed, on_progress=bar.update
            )
            nll = token_nll(loaded, prompt, tokens)
            score = score_generation(tokens, nll, criteria)
            trace = getattr(selector, "trace", [])
            rows.append(
                {
                    "condition": condition,
                    "index": index,
                    "prompt": index % len(encoded),
                    "seed": seed,
                    "collapsed": int(score.collapsed(criteria)),
                    "loop": int(score.repetition(criteria)),
                    "implausible": int(score.implausible(criteria)),
                    "loop_tokens": score.loop_tokens,
                    "loop_period": score.loop_period,
                    "max_window_nll": f"{score.max_window_nll:.3f}",
                    "mean_nll": f"{score.mean_nll:.3f}",
                    "distinct_2": f"{score.distinct_2:.3f}",
                    "ambiguous_steps": sum(t.max_error > AMBIGUOUS for t in trace),
                    "nothing_drawn_steps": sum(t.exact_position is None for t in trace),
                    "display_differs_steps": sum(t.position != t.exact_position for t in trace),
                }  # fmt: skip
            )
            text = loaded.tokenizer.decode(tokens)
            texts.write(json.dumps({**rows[-1], "text": text, "tokens": tokens}) + "\n")
            texts.flush()
    bar.close()
    texts.close()
    summary = summarise_collapse(rows, conditions, np.random.default_rng(args.seed))
    write_csv(folder / "generations.csv", rows)
    write_csv(folder / "summary.csv", summary)
    note = (
        f"{args.n} generations per condition of exactly {args.length} tokens "
        "(EOS banned in every condition), "
        f"{len(prompts)} prompts in rotation, seeds {args.seed}..{args.seed + args.n - 1} shared across "
        f"conditions; softmax {base.softmax_precision}, T = {base.temperature}, "
        f"amp_rounds = {base.amp_rounds}, "
        f"noise sigma = {base.noise_sigma:g}; TSP order: {tsp_source}. Collapsed = ends in a loop (period "
        f"<= {criteria.max_period}, >= {criteria.min_loop_tokens} tokens, >= {criteria.min_loop_repeats} "
        f"repeats) or some {criteria.nll_window}-token window has mean NLL under the plain model > "
        f"{criteria.nll_threshold} nats. Rates with 95% Wilson intervals; "
        "means with 95% bootstrap intervals. "
        f"Wall time {time.perf_counter() - started:.0f} s.\n\n"
    )
    (folder / "summary.md").write_text(
        f"# Collapse study, {loaded.name}\n\n" + note + markdown_table(summary)
    )
    plot_collapse(summary, folder / "collapse.png", loaded.name)
    write_settings(folder, loaded, {**run_settings, "seconds": round(time.perf_counter() - started)})


def summarise_collapse(
    rows: list[dict[str, Any]], conditions: list[str], rng: np.random.Generator
) -> list[dict[str, Any]]:
    summary = []
    for condition in conditions:
        mine = [row for row in rows if row["condition"] == condition]
        n = len(mine)
        out: dict[str, Any] = {"condition": condition, "n": n}
        for key, label in (("collapsed", "collapsed"), ("loop", "loop"), ("implausible", "implausible")):
            k = sum(row[key] for row in mine)
            low, high = wilson_interval(k, n)
            out[f"{label} % [95% CI]"] = f"{100 * k / n:.0f} [{100 * low:.0f}, {100 * high:.0f}]"
        for key, label in (("mean_nll", "mean NLL nats"), ("distinct_2", "distinct-2")):
            values = [float(row[key]) for row in mine]
            out[f"{label} [95% CI]"] = interval_text(
                float(np.mean(values)), *bootstrap_mean_interval(values, rng)
            )
        steps = sum(int(row["ambiguous_steps"]) for row in mine)
        out["ambiguous steps / gen"] = f"{steps / n:.1f}"
        out["display != exact / gen"] = f"{sum(int(r['display_differs_steps']) for r in mine) / n:.1f}"
        summary.append(out)
    return summary


def plot_collapse(summary: list[dict[str, Any]], path: Path, model_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    labels = [row["condition"] for row in summary]
    for ax, key, title in (
        (axes[0], "collapsed % [95% CI]", "collapsed generations (%)"),
        (axes[1], "mean NLL nats [95% CI]", "mean NLL under the plain model (nats/token)"),
    ):
        values = [_parse_interval(row[key]) for row in summary]
        means = [v[0] for v in values]
        err = [[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]]
        ax.bar(labels, means, yerr=err, capsize=4, color="#69c")
        ax.set_title(title)
    fig.suptitle(f"Collapse study, {model_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_summarise(args: argparse.Namespace, folder: Path) -> None:
    """Rebuild the collapse tables from the generations.jsonl of one or more runs (also stopped ones)."""
    rows: list[dict[str, Any]] = []
    settings: list[dict[str, Any]] = []
    for run in args.runs:
        source = Path(run)
        if not (source / "generations.jsonl").is_file() or not (source / "settings.json").is_file():
            raise InputError(
                f"{source} holds no collapse run (generations.jsonl + settings.json); check the path"
            )
        rows += [json.loads(line) for line in (source / "generations.jsonl").open()]
        settings.append(json.loads((source / "settings.json").read_text()))
    comparable = {
        json.dumps({k: s[k] for k in ("length", "prompts", "seed")}, sort_keys=True) for s in settings
    }
    samplers = {json.dumps({**s["sampler"], "tsp": None, "pp": None}, sort_keys=True) for s in settings}
    if len(comparable) > 1 or len(samplers) > 1:
        raise InputError(
            "the runs differ in length, prompts, seed or sampler settings; summarise them separately"
        )
    unique: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:  # a generation present in two runs (same condition and seed) counts once
        unique.setdefault((row["condition"], int(row["index"])), row)
    rows = list(unique.values())
    conditions = [c for c in CONDITIONS if any(row["condition"] == c for row in rows)]
    summary = summarise_collapse(rows, conditions, np.random.default_rng(0))
    write_csv(
        folder / "generations.csv",
        [{k: v for k, v in row.items() if k not in ("text", "tokens")} for row in rows],
    )
    write_csv(folder / "summary.csv", summary)
    note = f"Merged from {', '.join(args.runs)} (settings: {args.runs[0]}/settings.json).\n\n"
    (folder / "summary.md").write_text("# Collapse study (merged)\n\n" + note + markdown_table(summary))
    plot_collapse(summary, folder / "collapse.png", settings[0]["model"]["name"])
    (folder / "settings.json").write_text(json.dumps({"merged": args.runs, "runs": settings}, indent=2))


# --- command line -------------------------------------------------------------------------------


def positive(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.evaluate_cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("single-step", "approximation error of one sampler step"),
        ("collapse", "collapse study"),
    ):
        sub = commands.add_parser(name, help=help_text)
        source = sub.add_mutually_exclusive_group()
        source.add_argument("--model-path", type=Path, help="a local transformers causal-LM directory")
        source.add_argument("--tiny", action="store_true", help="the tiny random test model")
        sub.add_argument("--name", default=name, help="results/<name>/ receives the outputs")
        sub.add_argument(
            "--precision", choices=PRECISIONS, default="fp16", help="softmax precision (paper: fp16)"
        )
        sub.add_argument(
            "--amp-rounds", type=positive("--amp-rounds"), default=3, help="rounds of g1^5 (paper: 3)"
        )
        sub.add_argument("--temperature", type=float, default=1.0)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--prompt", action="append", help="a prompt (repeatable); default: built-in prompts")
        sub.add_argument(
            "--threads",
            type=positive("--threads"),
            default=1,
            help="torch threads (1 suits a shared machine)",
        )
        if name == "single-step":
            sub.add_argument(
                "--draws", type=positive("--draws"), default=10_000, help="draws of r per prompt"
            )
            sub.add_argument(
                "--prompts", type=positive("--prompts"), default=4, help="built-in prompts to use"
            )
            sub.add_argument(
                "--prefix-tokens", type=int, default=16, help="greedy tokens before the measured step"
            )
        else:
            sub.add_argument("--n", type=positive("--n"), default=20, help="generations per condition")
            sub.add_argument("--length", type=positive("--length"), default=256, help="tokens per generation")
            sub.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated subset")
            sub.add_argument("--noise-sigma", type=float, default=0.0, help="CKKS noise model (0 = off)")
    summarise = commands.add_parser("summarise", help="rebuild collapse tables from finished or stopped runs")
    summarise.add_argument(
        "runs", nargs="+", help="results/<name> folders of collapse runs with equal settings"
    )
    summarise.add_argument("--name", default="collapse-merged", help="results/<name>/ receives the tables")
    summarise.add_argument("--threads", type=positive("--threads"), default=1, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)  # OpenMP spin-waiting is costly when other jobs share the cores
    try:
        folder = RESULTS / args.name
        folder.mkdir(parents=True, exist_ok=True)
        if args.command == "summarise":
            run_summarise(args, folder)
            print(f"wrote {folder}/", file=sys.stderr)
            return 0
        loaded = load_model(args)
        if args.command == "single-step":
            run_single_step(args, loaded, folder)
        else:
            run_collapse(args, loaded, folder)
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {folder}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
