"""Tests for model/tsp/improve.py: PathSearch (local search and kicks in chunks) and refine_windows.

Small random instances (seeded): an improvement never makes a path longer, always returns a
permutation, reports the gain it made, and stops at its deadline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.progress import Progress
from model.tsp import graph as tsp_graph
from model.tsp.improve import PathSearch, refine_windows
from tests.conftest import assert_close


def _instance(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    unit = tsp_graph.unit_rows(torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)))
    ids, _ = tsp_graph.knn_lists(unit, min(6, n - 1), min(12, n - 1), 1024, False)
    return unit.numpy(), ids


def _length(unit: np.ndarray, path: np.ndarray) -> float:
    rows = unit.astype(np.float64)
    return float((1.0 - (rows[path[:-1]] * rows[path[1:]]).sum(axis=1)).sum())


def _is_permutation(path: np.ndarray, n: int) -> bool:
    return sorted(path.tolist()) == list(range(n))


def test_a_new_search_holds_the_path_it_was_given(rng: np.random.Generator) -> None:
    unit, ids = _instance(rng, 30, 5)
    first = rng.permutation(30)
    search = PathSearch(unit, first, ids)
    assert np.array_equal(search.path(), first)
    assert search.tour[-1] == 30 and np.array_equal(search.tour[search.pos], np.arange(31))
    assert (np.diff(search.nbr_d, axis=1) >= 0).all()  # candidate lists sorted by distance


@pytest.mark.parametrize("n", [3, 5, 7, 60, 500])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimise_and_kicks_never_make_the_path_longer(n: int, seed: int) -> None:
    rng = np.random.default_rng(1000 * n + seed)
    unit, ids = _instance(rng, n, 6)
    first = rng.permutation(n)
    search = PathSearch(unit, first, ids, seed=seed)
    lengths = [_length(unit, first)]
    assert search.optimise(deadline=float("inf")) >= 0.0
    lengths.append(_length(unit, search.path()))
    assert search.kick(200, 12, deadline=float("inf")) >= 0.0
    lengths.append(_length(unit, search.path()))
    assert search.optimise(deadline=float("inf")) >= 0.0  # again, from an optimised path
    lengths.append(_length(unit, search.path()))
    assert all(b <= a + 1e-9 for a, b in zip(lengths, lengths[1:], strict=False)), lengths
    assert _is_permutation(search.path(), n)


def test_progress_reports_count_up_to_their_total(rng: np.random.Generator) -> None:
    unit, ids = _instance(rng, 3000, 8)
    search = PathSearch(unit, rng.permutation(3000), ids)
    steps: list[tuple[int, int]] = []
    search.optimise(float("inf"), lambda e: steps.append((e.done, e.total)))
    assert steps and all(0 < d <= t for d, t in steps)
    kicks: list[tuple[int, int]] = []
    search.kick(5000, 12, float("inf"), lambda e: kicks.append((e.done, e.total)))
    assert kicks[-1] == (5000, 5000) and [d for d, _ in kicks] == sorted(d for d, _ in kicks)
    assert search.kicks_done == 5000
    assert 0 <= search.kicks_unchecked <= search.kicks_done and 0 <= search.kicks_kept <= search.kicks_done


def test_a_passed_deadline_stops_the_search_with_a_valid_path(rng: np.random.Generator) -> None:
    unit, ids = _instance(rng, 400, 6)
    first = rng.permutation(400)
    search = PathSearch(unit, first, ids)
    search.optimise(deadline=0.0)
    assert _is_permutation(search.path(), 400)
    assert _length(unit, search.path()) <= _length(unit, first) + 1e-9
    path = search.path()
    assert search.kick(1000, 12, deadline=0.0) == 0.0
    assert search.kicks_done == 0 and np.array_equal(search.path(), path)
    assert search.qs[1] == 0 and not search.queued.any()  # nothing left queued for the next call


@pytest.mark.parametrize("window", [6, 12, 31])
def test_windows_never_lengthen_the_path_and_report_their_gain(rng: np.random.Generator, window: int) -> None:
    unit, _ = _instance(rng, 90, 5)
    tour = rng.permutation(90)
    steps: list[Progress] = []
    new, gain = refine_windows(unit.astype(np.float64), tour, window, float("inf"), on_progress=steps.append)
    assert _is_permutation(new, 90)
    assert gain > 0.0  # a random path has short windows to improve
    assert_close(_length(unit, tour) - _length(unit, new), gain, atol=1e-9)
    windows = len(range(0, 90 - window + 1, max(1, window // 2)))
    assert steps[-1] == Progress("windows", windows, windows)
    assert new[0] == tour[0] and new[-1] == tour[-1]  # every window keeps its two ends


def test_windows_that_do_not_fit_leave_the_path_alone(rng: np.random.Generator) -> None:
    unit, _ = _instance(rng, 10, 4)
    tour = rng.permutation(10)
    for window in (3, 11):
        new, gain = refine_windows(unit.astype(np.float64), tour, window, float("inf"))
        assert gain == 0.0 and np.array_equal(new, tour) and new is not tour
    new, gain = refine_windows(unit.astype(np.float64), tour, 6, deadline=0.0)
    assert gain == 0.0 and np.array_equal(new, tour)
