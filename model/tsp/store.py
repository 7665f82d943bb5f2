"""Storing vocabulary orders: save, load and verify them, and find the one that fits a model.

An ordering is three files in one directory: perm.npy and inv_perm.npy (int32) and manifest.json, written
last, with the SHA-256 of both arrays, the embedding fingerprint, the `OrderingConfig`, the command that
regenerates them, the quality figures and library versions (STYLE.md rule 16). `load_ordering` checks
all of it. `ordering_for_model` loads the shipped asset (assets/orderings/<model>) only when its
fingerprint matches the model's embedding matrix, and otherwise recomputes into the user cache (never
over the shipped asset).

Library code: no printing; progress goes through `on_progress(Progress)`; the only file writes are
`save_ordering`'s (atomic replacements).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import InvalidPermutation, OrderingConfigError, OrderingFileError, OrderingMismatch
from core.progress import OnProgress, Progress
from model.tsp.config import DEFAULT_CONFIG, OrderingConfig
from model.tsp.ordering import Ordering, check_permutation, compute_ordering, embedding_fingerprint

ORDERING_FORMAT = 1  # bump when the files or the manifest change meaning
ASSET_ROOT = Path(__file__).resolve().parents[2] / "assets" / "orderings"  # <repository>/assets/orderings


def save_ordering(
    ordering: Ordering, directory: str | Path, *, model_name: str = "", command: str = ""
) -> Path:
    """Write perm.npy, inv_perm.npy (int32) and manifest.json (written last) into `directory`.

    The manifest holds the fingerprint, the config dict, the SHA-256 of both .npy files, the command
    that regenerates them, the quality figures and library versions. Files are replaced atomically.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, array in (("perm", ordering.perm), ("inv_perm", ordering.inv_perm)):
        digests[name] = _atomic_write(target / f"{name}.npy", _npy_bytes(array.astype("<i4")))
    manifest = {
        "format": ORDERING_FORMAT,
        "model": model_name,
        "vocab_size": ordering.vocab_size,
        "fingerprint": ordering.fingerprint,
        "order_id": ordering.order_id,
        "perm_sha256": digests["perm"],
        "inv_perm_sha256": digests["inv_perm"],
        "config": asdict(ordering.config),
        "command": command,
        "quality": ordering.quality,
        "versions": _versions(),
    }
    _atomic_write(target / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return target


def load_ordering(directory: str | Path) -> Ordering:
    """Read and verify an ordering written by `save_ordering`.

    Raises:
        OrderingFileError: a file is missing or unreadable, a SHA-256 differs, or the format is unknown.
        InvalidPermutation: perm is not a permutation, or inv_perm is not its inverse.
    """
    source = Path(directory)
    try:
        manifest = json.loads((source / "manifest.json").read_text())
        if manifest.get("format") != ORDERING_FORMAT:
            raise OrderingFileError(
                f"{source}/manifest.json has format {manifest.get('format')!r}, expected {ORDERING_FORMAT}; "
                "regenerate it with the command in the manifest"
            )
        arrays = {}
        for name in ("perm", "inv_perm"):
            raw = (source / f"{name}.npy").read_bytes()
            if hashlib.sha256(raw).hexdigest() != manifest[f"{name}_sha256"]:
                raise OrderingFileError(f"{source}/{name}.npy does not match its SHA-256 in manifest.json")
            arrays[name] = np.load(source / f"{name}.npy", allow_pickle=False)
        config = OrderingConfig.from_dict(manifest["config"])
        fingerprint, quality = str(manifest["fingerprint"]), dict(manifest.get("quality", {}))
        vocab_size = int(manifest["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError, OrderingConfigError) as exc:
        raise OrderingFileError(f"cannot read the ordering in {source}: {exc}") from exc
    perm = check_permutation(arrays["perm"], vocab_size)
    inv = check_permutation(arrays["inv_perm"], vocab_size)
    if not np.array_equal(inv[perm], np.arange(vocab_size)):
        raise InvalidPermutation(f"{source}/inv_perm.npy is not the inverse of perm.npy")
    return Ordering(perm, inv, fingerprint, config, quality)


def shipped_ordering_dir(model_name: str) -> Path:
    """Where the repository ships the ordering of a model: assets/orderings/<name>."""
    return ASSET_ROOT / model_name


def cached_ordering_dir(model_name: str, fingerprint: str, cache_dir: Path | None = None) -> Path:
    """Where a recomputed ordering is cached: <cache>/orderings/<name>/<fingerprint[:16]>."""
    if cache_dir is None:
        from model.loading import default_cache_dir

        cache_dir = default_cache_dir()
    return cache_dir / "orderings" / model_name / fingerprint[:16]


def ordering_for_embeddings(
    embeddings: np.ndarray | torch.Tensor,
    model_name: str,
    directory: str | Path | None = None,
    on_progress: OnProgress | None = None,
    *,
    cache_dir: Path | None = None,
    config: OrderingConfig = DEFAULT_CONFIG,
) -> Ordering:
    """The stored ordering for this matrix if one matches its fingerprint; else compute and cache one.

    Looks in `directory` if given, else in the shipped asset and then the user cache. A stored ordering
    whose fingerprint differs (or whose files fail their checks) is never used: the order is recomputed
    (with progress reports) and saved under the user cache, never over the shipped asset.
    """
    report = on_progress or (lambda _p: None)
    report(Progress("fingerprint", note="hashing the embedding matrix"))
    fingerprint = embedding_fingerprint(embeddings)
    cache = cached_ordering_dir(model_name, fingerprint, cache_dir)
    places = [Path(directory)] if directory is not None else [shipped_ordering_dir(model_name), cache]
    for place in places:
        if not (place / "manifest.json").is_file():
            continue
        try:
            stored = load_ordering(place)
            if stored.fingerprint != fingerprint:
                raise OrderingMismatch(
                    f"{place} was computed for embeddings {stored.fingerprint[:12]}, not {fingerprint[:12]}"
                )
            return stored
        except (OrderingFileError, OrderingMismatch, InvalidPermutation) as exc:
            report(Progress("fingerprint", note=f"not using {place}: {exc}; recomputing"))
    ordering = compute_ordering(embeddings, config, on_progress)
    save_ordering(
        ordering, cache, model_name=model_name, command="recomputed by model.tsp.store.ordering_for_model"
    )
    return ordering


def ordering_for_model(
    loaded: Any,
    directory: str | Path | None = None,
    on_progress: OnProgress | None = None,
    *,
    cache_dir: Path | None = None,
    config: OrderingConfig = DEFAULT_CONFIG,
) -> Ordering:
    """`ordering_for_embeddings` for a `model.loading.LoadedModel` (its input embeddings and name)."""
    return ordering_for_embeddings(
        loaded.input_embeddings(), loaded.name, directory, on_progress, cache_dir=cache_dir, config=config
    )


# --- helpers ------------------------------------------------------------------------------------


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are shareable data files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("numpy", "torch", "python-tsp"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
