"""The numbers of the report on a small hand-computed study (means, CIs, preferences), a pair with no
decided comparison, and the Markdown report and PNG plot."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from app.study.export import export_rows
from app.study.report import condition_means, plot_means, preferences, render_markdown
from tests.app.study.test_export import SINGLE, fill_single, hand_store
from tests.app.study.test_stats import T_TABLE_975
from tests.conftest import assert_close


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    root = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return (p + z**2 / (2 * n) - root) / (1 + z**2 / n), (p + z**2 / (2 * n) + root) / (1 + z**2 / n)


def test_hand_computed_single_design(tmp_path: Path) -> None:
    store = hand_store(tmp_path, "single")
    fill_single(store)
    rows = export_rows(store.study, store.answers(), store.texts())
    means = condition_means(rows)
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
    (pref,) = preferences(rows, ["a", "b"])
    assert (pref.first, pref.second, pref.first_wins, pref.second_wins, pref.ties) == ("a", "b", 4, 1, 1)
    assert pref.source == "derived from ratings"
    assert_close([pref.rate, pref.low, pref.high], [0.8, *_wilson_by_hand(4, 5)], atol=1e-12)


def test_hand_computed_pairwise_choices(tmp_path: Path) -> None:
    store = hand_store(tmp_path, "pairwise")
    wanted = {("r1", "p1"): "a", ("r1", "p2"): "a", ("r2", "p1"): "b", ("r2", "p2"): "tie"}
    for participant in ("r1", "r2"):
        store.register(participant)
        while not (item := store.current_item(participant))["done"]:
            key = store.sequence(participant)[item["position"] - 1]
            choice = wanted[(participant, key.prompt_id)]
            side = "tie" if choice == "tie" else "AB"[key.conditions.index(choice)]
            answer = {"preference": side, "fluency": {"A": 3, "B": 4}, "coherence": {"A": 5, "B": 1}}
            store.submit(participant, item["item_id"], answer)
    rows = export_rows(store.study, store.answers(), store.texts())
    (pref,) = preferences(rows, ["a", "b"])
    assert (pref.first_wins, pref.second_wins, pref.ties, pref.source) == (2, 1, 1, "chosen")
    assert_close([pref.rate, pref.low, pref.high], [2 / 3, *_wilson_by_hand(2, 3)], atol=1e-12)
    # each reply's Likert ratings go to the condition shown on that side
    means = condition_means(rows)
    shown_as_a = sum(1 for a in store.answers() if a.conditions[0] == "a")
    assert_close(means[("a", "fluency")].mean, (3 * shown_as_a + 4 * (4 - shown_as_a)) / 4, atol=1e-12)


def test_a_pair_with_only_ties_has_no_rate_and_the_whole_interval() -> None:
    rows = [
        {"question": "preference", "side": "A", "condition_id": "a", "other_condition_id": "b", "value": 0.5}
    ]
    (pref,) = preferences(rows, ["a", "b"])
    assert (pref.first_wins, pref.second_wins, pref.ties) == (0, 0, 1)
    assert math.isnan(pref.rate) and (pref.low, pref.high) == (0.0, 1.0)  # no decided comparison


def test_report_and_plot(tmp_path: Path) -> None:
    store = hand_store(tmp_path, "single")
    fill_single(store)
    rows = export_rows(store.study, store.answers(), store.texts())
    means = condition_means(rows)
    prefs = preferences(rows, ["a", "b"])
    texts = list(store.texts().values())
    text = render_markdown(store.study, rows, means, prefs, "means.png", ["SIMULATED"], texts)
    a_fluency = means[("a", "fluency")]
    assert f"| fluency (1-5) | a | 6 | {a_fluency.mean:.2f} |" in text
    assert "| a | b | 4 | 1 | 1 | 0.80 |" in text and "> SIMULATED" in text
    assert "| a/p2/0 | 2 | eos | t |" in text
    plot_means(store.study, means, tmp_path / "means.png")
    assert (tmp_path / "means.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
