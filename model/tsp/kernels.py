"""Compiled (numba) moves of the vocabulary path search: 3-opt, Or-opt and iterated local search.

The path is the cycle of `model.tsp.tour` (a virtual node closes the open path; every move is a
sequence of journaled flips). Moves (D. S. Johnson and L. A. McGeoch 1997, sections 3.3-3.5):
sequential 2-opt and 3-opt moves built from the sorted kNN candidate lists under the positive-gain
rule (each partial sum of removed minus added lengths stays positive), evaluated on the current tour
without tentative flips; and Or-opt (a segment of 1-3 nodes moved, either way round, next to a list
neighbour of one of its ends). A FIFO of "dirty" nodes (don't-look bits) replaces sweeps. The iterated
search (their section 5) applies a random segment exchange (a local double bridge) inside a short
stretch of the path, repairs it with the same local search, and undoes it unless the path got shorter.
Its random numbers come from a seeded xorshift64*, so a run is a pure function of its inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.tsp.tour import between, dist, flip, jit, move_segment, pred, push, step, succ, undo

EPS = 1e-10  # gains below this are float noise; requiring more rules out cycling
# A search `s` is the tuple (rows, tour, pos, nbr, nbr_d, journal, state, queue, queued, qs): the
# (n, d) float32 rows, the cycle and its inverse, the sorted candidate lists and their distances, the
# flip journal with state = [journal length or -1 when off, overflows], and the dirty-node FIFO
# (ring buffer, in-queue flags, qs = [head, size]).


@jit
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
        t2 = step(tour, pos, t1, fw)
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
                t4 = step(tour, pos, t3, not fw) if side == 0 else step(tour, pos, t3, fw)
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
                        if between(pos, size, t2, t5, t4, fw):
                            t6 = step(tour, pos, t5, fw)
                        else:
                            t6 = step(tour, pos, t5, not fw)
                        if t6 == t1 or t6 == t3 or t6 == t4:
                            continue
                        g2 = g1 - d45 + dist(rows, t5, t6) - dist(rows, t6, t1)
                        if g2 > best:
                            best, kind, b4, b5, b6 = g2, 2, t4, t5, t6
                    elif between(pos, size, t2, t5, t3, fw):
                        # t5 inside t2..t3: both of its neighbours there close a valid 3-opt move
                        for k in range(2):
                            t6 = step(tour, pos, t5, k == 0)
                            if not between(pos, size, t2, t6, t3, fw):
                                continue
                            g2 = g1 - d45 + dist(rows, t5, t6) - dist(rows, t6, t1)
                            if g2 > best:
                                best, b4, b5, b6 = g2, t4, t5, t6
                                kind = 3 if t6 == step(tour, pos, t5, fw) else 4
            if kind == 0:
                continue
            if kind <= 2:
                flip(tour, pos, journal, state, t2, t1, t3, b4)  # t1 t4 .. t2 t3
                if kind == 2:
                    flip(tour, pos, journal, state, b4, t1, b5, b6)
            elif kind == 3:  # t1 t2..t5 t6..t3 t4 -> t1 t6..t3 t2..t5 t4
                flip(tour, pos, journal, state, t1, t2, b5, b6)
                flip(tour, pos, journal, state, t2, b6, t3, b4)
                flip(tour, pos, journal, state, t1, b5, b6, b4)
            else:  # t1 t2..t6 t5..t3 t4 -> t1 t6..t2 t3..t5 t4
                flip(tour, pos, journal, state, t1, t2, b6, b5)
                flip(tour, pos, journal, state, t2, b5, t3, b4)
            for v in (t1, t2, t3, b4, b5, b6):
                if v >= 0:
                    push(queue, queued, qs, v)
            return best
    return 0.0


@jit
def _or_opt(s: Any, a: int) -> float:
    rows, tour, pos, nbr, nbr_d, journal, state, queue, queued, qs = s
    n = rows.shape[0]
    size = tour.shape[0]
    for way in range(2):
        forward = way == 0
        end = a
        for length in range(1, 4):  # segment of `length` nodes from a, walking `forward`
            if length > 1:
                end = step(tour, pos, end, forward)
                if end >= n:
                    break  # segments never hold the virtual node
            before = step(tour, pos, a, not forward)
            after = step(tour, pos, end, forward)
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
                        e = succ(tour, pos, c) if dirn == 0 else pred(tour, pos, c)
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
                move_segment(tour, pos, journal, state, p, first, last, q, bx, by, bfwd)
                for v in (p, q, first, last, bx, by):
                    push(queue, queued, qs, v)
                return best
    return 0.0


@jit
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
            push(queue, queued, qs, a)
    return gain, examined


@jit
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
    head, tail = succ(tour, pos, n), pred(tour, pos, n)
    gain = longest - dist(rows, tail, head)
    if gain <= EPS:
        return 0.0
    y = succ(tour, pos, x)
    move_segment(tour, pos, journal, state, tail, n, n, head, x, y, True)
    for v in (tail, head, x, y):
        push(queue, queued, qs, v)
    return gain


@jit
def _rand(rng: Any) -> int:
    """xorshift64* step on rng[0] (uint64); returns 31 random bits."""
    s = rng[0]
    s ^= s >> np.uint64(12)
    s ^= s << np.uint64(25)
    s ^= s >> np.uint64(27)
    rng[0] = s
    return int((s * np.uint64(2685821657736338717)) >> np.uint64(33))


@jit
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
        flip(tour, pos, journal, state, a0, b0, b1, x0)  # a0 b1..b0 x0..x1 d0
        flip(tour, pos, journal, state, b0, x0, x1, d0)  # a0 b1..b0 x1..x0 d0
        flip(tour, pos, journal, state, a0, b1, x0, d0)  # a0 x0..x1 b0..b1 d0
        for v in (a0, b0, b1, x0, x1, d0):
            push(queue, queued, qs, v)
        gain, _ = local_search(s, 1 << 30)
        net = gain - cost
        if net > EPS:
            total += net
            kept += 1
        elif state[1] > 0:
            total += net  # too many flips to replay: keep it (a valid path, maybe slightly longer)
            unchecked += 1
        else:
            undo(tour, pos, journal, state)
    state[0] = -1
    return total, kept, unchecked
