"""Improving an open vocabulary path: 2-opt and Or-opt on kNN candidate lists, kicks, windows.

The path lives in two arrays, `tour[j]` (row at position j) and `pos[row]`, and both end points are
joined to a virtual node at distance 0, so end moves need no special case. Moves are found the
Johnson-McGeoch way: for a node `a` with path neighbour `b`, only list neighbours `c` with
`d(a, c) < d(a, b)` can start an improving 2-opt move, and only those with `d(c, .) <` the removal gain
can receive an Or-opt segment of 1-3 rows. A queue of "dirty" nodes (don't-look bits) replaces full
sweeps. Distances are float64 dot products computed on demand: no matrix is stored.

After the local optimum, `kick` runs iterated local search: a random segment exchange (a local double
bridge) inside a short stretch of the path, a local repair, and an undo unless the path got shorter.
`refine_windows` re-solves windows of consecutive positions with python-tsp (Lin-Kernighan on integer
distances with both ends pinned).

References: D. S. Johnson, L. A. McGeoch (1997), sections 3.3-3.5 (neighbour lists, don't-look bits,
Or-opt) and 5 (iterated LK); python-tsp 0.5 `solve_tsp_lin_kernighan`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
StepCallback = Callable[[int, int], None]  # (done, total)
_EPS = 1e-10  # gains below this are float noise; requiring more rules out cycling


class PathSearch:
    """Mutable open path with 2-opt / Or-opt local search over fixed candidate lists."""

    def __init__(self, unit: FloatArray, tour: IntArray, ids: IntArray) -> None:
        self.rows = list(unit)  # float64 row views: one dot product per distance
        self.tour = np.array(tour, dtype=np.int64)  # (V,) row at each position
        self.pos = np.empty(len(tour), np.int64)
        self.pos[self.tour] = np.arange(len(tour))
        self.last = len(tour) - 1
        self.nbr = ids.tolist()
        # list distances again in float64, so that move gains and list pruning agree to ~1e-16
        exact = np.empty(ids.shape, np.float64)
        for s in range(0, len(ids), 4096):
            block = ids[s : s + 4096]
            exact[s : s + 4096] = 1.0 - np.einsum("bkd,bd->bk", unit[block], unit[s : s + 4096])
        order = np.argsort(exact, axis=1, kind="stable")
        self.nbr = np.take_along_axis(ids, order, 1).tolist()
        self.nbr_d = np.take_along_axis(exact, order, 1).tolist()
        self.queue: deque[int] = deque()
        self.queued = bytearray(len(tour))

    # --- primitives ---------------------------------------------------------------------------
    def dist(self, a: int, b: int) -> float:
        if a < 0 or b < 0:  # the virtual node beyond either end
            return 0.0
        return 1.0 - float(self.rows[a] @ self.rows[b])

    def at(self, i: int) -> int:
        return int(self.tour[i]) if 0 <= i <= self.last else -1

    def push(self, *nodes: int) -> None:
        for v in nodes:
            if v >= 0 and not self.queued[v]:
                self.queued[v] = 1
                self.queue.append(v)

    def clear_queue(self) -> None:
        while self.queue:
            self.queued[self.queue.popleft()] = 0

    def _reverse(self, i: int, j: int) -> None:  # positions i..j inclusive
        if i < j:
            seg = self.tour[i : j + 1][::-1].copy()
            self.tour[i : j + 1] = seg
            self.pos[seg] = np.arange(i, j + 1)

    def _place(self, lo: int, values: IntArray) -> None:
        self.tour[lo : lo + len(values)] = values
        self.pos[values] = np.arange(lo, lo + len(values))

    # --- moves --------------------------------------------------------------------------------
    def _two_opt(self, a: int, i: int) -> float:
        for s in (1, -1):  # b follows a (s=1) or precedes it (s=-1)
            b = self.at(i + s)
            if b < 0:
                continue
            d_ab = self.dist(a, b)
            for c, d_ac in zip(self.nbr[a], self.nbr_d[a], strict=True):
                if d_ac >= d_ab:
                    break  # sorted lists: no later c can gain
                j = int(self.pos[c])
                e = self.at(j + s)
                if e == a or c == b:
                    continue
                gain = d_ab + self.dist(c, e) - float(d_ac) - self.dist(b, e)  # drop ab, ce; add ac, be
                if gain > _EPS:
                    if s == 1:
                        self._reverse(min(i, j) + 1, max(i, j))
                    else:
                        self._reverse(min(i, j), max(i, j) - 1)
                    self.push(a, b, c, e)
                    return gain
        return 0.0

    def _or_opt(self, a: int, i: int) -> float:
        for length in (1, 2, 3):  # segment tour[i : i + length] starting at a
            if i + length - 1 > self.last:
                return 0.0
            s0, s1 = a, self.at(i + length - 1)
            p, q = self.at(i - 1), self.at(i + length)
            removal = self.dist(p, s0) + self.dist(s1, q) - self.dist(p, q)
            if removal <= _EPS:
                continue
            best: tuple[float, int, int, bool] | None = None  # gain, left position, end next to it
            for end, other in ((s0, s1), (s1, s0)):
                for c, d_ec in zip(self.nbr[end], self.nbr_d[end], strict=True):
                    if d_ec >= removal:
                        break
                    j = int(self.pos[c])
                    if i <= j < i + length:
                        continue
                    for side in (1, -1):  # insert between c and its successor / predecessor
                        k = j + side
                        if i <= k < i + length:
                            continue
                        e = self.at(k)
                        gain = removal - (d_ec + self.dist(other, e) - self.dist(c, e))
                        if gain > _EPS and (best is None or gain > best[0]):
                            left = j if side == 1 else j - 1  # segment goes after this position
                            best = (gain, left, c, (end == s0) == (side == 1))
            if best is not None:
                gain, left, c, forward = best
                seg = self.tour[i : i + length].copy()
                seg = seg if forward else seg[::-1].copy()
                if left >= i + length:  # move right: shift the gap left, drop the segment in
                    self._place(i, self.tour[i + length : left + 1].copy())
                    self._place(left - length + 1, seg)
                    lo, hi = i, left
                else:
                    self._place(left + 1 + length, self.tour[left + 1 : i].copy())
                    self._place(left + 1, seg)
                    lo, hi = left + 1, i + length - 1
                self.push(p, q, s0, s1, c, self.at(lo - 1), self.at(lo), self.at(hi), self.at(hi + 1))
                return gain
        return 0.0

    def run(self, deadline: float, on_step: StepCallback | None = None) -> float:
        """Process the dirty queue until it is empty or `deadline` (perf_counter) passes: total gain."""
        gain, processed = 0.0, 0
        while self.queue:
            processed += 1
            if (processed & 255) == 0:
                if time.perf_counter() > deadline:
                    break
                if on_step and (processed & 4095) == 0:
                    on_step(processed, processed + len(self.queue))
            a = self.queue.popleft()
            self.queued[a] = 0
            i = int(self.pos[a])
            g = self._two_opt(a, i) or self._or_opt(a, i)
            if g > 0.0:
                gain += g
                self.push(a)
        return gain

    def reopen(self) -> float:
        """Close the path into a cycle and open it at its longest edge if that is shorter: gain.

        The one move 2-opt and Or-opt cannot see: on a cycle-like path (e.g. points on a circle) the
        greedy path may be cut at the wrong place, and moving the cut exchanges two huge segments.
        """
        n = self.last + 1
        if n < 3:
            return 0.0
        order = self.tour.tolist()
        lengths = [self.dist(x, y) for x, y in zip(order[:-1], order[1:], strict=True)]  # ~50 ms at 49k
        k = int(np.argmax(lengths))
        gain = float(lengths[k]) - self.dist(int(self.tour[-1]), int(self.tour[0]))
        if gain <= _EPS:
            return 0.0
        self._place(0, np.concatenate([self.tour[k + 1 :], self.tour[: k + 1]]))
        self.push(self.at(0), self.at(1), self.at(self.last - 1), self.at(self.last))
        return gain

    def optimise(self, deadline: float, on_step: StepCallback | None = None) -> float:
        """Local search from every node until no 2-opt / Or-opt / reopening move gains: total gain."""
        self.push(*self.tour.tolist())
        gain = self.run(deadline, on_step)
        for _ in range(8):  # each reopening is followed by a local repair; rarely more than one
            moved = self.reopen()
            if moved <= 0.0:
                break
            gain += moved + self.run(deadline, on_step)
        self.clear_queue()
        return gain

    def kick(self, rng: np.random.Generator, window: int, deadline: float) -> float:
        """One iterated-local-search step; keeps the result only if the path got shorter: gain."""
        n = self.last + 1
        if n < 8:
            return 0.0
        w = min(window, n - 2)
        p = int(rng.integers(0, n - w))
        c1, c2 = sorted(rng.choice(np.arange(p + 1, p + w), size=2, replace=False).tolist())
        # exchange B = tour[p+1 .. c1] and C = tour[c1+1 .. c2]: A B C D -> A C B D
        a0, b0, b1, x0, x1, d0 = (self.at(v) for v in (p, p + 1, c1, c1 + 1, c2, c2 + 1))
        cost = (self.dist(a0, x0) + self.dist(x1, b0) + self.dist(b1, d0)) - (
            self.dist(a0, b0) + self.dist(b1, x0) + self.dist(x1, d0)
        )
        saved_tour, saved_pos = self.tour.copy(), self.pos.copy()
        self._place(p + 1, np.concatenate([self.tour[c1 + 1 : c2 + 1], self.tour[p + 1 : c1 + 1]]))
        self.push(a0, b0, b1, x0, x1, d0)
        net = self.run(deadline) - cost
        if net > _EPS:
            self.clear_queue()
            return net
        self.tour, self.pos = saved_tour, saved_pos
        self.clear_queue()
        return 0.0


def refine_windows(
    unit: FloatArray,
    tour: IntArray,
    window: int,
    deadline: float,
    scale: float = 1e5,
    on_step: StepCallback | None = None,
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
        if on_step:
            on_step(done + 1, len(starts))
    return tour, gain
