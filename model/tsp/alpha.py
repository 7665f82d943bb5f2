"""Alpha-nearness candidate lists for the vocabulary path search (Helsgaun's LKH rule, on a sparse graph).

Plain k-nearest-neighbour lists are a poor guide in 576 dimensions: a few "hub" tokens sit in many lists
and isolated tokens in none, so the edges a short path needs are often missing. Alpha-nearness ranks a
candidate edge (u, v) by how much a minimum 1-tree must grow to contain it, after node penalties `pi`
from a subgradient ascent (Held and Karp) have pushed the tree towards degree two everywhere, i.e.
towards a path:

    c'(u, v) = d(u, v) + pi[u] + pi[v]
    alpha(u, v) = c'(u, v) - (heaviest c' edge on the tree path between u and v)

Everything runs on a sparse graph: the symmetric union of the kNN lists (each row's k nearest plus the
rows that list it). On it the spanning tree is Kruskal's; the heaviest tree edge between two nodes comes
from binary lifting (log V steps per query). Edges between different trees of a disconnected graph get
alpha = +inf, so they rank last. Each row keeps its `width` candidates of least (alpha, c', id).

Reference: K. Helsgaun, "An effective implementation of the Lin-Kernighan traveling salesman
heuristic", EJOR 126 (2000), sections 4.1-4.2 (alpha-nearness, subgradient optimisation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from core.progress import OnProgress, Progress
from model.tsp import tour as tsp_tour

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
F = TypeVar("F", bound=Callable[..., Any])
_REVERSE_EXTRA = 16  # rows that list a row, added to its own k nearest to form its pool


def _jit(fn: F) -> F:
    """numba.njit with an on-disk cache, typed for mypy (numba ships no annotations)."""
    return cast(F, numba.njit(cache=True, nogil=True)(fn))


@_jit
def _root(parent: Any, a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@_jit
def spanning_forest(n: int, eu: Any, ev: Any, w: Any) -> tuple[Any, Any]:
    """Minimum spanning forest of an edge list: (chosen edge indices, node degrees).

    Ties are broken by edge index (stable sort), so the forest is a pure function of the inputs.
    """
    order = np.argsort(w, kind="mergesort")
    parent = np.arange(n)
    chosen = np.empty(max(n - 1, 0), np.int64)
    degree = np.zeros(n, np.int64)
    m = 0
    for e in order:
        a, b = _root(parent, eu[e]), _root(parent, ev[e])
        if a != b:
            parent[a] = b
            chosen[m] = e
            degree[eu[e]] += 1
            degree[ev[e]] += 1
            m += 1
            if m == n - 1:
                break
    return chosen[:m], degree


@_jit
def _lifting(n: int, tu: Any, tv: Any, tw: Any, levels: int) -> tuple[Any, Any, Any, Any]:
    """Binary-lifting tables of a forest: 2^j-th ancestor, heaviest edge on the way, depth, tree id."""
    count = np.zeros(n + 1, np.int64)
    for i in range(tu.shape[0]):
        count[tu[i] + 1] += 1
        count[tv[i] + 1] += 1
    for i in range(n):
        count[i + 1] += count[i]
    adj = np.empty(count[n], np.int64)
    adj_w = np.empty(count[n], np.float64)
    fill = count[:n].copy()
    for i in range(tu.shape[0]):
        a, b = tu[i], tv[i]
        adj[fill[a]], adj_w[fill[a]] = b, tw[i]
        fill[a] += 1
        adj[fill[b]], adj_w[fill[b]] = a, tw[i]
        fill[b] += 1
    up = np.zeros((levels, n), np.int64)
    heavy = np.zeros((levels, n), np.float64)
    depth = np.zeros(n, np.int64)
    tree = np.full(n, -1, np.int64)
    stack = np.empty(n, np.int64)
    for root in range(n):
        if tree[root] >= 0:
            continue
        tree[root], up[0, root], top = root, root, 1
        stack[0] = root
        while top:
            top -= 1
            v = stack[top]
            for k in range(count[v], count[v + 1]):
                u = adj[k]
                if tree[u] < 0:
                    tree[u], up[0, u], heavy[0, u], depth[u] = root, v, adj_w[k], depth[v] + 1
                    stack[top] = u
                    top += 1
    for j in range(1, levels):
        for v in range(n):
            mid = up[j - 1, v]
            up[j, v] = up[j - 1, mid]
            heavy[j, v] = max(heavy[j - 1, v], heavy[j - 1, mid])
    return up, heavy, depth, tree


@_jit
def _heaviest_between(up: Any, heavy: Any, depth: Any, a: int, b: int) -> float:
    """Heaviest edge weight on the tree path from a to b (same tree)."""
    best = -np.inf
    if depth[a] < depth[b]:
        a, b = b, a
    diff = depth[a] - depth[b]
    j = 0
    while diff:
        if diff & 1:
            best = max(best, heavy[j, a])
            a = up[j, a]
        diff >>= 1
        j += 1
    if a != b:
        for j in range(up.shape[0] - 1, -1, -1):
            if up[j, a] != up[j, b]:
                best = max(best, heavy[j, a], heavy[j, b])
                a, b = up[j, a], up[j, b]
        best = max(best, heavy[0, a], heavy[0, b])
    return float(best)


@_jit
def _pools(ids: Any, extra: int) -> Any:
    """(n, k + extra) pools: each row's own list, then rows that list it (by id), -1 padded."""
    n, k = ids.shape
    pool = np.full((n, k + extra), -1, np.int64)
    size = np.full(n, k, np.int64)
    pool[:, :k] = ids
    for v in range(n):  # v lists u: offer v to u's pool unless u already lists v
        for j in range(k):
            u = ids[v, j]
            if size[u] >= k + extra:
                continue
            listed = False
            for t in range(k):
                if ids[u, t] == v:
                    listed = True
                    break
            if not listed:
                pool[u, size[u]] = v
                size[u] += 1
    return pool


def _pool_distances(rows: npt.NDArray[np.float32], pool: IntArray) -> FloatArray:
    """Cosine distances of the pools by the search's own distance function; +inf for padding."""
    exact: FloatArray = tsp_tour.list_distances(rows, np.maximum(pool, 0))
    return np.where(pool >= 0, exact, np.inf)


@_jit
def _alphas(pool: Any, pool_d: Any, pi: Any, up: Any, heavy: Any, depth: Any, tree: Any) -> Any:
    out = np.full(pool.shape, np.inf)
    for a in range(pool.shape[0]):
        for j in range(pool.shape[1]):
            b = pool[a, j]
            if b >= 0 and tree[a] == tree[b]:
                out[a, j] = pool_d[a, j] + pi[a] + pi[b] - _heaviest_between(up, heavy, depth, a, b)
    return out


def ascent(
    n: int, eu: IntArray, ev: IntArray, ew: FloatArray, steps: int, on_progress: OnProgress | None = None
) -> FloatArray:
    """Node penalties `pi` by subgradient ascent on the spanning trees of a sparse graph.

    Each step moves pi along the degree excess (degree - 2) of the current tree, smoothed with the
    previous direction (0.7 / 0.3, as LKH does), with a step size that starts at 1% of the mean edge
    weight and shrinks geometrically. Returns the last penalties (the tree is not a valid lower bound
    on a sparse graph, so "best bound" is not a usable criterion here).
    """
    pi = np.zeros(n)
    if n < 3 or len(ew) == 0:
        return pi
    size = 0.01 * float(ew.mean())
    previous = np.zeros(n)
    for step in range(steps):
        _, degree = spanning_forest(n, eu, ev, ew + pi[eu] + pi[ev])
        g = (degree - 2).astype(np.float64)
        pi += size * (0.7 * g + 0.3 * previous) if step else size * g
        previous = g
        size *= 0.95
        if on_progress:
            on_progress(Progress("candidates", step + 1, steps))
    return pi


def alpha_lists(
    rows: npt.NDArray[np.float32],
    ids: IntArray,
    width: int,
    steps: int,
    on_progress: OnProgress | None = None,
) -> IntArray:
    """Each row's `width` alpha-nearest candidates, drawn from its kNN list and its reverse neighbours.

    Args:
        rows: (n, d) float32 unit rows; every distance here is computed from them by one function, so
            a tree edge has alpha exactly 0.
        ids: (n, k) kNN lists.
        width: candidates kept per row (<= k).
        steps: subgradient ascent steps for the penalties (0: plain minimum spanning tree).
        on_progress: gets Progress("candidates", ascent steps done, steps).

    Returns:
        (n, width) int64 candidate ids, best first.
    """
    n, k = ids.shape
    width = min(width, k)
    pool = _pools(np.ascontiguousarray(ids, np.int64), _REVERSE_EXTRA)
    pool_d = _pool_distances(np.ascontiguousarray(rows, np.float32), pool)
    valid = (pool >= 0).ravel()
    a, b = np.repeat(np.arange(n), pool.shape[1])[valid], pool.ravel()[valid]
    keys, first = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_index=True)
    eu, ev, ew = keys // n, keys % n, pool_d.ravel()[valid][first]
    pi = ascent(n, eu, ev, ew, steps, on_progress)
    w = ew + pi[eu] + pi[ev]
    chosen, _ = spanning_forest(n, eu, ev, w)
    levels = max(1, int(n).bit_length())
    up, heavy, depth, tree = _lifting(n, eu[chosen], ev[chosen], w[chosen], levels)
    alpha = _alphas(pool, pool_d, pi, up, heavy, depth, tree)
    safe = np.maximum(pool, 0)
    order = np.lexsort((safe, pool_d + pi[safe], alpha), axis=-1)[:, :width]
    return np.take_along_axis(pool, order, 1)
