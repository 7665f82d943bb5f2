"""Improving an open vocabulary path: local search, iterated local search, python-tsp windows.

`PathSearch` holds the path and drives the compiled moves of `model.tsp.kernels` (2-opt, 3-opt and Or-opt
on kNN candidate lists with a dirty-node FIFO, then seeded iterated local search) in chunks, so that the
caller can report progress and stop at a deadline between chunks. `refine_windows` re-solves windows of
consecutive positions with python-tsp (Lin-Kernighan on integer distances with both ends pinned).

References: D. S. Johnson, L. A. McGeoch (1997), sections 3.3-3.5 (neighbour lists, don't-look bits,
Or-opt) and 5 (iterated LK); python-tsp 0.5 `solve_tsp_lin_kernighan`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from core.progress import OnProgress, Progress
from model.tsp import kernels as k
from model.tsp import tour as tsp_tour

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
_CHUNK_NODES = 1 << 14  # nodes examined between deadline checks in the first local search
_CHUNK_KICKS = 1 << 11  # kicks between deadline checks


class PathSearch:
    """Mutable open path with compiled 3-opt / Or-opt local search over fixed candidate lists."""

    def __init__(self, unit: npt.NDArray[np.floating], tour: IntArray, ids: IntArray, seed: int = 0) -> None:
        self.rows = np.ascontiguousarray(unit, dtype=np.float32)  # (n, d) unit rows
        n = len(tour)
        self.n = n
        self.tour = np.append(np.asarray(tour, np.int64), n)  # the virtual node n closes the cycle
        self.pos = np.empty(n + 1, np.int64)
        self.pos[self.tour] = np.arange(n + 1)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        exact = tsp_tour.list_distances(self.rows, ids)  # the kernels' own distances, so pruning agrees
        order = np.argsort(exact, axis=1, kind="stable")
        self.nbr = np.ascontiguousarray(np.take_along_axis(ids, order, 1))
        self.nbr_d = np.ascontiguousarray(np.take_along_axis(exact, order, 1))
        self.journal = np.zeros((tsp_tour.JOURNAL, 4), np.int64)
        self.state = np.array([-1, 0], np.int64)  # journal length (-1: off), overflow count
        self.queue = np.zeros(n + 1, np.int64)
        self.queued = np.zeros(n + 1, np.uint8)
        self.qs = np.zeros(2, np.int64)  # FIFO head, size
        # xorshift64* state: any non-zero seed; splitmix-style spread so nearby seeds differ at once
        self.rng = np.array([(seed * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) % (1 << 64) or 1], np.uint64)
        self.kicks_done = 0
        self.kicks_kept = 0
        self.kicks_unchecked = 0

    def _search(self) -> tuple[Any, ...]:
        """The tuple the kernels work on (see `model.tsp.kernels`); the arrays are shared, not copied."""
        return (
            self.rows, self.tour, self.pos, self.nbr, self.nbr_d,
            self.journal, self.state, self.queue, self.queued, self.qs,
        )  # fmt: skip

    def path(self) -> IntArray:
        """The open path: the cycle read from just after the virtual node."""
        cut = int(self.pos[self.n])
        return np.concatenate([self.tour[cut + 1 :], self.tour[:cut]])

    def _run(self, deadline: float, on_progress: OnProgress | None) -> float:
        gain, examined = 0.0, 0
        while self.qs[1] > 0:
            if time.perf_counter() > deadline:
                break
            g, done = k.local_search(self._search(), _CHUNK_NODES)
            gain += g
            examined += done
            if on_progress:
                on_progress(Progress("local search", examined, examined + int(self.qs[1])))
        return gain

    def optimise(self, deadline: float, on_progress: OnProgress | None = None) -> float:
        """Local search from every node until no 2-opt / 3-opt / Or-opt / reopening move gains: total gain."""
        self.queued[: self.n] = 1
        self.queue[: self.n] = np.arange(self.n)
        self.qs[:] = (0, self.n)
        gain = self._run(deadline, on_progress)
        for _ in range(8):  # each reopening is followed by a local repair; rarely more than one
            moved = k.reopen(self._search())
            if moved <= 0.0:
                break
            gain += moved + self._run(deadline, on_progress)
        self.queued[:] = 0  # a deadline may leave nodes queued
        self.qs[:] = 0
        return gain

    def kick(self, count: int, window: int, deadline: float, on_progress: OnProgress | None = None) -> float:
        """Up to `count` iterated-local-search steps, in chunks, until `deadline`: total gain."""
        gain, done = 0.0, 0
        while done < count and time.perf_counter() <= deadline:
            step = min(_CHUNK_KICKS, count - done)
            g, kept, unchecked = k.kicks(self._search(), self.rng, step, window)
            gain += g
            done += step
            self.kicks_kept += kept
            self.kicks_unchecked += unchecked
            if on_progress:
                on_progress(Progress("kicks", done, count))
        self.kicks_done += done
        return gain


def refine_windows(
    unit: FloatArray,
    tour: IntArray,
    window: int,
    deadline: float,
    scale: float = 1e5,
    on_progress: OnProgress | None = None,
) -> tuple[IntArray, float]:
    """Re-solve windows of `window` consecutive positions (half-overlapping) with python-tsp.

    Each window is an open path with both ends pinned; python-tsp solves cycles, so the pinned pair is
    joined by a free edge and every other edge costs a large constant more (any optimal cycle then uses
    the free edge). Distances are rounded integers (`scale` units per cosine distance): python-tsp's
    Lin-Kernighan stalls on floats. A window is replaced only if its rounded length went down.

    Returns:
        (new tour, gain in cosine distance).
    """
    from python_tsp.heuristics import solve_tsp_lin_kernighan

    tour = tour.copy()
    n = len(tour)
    if window < 4 or n < window:
        return tour, 0.0
    gain = 0.0
    starts = list(range(0, n - window + 1, max(1, window // 2)))
    for done, start in enumerate(starts):
        if time.perf_counter() > deadline:
            break
        rows = tour[start : start + window]
        exact = 1.0 - unit[rows] @ unit[rows].T  # (w, w)
        scaled = np.rint(exact * scale).astype(np.int64)
        np.fill_diagonal(scaled, 0)
        big = int(scaled.max()) * window + 1
        cost = scaled + big
        np.fill_diagonal(cost, 0)
        cost[0, window - 1] = cost[window - 1, 0] = 0
        cycle, _ = solve_tsp_lin_kernighan(cost, x0=list(range(window)))
        k = cycle.index(0)
        path = cycle[k:] + cycle[:k]
        if path[-1] != window - 1:
            path = [path[0]] + path[1:][::-1]
        if path[-1] != window - 1:
            continue  # the free edge was not used: keep the window as it is
        order = np.asarray(path, np.int64)
        before = float(scaled[np.arange(window - 1), np.arange(1, window)].sum())
        after = float(scaled[order[:-1], order[1:]].sum())
        if after < before:
            old = float(exact[np.arange(window - 1), np.arange(1, window)].sum())
            new = float(exact[order[:-1], order[1:]].sum())
            tour[start : start + window] = rows[order]
            gain += old - new
        if on_progress:
            on_progress(Progress("windows", done + 1, len(starts)))
    return tour, gain
