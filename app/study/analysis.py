"""Study analysis: the long-format export and the numbers of the report (pure functions, no I/O but
`write_csv` and `plot_means`).

- `export_rows` joins every answer with the provenance of the text(s) it rated: one row per
  (answer, question, side). The CSV is the analysis input, so anyone can redo the numbers elsewhere.
- Per-condition means with t-based 95% confidence intervals: mean +- t(0.975, n-1) * sd / sqrt(n)
  (sample sd, n-1 denominator). The t quantile is computed here (no scipy): the Student t CDF via the
  regularised incomplete beta function (continued fraction, Numerical Recipes 6.4), inverted by bisection.
- Pairwise preference rates with Wilson score intervals (Wilson 1927): rate = wins / (wins + losses);
  ties are reported, not counted. In the pairwise design the rater chose directly; in the single design a
  preference is derived per rater and prompt/sample from the mean of that rater's Likert ratings.

Intervals treat ratings as independent; one rater contributes several ratings, so they are optimistic
when raters differ systematically (a mixed model is the next step for a real study).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from app.study.file import Study
from app.study.store import AnswerRecord, TextRecord

Z95 = 1.959963984540054  # the standard normal 0.975 quantile
Row = dict[str, Any]

CSV_COLUMNS = (
    "study_id",
    "participant_id",
    "answer_id",
    "item_id",
    "position",
    "submitted_at",
    "design",
    "question",
    "question_kind",
    "side",
    "condition_id",
    "other_condition_id",
    "prompt_id",
    "sample",
    "value",
    "text_id",
    "mode",
    "temperature",
    "max_new_tokens",
    "tsp",
    "pp",
    "amp_rounds",
    "seed",
    "finish",
    "tokens",
    "model_name",
    "model_sha256",
    "embedding_fingerprint",
    "order_id",
    "generated_at",
)


# --- statistics -------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (0 < p < 1), by bisection on `t_cdf` to ~1e-12."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


@dataclass(frozen=True)
class MeanCI:
    """A sample mean with its t-based confidence interval (nan bounds when n < 2)."""

    n: int
    mean: float
    sd: float  # sample standard deviation (n-1); nan when n < 2
    low: float
    high: float


def mean_ci(values: Sequence[float], level: float = 0.95) -> MeanCI:
    """Mean and the two-sided t interval mean +- t((1+level)/2, n-1) * sd / sqrt(n)."""
    n = len(values)
    if n == 0:
        return MeanCI(0, math.nan, math.nan, math.nan, math.nan)
    mean = math.fsum(values) / n
    if n < 2:
        return MeanCI(n, mean, math.nan, math.nan, math.nan)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n)
    return MeanCI(n, mean, sd, mean - half, mean + half)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ((nan, nan) when n == 0)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Preference:
    """How often `first` was preferred over `second`."""

    first: str
    second: str
    first_wins: int
    second_wins: int
    ties: int
    rate: float  # first_wins / (first_wins + second_wins); nan if no decided comparison
    low: float  # Wilson 95% interval of `rate`
    high: float
    source: str  # "chosen" (pairwise design) or "derived from ratings" (single design)


# --- export ---------------------------------------------------------------------------------------


def _text_columns(text: TextRecord | None) -> Row:
    if text is None:
        return {}
    settings, provenance = text.settings, text.provenance
    return {
        "text_id": text.text_id,
        **{key: settings.get(key, "") for key in ("mode", "temperature", "max_new_tokens", "tsp", "pp")},
        "amp_rounds": settings.get("amp_rounds", ""),
        "seed": settings.get("seed", ""),
        "finish": text.finish,
        "tokens": text.tokens,
        "model_name": provenance.get("model", {}).get("name", ""),
        "model_sha256": provenance.get("model_sha256", ""),
        "embedding_fingerprint": provenance.get("embedding_fingerprint", ""),
        "order_id": provenance.get("order_id", ""),
        "generated_at": text.created_at,
    }


def export_rows(study: Study, answers: Iterable[AnswerRecord], texts: dict[str, TextRecord]) -> list[Row]:
    """Long format: one row per (answer, question, side), joined with the rated text's provenance.

    Likert and text answers give one row per text (side "" in the single design, "A"/"B" for each reply
    of a pair; pairwise free text is about the pair: side "", no text columns). The pairwise choice gives
    one row per side with question "preference" and value 1 (chosen), 0 (not chosen) or 0.5 (tie).
    """
    rows: list[Row] = []
    for answer in answers:
        rows += _answer_rows(study, answer, texts)
    return rows


def _answer_rows(study: Study, answer: AnswerRecord, texts: dict[str, TextRecord]) -> list[Row]:
    pair = len(answer.conditions) == 2
    sides = ("A", "B") if pair else ("",)
    base: Row = {
        **{c: "" for c in CSV_COLUMNS},
        "study_id": study.id,
        "participant_id": answer.participant_id,
        "answer_id": answer.answer_id,
        "item_id": answer.item_id,
        "position": answer.position,
        "submitted_at": answer.submitted_at,
        "design": study.design.kind,
        "prompt_id": answer.prompt_id,
        "sample": answer.sample,
    }

    def row(question: str, kind: str, index: int, value: Any, with_text: bool = True) -> Row:
        text = texts.get(f"{answer.conditions[index]}/{answer.prompt_id}/{answer.sample}")
        return {
            **base,
            "question": question,
            "question_kind": kind,
            "side": sides[index] if with_text else "",
            "condition_id": answer.conditions[index],
            "other_condition_id": answer.conditions[1 - index] if pair else "",
            "value": value,
            **(_text_columns(text) if with_text else {}),
        }

    rows: list[Row] = []
    choice = answer.answer.get("preference")
    if choice is not None:
        for index, side in enumerate(sides):
            rows.append(row("preference", "choice", index, 0.5 if choice == "tie" else int(choice == side)))
    for question in study.questions:
        value = answer.answer.get(question.id)
        if value is None:
            continue
        if question.kind == "likert":
            for index, side in enumerate(sides):
                rows.append(row(question.id, "likert", index, value[side] if side else value))
        else:
            rows.append(row(question.id, "text", 0, value, with_text=not pair))
    return rows


def write_csv(rows: Iterable[Row], path: str | Path) -> int:
    """Write rows with the `CSV_COLUMNS` header; returns the number of rows."""
    count = 0
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def read_csv(path: str | Path) -> list[Row]:
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- numbers of the report -------------------------------------------------------------------------


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
