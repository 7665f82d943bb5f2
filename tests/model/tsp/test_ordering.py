"""Tests for model/tsp/ordering.py (+ tsp_graph, tsp_improve) and app/research/ordering.py.

Fast tests use small synthetic point sets whose optimal open path is known (points on a line, on a
circle); anything that needs SmolLM2 is marked slow.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from app.research import ordering as ordering_cli
from core.errors import InvalidPermutation, OrderingConfigError, OrderingFileError
from model.tsp import graph as tsp_graph
from model.tsp import ordering as ordering_module
from model.tsp.ordering import (
    Ordering,
    OrderingConfig,
    OrderingProgress,
    check_permutation,
    compute_ordering,
    embedding_fingerprint,
    identity_ordering,
    load_ordering,
    mean_adjacent_distance,
    ordering_for_embeddings,
    save_ordering,
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


def test_bounds_never_exceed_a_known_optimum(rng: np.random.Generator) -> None:
    t = np.sort(rng.uniform(-2.0, 2.0, size=150))
    emb = np.stack([t, np.ones_like(t)], axis=1).astype(np.float32)
    unit = tsp_graph.unit_rows(torch.from_numpy(emb))
    optimum = tsp_graph.path_length(unit, np.arange(150))
    ids, dists = tsp_graph.knn_lists(unit, 8, 16, 64, bf16_prefilter=False)
    assert tsp_graph.two_neighbour_bound(dists) <= optimum + 1e-9
    assert tsp_graph.held_karp_bound(ids, dists, upper=optimum * 1.1) <= optimum + 1e-9


def test_knn_lists_match_brute_force(rng: np.random.Generator) -> None:
    emb = rng.normal(size=(500, 16)).astype(np.float32)
    unit = tsp_graph.unit_rows(torch.from_numpy(emb))
    ids, dists = tsp_graph.knn_lists(unit, 6, 24, 128, bf16_prefilter=True)
    sims = (unit @ unit.T).double().numpy()
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :6]
    assert (ids == expected).mean() > 0.99  # bf16 shortlist, exact re-rank
    assert_close(dists, 1.0 - np.take_along_axis(sims, ids, 1), atol=1e-6)


def test_fingerprint_tracks_every_value_and_the_shape(rng: np.random.Generator) -> None:
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    base = embedding_fingerprint(emb)
    assert embedding_fingerprint(torch.from_numpy(emb)) == base
    assert embedding_fingerprint(emb.astype(np.float64)) == base
    changed = emb.copy()
    changed[17, 3] = np.nextafter(changed[17, 3], np.float32(np.inf))
    assert embedding_fingerprint(changed) != base
    assert embedding_fingerprint(emb.reshape(100, 4)) != base


def test_save_load_round_trip_and_tampering(tmp_path: Path, rng: np.random.Generator) -> None:
    emb = rng.normal(size=(120, 8)).astype(np.float32)
    original = compute_ordering(emb, FAST)
    command = "python -m app.research.ordering compute"
    save_ordering(original, tmp_path / "o", model_name="toy", command=command)
    loaded = load_ordering(tmp_path / "o")
    assert np.array_equal(loaded.perm, original.perm) and np.array_equal(loaded.inv_perm, original.inv_perm)
    assert loaded.config == original.config and loaded.fingerprint == original.fingerprint
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["command"].startswith("python -m app.research.ordering")
    assert OrderingConfig.from_dict(manifest["config"]) == original.config
    assert np.load(tmp_path / "o" / "perm.npy").dtype == np.int32
    swapped = original.perm.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    np.save(tmp_path / "o" / "perm.npy", swapped)
    with pytest.raises(OrderingFileError, match="SHA-256"):
        load_ordering(tmp_path / "o")
    with pytest.raises(OrderingFileError):
        load_ordering(tmp_path / "missing")


def test_fingerprint_mismatch_recomputes_into_the_cache(tmp_path: Path, rng: np.random.Generator) -> None:
    old = rng.normal(size=(150, 8)).astype(np.float32)
    new = old.copy()
    new[0, 0] += 1.0
    shipped = tmp_path / "shipped"
    save_ordering(compute_ordering(old, FAST), shipped, model_name="toy")
    before = (shipped / "perm.npy").read_bytes()
    notes: list[OrderingProgress] = []
    result = ordering_for_embeddings(
        new, "toy", shipped, notes.append, cache_dir=tmp_path / "cache", config=FAST
    )
    assert result.fingerprint == embedding_fingerprint(new)
    assert any("recomputing" in p.note for p in notes) and any(p.stage == "knn" for p in notes)
    assert (shipped / "perm.npy").read_bytes() == before  # the shipped asset is never overwritten
    cached = ordering_module.cached_ordering_dir("toy", result.fingerprint, tmp_path / "cache")
    assert load_ordering(cached).fingerprint == result.fingerprint


def test_matching_fingerprint_loads_without_computing(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = rng.normal(size=(150, 8)).astype(np.float32)
    stored = compute_ordering(emb, FAST)
    save_ordering(stored, tmp_path / "o", model_name="toy")

    def refuse(*_args: object, **_kwargs: object) -> Ordering:
        raise AssertionError("recomputed although the fingerprint matches")

    monkeypatch.setattr(ordering_module, "compute_ordering", refuse)
    result = ordering_for_embeddings(emb, "toy", tmp_path / "o", cache_dir=tmp_path / "cache")
    assert np.array_equal(result.perm, stored.perm)


def test_config_validation_and_dict_round_trip() -> None:
    config = OrderingConfig(seed=7, kicks=5, window_size=64)
    assert OrderingConfig.from_dict(json.loads(json.dumps(asdict(config)))) == config
    for bad in (
        {"method": "optimal"},
        {"knn_k": 0},
        {"knn_k": 20},  # alpha candidates come from the greedy_k (16) nearest rows
        {"candidate_rule": "random"},
        {"ascent_steps": -1},
        {"window_size": 2},
        {"candidates": 4},
        {"time_budget_s": 0},
    ):
        with pytest.raises(OrderingConfigError):
            OrderingConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(OrderingConfigError, match="unknown"):
        OrderingConfig.from_dict({"k": 3})


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


@pytest.mark.parametrize(
    "argv",
    [
        ["compute", "--kicks", "-1"],
        ["compute", "--method", "best"],
        ["compute", "--candidate-rule", "x"],
        ["inspect", "--run-length", "0"],
        [],
    ],
)
def test_cli_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ordering_cli.main(argv)
    assert exc.value.code == 2


def test_cli_rejects_a_bad_setting_combination_before_loading_the_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def no_model(_args: object) -> None:
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(ordering_cli, "_load_model", no_model)
    assert ordering_cli.main(["compute", "--knn-k", "20", "--out", str(tmp_path)]) == 2
    assert "raise greedy_k or shorten knn_k" in capsys.readouterr().err


# --- the default model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_shipped_asset_matches_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.loading import DEFAULT_MODEL_NAME, load_default

    loaded = load_default()
    shipped = load_ordering(ordering_module.shipped_ordering_dir(DEFAULT_MODEL_NAME))
    assert shipped.fingerprint == embedding_fingerprint(loaded.input_embeddings())
    assert shipped.vocab_size == loaded.input_embeddings().shape[0]
    quality = shipped.quality
    assert quality["shorter_than_id"] >= 0.30
    assert quality["length"]["final"] < quality["length"]["paper_greedy"]
    monkeypatch.setattr(ordering_module, "compute_ordering", lambda *a, **k: pytest.fail("recomputed"))
    via_model = ordering_module.ordering_for_model(loaded)
    assert np.array_equal(via_model.perm, shipped.perm)
    assert_close(
        mean_adjacent_distance(loaded.input_embeddings(), shipped.perm),
        quality["mean_distance"]["final"],
        1e-9,
    )
