"""The open vocabulary path as a cycle, for the compiled search: flips, a flip journal, a dirty-node FIFO.

The open path over `n` rows is stored as a cycle over `N = n + 1` nodes: node `n` is a virtual node at
distance 0 from every row, so moving an end of the path is an ordinary move and needs no special case.
`tour[i]` is the node at position `i` and `pos[v]` its position; both change only through `flip`, the
2-opt primitive (reverse the shorter side of the cycle). Every move of `model.tsp.kernels` is a sequence
of flips, and flips can be journaled, so a rejected iterated-local-search step is undone exactly by
replaying its flips backwards (`undo`): no copy of the tour per step.

Distances are `1 - dot(x_a, x_b)` over float32 unit rows with a float64 accumulator, computed on demand
(no matrix). `fastmath` lets the dot product vectorise; the result is still a fixed function of the
pair (and symmetric), so every accepted move shortens the path as computed and the search cannot cycle.

numba's on-disk cache of `model.tsp.kernels` does not notice edits to this file (it tracks only the
caller's own source file): after changing a function here, delete model/tsp/__pycache__.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])
JOURNAL = 1 << 16  # flips one kick may record before it can no longer be undone


def jit(fn: F) -> F:
    """numba.njit with an on-disk cache, typed for mypy (numba ships no annotations)."""
    return cast(F, numba.njit(cache=True, nogil=True, fastmath=True)(fn))


@jit
def dist(rows: Any, a: int, b: int) -> float:
    n = rows.shape[0]
    if a >= n or b >= n:  # the virtual node
        return 0.0
    total = 0.0
    for k in range(rows.shape[1]):
        total += np.float64(rows[a, k]) * np.float64(rows[b, k])
    return 1.0 - total


@jit
def list_distances(rows: Any, ids: Any) -> Any:
    """(n, k) distances of the candidate lists, computed by `dist` itself so gains and pruning agree."""
    out = np.empty(ids.shape, np.float64)
    for a in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            out[a, j] = dist(rows, a, ids[a, j])
    return out


@jit
def succ(tour: Any, pos: Any, v: int) -> int:
    i = pos[v] + 1
    return int(tour[0 if i == tour.shape[0] else i])


@jit
def pred(tour: Any, pos: Any, v: int) -> int:
    i = pos[v] - 1
    return int(tour[tour.shape[0] - 1 if i < 0 else i])


@jit
def step(tour: Any, pos: Any, v: int, forward: bool) -> int:
    return succ(tour, pos, v) if forward else pred(tour, pos, v)


@jit
def _reverse(tour: Any, pos: Any, i: int, j: int) -> None:
    """Reverse positions i..j (walking forward, wrapping); the shorter side of the cycle is moved."""
    n = tour.shape[0]
    length = (j - i) % n + 1
    if 2 * length > n:  # reversing the complement gives the same cycle
        i, j = (j + 1) % n, (i - 1) % n
        length = n - length
    for _ in range(length // 2):
        a, b = tour[i], tour[j]
        tour[i], tour[j] = b, a
        pos[b], pos[a] = i, j
        i = i + 1 if i + 1 < n else 0
        j = j - 1 if j > 0 else n - 1


@jit
def flip(tour: Any, pos: Any, journal: Any, state: Any, a: int, b: int, c: int, d: int) -> None:
    """Replace tour edges (a, b), (c, d) by (a, c), (b, d); both edges must run the same way round.

    `state[0]` is the journal length, or -1 when journaling is off; `state[1]` counts overflows.
    """
    if succ(tour, pos, a) == b:
        _reverse(tour, pos, pos[b], pos[c])
    else:
        _reverse(tour, pos, pos[a], pos[d])
    m = state[0]
    if m >= 0:
        if m < journal.shape[0]:
            journal[m, 0], journal[m, 1], journal[m, 2], journal[m, 3] = a, b, c, d
            state[0] = m + 1
        else:
            state[1] += 1


@jit
def undo(tour: Any, pos: Any, journal: Any, state: Any) -> None:
    """Replay the journal backwards: the undo of flip(a, b, c, d) is flip(a, c, b, d)."""
    m = state[0]
    state[0] = -1
    for t in range(m - 1, -1, -1):
        flip(tour, pos, journal, state, journal[t, 0], journal[t, 2], journal[t, 1], journal[t, 3])


@jit
def push(queue: Any, queued: Any, qs: Any, v: int) -> None:
    """Append v to the ring-buffer FIFO unless it is already there; qs = [head, size]."""
    if queued[v]:
        return
    queued[v] = 1
    n = queue.shape[0]
    queue[(qs[0] + qs[1]) % n] = v
    qs[1] += 1


@jit
def move_segment(
    tour: Any,
    pos: Any,
    journal: Any,
    state: Any,
    p: int,
    first: int,
    last: int,
    q: int,
    x: int,
    y: int,
    forward: bool,
) -> None:
    """Move the segment first..last (p before it, q after it) between x and y = succ(x).

    `forward` puts it in as x first..last y, else x last..first y. Two or three flips.
    """
    if x == q:
        flip(tour, pos, journal, state, p, first, q, y)  # p q last..first y
        if forward:
            flip(tour, pos, journal, state, q, last, first, y)
    elif y == p:
        flip(tour, pos, journal, state, x, p, last, q)  # x last..first p q
        if forward:
            flip(tour, pos, journal, state, x, last, first, p)
    else:
        flip(tour, pos, journal, state, p, first, x, y)  # p x .. q last..first y
        flip(tour, pos, journal, state, p, x, q, last)  # p q .. x last..first y
        if forward:
            flip(tour, pos, journal, state, x, last, first, y)


@jit
def between(pos: Any, size: int, a: int, b: int, c: int, forward: bool) -> bool:
    """Whether b lies on the way from a to c (inclusive), walking `forward` (else backward)."""
    if forward:
        return bool((pos[b] - pos[a]) % size <= (pos[c] - pos[a]) % size)
    return bool((pos[a] - pos[b]) % size <= (pos[a] - pos[c]) % size)
