"""The study's t-based statistics: t quantiles against printed tables and the mean's interval edge cases
(Wilson intervals are tested with `model.stats` in tests/model/test_stats.py)."""

from __future__ import annotations

import math

import pytest

from app.study import stats
from tests.conftest import assert_close

# Student t 0.975 quantiles as printed in statistical tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2)
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 5: 2.571, 10: 2.228, 30: 2.042, 100: 1.984}


@pytest.mark.parametrize(("df", "expected"), sorted(T_TABLE_975.items()))
def test_t_quantile_matches_the_table(df: int, expected: float) -> None:
    assert_close(stats.t_quantile(0.975, df), expected, atol=6e-4)
    assert_close(stats.t_quantile(0.025, df), -expected, atol=6e-4)
    assert_close(stats.t_cdf(stats.t_quantile(0.9, df), df), 0.9, atol=1e-10)


def test_mean_ci_needs_two_values_for_an_interval() -> None:
    assert math.isnan(stats.mean_ci([3.0]).low) and stats.mean_ci([3.0]).mean == 3.0
    assert stats.mean_ci([]).n == 0 and math.isnan(stats.mean_ci([]).mean)
