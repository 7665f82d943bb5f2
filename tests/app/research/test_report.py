"""The research tables (app/research/report.py): intervals as text and back, shares with their Wilson
interval, and paired comparisons that count the texts only one condition of a pair collapsed."""

from __future__ import annotations

import numpy as np
import pytest

from app.research.report import interval_text, markdown_table, paired_comparisons, parse_interval, share_text
from model.evaluation import mcnemar_exact
from model.stats import wilson_interval


def test_an_interval_reads_back_from_its_text() -> None:
    for mean, low, high in ((0.5, 0.25, 0.75), (1234.5, -2.0, 1e-5)):
        text = interval_text(mean, low, high, digits=6)
        assert parse_interval(text) == pytest.approx((mean, low, high), rel=1e-6)
    assert parse_interval(interval_text(1 / 3, 0.1, 0.9)) == (0.333, 0.1, 0.9)  # 3 digits by default


def test_a_share_is_a_percentage_with_its_wilson_interval() -> None:
    share, low, high = parse_interval(share_text(3, 40))
    expected_low, expected_high = wilson_interval(3, 40)
    assert share == pytest.approx(7.5) and low < share < high
    assert (low, high) == pytest.approx((100 * expected_low, 100 * expected_high), abs=0.05)
    assert parse_interval(share_text(0, 0))[0] == 0.0  # no texts: no division by zero


def test_a_markdown_table_has_a_header_a_rule_and_one_line_per_row() -> None:
    rows = [{"condition": "plain", "n": 3}, {"condition": "both", "n": 12}]
    lines = markdown_table(rows).splitlines()
    assert lines == ["| condition | n |", "|---|---|", "| plain | 3 |", "| both | 12 |"]


def test_paired_comparisons_count_the_texts_only_one_of_the_pair_collapsed() -> None:
    rng = np.random.default_rng(7)
    flags = {c: rng.integers(0, 2, 30) for c in ("neither", "both", "pp")}
    rows = [
        {"condition": c, "index": str(i), "collapsed": str(flags[c][i]), "paper_repeat": "0"}
        for c in flags
        for i in range(30 if c != "pp" else 20)  # pp has 20 texts: 20 pairs
    ]
    table = paired_comparisons(rows, ["neither", "both", "pp"])
    assert [(r["condition"], r["against"], r["pairs"]) for r in table] == [
        ("both", "neither", 30),
        ("pp", "neither", 20),
    ]
    for row in table:
        mine, theirs = flags[row["condition"]][: row["pairs"]], flags["neither"][: row["pairs"]]
        only_this, only_other = int((mine > theirs).sum()), int((mine < theirs).sum())
        assert row["collapsed: only this / only the other"] == f"{only_this} / {only_other}"
        assert row["collapsed: McNemar p"] == f"{mcnemar_exact(only_this, only_other):.2g}"
        assert row["repeat run (paper): only this / only the other"] == "0 / 0"
