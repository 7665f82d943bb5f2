"""The vocabulary order `pi` of the TSP sampler: compute, verify, store and load it.

`pi` (DESIGN.md section 2) is an open path through the L2-normalised **input** embedding rows under
cosine distance; `perm[j]` is the token id at position `j`, `inv_perm[token] = j`. It is a pure function
of the embedding matrix and an `OrderingConfig`, computed offline:

1. kNN candidate lists in row blocks (`model.tsp.graph.knn_lists`; no V x V matrix);
2. a first path: greedy matching (default) or the paper's greedy nearest-neighbour path from token 0;
3. candidate lists for the search: the alpha-nearest rows after a Held-Karp subgradient ascent
   (`model.tsp.alpha`, default) or the plain kNN lists;
4. 3-opt + Or-opt on the candidate lists to a local optimum, then seeded kicks (iterated local search),
   compiled with numba (`model.tsp.kernels`), optionally python-tsp on windows of consecutive positions
   (`model.tsp.improve`).

`method="paper"` stops after the paper's exact greedy nearest-neighbour path (arXiv 2510.12343);
`method="identity"` is token-id order (TSP off). An `Ordering` carries the SHA-256 fingerprint of the
embedding matrix it was computed for; `ordering_for_model` loads the shipped asset only when that
fingerprint matches and otherwise recomputes into the user cache (never over the shipped asset).

Library code: no printing; progress goes through `on_progress(OrderingProgress)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.errors import (
    InvalidPermutation,
    OrderingConfigError,
    OrderingFileError,
    OrderingMismatch,
)
from model.tsp import alpha as tsp_alpha
from model.tsp import graph as tsp_graph
from model.tsp import improve as tsp_improve

ORDERING_FORMAT = 1  # bump when the files or the manifest change meaning
ASSET_ROOT = Path(__file__).resolve().parent.parent / "assets" / "orderings"
METHODS = ("improved", "paper", "identity")
CONSTRUCTIONS = ("greedy_edge", "nearest_neighbour")
CANDIDATE_RULES = ("alpha", "knn")
Int32Array = npt.NDArray[np.int32]


@dataclass(frozen=True)
class OrderingConfig:
    """Everything that determines `perm` (apart from the embedding matrix). Round-trips as a dict."""

    method: str = "improved"  # "improved" | "paper" (exact greedy NN only) | "identity" (token ids)
    construction: str = "greedy_edge"  # first path of "improved": greedy matching, or the paper's path
    start_token: int = 0  # where the nearest-neighbour path starts; the paper starts at token 0
    seed: int = 0  # drives the kicks and the random-order baseline; nothing else is random
    candidate_rule: str = "alpha"  # search lists: "alpha" (alpha-nearness) or "knn" (nearest rows)
    knn_k: int = 6  # candidate list length for 3-opt / Or-opt
    greedy_k: int = 16  # kNN list length for the constructions and the alpha pools
    ascent_steps: int = 10  # subgradient steps before alpha-nearness (10 and 60 gave the same path)
    candidates: int = 24  # bfloat16 shortlist per row before exact re-ranking (see the note)
    bf16_prefilter: bool = True  # False: float32 block products, exact lists, ~5x slower kNN stage
    block_rows: int = 1024  # rows per block product; peak ~ block_rows x V x 6 bytes
    kicks: int = 100000  # iterated-local-search steps (~0.2 ms each); deterministic if all fit the budget
    kick_window: int = 12  # positions one kick spans (12 beat 50 on SmolLM2: 0.08% shorter)
    window_size: int = 0  # python-tsp windows after the kicks; 0 = off (measured: 0.02% in 30 s)
    time_budget_s: float = 30.0  # wall-clock cap on local search + kicks + windows together

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise OrderingConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.construction not in CONSTRUCTIONS:
            raise OrderingConfigError(
                f"construction must be one of {CONSTRUCTIONS}, got {self.construction!r}"
            )
        for name in ("knn_k", "greedy_k", "candidates", "block_rows", "kick_window"):
            if int(getattr(self, name)) < 1:
                raise OrderingConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.candidates < max(self.knn_k, self.greedy_k):
            raise OrderingConfigError(
                f"candidates ({self.candidates}) must be >= knn_k and greedy_k; raise it or shorten the lists"
            )
        if self.candidate_rule == "alpha" and self.knn_k > self.greedy_k:
            raise OrderingConfigError(
                f"knn_k ({self.knn_k}) must be <= greedy_k ({self.greedy_k}): alpha candidates are drawn "
                "from the greedy_k nearest rows; raise greedy_k or shorten knn_k"
            )
        if self.candidate_rule not in CANDIDATE_RULES:
            raise OrderingConfigError(
                f"candidate_rule must be one of {CANDIDATE_RULES}, got {self.candidate_rule!r}"
            )
        if min(self.kicks, self.start_token, self.seed, self.ascent_steps) < 0:
            raise OrderingConfigError("kicks, start_token, seed and ascent_steps must be >= 0")
        if self.window_size != 0 and not 4 <= self.window_size <= 400:
            raise OrderingConfigError(
                "window_size must be 0 (off) or 4..400 (python-tsp needs dense windows), "
                f"got {self.window_size}"
            )
        if not self.time_budget_s > 0:
            raise OrderingConfigError(f"time_budget_s must be > 0, got {self.time_budget_s}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OrderingConfig:
        """Inverse of `dataclasses.asdict`; unknown keys are an error, not silently dropped."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise OrderingConfigError(f"unknown OrderingConfig fields {sorted(unknown)}")
        return cls(**values)


DEFAULT_CONFIG = OrderingConfig()


@dataclass(frozen=True)
class OrderingProgress:
    """One progress report: `done` of `total` units of `stage` (total 0 = a one-off note)."""

    stage: str  # "fingerprint", "knn", "construction", "candidates", "local search", "kicks", ...
    done: int
    total: int
    note: str = ""


ProgressCallback = Callable[[OrderingProgress], None]


@dataclass(frozen=True, eq=False)
class Ordering:
    """A vocabulary order for one embedding matrix."""

    perm: Int32Array  # (V,) perm[j] = original token id at position j
    inv_perm: Int32Array  # (V,) inv_perm[token] = its position
    fingerprint: str  # embedding_fingerprint() of the matrix it was computed for
    config: OrderingConfig
    quality: dict[str, Any] = field(default_factory=dict)  # path lengths, bounds, timings

    @property
    def vocab_size(self) -> int:
        return int(self.perm.shape[0])

    @property
    def order_id(self) -> str:
        """SHA-256 of perm (int32 little-endian): names the order itself, e.g. on the wire."""
        return hashlib.sha256(self.perm.astype("<i4").tobytes()).hexdigest()


def embedding_fingerprint(embeddings: np.ndarray | torch.Tensor) -> str:
    """SHA-256 of the float32 C-contiguous bytes of the (V, d) matrix, prefixed by its shape."""
    array = _as_numpy(embeddings)
    digest = hashlib.sha256(f"he-chat-embeddings-v1:{array.shape[0]}x{array.shape[1]}:float32:".encode())
    digest.update(array.tobytes(order="C"))  # a copy (113 MB at V=49k), hashed in ~0.2 s
    return digest.hexdigest()


def check_permutation(perm: npt.ArrayLike, vocab_size: int) -> Int32Array:
    """`perm` as int32 if it lists every id in 0..vocab_size-1 exactly once.

    Raises:
        InvalidPermutation: wrong shape, non-integer, out of range, or an id missing/repeated.
    """
    array = np.asarray(perm)
    if array.shape != (vocab_size,):
        raise InvalidPermutation(f"perm must have shape ({vocab_size},), got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidPermutation(f"perm must hold integer token ids, got dtype {array.dtype}")
    if vocab_size and (array.min() < 0 or array.max() >= vocab_size):
        raise InvalidPermutation(f"perm holds ids outside 0..{vocab_size - 1}")
    seen = np.zeros(vocab_size, dtype=bool)
    seen[array] = True
    if not seen.all():
        raise InvalidPermutation(f"perm is not a permutation: {int((~seen).sum())} ids missing")
    return array.astype(np.int32)


def inverse(perm: Int32Array) -> Int32Array:
    """inv_perm with inv_perm[perm[j]] = j."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm), dtype=np.int32)
    return inv


def identity_ordering(embeddings: np.ndarray | torch.Tensor) -> Ordering:
    """Token-id order (TSP off) for this matrix, with its fingerprint and a quality entry."""
    return compute_ordering(embeddings, OrderingConfig(method="identity"))


def mean_adjacent_distance(embeddings: np.ndarray | torch.Tensor, perm: npt.ArrayLike) -> float:
    """Mean cosine distance between consecutive tokens of `perm` (the figure of the quality report)."""
    unit = tsp_graph.unit_rows(torch.from_numpy(_as_numpy(embeddings)), torch.float64)
    order = np.asarray(perm, dtype=np.int64)
    return tsp_graph.path_length(unit, order) / max(len(order) - 1, 1)


def compute_ordering(
    embeddings: np.ndarray | torch.Tensor,
    config: OrderingConfig = DEFAULT_CONFIG,
    on_progress: ProgressCallback | None = None,
    *,
    paper_reference: bool = False,
    held_karp: bool = False,
) -> Ordering:
    """Compute the vocabulary order for a (V, d) embedding matrix. Pure: same inputs, same perm.

    Args:
        embeddings: the model's input embedding matrix (any float dtype; used as float32).
        config: the method and its knobs.
        on_progress: receives `OrderingProgress` per stage step (the CLI turns it into a tqdm bar).
        paper_reference: also compute the paper's greedy path, for the quality report only.
        held_karp: also compute the Held-Karp style lower bound (~10 s at V = 49k), for the report.

    Returns:
        The `Ordering`; `quality` holds mean adjacent distances (id order, random order, first path,
        paper greedy when computed, final), lower bounds, stage timings and how the search stopped.

    Raises:
        OrderingConfigError: `start_token` is not a row of the matrix.
    """
    array = _as_numpy(embeddings)
    n = array.shape[0]
    if config.start_token >= max(n, 1):
        raise OrderingConfigError(f"start_token {config.start_token} is outside the {n} rows")
    report = on_progress or (lambda _p: None)
    fingerprint = embedding_fingerprint(array)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    started = clock

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    def steps(stage: str) -> tsp_graph.StepCallback:
        return lambda done, total: report(OrderingProgress(stage, done, total))

    unit64 = tsp_graph.unit_rows(torch.from_numpy(array), torch.float64)  # (V, d): exact distances
    unit = unit64.float()  # (V, d): block products and exact re-ranking
    quality: dict[str, Any] = {"vocab_size": n, "dim": int(array.shape[1]), "method": config.method}
    lengths: dict[str, float] = {"id_order": tsp_graph.path_length(unit64, np.arange(n))}
    rng = np.random.default_rng(config.seed)
    lengths["random_order"] = tsp_graph.path_length(unit64, rng.permutation(n))
    if config.method == "identity" or n < 3:
        perm = np.arange(n, dtype=np.int64)
        lengths["final"] = lengths["id_order"]
    else:
        k = min(max(config.knn_k, config.greedy_k), n - 1)
        ids, dists = tsp_graph.knn_lists(
            unit, k, config.candidates, config.block_rows, config.bf16_prefilter, steps("knn")
        )
        lap("knn")
        gk = min(config.greedy_k, k)
        if config.method == "paper" or config.construction == "nearest_neighbour" or paper_reference:
            greedy = tsp_graph.greedy_nearest_neighbour(
                unit, ids[:, :gk], config.start_token, steps("paper greedy")
            )
            lengths["paper_greedy"] = tsp_graph.path_length(unit64, greedy)
            lap("paper_greedy")
        if config.method == "paper":
            perm = greedy
        else:
            if config.construction == "greedy_edge":
                first = tsp_graph.greedy_edge(
                    unit,
                    ids[:, :gk],
                    dists[:, :gk],
                    config.candidates,
                    config.block_rows,
                    config.bf16_prefilter,
                    steps("construction"),
                )
                lengths["construction"] = tsp_graph.path_length(unit64, first)
                lap("construction")
            else:
                first = greedy
                lengths["construction"] = lengths["paper_greedy"]
            if config.candidate_rule == "alpha":
                lists = tsp_alpha.alpha_lists(
                    unit.numpy(),
                    ids[:, :gk],
                    config.knn_k,
                    config.ascent_steps,
                    steps("candidates"),
                )
            else:
                lists = ids[:, : config.knn_k]
            lap("candidates")
            perm = _improve(unit, first, lists, config, report, quality)
            timings.update(quality.pop("_timings"))
            clock = time.perf_counter()
        lengths["final"] = tsp_graph.path_length(unit64, perm)
        bounds = {"two_neighbour": tsp_graph.two_neighbour_bound(dists)}
        if held_karp:
            report(OrderingProgress("quality", 0, 0, "Held-Karp bound"))
            bounds["held_karp"] = tsp_graph.held_karp_bound(ids[:, :gk], dists[:, :gk], lengths["final"])
        best = max(bounds, key=lambda name: bounds[name])
        quality["lower_bound"] = {"value": bounds[best], "which": best, **bounds}
        quality["gap_to_bound"] = lengths["final"] / bounds[best] - 1.0 if bounds[best] > 0 else None
        lap("quality")
    if n > 1 and perm[0] > perm[-1] and config.method == "improved":
        perm = perm[::-1].copy()  # orientation is free for an open path: lower end first
    quality["length"] = lengths
    quality["mean_distance"] = {name: value / max(n - 1, 1) for name, value in lengths.items()}
    greedy_ref = lengths.get("paper_greedy", lengths.get("construction"))
    quality["shorter_than_id"] = 1.0 - lengths["final"] / lengths["id_order"] if lengths["id_order"] else 0.0
    quality["shorter_than_greedy"] = 1.0 - lengths["final"] / greedy_ref if greedy_ref else None
    timings["total"] = round(time.perf_counter() - started, 3)
    quality["timings_s"] = timings
    perm32 = check_permutation(perm, n)
    return Ordering(perm32, inverse(perm32), fingerprint, config, quality)


def _improve(
    unit: torch.Tensor,
    first: npt.NDArray[np.int64],
    ids: npt.NDArray[np.int64],
    config: OrderingConfig,
    report: ProgressCallback,
    quality: dict[str, Any],
) -> npt.NDArray[np.int64]:
    """3-opt + Or-opt to a local optimum, then kicks, then optional windows, within the time budget."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    deadline = start + config.time_budget_s
    rows = unit.numpy()  # (V, d) float32 unit rows, shared with the search (no copy)
    search = tsp_improve.PathSearch(rows, first, ids, config.seed)
    search.optimise(deadline, lambda d, t: report(OrderingProgress("local search", d, t)))
    timings["local_search"] = round(time.perf_counter() - start, 3)
    mark = time.perf_counter()
    search.kick(
        config.kicks,
        config.kick_window,
        deadline,
        lambda d, t: report(OrderingProgress("kicks", d, t)),
    )
    timings["kicks"] = round(time.perf_counter() - mark, 3)
    tour = search.path()
    if config.window_size:
        mark = time.perf_counter()
        tour, _ = tsp_improve.refine_windows(
            rows,
            tour,
            config.window_size,
            deadline,
            on_step=lambda d, t: report(OrderingProgress("windows", d, t)),
        )
        timings["windows"] = round(time.perf_counter() - mark, 3)
    quality["kicks"] = {
        "done": search.kicks_done,
        "accepted": search.kicks_kept,
        "unchecked": search.kicks_unchecked,  # kept without their undo check (journal overflow)
    }
    quality["stopped_by"] = "time budget" if time.perf_counter() > deadline else "converged"
    quality["_timings"] = timings
    return tour


# --- storage ------------------------------------------------------------------------------------


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
    on_progress: ProgressCallback | None = None,
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
    report(OrderingProgress("fingerprint", 0, 0, "hashing the embedding matrix"))
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
            report(OrderingProgress("fingerprint", 0, 0, f"not using {place}: {exc}; recomputing"))
    ordering = compute_ordering(embeddings, config, on_progress)
    save_ordering(
        ordering, cache, model_name=model_name, command="recomputed by model.tsp.ordering.ordering_for_model"
    )
    return ordering


def ordering_for_model(
    loaded: Any,
    directory: str | Path | None = None,
    on_progress: ProgressCallback | None = None,
    *,
    cache_dir: Path | None = None,
    config: OrderingConfig = DEFAULT_CONFIG,
) -> Ordering:
    """`ordering_for_embeddings` for a `model.loading.LoadedModel` (its input embeddings and name)."""
    return ordering_for_embeddings(
        loaded.input_embeddings(), loaded.name, directory, on_progress, cache_dir=cache_dir, config=config
    )


# --- helpers ------------------------------------------------------------------------------------


def _as_numpy(embeddings: np.ndarray | torch.Tensor) -> npt.NDArray[np.float32]:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().to(torch.float32).numpy()
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0:
        raise OrderingConfigError(f"embeddings must be a non-empty (V, d) matrix, got shape {array.shape}")
    return array


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

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
