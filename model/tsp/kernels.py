"""Compiled (numba) core of the vocabulary path search: 3-opt, Or-opt and iterated local search.

The open path over `n` rows is stored as a cycle over `N = n + 1` nodes: node `n` is a virtual node at
distance 0 from every row, so moving an end of the path is an ordinary move and needs no special case.
`tour[i]` is the node at position `i` and `pos[v]` its position; both change only through `_flip`, the
2-opt primitive (reverse the shorter side of the cycle). Every move is a sequence of flips, and flips
can be journaled, so a rejected iterated-local-search step is undone exactly by replaying its flips
backwards: no copy of the tour per step.

Moves (D. S. Johnson and L. A. McGeoch 1997, sections 3.3-3.5): sequential 2-opt and 3-opt moves
built from the sorted kNN candidate lists under the positive-gain rule (each partial sum of removed
minus added lengths stays positive), evaluated on the current tour without tentative flips; and Or-opt
(a segment of 1-3 nodes moved, either way round, next to a list neighbour of one of its ends). A FIFO
of "dirty" nodes (don't-look bits) replaces sweeps. The iterated search (their section 5) applies a
random segment exchange (a local double bridge) inside a short stretch of the path, repairs it with
the same local search, and undoes it unless the path got shorter. Its random numbers come from a
seeded xorshift64*, so a run is a pure function of its inputs.

Distances are `1 - dot(x_a, x_b)` over float32 unit rows with a float64 accumulator, computed on demand
(no matrix). `fastmath` lets the dot product vectorise; the result is still a fixed function of the
pair (and symmetric), so every accepted move shortens the path as computed and the search cannot cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])
EPS = 1e-10  # gains below this are float noise; requiring more rules out cycling
JOURNAL = 1 << 16  # flips one kick may record before it can no longer be undone
# A search `s` is the tuple (rows, tour, pos, nbr, nbr_d, journal, state, queue, queued, qs): the
# (n, d) float32 rows, the cycle and its inverse, the sorted candidate lists and their distances, the
# flip journal with state = [journal length or -1 when off, overflows], and the dirty-node FIFO
# (ring buffer, in-queue flags, qs = [head, size]).


def _jit(fn: F) -> F:
    """numba.njit with an on-disk cache, typed for mypy (numba ships no annotations)."""
    return cast(F, numba.njit(cache=True, nogil=True, fastmath=True)(fn))


@_jit
def dist(rows: Any, a: int, b: int) -> float:
    n = rows.shape[0]
    if a >= n or b >= n:  # the virtual node
        return 0.0
    total = 0.0
    for k in range(rows.shape[1]):
        total += np.float64(rows[a, k]) * np.float64(rows[b, k])
    return 1.0 - total


@_jit
def list_distances(rows: Any, ids: Any) -> Any:
    """(n, k) distances of the candidate lists, computed by `dist` itself so gains and pruning agree."""
    out = np.empty(ids.shape, np.float64)
    for a in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            out[a, j] = dist(rows, a, ids[a, j])
    return out


@_jit
def _succ(tour: Any, pos: Any, v: int) -> int:
    i = pos[v] + 1
    return int(tour[0 if i == tour.shape[0] else i])


@_jit
def _pred(tour: Any, pos: Any, v: int) -> int:
    i = pos[v] - 1
    return int(tour[tour.shape[0] - 1 if i < 0 else i])


@_jit
def _step(tour: Any, pos: Any, v: int, forward: bool) -> int:
    return _succ(tour, pos, v) if forward else _pred(tour, pos, v)


@_jit
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


@_jit
def _flip(tour: Any, pos: Any, journal: Any, state: Any, a: int, b: int, c: int, d: int) -> None:
    """Replace tour edges (a, b), (c, d) by (a, c), (b, d); both edges must run the same way round.

    `state[0]` is the journal length, or -1 when journaling is off; `state[1]` counts overflows.
    """
    if _succ(tour, pos, a) == b:
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


@_jit
def _undo(tour: Any, pos: Any, journal: Any, state: Any) -> None:
    """Replay the journal backwards: the undo of flip(a, b, c, d) is flip(a, c, b, d)."""
    m = state[0]
    state[0] = -1
    for t in range(m - 1, -1, -1):
        _flip(tour, pos, journal, state, journal[t, 0], journal[t, 2], journal[t, 1], journal[t, 3])


@_jit
def _push(queue: Any, queued: Any, qs: Any, v: int) -> None:
    """Append v to the ring-buffer FIFO unless it is already there; qs = [head, size]."""
    if queued[v]:
        return
    queued[v] = 1
    n = queue.shape[0]
    queue[(qs[0] + qs[1]) % n] = v
    qs[1] += 1


@_jit
def _move_segment(
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
        _flip(tour, pos, journal, state, p, first, q, y)  # p q last..first y
        if forward:
            _flip(tour, pos, journal, state, q, last, first, y)
    elif y == p:
        _flip(tour, pos, journal, state, x, p, last, q)  # x last..first p q
        if forward:
            _flip(tour, pos, journal, state, x, last, first, p)
    else:
        _flip(tour, pos, journal, state, p, first, x, y)  # p x .. q last..first y
        _flip(tour, pos, journal, state, p, x, q, last)  # p q .. x last..first y
        if forward:
            _flip(tour, pos, journal, state, x, last, first, y)


@_jit
def _between(pos: Any, size: int, a: int, b: int, c: int, forward: bool) -> bool:
    """Whether b lies on the way from a to c (inclusive), walking `forward` (else backward)."""
    if forward:
        return bool((pos[b] - pos[a]) % size <= (pos[c] - pos[a]) % size)
    return bool((pos[a] - pos[b]) % size <= (pos[a] - pos[c]) % size)


@_jit
def _three_opt(s: Any, t1: int) -> float:
    """Best sequential 2-opt or 3-opt move that starts by dropping an edge at t1 (first t3 that gains).

    Drop (t1, t2), add (t2, t3), drop (t3, t4), then either close with (t4, t1) (2-opt) or add
    (t4, t5), drop (t5, t6) and close with (t6, t1). Candidates come from the sorted lists, pruned by
    the positive-gain rule (each partial sum must stay positive). Gains are evaluated on the current
    tour; only the chosen move is carried out (two or three flips).
    """
    rows, tour, pos, nbr, nbr_d, journal, state, queue, queued, qs = s
    size = tour.shape[0]
    for way in range(2):
        fw = way == 0  # t2 follows t1 walking fw
        t2 = _step(tour, pos, t1, fw)
        g0 = dist(rows, t1, t2)
        if t2 >= rows.shape[0]:
            continue  # no list at the virtual node
        for i in range(nbr.shape[1]):
            d23 = nbr_d[t2, i]
            if d23 >= g0:
                break
            t3 = nbr[t2, i]
            if t3 == t1:
                continue
            best, kind, b4, b5, b6 = EPS, 0, -1, -1, -1
            for side in range(2):
                # side 0: t4 before t3 (a 2-opt move on its own); side 1: t4 after t3 (needs a t5)
                t4 = _step(tour, pos, t3, not fw) if side == 0 else _step(tour, pos, t3, fw)
                if t4 == t2 or t4 == t1:
                    continue
                g1 = g0 - d23 + dist(rows, t3, t4)
                if side == 0:
                    close = g1 - dist(rows, t4, t1)
                    if close > best:
                        best, kind, b4 = close, 1, t4
                if t4 >= rows.shape[0]:
                    continue
                for j in range(nbr.shape[1]):
                    d45 = nbr_d[t4, j]
                    if d45 >= g1:
                        break
                    t5 = nbr[t4, j]
                    if t5 == t1 or t5 == t2 or t5 == t3:
                        continue
                    if side == 0:
                        # after the 2-opt flip t2..t4 runs reversed; t6 must precede t5 (walking fw)
                        # in that tour for the second flip to be valid
                        if _between(pos, size, t2, t5, t4, fw):
                            t6 = _step(tour, pos, t5, fw)
                        else:
                            t6 = _step(tour, pos, t5, not fw)
                        if t6 == t1 or t6 == t3 or t6 == t4:
                            continue
                        g2 = g1 - d45 + dist(rows, t5, t6) - dist(rows, t6, t1)
                        if g2 > best:
                            best, kind, b4, b5, b6 = g2, 2, t4, t5, t6
                    elif _between(pos, size, t2, t5, t3, fw):
                        # t5 inside t2..t3: both of its neighbours there close a valid 3-opt move
                        for k in range(2):
                            t6 = _step(tour, pos, t5, k == 0)
                            if not _between(pos, size, t2, t6, t3, fw):
                                continue
                            g2 = g1 - d45 + dist(rows, t5, t6) - dist(rows, t6, t1)
                            if g2 > best:
                                best, b4, b5, b6 = g2, t4, t5, t6
                                kind = 3 if t6 == _step(tour, pos, t5, fw) else 4
            if kind == 0:
                continue
            if kind <= 2:
                _flip(tour, pos, journal, state, t2, t1, t3, b4)  # t1 t4 .. t2 t3
                if kind == 2:
                    _flip(tour, pos, journal, state, b4, t1, b5, b6)
            elif kind == 3:  # t1 t2..t5 t6..t3 t4 -> t1 t6..t3 t2..t5 t4
                _flip(tour, pos, journal, state, t1, t2, b5, b6)
                _flip(tour, pos, journal, state, t2, b6, t3, b4)
                _flip(tour, pos, journal, state, t1, b5, b6, b4)
            else:  # t1 t2..t6 t5..t3 t4 -> t1 t6..t2 t3..t5 t4
                _flip(tour, pos, journal, state, t1, t2, b6, b5)
                _flip(tour, pos, journal, state, t2, b5, t3, b4)
            for v in (t1, t2, t3, b4, b5, b6):
                if v >= 0:
                    _push(queue, queued, qs, v)
            return best
    return 0.0


@_jit
def _or_opt(s: Any, a: int) -> float:
    rows, tour, pos, nbr, nbr_d, journal, state, queue, queued, qs = s
    n = rows.shape[0]
    size = tour.shape[0]
    for way in range(2):
        forward = way == 0
        end = a
        for length in range(1, 4):  # segment of `length` nodes from a, walking `forward`
            if length > 1:
                end = _step(tour, pos, end, forward)
                if end >= n:
                    break  # segments never hold the virtual node
            before = _step(tour, pos, a, not forward)
            after = _step(tour, pos, end, forward)
            if before == after:
                break
            removal = dist(rows, before, a) + dist(rows, end, after) - dist(rows, before, after)
            if removal <= EPS:
                continue
            # name the segment the way the cycle runs: p first..last q
            if forward:
                p, first, last, q = before, a, end, after
            else:
                p, first, last, q = after, end, a, before
            start = pos[first]
            best, bx, by, bfwd = EPS, -1, -1, False
            for side in range(2):
                tip = first if side == 0 else last
                other = last if side == 0 else first
                for j in range(nbr.shape[1]):
                    d_tc = nbr_d[tip, j]
                    if d_tc >= removal:
                        break
                    c = nbr[tip, j]
                    if (pos[c] - start) % size < length:
                        continue  # c lies in the segment
                    for dirn in range(2):
                        e = _succ(tour, pos, c) if dirn == 0 else _pred(tour, pos, c)
                        if (pos[e] - start) % size < length:
                            continue
                        gain = removal - (d_tc + dist(rows, other, e) - dist(rows, c, e))
                        if gain > best:
                            # insertion edge as (x, y = succ(x)); the tip sits next to c
                            if dirn == 0:
                                best, bx, by, bfwd = gain, c, e, side == 0
                            else:
                                best, bx, by, bfwd = gain, e, c, side == 1
            if bx >= 0:
                _move_segment(tour, pos, journal, state, p, first, last, q, bx, by, bfwd)
                for v in (p, q, first, last, bx, by):
                    _push(queue, queued, qs, v)
                return best
    return 0.0


@_jit
def local_search(s: Any, budget: int) -> tuple[float, int]:
    """Process the dirty FIFO until it is empty or `budget` nodes were examined: (gain, examined)."""
    rows, tour, pos, nbr, nbr_d, journal, state, queue, queued, qs = s
    n = rows.shape[0]
    gain, examined = 0.0, 0
    while qs[1] > 0 and examined < budget:
        a = queue[qs[0]]
        qs[0] = (qs[0] + 1) % queue.shape[0]
        qs[1] -= 1
        queued[a] = 0
        examined += 1
        if a >= n:
            continue  # the virtual node has no candidate list; it moves as a path neighbour
        g = _three_opt(s, a)
        if g <= 0.0:
            g = _or_opt(s, a)
        if g > 0.0:
            gain += g
            _push(queue, queued, qs, a)
    return gain, examined


@_jit
def reopen(s: Any) -> float:
    """Cut the path at its longest edge and join its two ends if that is shorter: gain.

    The one move 2-opt and Or-opt cannot see (the virtual node has no candidate list): on a
    cycle-like path, e.g. points on a circle, the first path may be cut at the wrong place.
    """
    rows, tour, pos, nbr, nbr_d, journal, state, queue, queued, qs = s
    n = rows.shape[0]
    size = tour.shape[0]
    if n < 3:
        return 0.0
    longest, x = -1.0, -1
    for i in range(size):
        u, w = tour[i], tour[(i + 1) % size]
        if u < n and w < n:
            d = dist(rows, u, w)
            if d > longest:
                longest, x = d, u
    head, tail = _succ(tour, pos, n), _pred(tour, pos, n)
    gain = longest - dist(rows, tail, head)
    if gain <= EPS:
        return 0.0
    y = _succ(tour, pos, x)
    _move_segment(tour, pos, journal, state, tail, n, n, head, x, y, True)
    for v in (tail, head, x, y):
        _push(queue, queued, qs, v)
    return gain


@_jit
def _rand(rng: Any) -> int:
    """xorshift64* step on rng[0] (uint64); returns 31 random bits."""
    s = rng[0]
    s ^= s >> np.uint64(12)
    s ^= s << np.uint64(25)
    s ^= s >> np.uint64(27)
    rng[0] = s
    return int((s * np.uint64(2685821657736338717)) >> np.uint64(33))


@_jit
def kicks(s: Any, rng: Any, count: int, window: int) -> tuple[float, int, int]:
    """`count` iterated-local-search steps: exchange two adjacent random segments inside `window`
    positions, repair locally, keep the result only if the path got shorter.

    Returns:
        (total gain, steps kept, steps that overflowed the journal and were kept unchecked).
    """
    rows, tour, pos, nbr, nbr_d, journal, state, queue, queued, qs = s
    size = tour.shape[0]
    w = min(window, size - 2)
    total, kept, unchecked = 0.0, 0, 0
    if size < 8 or w < 3:
        return total, kept, unchecked
    for _ in range(count):
        p = _rand(rng) % size
        o1 = 1 + _rand(rng) % (w - 1)  # B = p+1 .. p+o1, C = p+o1+1 .. p+o2
        o2 = 1 + _rand(rng) % (w - 2)
        if o2 >= o1:
            o2 += 1
        else:
            o1, o2 = o2, o1
        a0 = tour[p]
        b0, b1 = tour[(p + 1) % size], tour[(p + o1) % size]
        x0, x1 = tour[(p + o1 + 1) % size], tour[(p + o2) % size]
        d0 = tour[(p + o2 + 1) % size]
        cost = (dist(rows, a0, x0) + dist(rows, x1, b0) + dist(rows, b1, d0)) - (
            dist(rows, a0, b0) + dist(rows, b1, x0) + dist(rows, x1, d0)
        )
        state[0], state[1] = 0, 0
        _flip(tour, pos, journal, state, a0, b0, b1, x0)  # a0 b1..b0 x0..x1 d0
        _flip(tour, pos, journal, state, b0, x0, x1, d0)  # a0 b1..b0 x1..x0 d0
        _flip(tour, pos, journal, state, a0, b1, x0, d0)  # a0 x0..x1 b0..b1 d0
        for v in (a0, b0, b1, x0, x1, d0):
            _push(queue, queued, qs, v)
        gain, _ = local_search(s, 1 << 30)
        net = gain - cost
        if net > EPS:
            total += net
            kept += 1
        elif state[1] > 0:
            total += net  # too many flips to replay: keep it (a valid path, maybe slightly longer)
            unchecked += 1
        else:
            _undo(tour, pos, journal, state)
    state[0] = -1
    return total, kept, unchecked
