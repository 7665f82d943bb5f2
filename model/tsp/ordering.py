"""The vocabulary order `pi` of the TSP sampler: the `Ordering` record and the search that computes it.

`pi` (DESIGN.md section 2) is an open path through the L2-normalised **input** embedding rows under
cosine distance; `perm[j]` is the token id at position `j`, `inv_perm[token] = j`. It is a pure function
of the embedding matrix and an `OrderingConfig` (`model.tsp.config`), computed offline:

1. kNN candidate lists in row blocks (`model.tsp.graph.knn_lists`; no V x V matrix);
2. a first path: greedy matching (default) or the paper's greedy nearest-neighbour path from token 0;
3. candidate lists for the search: the alpha-nearest rows after a Held-Karp subgradient ascent
   (`model.tsp.alpha`, default) or the plain kNN lists;
4. 3-opt + Or-opt on the candidate lists to a local optimum, then seeded kicks (iterated local search),
   compiled with numba (`model.tsp.kernels`), optionally python-tsp on windows of consecutive positions
   (`model.tsp.improve`).

`method="paper"` stops after the paper's exact greedy nearest-neighbour path (arXiv 2510.12343);
`method="identity"` is token-id order (TSP off). An `Ordering` carries the SHA-256 fingerprint of the
embedding matrix it was computed for; `model.tsp.store` saves, loads and verifies orderings and finds
the one that fits a model.

Library code: no printing; progress goes through `on_progress(Progress)`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.errors import InvalidPermutation, OrderingConfigError
from core.progress import OnProgress, Progress
from model.tsp import alpha as tsp_alpha
from model.tsp import graph as tsp_graph
from model.tsp import improve as tsp_improve
from model.tsp.config import DEFAULT_CONFIG, OrderingConfig

Int32Array = npt.NDArray[np.int32]


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
    on_progress: OnProgress | None = None,
    *,
    paper_reference: bool = False,
    held_karp: bool = False,
) -> Ordering:
    """Compute the vocabulary order for a (V, d) embedding matrix. Pure: same inputs, same perm.

    Args:
        embeddings: the model's input embedding matrix (any float dtype; used as float32).
        config: the method and its knobs.
        on_progress: receives a `Progress` per stage step (the CLI turns it into a tqdm bar).
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
            unit, k, config.candidates, config.block_rows, config.bf16_prefilter, report
        )
        lap("knn")
        gk = min(config.greedy_k, k)
        if config.method == "paper" or config.construction == "nearest_neighbour" or paper_reference:
            greedy = tsp_graph.greedy_nearest_neighbour(
                unit, ids[:, :gk], config.start_token, report
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
                    report,
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
                    report,
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
            report(Progress("quality", note="Held-Karp bound"))
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
    report: OnProgress,
    quality: dict[str, Any],
) -> npt.NDArray[np.int64]:
    """3-opt + Or-opt to a local optimum, then kicks, then optional windows, within the time budget."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    deadline = start + config.time_budget_s
    rows = unit.numpy()  # (V, d) float32 unit rows, shared with the search (no copy)
    search = tsp_improve.PathSearch(rows, first, ids, config.seed)
    search.optimise(deadline, report)
    timings["local_search"] = round(time.perf_counter() - start, 3)
    mark = time.perf_counter()
    search.kick(config.kicks, config.kick_window, deadline, report)
    timings["kicks"] = round(time.perf_counter() - mark, 3)
    tour = search.path()
    if config.window_size:
        mark = time.perf_counter()
        tour, _ = tsp_improve.refine_windows(
            rows,
            tour,
            config.window_size,
            deadline,
            on_progress=report,
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


def _as_numpy(embeddings: np.ndarray | torch.Tensor) -> npt.NDArray[np.float32]:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().to(torch.float32).numpy()
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0:
        raise OrderingConfigError(f"embeddings must be a non-empty (V, d) matrix, got shape {array.shape}")
    return array
