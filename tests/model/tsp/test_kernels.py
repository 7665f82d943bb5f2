"""Tests for the compiled moves (model/tsp/kernels.py), driven through model/tsp/improve.py's PathSearch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.tsp import graph as tsp_graph
from model.tsp.improve import PathSearch


def _instance(rng: np.random.Generator, n: int, d: int) -> tuple[torch.Tensor, np.ndarray]:
    unit = tsp_graph.unit_rows(torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)))
    ids, _ = tsp_graph.knn_lists(unit, min(8, n - 1), min(12, n - 1), 1024, False)
    return unit, ids


@pytest.mark.parametrize("n", [8, 9, 40, 300, 2000])
def test_every_reported_gain_is_the_true_change_in_length(n: int) -> None:
    rng = np.random.default_rng(n)
    unit, ids = _instance(rng, n, 12)
    first = rng.permutation(n)
    search = PathSearch(unit.numpy(), first, ids, seed=1)
    before = tsp_graph.path_length(unit.double(), first)
    gain = search.optimise(deadline=float("inf"))
    after = tsp_graph.path_length(unit.double(), search.path())
    assert gain > 0.0
    assert before - after == pytest.approx(gain, rel=1e-5)
    gain = search.kick(400, 12, deadline=float("inf"))
    final = tsp_graph.path_length(unit.double(), search.path())
    assert after - final == pytest.approx(gain, rel=1e-5, abs=1e-6)
    assert final <= after
    assert sorted(search.path().tolist()) == list(range(n))
    assert np.array_equal(search.tour[search.pos], np.arange(n + 1))  # pos stays the inverse of tour


def test_a_pass_that_finds_nothing_leaves_no_findable_2opt_move() -> None:
    rng = np.random.default_rng(3)
    n = 120
    unit, ids = _instance(rng, n, 6)
    search = PathSearch(unit.numpy(), rng.permutation(n), ids)
    for _ in range(20):  # don't-look bits may hide a move until a full pass from every node
        if search.optimise(deadline=float("inf")) == 0.0:
            break
    else:
        pytest.fail("20 full passes kept finding moves")
    path = search.path()
    rows = unit.double().numpy()
    dist = 1.0 - rows @ rows.T
    listed = {(int(a), int(b)) for a in range(n) for b in ids[a]}
    edge = dist[path[:-1], path[1:]]
    for i in range(n - 2):
        for j in range(i + 2, n - 1):
            p, q, r, s = (int(path[x]) for x in (i, i + 1, j, j + 1))
            # drop (p, q), (r, s); add (p, r), (q, s): the search starts it from a dropped edge whose
            # end has the new edge in its list and a positive first partial gain
            findable = (
                ((p, r) in listed and edge[i] > dist[p, r])
                or ((r, p) in listed and edge[j] > dist[r, p])
                or ((q, s) in listed and edge[i] > dist[q, s])
                or ((s, q) in listed and edge[j] > dist[s, q])
            )
            if findable:
                assert edge[i] + edge[j] - dist[p, r] - dist[q, s] <= 1e-9


def test_kicks_are_a_pure_function_of_the_seed() -> None:
    rng = np.random.default_rng(11)
    n = 400
    unit, ids = _instance(rng, n, 8)
    first = rng.permutation(n)
    paths = []
    for seed in (5, 5, 6):
        search = PathSearch(unit.numpy(), first, ids, seed=seed)
        search.optimise(deadline=float("inf"))
        search.kick(3000, 12, deadline=float("inf"))
        paths.append(search.path())
    assert np.array_equal(paths[0], paths[1])
    assert not np.array_equal(paths[0], paths[2])
