"""Tests for model/tsp/ordering.py (the search driver, end to end).

Fast tests use small synthetic point sets whose optimal open path is known (points on a line, on a
circle). The graph, search and storage pieces have their own modules (test_graph, test_improve,
test_kernels, test_tour, test_store, test_config).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import InvalidPermutation
from model.tsp.config import OrderingConfig
from model.tsp.ordering import (
    check_permutation,
    compute_ordering,
    embedding_fingerprint,
    identity_ordering,
    mean_adjacent_distance,
)
from tests.conftest import assert_close

FAST = OrderingConfig(kicks=300)


def _rotate(points: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Embed 2-D points in `dim` dimensions by a random orthogonal map (cosines are unchanged)."""
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    padded = np.zeros((len(points), dim))
    padded[:, :2] = points
    return (padded @ q.T).astype(np.float32)


def _is_same_path(perm: np.ndarray, expected: np.ndarray) -> bool:
    return bool(np.array_equal(perm, expected) or np.array_equal(perm, expected[::-1]))


def test_points_on_a_line_come_back_in_line_order(rng: np.random.Generator) -> None:
    # rows (t, 1), scaled arbitrarily: after L2 normalisation their angle is monotone in t
    t = np.sort(rng.uniform(-1.0, 1.0, size=240))  # angles within +-45 degrees: well separated
    points = np.stack([t, np.ones_like(t)], axis=1) * rng.uniform(0.2, 5.0, size=(240, 1))
    shuffle = rng.permutation(240)
    emb = _rotate(points[shuffle], 16, rng)
    result = compute_ordering(emb, FAST)
    expected = np.argsort(shuffle)  # shuffled index of each sorted point
    assert _is_same_path(result.perm, expected)
    assert_close(result.quality["length"]["final"], mean_adjacent_distance(emb, expected) * 239, atol=1e-9)


@pytest.mark.parametrize(
    ("construction", "rule"),
    [("greedy_edge", "alpha"), ("nearest_neighbour", "alpha"), ("greedy_edge", "knn")],
)
def test_points_on_a_circle_come_back_round_the_circle(
    rng: np.random.Generator, construction: str, rule: str
) -> None:
    angles = rng.uniform(0.0, 2 * np.pi, size=300)
    emb = _rotate(np.stack([np.cos(angles), np.sin(angles)], axis=1), 12, rng)
    config = OrderingConfig(kicks=300, construction=construction, candidate_rule=rule)
    result = compute_ordering(emb, config)
    order = np.argsort(angles)
    gaps = np.diff(np.concatenate([angles[order], [angles[order[0]] + 2 * np.pi]]))
    expected = np.roll(order, -(int(np.argmax(gaps)) + 1))  # open the circle at its widest gap
    assert _is_same_path(result.perm, expected)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 40, 600])
@pytest.mark.parametrize("method", ["improved", "paper", "identity"])
def test_result_is_always_a_valid_permutation(n: int, method: str, rng: np.random.Generator) -> None:
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    if n > 10:
        emb[5] = emb[3] = emb[9]  # exact duplicates: distance 0, ties everywhere
        emb[7] = 0.0  # a zero row
    result = compute_ordering(emb, OrderingConfig(method=method, kicks=100))
    assert result.perm.dtype == np.int32 and result.inv_perm.dtype == np.int32
    assert sorted(result.perm.tolist()) == list(range(n))
    assert np.array_equal(result.inv_perm[result.perm], np.arange(n))
    if method == "identity":
        assert np.array_equal(result.perm, np.arange(n))


def test_same_seed_same_order_and_the_seed_matters(rng: np.random.Generator) -> None:
    emb = rng.normal(size=(900, 24)).astype(np.float32)
    first = compute_ordering(emb, OrderingConfig(kicks=400, seed=3))
    again = compute_ordering(torch.from_numpy(emb.copy()), OrderingConfig(kicks=400, seed=3))
    other = compute_ordering(emb, OrderingConfig(kicks=400, seed=4))
    assert np.array_equal(first.perm, again.perm)
    assert first.order_id == again.order_id
    assert not np.array_equal(first.perm, other.perm)  # kicks are seeded: another seed, another path


def _brute_force_greedy(emb: np.ndarray, start: int) -> np.ndarray:
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    visited = np.zeros(len(emb), dtype=bool)
    order = [start]
    visited[start] = True
    for _ in range(len(emb) - 1):
        row = np.where(visited, -np.inf, sims[order[-1]])
        order.append(int(np.argmax(row)))
        visited[order[-1]] = True
    return np.asarray(order)


def test_paper_method_is_the_plain_greedy_nearest_neighbour_path(rng: np.random.Generator) -> None:
    emb = rng.normal(size=(400, 16)).astype(np.float32)
    result = compute_ordering(
        emb, OrderingConfig(method="paper", knn_k=4, greedy_k=4, candidates=8, bf16_prefilter=False)
    )
    assert np.array_equal(result.perm, _brute_force_greedy(emb, 0))  # short lists force many exact scans


def test_improved_path_is_shorter_than_greedy_and_above_the_lower_bounds(rng: np.random.Generator) -> None:
    emb = rng.normal(size=(1500, 32)).astype(np.float32)
    result = compute_ordering(emb, OrderingConfig(kicks=1000), paper_reference=True, held_karp=True)
    length, bound = result.quality["length"], result.quality["lower_bound"]
    assert length["final"] < length["paper_greedy"] < length["id_order"]
    assert 0 < bound["two_neighbour"] <= bound["value"] <= length["final"]
    assert bound["held_karp"] <= length["final"]


def test_fingerprint_tracks_every_value_and_the_shape(rng: np.random.Generator) -> None:
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    base = embedding_fingerprint(emb)
    assert embedding_fingerprint(torch.from_numpy(emb)) == base
    assert embedding_fingerprint(emb.astype(np.float64)) == base
    changed = emb.copy()
    changed[17, 3] = np.nextafter(changed[17, 3], np.float32(np.inf))
    assert embedding_fingerprint(changed) != base
    assert embedding_fingerprint(emb.reshape(100, 4)) != base


def test_python_tsp_windows_keep_a_valid_and_not_longer_path(rng: np.random.Generator) -> None:
    emb = rng.normal(size=(300, 8)).astype(np.float32)
    plain = compute_ordering(emb, OrderingConfig(kicks=0))
    windowed = compute_ordering(emb, OrderingConfig(kicks=0, window_size=24))
    assert sorted(windowed.perm.tolist()) == list(range(300))
    assert windowed.quality["length"]["final"] <= plain.quality["length"]["final"] + 1e-9


def test_check_permutation_rejects_non_permutations() -> None:
    with pytest.raises(InvalidPermutation):
        check_permutation([0, 1, 1], 3)
    with pytest.raises(InvalidPermutation):
        check_permutation([0, 1, 3], 3)
    with pytest.raises(InvalidPermutation):
        check_permutation([0.0, 1.0, 2.0], 3)
    assert check_permutation(np.array([2, 0, 1]), 3).dtype == np.int32


def test_identity_ordering(rng: np.random.Generator) -> None:
    emb = rng.normal(size=(20, 4)).astype(np.float32)
    result = identity_ordering(emb)
    assert np.array_equal(result.perm, np.arange(20)) and result.fingerprint == embedding_fingerprint(emb)
