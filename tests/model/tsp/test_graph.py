"""Tests for model/tsp/graph.py: kNN lists, path lengths, the two constructions and the lower bounds.

Each function is checked against a brute-force computation on a dense matrix of a small random
instance (seeded), or against a path whose optimum is known.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model.tsp import graph as tsp_graph
from tests.conftest import assert_close


def _unit(rng: np.random.Generator, n: int, d: int) -> torch.Tensor:
    return tsp_graph.unit_rows(torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)))


def _dense(unit: torch.Tensor) -> np.ndarray:
    """(n, n) cosine distances in float64."""
    rows = unit.double().numpy()
    dist: np.ndarray = 1.0 - rows @ rows.T
    return dist


def _length(dist: np.ndarray, order: np.ndarray | list[int]) -> float:
    order = np.asarray(order)
    return float(dist[order[:-1], order[1:]].sum())


def _optimum(dist: np.ndarray) -> float:
    """Shortest open path through every row, over all orders (small n only)."""
    n = len(dist)
    return min(_length(dist, list(p)) for p in itertools.permutations(range(n)) if p[0] < p[-1])


def _brute_force_greedy(dist: np.ndarray, start: int) -> np.ndarray:
    visited = np.zeros(len(dist), dtype=bool)
    order = [start]
    visited[start] = True
    for _ in range(len(dist) - 1):
        order.append(int(np.argmin(np.where(visited, np.inf, dist[order[-1]]))))
        visited[order[-1]] = True
    return np.asarray(order)


def _brute_force_matching(dist: np.ndarray) -> set[frozenset[int]]:
    """Greedy matching on the complete graph: shortest edges first, degree <= 2, no cycle."""
    n = len(dist)
    edges = sorted((dist[u, v], u, v) for u in range(n) for v in range(u + 1, n))
    parent, degree, chosen = list(range(n)), [0] * n, set()

    def root(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for _, u, v in edges:
        if degree[u] < 2 and degree[v] < 2 and root(u) != root(v):
            parent[root(u)] = root(v)
            degree[u] += 1
            degree[v] += 1
            chosen.add(frozenset((u, v)))
    return chosen


def test_unit_rows_have_norm_one_and_a_zero_row_stays_zero(rng: np.random.Generator) -> None:
    emb = rng.normal(size=(20, 6)) * rng.uniform(0.1, 10.0, size=(20, 1))
    emb[4] = 0.0
    unit = tsp_graph.unit_rows(torch.from_numpy(emb), torch.float64)
    assert unit.dtype == torch.float64 and unit.is_contiguous()
    norms = unit.norm(dim=1).numpy()
    assert_close(np.delete(norms, 4), np.ones(19), atol=1e-12)
    assert norms[4] == 0.0
    assert tsp_graph.unit_rows(torch.from_numpy(emb)).dtype == torch.float32  # the default


@pytest.mark.parametrize("k", [1, 5, 39, 60])
def test_exact_knn_lists_are_the_brute_force_lists_with_ties_by_id(rng: np.random.Generator, k: int) -> None:
    emb = rng.normal(size=(40, 5)).astype(np.float32)
    emb[7] = emb[3]  # a duplicate: the same distance to every other row, so ties are broken by id
    unit = tsp_graph.unit_rows(torch.from_numpy(emb))
    steps: list[tuple[int, int]] = []
    ids, dists = tsp_graph.knn_lists(
        unit, k, k, 16, bf16_prefilter=False, on_progress=lambda e: steps.append((e.done, e.total))
    )
    width = min(k, 39)
    assert ids.shape == dists.shape == (40, width)
    dist = _dense(unit)
    for a in range(40):
        others = [b for b in range(40) if b != a]
        expected = sorted(others, key=lambda b: (dist[a, b], b))[:width]
        assert ids[a].tolist() == expected, f"row {a}"
    assert_close(dists, np.take_along_axis(dist, ids, 1), atol=1e-6)
    assert steps[-1] == (40, 40) and len(steps) == 3  # blocks of 16 rows


def test_knn_lists_match_brute_force(rng: np.random.Generator) -> None:
    emb = rng.normal(size=(500, 16)).astype(np.float32)
    unit = tsp_graph.unit_rows(torch.from_numpy(emb))
    ids, dists = tsp_graph.knn_lists(unit, 6, 24, 128, bf16_prefilter=True)
    sims = (unit @ unit.T).double().numpy()
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :6]
    assert (ids == expected).mean() > 0.99  # bf16 shortlist, exact re-rank
    assert_close(dists, 1.0 - np.take_along_axis(sims, ids, 1), atol=1e-6)


def test_path_length_is_the_sum_of_consecutive_distances(rng: np.random.Generator) -> None:
    unit = _unit(rng, 30, 4)
    order = rng.permutation(30)
    assert_close(tsp_graph.path_length(unit, order), _length(_dense(unit), order), atol=1e-6)
    assert tsp_graph.path_length(unit, order[:1]) == 0.0
    assert tsp_graph.path_length(unit, order[:0]) == 0.0


@pytest.mark.parametrize("k", [1, 3, 29])
def test_greedy_nearest_neighbour_is_the_brute_force_greedy_path(rng: np.random.Generator, k: int) -> None:
    unit = _unit(rng, 30, 6)
    ids, _ = tsp_graph.knn_lists(unit, k, k, 64, bf16_prefilter=False)
    dist = _dense(unit)
    for start in (0, 11, 29):  # short lists force exact scans of the unvisited rows
        path = tsp_graph.greedy_nearest_neighbour(unit, ids, start)
        assert path.tolist() == _brute_force_greedy(dist, start).tolist()


def test_greedy_edge_with_full_lists_is_the_brute_force_greedy_matching(rng: np.random.Generator) -> None:
    n = 25
    unit = _unit(rng, n, 6)
    ids, dists = tsp_graph.knn_lists(unit, n - 1, n - 1, 64, bf16_prefilter=False)
    path = tsp_graph.greedy_edge(unit, ids, dists, n - 1, 64, bf16_prefilter=False)
    assert sorted(path.tolist()) == list(range(n))
    assert {frozenset((int(a), int(b))) for a, b in zip(path[:-1], path[1:], strict=True)} == (
        _brute_force_matching(_dense(unit))
    )
    assert path[0] < path[-1]  # walked from its lower-id end point


@pytest.mark.parametrize("n", [2, 3, 9, 200])
def test_greedy_edge_joins_short_lists_into_one_path(rng: np.random.Generator, n: int) -> None:
    unit = _unit(rng, n, 8)
    ids, dists = tsp_graph.knn_lists(unit, 2, 4, 64, bf16_prefilter=False)
    steps: list[tuple[int, int]] = []
    path = tsp_graph.greedy_edge(unit, ids, dists, 4, 64, False, lambda e: steps.append((e.done, e.total)))
    assert sorted(path.tolist()) == list(range(n))  # the fragments were joined into one path
    assert all(t == n - 1 for _, t in steps)


def test_greedy_edge_puts_points_on_a_line_in_line_order(rng: np.random.Generator) -> None:
    t = rng.uniform(-1.0, 1.0, size=60)
    emb = np.stack([t, np.ones_like(t)], axis=1).astype(np.float32)  # angle monotone in t
    unit = tsp_graph.unit_rows(torch.from_numpy(emb))
    ids, dists = tsp_graph.knn_lists(unit, 4, 8, 64, bf16_prefilter=False)
    path = tsp_graph.greedy_edge(unit, ids, dists, 8, 64, bf16_prefilter=False)
    expected = np.argsort(t)
    assert path.tolist() in (expected.tolist(), expected[::-1].tolist())


@pytest.mark.parametrize("seed", range(4))
def test_both_bounds_stay_below_the_brute_force_optimum(seed: int) -> None:
    unit = _unit(np.random.default_rng(seed), 8, 3)
    optimum = _optimum(_dense(unit))
    for k in (2, 4, 7):  # lists of every length, the full graph included
        ids, dists = tsp_graph.knn_lists(unit, k, k, 64, bf16_prefilter=False)
        two = tsp_graph.two_neighbour_bound(dists)
        held_karp = tsp_graph.held_karp_bound(ids, dists, upper=optimum * 1.05)
        assert 0.0 < two <= optimum + 1e-6  # list distances are float32 dot products
        assert held_karp <= optimum + 1e-6  # often tight: the 1-tree bound reaches the optimum


def test_bounds_never_exceed_a_known_optimum(rng: np.random.Generator) -> None:
    t = np.sort(rng.uniform(-2.0, 2.0, size=150))
    emb = np.stack([t, np.ones_like(t)], axis=1).astype(np.float32)
    unit = tsp_graph.unit_rows(torch.from_numpy(emb))
    optimum = tsp_graph.path_length(unit, np.arange(150))
    ids, dists = tsp_graph.knn_lists(unit, 8, 16, 64, bf16_prefilter=False)
    assert tsp_graph.two_neighbour_bound(dists) <= optimum + 1e-9
    assert tsp_graph.held_karp_bound(ids, dists, upper=optimum * 1.1) <= optimum + 1e-9


def test_bounds_of_too_small_graphs_are_zero() -> None:
    assert tsp_graph.two_neighbour_bound(np.zeros((2, 1))) == 0.0
    assert tsp_graph.two_neighbour_bound(np.ones((5, 1))) == 0.0  # one neighbour each: no bound
    assert tsp_graph.held_karp_bound(np.zeros((2, 1), np.int64), np.zeros((2, 1)), upper=1.0) == 0.0
