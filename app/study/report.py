"""The numbers of a study report and the report itself: means, preference rates, Markdown and a plot.

- Per-condition means of the Likert ratings with t-based 95% confidence intervals (`app.study.stats`).
- Pairwise preference rates with Wilson score intervals (Wilson 1927, `model.stats`): rate = wins /
  (wins + losses); ties are reported, not counted. In the pairwise design the rater chose directly; in the
  single design a preference is derived per rater and prompt/sample from the mean of that rater's Likert
  ratings.

Intervals treat ratings as independent; one rater contributes several ratings, so they are optimistic
when raters differ systematically (a mixed model is the next step for a real study).

Everything reads the rows of `app.study.export`, so the numbers from the CSV equal those from memory.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from app.study.export import Row
from app.study.file import Study
from app.study.records import TextRecord
from app.study.stats import MeanCI, mean_ci
from model.stats import wilson_interval


@dataclass(frozen=True)
class Preference:
    """How often `first` was preferred over `second`."""

    first: str
    second: str
    first_wins: int
    second_wins: int
    ties: int
    rate: float  # first_wins / (first_wins + second_wins); nan if no decided comparison
    low: float  # Wilson 95% interval of `rate`; (0, 1) if no decided comparison
    high: float
    source: str  # "chosen" (pairwise design) or "derived from ratings" (single design)


def condition_means(rows: Iterable[Row]) -> dict[tuple[str, str], MeanCI]:
    """(condition, question) -> mean Likert rating with its 95% CI, over every rating of that condition."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row["question_kind"] == "likert":
            values[(str(row["condition_id"]), str(row["question"]))].append(float(row["value"]))
    return {key: mean_ci(vals) for key, vals in sorted(values.items())}


def preferences(rows: Sequence[Row], condition_order: Sequence[str]) -> list[Preference]:
    """Pairwise preference rates: chosen ones if the rows have any, else derived from Likert ratings."""
    rank = {c: i for i, c in enumerate(condition_order)}
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # first wins, second wins, ties

    def record(a: str, b: str, score_a: float, score_b: float) -> None:
        first, second = sorted((a, b), key=lambda c: (rank.get(c, len(rank)), c))
        s_first, s_second = (score_a, score_b) if first == a else (score_b, score_a)
        tally = counts[(first, second)]
        tally[0 if s_first > s_second else 1 if s_second > s_first else 2] += 1

    chosen = [r for r in rows if r["question"] == "preference" and r["side"] == "A"]
    source = "chosen"
    if chosen:
        for r in chosen:
            record(
                str(r["condition_id"]), str(r["other_condition_id"]), float(r["value"]), 1 - float(r["value"])
            )
    else:
        source = "derived from ratings"
        scores: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in rows:
            if r["question_kind"] == "likert":
                key = (str(r["participant_id"]), str(r["prompt_id"]), str(r["sample"]))
                scores[key][str(r["condition_id"])].append(float(r["value"]))
        for by_condition in scores.values():
            means = {c: math.fsum(v) / len(v) for c, v in by_condition.items()}
            for a, b in combinations(sorted(means), 2):
                record(a, b, means[a], means[b])
    result = []
    for (first, second), (wins, losses, ties) in sorted(
        counts.items(), key=lambda kv: (rank.get(kv[0][0], 99), rank.get(kv[0][1], 99))
    ):
        decided = wins + losses
        low, high = wilson_interval(wins, decided)
        rate = wins / decided if decided else math.nan
        result.append(Preference(first, second, wins, losses, ties, rate, low, high, source))
    return result


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def render_markdown(
    study: Study,
    rows: Sequence[Row],
    means: dict[tuple[str, str], MeanCI],
    prefs: Sequence[Preference],
    plot_name: str | None = None,
    notes: Sequence[str] = (),
    texts: Sequence[TextRecord] = (),
) -> str:
    """The report as Markdown: design, provenance, means with CIs, preference rates, plot link."""
    participants = sorted({str(r["participant_id"]) for r in rows})
    answers = {str(r["answer_id"]) for r in rows}
    models = sorted({(str(r["model_name"]), str(r["model_sha256"])[:12]) for r in rows if r["model_name"]})
    orders = sorted({str(r["order_id"])[:12] for r in rows if r["order_id"]})
    lines = [f"# Study report: {study.title} (`{study.id}`)", ""]
    lines += [f"> {note}" for note in notes] + ([""] if notes else [])
    if study.description:
        lines += [study.description, ""]
    lines += [
        f"- design: **{study.design.kind}**, {len(study.prompts)} prompts x "
        f"{study.samples_per_prompt} sample(s), study seed {study.seed}",
        f"- participants: {len(participants)}, answers: {len(answers)}, rating rows: {len(rows)}",
        f"- model(s): {', '.join(f'{n} (weights {h})' for n, h in models) or '–'}; "
        f"vocabulary order(s): {', '.join(orders) or '–'}",
        "",
        "| condition | mode | temperature | TSP | PP | amp rounds | max tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in study.conditions:
        lines.append(
            f"| {c.id} | {c.mode} | {c.temperature} | {c.tsp} | {c.pp} | {c.amp_rounds} | "
            f"{c.max_new_tokens} |"
        )
    lines += ["", "## Ratings: mean with 95% CI (t)", "", "| question | condition | n | mean | sd | 95% CI |"]
    lines.append("|---|---|---|---|---|---|")
    for question in (q for q in study.questions if q.kind == "likert"):
        for c in study.conditions:
            m = means.get((c.id, question.id))
            if m is not None:
                lines.append(
                    f"| {question.id} (1-{question.points}) | {c.id} | {m.n} | {_fmt(m.mean)} | "
                    f"{_fmt(m.sd)} | [{_fmt(m.low)}, {_fmt(m.high)}] |"
                )
    lines += ["", "## Pairwise preferences (Wilson 95% CI, ties excluded from the rate)", ""]
    lines += ["| first | second | first wins | second wins | ties | P(first preferred) | 95% CI | source |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for p in prefs:
        lines.append(
            f"| {p.first} | {p.second} | {p.first_wins} | {p.second_wins} | {p.ties} | {_fmt(p.rate)} | "
            f"[{_fmt(p.low)}, {_fmt(p.high)}] | {p.source} |"
        )
    if plot_name:
        lines += ["", f"![mean ratings with 95% CIs]({plot_name})"]
    if texts:
        lines += ["", "## The rated texts", "", "| text | tokens | stop | text as shown to raters |"]
        lines.append("|---|---|---|---|")
        for t in texts:
            shown = t.text.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {t.text_id} | {t.tokens} | {t.finish} | {shown} |")
    lines += [
        "",
        "Intervals treat every rating as independent; each rater contributes several, so they are optimistic "
        "if raters differ systematically.",
    ]
    return "\n".join(lines) + "\n"


def plot_means(study: Study, means: dict[tuple[str, str], MeanCI], path: str | Path) -> None:
    """A grouped bar chart of the means per question and condition with 95% CI error bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    questions = [q for q in study.questions if q.kind == "likert"]
    width = 0.8 / max(1, len(study.conditions))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(questions), 3.6))
    for i, condition in enumerate(study.conditions):
        xs: list[float] = []
        ys: list[float] = []
        errs: tuple[list[float], list[float]] = ([], [])
        for j, question in enumerate(questions):
            m = means.get((condition.id, question.id))
            if m is None:
                continue
            xs.append(j + (i - (len(study.conditions) - 1) / 2) * width)
            ys.append(m.mean)
            errs[0].append(0.0 if math.isnan(m.low) else m.mean - m.low)
            errs[1].append(0.0 if math.isnan(m.high) else m.high - m.mean)
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=condition.id)
    ax.set_xticks(range(len(questions)), [q.id for q in questions])
    ax.set_ylim(1, max([q.points for q in questions] or [5]))
    ax.set_ylabel("mean rating (95% CI)")
    ax.set_title(study.title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
