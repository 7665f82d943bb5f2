"""Analysis: t quantiles against printed tables, a small hand-computed study (means, CIs, preferences),
the export matching what was submitted, the CSV round trip, the Markdown report and the PNG plot."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from app.study import analysis
from app.study.file import Study
from app.study.plan import study_texts
from app.study.store import StudyStore, TextRecord
from tests.conftest import assert_close

# Student t 0.975 quantiles as printed in statistical tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2)
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 5: 2.571, 10: 2.228, 30: 2.042, 100: 1.984}


@pytest.mark.parametrize(("df", "expected"), sorted(T_TABLE_975.items()))
def test_t_quantile_matches_the_table(df: int, expected: float) -> None:
    assert_close(analysis.t_quantile(0.975, df), expected, atol=6e-4)
    assert_close(analysis.t_quantile(0.025, df), -expected, atol=6e-4)
    assert_close(analysis.t_cdf(analysis.t_quantile(0.9, df), df), 0.9, atol=1e-10)


def test_wilson_interval_edge_cases() -> None:
    assert analysis.wilson_interval(0, 10)[0] == 0.0
    assert analysis.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(x) for x in analysis.wilson_interval(0, 0))
    assert math.isnan(analysis.mean_ci([3.0]).low) and analysis.mean_ci([3.0]).mean == 3.0


def _study(kind: str) -> Study:
    return Study.from_dict(
        {
            "id": "hand",
            "title": "Hand-computed",
            "consent": "c",
            "design": {"kind": kind},
            "conditions": [{"id": "a"}, {"id": "b", "tsp": False}],
            "prompts": [{"id": "p1", "text": "one"}, {"id": "p2", "text": "two"}],
            "questions": [
                {"id": "fluency", "text": "Fluent?"},
                {"id": "coherence", "text": "Coherent?"},
                {"id": "notes", "kind": "text", "text": "Notes", "required": False},
            ],
        }
    )


def _store(tmp_path: Path, kind: str) -> StudyStore:
    store = StudyStore.create(tmp_path / f"{kind}.db", _study(kind))
    for key in study_texts(store.study):
        provenance = {"model": {"name": "m"}, "model_sha256": "f" * 64, "order_id": "o" * 64}
        settings = {"mode": "simulate", "seed": 9, "tsp": key.condition_id == "a"}
        store.put_text(
            TextRecord(
                key.text_id, key.condition_id, key.prompt_id, 0, "t", "eos", 2, 0.1, settings, provenance
            )
        )
    return store


# (participant, condition, prompt) -> (fluency, coherence)
SINGLE = {
    ("r1", "a", "p1"): (4, 5),
    ("r1", "b", "p1"): (2, 3),
    ("r1", "a", "p2"): (5, 4),
    ("r1", "b", "p2"): (5, 4),  # tie
    ("r2", "a", "p1"): (3, 3),
    ("r2", "b", "p1"): (4, 4),
    ("r2", "a", "p2"): (4, 4),
    ("r2", "b", "p2"): (1, 2),
    ("r3", "a", "p1"): (2, 3),
    ("r3", "b", "p1"): (3, 1),  # 2.5 vs 2.0: a wins
    ("r3", "a", "p2"): (5, 5),
    ("r3", "b", "p2"): (3, 3),
}


def _fill_single(store: StudyStore) -> dict[str, dict[str, Any]]:
    submitted: dict[str, dict[str, Any]] = {}
    for participant in ("r1", "r2", "r3"):
        store.register(participant)
        while not (item := store.current_item(participant))["done"]:
            key = store.sequence(participant)[item["position"] - 1]
            fluency, coherence = SINGLE[(participant, key.conditions[0], key.prompt_id)]
            answer = {"fluency": fluency, "coherence": coherence, "notes": f"{participant}:{key.prompt_id}"}
            submitted[store.submit(participant, item["item_id"], answer).answer_id] = answer
    return submitted


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    root = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return (p + z**2 / (2 * n) - root) / (1 + z**2 / n), (p + z**2 / (2 * n) + root) / (1 + z**2 / n)


def test_hand_computed_single_design(tmp_path: Path) -> None:
    store = _store(tmp_path, "single")
    _fill_single(store)
    rows = analysis.export_rows(store.study, store.answers(), store.texts())
    means = analysis.condition_means(rows)
    for condition in ("a", "b"):
        for index, question in enumerate(("fluency", "coherence")):
            values = [v[index] for (_, c, _), v in SINGLE.items() if c == condition]
            n, mean, sd = len(values), statistics.mean(values), statistics.stdev(values)
            half = T_TABLE_975[5] * sd / math.sqrt(n)  # n = 6 -> df = 5
            got = means[(condition, question)]
            assert got.n == 6
            assert_close([got.mean, got.sd], [mean, sd], atol=1e-12)
            assert_close([got.low, got.high], [mean - half, mean + half], atol=1e-3)
    # derived preferences, by hand from the table: a beats b for (r1,p1), (r2,p2), (r3,p1), (r3,p2);
    # b beats a for (r2,p1); (r1,p2) is a tie
    (pref,) = analysis.preferences(rows, ["a", "b"])
    assert (pref.first, pref.second, pref.first_wins, pref.second_wins, pref.ties) == ("a", "b", 4, 1, 1)
    assert pref.source == "derived from ratings"
    assert_close([pref.rate, pref.low, pref.high], [0.8, *_wilson_by_hand(4, 5)], atol=1e-12)


def test_hand_computed_pairwise_choices(tmp_path: Path) -> None:
    store = _store(tmp_path, "pairwise")
    wanted = {("r1", "p1"): "a", ("r1", "p2"): "a", ("r2", "p1"): "b", ("r2", "p2"): "tie"}
    for participant in ("r1", "r2"):
        store.register(participant)
        while not (item := store.current_item(participant))["done"]:
            key = store.sequence(participant)[item["position"] - 1]
            choice = wanted[(participant, key.prompt_id)]
            side = "tie" if choice == "tie" else "AB"[key.conditions.index(choice)]
            answer = {"preference": side, "fluency": {"A": 3, "B": 4}, "coherence": {"A": 5, "B": 1}}
            store.submit(participant, item["item_id"], answer)
    rows = analysis.export_rows(store.study, store.answers(), store.texts())
    (pref,) = analysis.preferences(rows, ["a", "b"])
    assert (pref.first_wins, pref.second_wins, pref.ties, pref.source) == (2, 1, 1, "chosen")
    assert_close([pref.rate, pref.low, pref.high], [2 / 3, *_wilson_by_hand(2, 3)], atol=1e-12)
    # each reply's Likert ratings go to the condition shown on that side
    means = analysis.condition_means(rows)
    shown_as_a = sum(1 for a in store.answers() if a.conditions[0] == "a")
    assert_close(means[("a", "fluency")].mean, (3 * shown_as_a + 4 * (4 - shown_as_a)) / 4, atol=1e-12)


def test_export_matches_what_was_submitted(tmp_path: Path) -> None:
    store = _store(tmp_path, "single")
    submitted = _fill_single(store)
    rows = analysis.export_rows(store.study, store.answers(), store.texts())
    assert len(rows) == len(submitted) * 3
    path = tmp_path / "answers.csv"
    assert analysis.write_csv(rows, path) == len(rows)
    read = analysis.read_csv(path)
    assert list(read[0]) == list(analysis.CSV_COLUMNS)
    rebuilt: dict[str, dict[str, Any]] = {}
    for row in read:
        value = row["value"] if row["question_kind"] == "text" else int(row["value"])
        rebuilt.setdefault(row["answer_id"], {})[row["question"]] = value
        text = store.texts()[row["text_id"]]
        assert row["condition_id"] == text.condition_id and row["prompt_id"] == text.prompt_id
        assert row["model_sha256"] == "f" * 64 and row["tsp"] == str(row["condition_id"] == "a")
    assert rebuilt == submitted
    # the CSV is a complete analysis input: the same numbers from the file as from memory
    assert analysis.condition_means(read) == analysis.condition_means(rows)


def test_report_and_plot(tmp_path: Path) -> None:
    store = _store(tmp_path, "single")
    _fill_single(store)
    rows = analysis.export_rows(store.study, store.answers(), store.texts())
    means = analysis.condition_means(rows)
    prefs = analysis.preferences(rows, ["a", "b"])
    texts = list(store.texts().values())
    text = analysis.render_markdown(store.study, rows, means, prefs, "means.png", ["SIMULATED"], texts)
    a_fluency = means[("a", "fluency")]
    assert f"| fluency (1-5) | a | 6 | {a_fluency.mean:.2f} |" in text
    assert "| a | b | 4 | 1 | 1 | 0.80 |" in text and "> SIMULATED" in text
    assert "| a/p2/0 | 2 | eos | t |" in text
    analysis.plot_means(store.study, means, tmp_path / "means.png")
    assert (tmp_path / "means.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
