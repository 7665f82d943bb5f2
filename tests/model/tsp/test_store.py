"""Tests for model/tsp/store.py: save, load and verify orderings; find the one that fits a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import OrderingFileError
from core.progress import Progress
from model.tsp import store as store_module
from model.tsp.config import OrderingConfig
from model.tsp.ordering import Ordering, compute_ordering, embedding_fingerprint, mean_adjacent_distance
from model.tsp.store import load_ordering, ordering_for_embeddings, save_ordering
from tests.conftest import assert_close

FAST = OrderingConfig(kicks=300)


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
    notes: list[Progress] = []
    result = ordering_for_embeddings(
        new, "toy", shipped, notes.append, cache_dir=tmp_path / "cache", config=FAST
    )
    assert result.fingerprint == embedding_fingerprint(new)
    assert any("recomputing" in p.note for p in notes) and any(p.stage == "knn" for p in notes)
    assert (shipped / "perm.npy").read_bytes() == before  # the shipped asset is never overwritten
    cached = store_module.cached_ordering_dir("toy", result.fingerprint, tmp_path / "cache")
    assert load_ordering(cached).fingerprint == result.fingerprint


def test_matching_fingerprint_loads_without_computing(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = rng.normal(size=(150, 8)).astype(np.float32)
    stored = compute_ordering(emb, FAST)
    save_ordering(stored, tmp_path / "o", model_name="toy")

    def refuse(*_args: object, **_kwargs: object) -> Ordering:
        raise AssertionError("recomputed although the fingerprint matches")

    monkeypatch.setattr(store_module, "compute_ordering", refuse)
    result = ordering_for_embeddings(emb, "toy", tmp_path / "o", cache_dir=tmp_path / "cache")
    assert np.array_equal(result.perm, stored.perm)


# --- the default model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_shipped_asset_matches_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.loading import DEFAULT_MODEL_NAME, load_default

    loaded = load_default()
    shipped = load_ordering(store_module.shipped_ordering_dir(DEFAULT_MODEL_NAME))
    assert shipped.fingerprint == embedding_fingerprint(loaded.input_embeddings())
    assert shipped.vocab_size == loaded.input_embeddings().shape[0]
    quality = shipped.quality
    assert quality["shorter_than_id"] >= 0.30
    assert quality["length"]["final"] < quality["length"]["paper_greedy"]
    monkeypatch.setattr(store_module, "compute_ordering", lambda *a, **k: pytest.fail("recomputed"))
    via_model = store_module.ordering_for_model(loaded)
    assert np.array_equal(via_model.perm, shipped.perm)
    assert_close(
        mean_adjacent_distance(loaded.input_embeddings(), shipped.perm),
        quality["mean_distance"]["final"],
        1e-9,
    )


def test_the_shipped_asset_is_found_in_the_repository_and_verifies() -> None:
    root = Path(__file__).resolve().parents[3] / "assets" / "orderings"
    assert store_module.ASSET_ROOT == root
    names = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file())
    assert names, f"no shipped ordering under {root}"
    for name in names:
        shipped = load_ordering(store_module.shipped_ordering_dir(name))
        assert shipped.vocab_size > 0  # load_ordering checked the SHA-256s and that inv_perm inverts perm
