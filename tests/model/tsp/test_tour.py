"""Tests for the cycle primitives of the compiled search (model/tsp/tour.py): distances, flips, the
flip journal and its undo, segment moves, the dirty-node FIFO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.tsp import graph as tsp_graph
from model.tsp import tour as tsp_tour
from model.tsp.improve import PathSearch
from tests.conftest import assert_close


def _instance(rng: np.random.Generator, n: int, d: int) -> tuple[torch.Tensor, np.ndarray]:
    unit = tsp_graph.unit_rows(torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)))
    ids, _ = tsp_graph.knn_lists(unit, min(8, n - 1), min(12, n - 1), 1024, False)
    return unit, ids


def _cycle(order: list[int], journal_rows: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """tour, pos, journal and state (journaling on) for a cycle through `order`."""
    tour = np.asarray(order, np.int64)
    pos = np.empty_like(tour)
    pos[tour] = np.arange(len(tour))
    return tour, pos, np.zeros((journal_rows, 4), np.int64), np.array([0, 0], np.int64)


def _cycle_edges(tour: np.ndarray) -> set[frozenset[int]]:
    return {frozenset((int(a), int(b))) for a, b in zip(tour, np.roll(tour, -1), strict=True)}


def test_dist_is_one_minus_the_dot_product_and_zero_to_the_virtual_node(rng: np.random.Generator) -> None:
    rows = tsp_graph.unit_rows(torch.from_numpy(rng.normal(size=(6, 5)))).numpy()
    dense = 1.0 - rows.astype(np.float64) @ rows.T.astype(np.float64)
    for a in range(6):
        assert tsp_tour.dist(rows, a, 6) == 0.0 == tsp_tour.dist(rows, 6, a)
        for b in range(6):
            assert tsp_tour.dist(rows, a, b) == tsp_tour.dist(rows, b, a)
            assert_close(tsp_tour.dist(rows, a, b), dense[a, b], atol=1e-12)
    ids = np.array([[1, 2], [0, 5], [4, 3], [2, 1], [0, 0], [3, 4]], np.int64)
    expected = [[tsp_tour.dist(rows, a, int(b)) for b in ids[a]] for a in range(6)]
    assert np.array_equal(tsp_tour.list_distances(rows, ids), np.asarray(expected))


@pytest.mark.parametrize(("i", "j"), [(0, 3), (1, 6), (2, 9), (5, 7)])
def test_flip_replaces_two_edges_and_journals_them(i: int, j: int) -> None:
    tour, pos, journal, state = _cycle(list(range(10)))
    a, b, c, d = (int(tour[x % 10]) for x in (i, i + 1, j, j + 1))
    before = _cycle_edges(tour)
    tsp_tour.flip(tour, pos, journal, state, a, b, c, d)
    after = _cycle_edges(tour)
    assert before - after == {frozenset((a, b)), frozenset((c, d))}
    assert after - before == {frozenset((a, c)), frozenset((b, d))}
    assert np.array_equal(tour[pos], np.arange(10))
    assert state.tolist() == [1, 0] and journal[0].tolist() == [a, b, c, d]


def test_a_full_journal_counts_overflows_and_an_off_journal_records_nothing() -> None:
    tour, pos, journal, state = _cycle(list(range(12)), journal_rows=1)
    tsp_tour.flip(tour, pos, journal, state, 0, 1, 5, 6)
    tsp_tour.flip(tour, pos, journal, state, 0, 5, 1, 6)  # the undo of the first
    assert state.tolist() == [1, 1]
    state[:] = (-1, 0)
    tsp_tour.flip(tour, pos, journal, state, 2, 3, 8, 9)
    assert state.tolist() == [-1, 0] and journal[0].tolist() == [0, 1, 5, 6]


def test_undo_replays_the_journal_back_to_the_same_cycle() -> None:
    rng = np.random.default_rng(7)
    n = 50
    unit, ids = _instance(rng, n, 4)
    search = PathSearch(unit.numpy(), rng.permutation(n), ids)
    original = _cycle_edges(search.tour)
    search.state[:] = (0, 0)
    for _ in range(30):  # random valid flips: drop (a, succ a), (c, succ c), add (a, c), (succ a, succ c)
        i, j = sorted(rng.choice(n + 1, size=2, replace=False).tolist())
        if j - i < 2 or (i == 0 and j == n):
            continue
        a, b, c, d = (int(search.tour[x % (n + 1)]) for x in (i, i + 1, j, j + 1))
        tsp_tour.flip(search.tour, search.pos, search.journal, search.state, a, b, c, d)
    assert _cycle_edges(search.tour) != original
    tsp_tour.undo(search.tour, search.pos, search.journal, search.state)
    assert _cycle_edges(search.tour) == original
    assert np.array_equal(search.tour[search.pos], np.arange(n + 1))


@pytest.mark.parametrize("forward", [True, False])
@pytest.mark.parametrize(("segment", "x"), [((3, 5), 8), ((3, 5), 6), ((3, 5), 1), ((3, 3), 0), ((4, 6), 1)])
def test_move_segment_puts_the_segment_between_x_and_its_successor(
    segment: tuple[int, int], x: int, forward: bool
) -> None:
    tour, pos, journal, state = _cycle(list(range(10)))
    first, last = segment
    p, q, y = (first - 1) % 10, (last + 1) % 10, (x + 1) % 10
    tsp_tour.move_segment(tour, pos, journal, state, p, first, last, q, x, y, forward)
    inner = list(range(first, last + 1))
    moved = inner if forward else inner[::-1]
    rest = [v for v in range(10) if v not in inner]
    at = rest.index(x)
    expected = _cycle_edges(np.asarray(rest[: at + 1] + moved + rest[at + 1 :]))
    assert _cycle_edges(tour) == expected
    assert np.array_equal(tour[pos], np.arange(10))


def test_between_walks_either_way_round_the_cycle() -> None:
    tour, pos, _, _ = _cycle([4, 0, 3, 1, 2])  # positions: 4@0 0@1 3@2 1@3 2@4
    assert tsp_tour.between(pos, 5, 0, 1, 2, True)  # 0 3 1 2
    assert not tsp_tour.between(pos, 5, 0, 4, 2, True)
    assert tsp_tour.between(pos, 5, 2, 4, 3, True)  # wraps: 2 4 0 3
    assert tsp_tour.between(pos, 5, 1, 0, 4, False)  # 1 3 0 4
    assert not tsp_tour.between(pos, 5, 1, 2, 4, False)
    assert tsp_tour.succ(tour, pos, 2) == 4 and tsp_tour.pred(tour, pos, 4) == 2
    assert tsp_tour.step(tour, pos, 0, True) == 3 and tsp_tour.step(tour, pos, 0, False) == 4


def test_push_queues_each_node_once_in_order() -> None:
    queue, queued, qs = np.zeros(4, np.int64), np.zeros(4, np.uint8), np.array([3, 0], np.int64)
    for v in (2, 0, 2, 3, 0):
        tsp_tour.push(queue, queued, qs, v)
    assert qs.tolist() == [3, 3] and queued.tolist() == [1, 0, 1, 1]
    assert [int(queue[(3 + i) % 4]) for i in range(3)] == [2, 0, 3]  # a ring buffer from head 3
