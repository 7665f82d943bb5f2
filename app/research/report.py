"""Tables and plots of the evaluation commands (app/research/evaluate.py): Markdown, settings, PNG (the CSV
files are written with `app.tables.write_csv`).

The summaries turn per-item rows (one per draw or per generation) into one row per cell or condition, with
95% intervals (Wilson for shares, percentile bootstrap for means) written as "mean [low, high]".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.evaluation import bootstrap_mean_interval, mcnemar_exact
from model.loading import LoadedModel, describe
from model.stats import wilson_interval

CELLS = (("off", "off"), ("off", "on"), ("on", "off"), ("on", "on"))  # (TSP, PP)
COLOURS = {"plain": "#444", "neither": "#999", "pp": "#6a9", "tsp": "#69c", "both": "#36a"}


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


def share_text(k: int, n: int) -> str:
    """k of n as a percentage with its 95% Wilson interval."""
    low, high = wilson_interval(k, n)
    return f"{100 * k / max(n, 1):.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def parse_interval(text: str) -> tuple[float, float, float]:
    mean, rest = text.split(" [")
    low, high = rest.rstrip("]").split(", ")
    return float(mean), float(low), float(high)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- single step --------------------------------------------------------------------------------


def summarise_single_step(
    pooled: dict[tuple[str, str], dict[str, list[np.ndarray]]], rng: np.random.Generator, ambiguous: float
) -> list[dict[str, Any]]:
    rows = []
    base_cos = float(np.concatenate(pooled[("off", "off")]["cosine"]).mean())
    for tsp, pp in CELLS:
        cell = {k: np.concatenate(v) for k, v in pooled[(tsp, pp)].items()}
        n = len(cell["error"])
        cos_mean = float(cell["cosine"].mean())
        error_ci = bootstrap_mean_interval(cell["error"], rng)
        cos_ci = bootstrap_mean_interval(cell["cosine"], rng)
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
                "ambiguous draws % [95% CI]": share_text(int((cell["raw"] > ambiguous).sum()), n),
                "no token drawn (r >= sum p) %": f"{100 * cell['nodraw'].mean():.2f}",
            }
        )
    return rows


def plot_bars(
    summary: list[dict[str, Any]],
    labels: list[str],
    panels: Sequence[tuple[str, str]],
    path: Path,
    title: str,
) -> None:
    """One bar chart per (column, title) of `summary`, with the columns' intervals as error bars."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (key, panel_title) in zip(axes[0], panels, strict=True):
        values = [parse_interval(row[key]) for row in summary]
        means = [v[0] for v in values]
        err = [[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]]
        ax.bar(labels, means, yerr=err, capsize=4, color="#69c")
        ax.set_title(panel_title, fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- collapse -----------------------------------------------------------------------------------


def summarise_collapse(
    rows: list[dict[str, Any]], conditions: Sequence[str], rng: np.random.Generator
) -> list[dict[str, Any]]:
    summary = []
    for condition in conditions:
        mine = [row for row in rows if row["condition"] == condition]
        n = len(mine)
        if n == 0:
            continue
        out: dict[str, Any] = {"condition": condition, "n": n}
        for key, label in (
            ("collapsed", "collapsed"),
            ("loop", "loop"),
            ("implausible", "implausible"),
            ("paper_repeat", "repeat run (paper)"),
        ):
            out[f"{label} % [95% CI]"] = share_text(sum(int(row[key]) for row in mine), n)
        for key, label in (("mean_nll", "mean NLL nats"), ("distinct_2", "distinct-2")):
            values = [float(row[key]) for row in mine]
            out[f"{label} [95% CI]"] = interval_text(
                float(np.mean(values)), *bootstrap_mean_interval(values, rng)
            )
        steps = sum(int(row["steps"]) for row in mine)
        differs = sum(int(row["display_differs_steps"]) for row in mine)
        out["display != exact % of steps"] = f"{100 * differs / steps:.3f}" if steps else "0"
        cosines = [float(row["mean_cosine"]) for row in mine if row["mean_cosine"] != ""]
        out["mean cosine distance"] = f"{np.mean(cosines):.3g}" if cosines else "n/a"
        summary.append(out)
    return summary


def paired_comparisons(
    rows: list[dict[str, Any]], conditions: Sequence[str], references: Sequence[str] = ("neither", "plain")
) -> list[dict[str, Any]]:
    """Each condition against each reference, text by text (the same seed, so the same r stream).

    Paired outcomes need a paired test: for collapsed and for the paper's repeat run, the texts where only
    one of the two collapsed, and the exact McNemar p-value of that split.
    """
    outcome = {(row["condition"], int(row["index"])): row for row in rows}
    table, seen = [], set()
    for reference in (r for r in references if r in conditions):
        for condition in (c for c in conditions if c != reference):
            if frozenset((condition, reference)) in seen:
                continue
            seen.add(frozenset((condition, reference)))
            pairs = [i for (c, i) in outcome if c == condition and (reference, i) in outcome]
            out: dict[str, Any] = {"condition": condition, "against": reference, "pairs": len(pairs)}
            for key, label in (("collapsed", "collapsed"), ("paper_repeat", "repeat run (paper)")):
                mine = sum(
                    int(outcome[(condition, i)][key]) > int(outcome[(reference, i)][key]) for i in pairs
                )
                theirs = sum(
                    int(outcome[(condition, i)][key]) < int(outcome[(reference, i)][key]) for i in pairs
                )
                out[f"{label}: only this / only the other"] = f"{mine} / {theirs}"
                out[f"{label}: McNemar p"] = f"{mcnemar_exact(mine, theirs):.2g}"
            table.append(out)
    return table


def plot_onsets(
    rows: list[dict[str, Any]], conditions: Sequence[str], length: int, path: Path, title: str
) -> None:
    """Share of generations collapsed by position t, per condition, for both criteria."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    positions = np.arange(length + 1)
    for ax, key, panel in (
        (axes[0], "onset", "collapse detector (loop or implausible)"),
        (axes[1], "paper_onset", "repeat run of a 1-4 token unit (paper's criterion, translated)"),
    ):
        for condition in conditions:
            onsets = np.array([int(r[key]) for r in rows if r["condition"] == condition])
            if onsets.size == 0:
                continue
            hit = onsets[onsets >= 0]
            share = np.searchsorted(np.sort(hit), positions, side="right") / onsets.size
            ax.plot(
                positions, 100 * share, label=f"{condition} (n={onsets.size})", color=COLOURS.get(condition)
            )
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("position in the generation (tokens)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("collapsed by this position (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- sweep --------------------------------------------------------------------------------------


def plot_sweep(table: list[dict[str, Any]], encrypted_sigma: float, path: Path, title: str) -> None:
    """Collapse rate and displayed-differs rate against the added noise, one line per cell and amp rounds.

    Noise 0 sits at the left edge, a decade below the smallest non-zero level; the encrypted mode's measured
    error is a dashed line.
    """
    plt = _pyplot()
    levels = sorted({float(r["noise_sigma"]) for r in table if float(r["noise_sigma"]) > 0})
    zero_at = min(levels + [encrypted_sigma]) / 10 if levels else 1e-10
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, key, panel in (
        (axes[0], "collapsed %", "collapsed generations (%)"),
        (axes[1], "display != exact % of steps", "displayed token differs from exact draw (% of steps)"),
        (axes[2], "mean cosine distance", "mean cosine distance of the mixture to the draw"),
    ):
        for condition, amp in sorted({(r["condition"], r["amp_rounds"]) for r in table}):
            points = sorted(
                (float(r["noise_sigma"]) or zero_at, float(str(r[key]).split(" ")[0]))
                for r in table
                if r["condition"] == condition and r["amp_rounds"] == amp
            )
            ax.plot(
                *zip(*points, strict=True),
                marker="o",
                label=f"{condition}, amp {amp}",
                color=COLOURS.get(condition),
                linestyle="-" if int(amp) >= 3 else ":",
            )
        ax.axvline(encrypted_sigma, color="#c33", linestyle="--", linewidth=1)
        ax.text(encrypted_sigma, ax.get_ylim()[1], " encrypted", color="#c33", fontsize=8, va="top")
        ax.set_xscale("log")
        ax.set_xticks([zero_at, *levels], ["0", *[f"{v:g}" for v in levels]])
        ax.set_xlabel("sigma of Gaussian noise added to c - r")
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
