"""Interval estimates shared by the evaluation (`model.evaluation`, `app/research`) and the rating
studies (`app/study`): one copy, so a share is reported the same way everywhere.

References: Wilson 1927 (score interval for a binomial proportion).
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal 0.975 quantile: two-sided 95%


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion successes / trials (95% by default).

    With no trials the data say nothing about the proportion, so the interval is the whole range
    (0.0, 1.0): an honest "anything is possible" that prints and plots like any other interval, where nan
    bounds would vanish from a plot and read as "not computed" in a table.

    Args:
        successes: how many of the trials succeeded (0 <= successes <= trials).
        trials: how many trials there were.
        z: the standard normal quantile of the level (Z95 for 95%).

    Returns:
        (low, high), clipped to [0, 1].
    """
    if trials == 0:
        return (0.0, 1.0)
    phat = successes / trials
    denom = 1 + z * z / trials
    centre = (phat + z * z / (2 * trials)) / denom
    half = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
