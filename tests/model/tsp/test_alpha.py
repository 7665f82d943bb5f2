"""Tests for alpha-nearness candidate lists (model/tsp/alpha.py), against brute force on small graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.tsp import alpha as tsp_alpha
from model.tsp import graph as tsp_graph


def _instance(rng: np.random.Generator, n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    unit = tsp_graph.unit_rows(torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)))
    ids, _ = tsp_graph.knn_lists(unit, k, k, 1024, False)
    return unit.numpy(), ids


def _prim(weights: np.ndarray) -> float:
    """Minimum spanning tree weight of a dense symmetric matrix (inf = no edge), by Prim."""
    n = len(weights)
    inside = np.zeros(n, bool)
    inside[0] = True
    best = weights[0].copy()
    total = 0.0
    for _ in range(n - 1):
        v = int(np.argmin(np.where(inside, np.inf, best)))
        total += float(best[v])
        inside[v] = True
        best = np.minimum(best, weights[v])
    return total


def _tree_path_max(n: int, edges: list[tuple[int, int, float]], a: int, b: int) -> float:
    """Heaviest edge on the path from a to b in a tree, by depth-first search."""
    adjacent: dict[int, list[tuple[int, float]]] = {v: [] for v in range(n)}
    for u, v, w in edges:
        adjacent[u].append((v, w))
        adjacent[v].append((u, w))
    stack = [(a, -1, -np.inf)]
    while stack:
        v, parent, heaviest = stack.pop()
        if v == b:
            return heaviest
        stack.extend((u, v, max(heaviest, w)) for u, w in adjacent[v] if u != parent)
    raise AssertionError("not connected")


@pytest.mark.parametrize("n", [5, 60, 400])
def test_kruskal_weight_and_degrees_match_prim(n: int) -> None:
    rng = np.random.default_rng(n)
    w = rng.uniform(size=(n, n))
    w = np.triu(w, 1) + np.triu(w, 1).T
    u, v = np.triu_indices(n, 1)
    chosen, degree = tsp_alpha.spanning_forest(n, u, v, w[u, v])
    assert len(chosen) == n - 1
    np.fill_diagonal(w, np.inf)
    assert w[u, v][chosen].sum() == pytest.approx(_prim(w), rel=1e-12)
    assert np.array_equal(degree, np.bincount(np.concatenate([u[chosen], v[chosen]]), minlength=n))


def test_heaviest_edge_between_two_nodes_matches_a_tree_walk() -> None:
    rng = np.random.default_rng(3)
    n = 300
    parents = [int(rng.integers(0, v)) for v in range(1, n)]  # a random tree on 0..n-1
    tu, tv = np.arange(1, n), np.asarray(parents)
    tw = rng.uniform(size=n - 1)
    up, heavy, depth, tree = tsp_alpha._lifting(n, tu, tv, tw, n.bit_length())
    assert (tree == tree[0]).all()
    edges = list(zip(tu.tolist(), tv.tolist(), tw.tolist(), strict=True))
    for a, b in rng.integers(0, n, size=(200, 2)).tolist():
        if a != b:
            expected = _tree_path_max(n, edges, a, b)
            assert tsp_alpha._heaviest_between(up, heavy, depth, a, b) == expected


def test_alpha_is_zero_on_tree_edges_and_positive_elsewhere() -> None:
    rng = np.random.default_rng(5)
    unit, ids = _instance(rng, 500, 10, 8)
    n, k = ids.shape
    pool = tsp_alpha._pools(ids, 4)
    pool_d = tsp_alpha._pool_distances(unit, pool)
    u = np.repeat(np.arange(n), pool.shape[1])[pool.ravel() >= 0]
    v = pool.ravel()[pool.ravel() >= 0]
    w = pool_d.ravel()[pool.ravel() >= 0]
    pi = rng.normal(scale=0.01, size=n)
    chosen, _ = tsp_alpha.spanning_forest(n, u, v, w + pi[u] + pi[v])
    tu, tv = u[chosen], v[chosen]
    up, heavy, depth, tree = tsp_alpha._lifting(n, tu, tv, (w + pi[u] + pi[v])[chosen], n.bit_length())
    alpha = tsp_alpha._alphas(pool, pool_d, pi, up, heavy, depth, tree)
    tree_edges = {frozenset(e) for e in zip(tu.tolist(), tv.tolist(), strict=True)}
    for a in range(n):
        for j, b in enumerate(pool[a].tolist()):
            if b < 0:
                assert alpha[a, j] == np.inf
            elif frozenset((a, b)) in tree_edges:
                assert alpha[a, j] == pytest.approx(0.0, abs=1e-12)
            else:
                assert alpha[a, j] >= -1e-12  # the tree is minimal: no pool edge can shorten it


def test_pools_hold_own_list_then_rows_that_list_it() -> None:
    ids = np.array([[1, 2], [2, 0], [0, 1], [0, 1]])  # row 3 lists 0 and 1; nobody lists 3
    pool = tsp_alpha._pools(ids, 2)
    assert pool[0].tolist() == [1, 2, 3, -1]  # 1 and 2 list 0 too, but 0 already lists them
    assert pool[1].tolist() == [2, 0, 3, -1]
    assert pool[3].tolist() == [0, 1, -1, -1]


def test_alpha_lists_are_valid_deterministic_and_prefer_tree_edges() -> None:
    rng = np.random.default_rng(9)
    unit, ids = _instance(rng, 800, 16, 12)
    lists = tsp_alpha.alpha_lists(unit, ids, 5, steps=10)
    assert lists.shape == (800, 5)
    assert (lists >= 0).all() and (lists < 800).all()
    assert (lists != np.arange(800)[:, None]).all()
    assert all(len(set(row)) == 5 for row in lists.tolist())
    assert np.array_equal(lists, tsp_alpha.alpha_lists(unit, ids, 5, steps=10))
    # with pi = 0 the first candidate of every row is a minimum-spanning-tree neighbour (alpha = 0)
    plain = tsp_alpha.alpha_lists(unit, ids, 5, steps=0)
    assert np.array_equal(plain[:, 0], ids[:, 0])  # the nearest row is always a tree edge


def test_disconnected_graph_ranks_other_component_last_and_still_fills_lists() -> None:
    rng = np.random.default_rng(11)
    a = rng.normal(size=(60, 8)) + 30.0  # two far clusters: the kNN graph has two components
    b = rng.normal(size=(60, 8)) - 30.0
    rows = tsp_graph.unit_rows(torch.from_numpy(np.vstack([a, b]).astype(np.float32)))
    ids, _ = tsp_graph.knn_lists(rows, 6, 6, 1024, False)
    lists = tsp_alpha.alpha_lists(rows.numpy(), ids, 4, steps=5)
    assert ((lists < 60) == (np.arange(120)[:, None] < 60)).all()  # every candidate in its own cluster


def test_ascent_moves_degrees_towards_two() -> None:
    rng = np.random.default_rng(13)
    unit, ids = _instance(rng, 2000, 24, 10)
    n = len(ids)
    a = np.repeat(np.arange(n), ids.shape[1])
    b = ids.ravel()
    keys = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    u, v = keys // n, keys % n
    w = 1.0 - np.einsum("ij,ij->i", unit[u].astype(np.float64), unit[v].astype(np.float64))

    def off_two(pi: np.ndarray) -> int:
        _, degree = tsp_alpha.spanning_forest(n, u, v, w + pi[u] + pi[v])
        return int(np.abs(degree - 2).sum())

    assert off_two(tsp_alpha.ascent(n, u, v, w, 30)) < 0.8 * off_two(np.zeros(n))
