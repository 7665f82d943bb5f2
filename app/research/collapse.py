"""The collapse study (issue 16) and its sweep over noise and amp rounds (app/research/evaluate.py).

Each `run_*` function reads parsed command-line arguments, runs the study on a loaded model and writes its
files into one folder (`app/research/report.py` makes the tables and plots).

The collapse study runs on the batched generation of `model.batch_decode`: up to 64 generations of one
condition at once, each with its own prompt and seed, producing what each would produce on its own. Indices
run in chunks of the batch size through every condition in turn (a stopped run still holds every condition
about equally often), and every generation is appended to generations.jsonl as soon as it is scored, so the
same command started again continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.research.jobs import CONDITIONS, GenerationJob, StudyPool
from app.research.noise import encrypted_prefix_error, first_step_distributions
from app.research.report import (
    markdown_table,
    paired_comparisons,
    plot_bars,
    plot_onsets,
    plot_sweep,
    summarise_collapse,
    write_settings,
)
from app.tables import write_csv
from core.errors import InputError
from model.batch_decode import BatchRequest
from model.evaluation import CollapseCriteria
from model.generate import build_prompt
from model.loading import LoadedModel
from model.sampler import SamplerConfig
from model.tsp.store import ordering_for_model

PROMPTS = (
    "Tell me a long story about a lighthouse keeper.",
    "Explain how photosynthesis works, step by step.",
    "Write a detailed travel guide for a weekend in Paris.",
    "What are the pros and cons of working from home? Discuss in depth.",
    "Describe the history of the printing press.",
)
COST_ORDER = ("neither", "tsp", "pp", "both", "plain")
RESUMABLE = ("sampler", "length", "prompts", "seed", "criteria", "tsp_order")


def tsp_order(loaded: LoadedModel) -> tuple[np.ndarray, str]:
    """The model's TSP order (shipped or computed by `model.tsp.ordering`) and a line naming it."""
    ordering = ordering_for_model(loaded)
    return np.asarray(ordering.perm, dtype=np.int64), f"model.tsp.ordering (method {ordering.config.method})"


def chunks(indices: list[int], batch: int) -> list[list[int]]:
    """`indices` in as few chunks of at most `batch` as possible, of nearly equal size (100 by 32: 4 x 25)."""
    count = -(-len(indices) // batch)
    return (
        [part.tolist() for part in np.array_split(np.array(indices, dtype=np.int64), count)] if count else []
    )


# --- collapse -----------------------------------------------------------------------------------


def _resume(folder: Path, settings: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    """The generations a stopped run of the same settings already holds, and the seconds it spent."""
    saved, texts = folder / "settings.json", folder / "generations.jsonl"
    if not texts.is_file():
        return [], 0.0
    before: dict[str, Any] = {}
    if saved.is_file():
        before = json.loads(saved.read_text())
        differ = [
            key for key in RESUMABLE if json.dumps(before.get(key)) != json.dumps(settings[key], default=str)
        ]
        if differ:
            raise InputError(
                f"{folder} holds a run with other settings ({', '.join(differ)} differ); "
                "give another --name, or delete the folder to start again"
            )
    lines = texts.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line may be cut short by a run killed mid-write
            if number < len(lines):
                raise InputError(f"{texts} line {number} is not JSON; delete that line to resume") from None
    if lines and len(rows) < len(lines):
        texts.write_text("".join(line + "\n" for line in lines[:-1]))  # drop the cut line before appending
    return rows, float(before.get("seconds", before.get("seconds_this_run", 0.0)))


def protocol_note(settings: dict[str, Any]) -> str:
    """The run's protocol in one paragraph, from its settings.json."""
    sampler, seed, n = settings["sampler"], settings["seed"], settings["n"]
    return (
        f"{n} generations per condition of exactly {settings['length']} tokens (EOS banned everywhere), "
        f"{len(settings['prompts'])} prompts in rotation, seeds {seed}..{seed + n - 1} shared across "
        f"conditions; softmax {sampler['softmax_precision']}, T = {sampler['temperature']}, "
        f"amp_rounds = {sampler['amp_rounds']}, noise on c - r sigma = "
        f"{sampler.get('prefix_noise_sigma', 0.0):g}; TSP order: {settings['tsp_order']}. Generated in "
        f"batches of at most {settings.get('batch', '?')} on {settings.get('workers', 1)} worker "
        f"process(es) in {settings.get('seconds', settings.get('seconds_this_run', 0)):.0f} s of wall time."
    )


def run_collapse(
    args: argparse.Namespace, loaded: LoadedModel, folder: Path, pool: StudyPool, tsp_source: str
) -> list[dict[str, Any]]:
    """Generate (or finish) `args.n` texts per condition and write the tables; returns the per-text rows."""
    base = SamplerConfig(
        amp_rounds=args.amp_rounds,
        softmax_precision=args.precision,
        temperature=args.temperature,
        prefix_noise_sigma=args.noise_sigma,
    )
    conditions = args.conditions.split(",")
    criteria = CollapseCriteria()
    prompts = args.prompt or list(PROMPTS)
    settings = {
        "sampler": base.to_dict(),
        "conditions": conditions,
        "n": args.n,
        "length": args.length,
        "prompts": prompts,
        "seed": args.seed,
        "criteria": asdict(criteria),
        "tsp_order": tsp_source,
        "batch": args.batch,
        "workers": args.workers,
        "eos": "banned",
    }
    resumed, seconds_before = _resume(folder, settings)
    rows = [r for r in resumed if r["condition"] in conditions and r["index"] < args.n]
    done = {(r["condition"], int(r["index"])) for r in rows}
    write_settings(folder, loaded, settings)  # before generating, so a stopped run can be resumed
    encoded = [tuple(build_prompt(loaded, [{"role": "user", "content": p}])) for p in prompts]
    longest = max(len(ids) for ids in encoded)
    if longest + args.length > loaded.context_window:
        raise InputError(
            f"--length {args.length} after a prompt of {longest} tokens exceeds {loaded.name}'s context "
            f"window of {loaded.context_window} tokens; lower --length or shorten the prompt"
        )
    jobs = []
    for condition in conditions:  # the same seed (so the same r stream) in every condition: paired
        todo = [i for i in range(args.n) if (condition, i) not in done]
        for part in chunks(todo, args.batch):
            requests = [BatchRequest(encoded[i % len(encoded)], args.seed + i, args.length) for i in part]
            numbers = tuple(i % len(encoded) for i in part)
            jobs.append(GenerationJob(condition, base, criteria, tuple(part), numbers, tuple(requests)))
    # Every condition about equally far along if stopped; within a round the dearest first, so the
    # workers finish together (no-PP mixtures are dense products, plain sampling is the cheapest).
    jobs.sort(key=lambda job: (job.indices[0], COST_ORDER.index(job.condition)))
    todo_count = sum(len(job.indices) for job in jobs)
    bar = tqdm(total=todo_count * args.length, desc=folder.name, unit="tok", smoothing=0.05, mininterval=1.0)
    if done:
        bar.write(
            f"resuming {folder}: {len(done)} of {len(conditions) * args.n} generations already done",
            file=sys.stderr,
        )
    started = time.perf_counter()
    with (folder / "generations.jsonl").open("a") as texts:
        for finished in pool.run(jobs, lambda event: bar.update(event.done - bar.n)):
            for row in finished:
                texts.write(json.dumps(row) + "\n")
                rows.append({k: v for k, v in row.items() if k not in ("text", "tokens")})
            texts.flush()
            settings["seconds"] = round(seconds_before + time.perf_counter() - started)
            write_settings(folder, loaded, settings)  # a stopped run keeps the time it spent
            bar.set_postfix_str(f"{len(rows)} of {len(conditions) * args.n} texts")
    bar.close()
    settings["seconds"] = round(seconds_before + time.perf_counter() - started)
    write_settings(folder, loaded, settings)
    write_collapse_tables(
        folder, rows, conditions, args.length, loaded.name, criteria, note=protocol_note(settings)
    )
    return rows


def write_collapse_tables(
    folder: Path,
    rows: list[dict[str, Any]],
    conditions: list[str],
    length: int,
    model_name: str,
    criteria: CollapseCriteria,
    note: str,
) -> None:
    summary = summarise_collapse(rows, conditions, np.random.default_rng(0))
    if not summary:
        return
    write_csv(
        folder / "generations.csv",
        [{k: v for k, v in r.items() if k not in ("text", "tokens")} for r in rows],
    )
    write_csv(folder / "summary.csv", summary)
    detector = (
        f"Collapsed = ends in a loop (period <= {criteria.max_period}, >= {criteria.min_loop_tokens} tokens, "
        f">= {criteria.min_loop_repeats} repeats) or some {criteria.nll_window}-token window has mean NLL "
        f"under the plain model > {criteria.nll_threshold} nats. Repeat run (the paper's criterion, "
        f"translated) = a unit of 1-{criteria.repeat_unit} tokens repeated {criteria.repeat_times} times "
        "in a row anywhere. Shares with 95% Wilson intervals; means with 95% bootstrap intervals."
    )
    title = f"Collapse study, {model_name}"
    paired = paired_comparisons(rows, conditions)
    text = f"# {title}\n\n{note} {detector}\n\n" + markdown_table(summary)
    if paired:
        write_csv(folder / "paired.csv", paired)
        text += (
            "\nText by text (each condition uses the same seeds, so the same uniforms r): the texts where "
            "only one of two conditions collapsed, and the exact McNemar p-value of that split.\n\n"
            + markdown_table(paired)
        )
    (folder / "summary.md").write_text(text)
    panels = (
        ("collapsed % [95% CI]", "collapsed (%)"),
        ("repeat run (paper) % [95% CI]", "repeat run (%)"),
        ("mean NLL nats [95% CI]", "mean NLL under the plain model"),
    )
    plot_bars(summary, [row["condition"] for row in summary], panels, folder / "collapse.png", title)
    plot_onsets(rows, conditions, length, folder / "collapse_by_position.png", title)


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
        rows += [json.loads(line) for line in (source / "generations.jsonl").read_text().splitlines() if line]
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
    write_collapse_tables(
        folder,
        rows,
        conditions,
        settings[0]["length"],
        settings[0]["model"]["name"],
        CollapseCriteria(**settings[0]["criteria"]),
        note=(
            f"{protocol_note(settings[0])} Tables rebuilt from {args.runs[0]}."
            if len(args.runs) == 1
            else f"Merged from {', '.join(args.runs)}; the first run's protocol: {protocol_note(settings[0])}"
        ),
    )
    (folder / "settings.json").write_text(json.dumps({"merged": args.runs, "runs": settings}, indent=2))


# --- sweep --------------------------------------------------------------------------------------


def run_sweep(
    args: argparse.Namespace, loaded: LoadedModel, folder: Path, pool: StudyPool, tsp_source: str
) -> None:
    """A collapse study per (noise on c - r, amp rounds), each in its own resumable sub-folder; one table."""
    table: list[dict[str, Any]] = []
    for amp in args.amp:
        for sigma in args.noise:
            sub = folder / f"noise-{sigma:g}-amp-{amp}"
            sub.mkdir(parents=True, exist_ok=True)
            point = argparse.Namespace(**{**vars(args), "noise_sigma": sigma, "amp_rounds": amp})
            rows = run_collapse(point, loaded, sub, pool, tsp_source)
            for row in summarise_collapse(rows, args.conditions.split(","), np.random.default_rng(0)):
                table.append(
                    {
                        "noise_sigma": f"{sigma:g}",
                        "amp_rounds": amp,
                        "condition": row["condition"],
                        "n": row["n"],
                        "collapsed %": row["collapsed % [95% CI]"],
                        "repeat run (paper) %": row["repeat run (paper) % [95% CI]"],
                        "display != exact % of steps": row["display != exact % of steps"],
                        "mean cosine distance": row["mean cosine distance"],
                    }
                )
    write_csv(folder / "sweep.csv", table)
    prompts = args.prompt or list(PROMPTS)
    encrypted = encrypted_prefix_error(first_step_distributions(loaded, prompts, tsp_order(loaded)[0]))
    note = (
        f"{args.n} generations of {args.length} tokens per condition and point; Gaussian noise of standard "
        "deviation sigma added to c - r (`prefix_noise_sigma`). The encrypted mode's error of c - r, "
        f"measured in this run on the first step after each prompt: {encrypted.describe()} (the dashed "
        "line).\n\n"
    )
    (folder / "sweep.md").write_text(
        f"# Noise and amp-rounds sweep, {loaded.name}\n\n" + note + markdown_table(table)
    )
    plot_sweep(table, encrypted.std, folder / "sweep.png", f"Where the method matters, {loaded.name}")
