"""Graph side of the vocabulary tour: k-nearest-neighbour lists, the two constructions, lower bounds.

Everything here works on L2-normalised embedding rows under cosine distance `d(a, b) = 1 - a.b`, and
never holds a V x V matrix: similarities are computed in row blocks (`block_rows` x V) and reduced to
candidate lists at once.

* `knn_lists`: the k nearest rows of every row. A bfloat16 block product (fast on CPUs with AVX512-BF16)
  picks `candidates` rows per row, which are re-ranked with exact float32 dot products; ties are broken
  by token id so the lists are a pure function of the matrix.
* `greedy_nearest_neighbour`: the paper's path (arXiv 2510.12343): start at one token, always step to
  the nearest unvisited token. Exact: when a list is used up it scans every unvisited row.
* `greedy_edge`: the greedy-matching construction (shortest edges first, degree <= 2, no cycle), the
  fragments then joined the same way on their end points. Shorter and faster than the paper's path.
* `two_neighbour_bound`, `held_karp_bound`: lower bounds on any open path, to measure the gap.

References: DESIGN.md section 2; D. S. Johnson and L. A. McGeoch, "The traveling salesman problem: a
case study in local optimization" (1997) for greedy matching, neighbour lists and Held-Karp bounds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from core.progress import OnProgress, Progress
from model.tsp.alpha import spanning_forest

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def unit_rows(embeddings: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """L2-normalise the rows in float64, return them as `dtype` (contiguous); a zero row stays zero."""
    x = embeddings.detach().to(torch.float64)
    norms = x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    unit: torch.Tensor = (x / norms).to(dtype).contiguous()  # (V, d)
    return unit


def knn_lists(
    unit: torch.Tensor,
    k: int,
    candidates: int,
    block_rows: int,
    bf16_prefilter: bool,
    on_progress: OnProgress | None = None,
) -> tuple[IntArray, FloatArray]:
    """The k nearest rows of every row under cosine distance, sorted by (distance, id).

    Args:
        unit: (V, d) L2-normalised rows.
        k: list length; clipped to V - 1.
        candidates: rows kept from the bfloat16 pass before exact re-ranking (>= k).
        block_rows: rows per block product; memory is about block_rows x V x 6 bytes.
        bf16_prefilter: False computes the block products in float32 (exact, 5-10x slower here).
        on_progress: gets Progress("knn", rows done, V) after every block.

    Returns:
        (ids, dists), both (V, k): ids int64, dists float64 (exact float32 dot products).
    """
    n = unit.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float64)
    width = min(max(candidates, k), n - 1) if bf16_prefilter else k
    coarse = unit.to(torch.bfloat16) if bf16_prefilter else unit
    ids = np.empty((n, k), np.int64)
    dists = np.empty((n, k), np.float64)
    for start in range(0, n, block_rows):
        rows = torch.arange(start, min(start + block_rows, n))
        sims = coarse[rows] @ coarse.T  # (B, V), bfloat16 (or float32)
        sims[torch.arange(len(rows)), rows] = -4.0  # never your own neighbour
        cand = torch.topk(sims, width, dim=1).indices  # (B, width)
        exact = torch.bmm(unit[cand], unit[rows].unsqueeze(2)).squeeze(2).double().numpy()  # (B, width)
        cand_np = cand.numpy().astype(np.int64)
        order = np.lexsort((cand_np, -exact), axis=-1)[:, :k]  # by similarity, then id
        ids[start : start + len(rows)] = np.take_along_axis(cand_np, order, 1)
        dists[start : start + len(rows)] = 1.0 - np.take_along_axis(exact, order, 1)
        if on_progress:
            on_progress(Progress("knn", min(start + block_rows, n), n))
    return ids, np.clip(dists, 0.0, 2.0)


def path_length(unit: torch.Tensor, perm: npt.NDArray[np.integer]) -> float:
    """Sum of cosine distances between consecutive rows of `perm` (float64 accumulation)."""
    if len(perm) < 2:
        return 0.0
    total = 0.0
    order = torch.from_numpy(np.asarray(perm, dtype=np.int64))
    for s in range(0, len(order) - 1, 1 << 16):
        a, b = order[s : s + (1 << 16)], order[s + 1 : s + 1 + (1 << 16)]
        a = a[: len(b)]
        total += float((1.0 - (unit[a].double() * unit[b].double()).sum(dim=1)).sum())
    return total


def greedy_nearest_neighbour(
    unit: torch.Tensor, ids: IntArray, start: int, on_progress: OnProgress | None = None
) -> IntArray:
    """The paper's greedy path: from `start`, always go to the nearest unvisited row (ties: lower id).

    The kNN lists answer most steps; when a list has no unvisited entry left, an exact float32 scan of
    the unvisited rows does (the unvisited set is compacted as it shrinks). This is the exact plain
    greedy of arXiv 2510.12343 as long as `ids` are exact lists.
    """
    n = unit.shape[0]
    lists = ids.tolist()
    cursor = [0] * n  # first list entry that may still be unvisited
    visited = np.zeros(n, dtype=bool)
    order = np.empty(n, np.int64)
    cur = start
    visited[cur] = True
    order[0] = cur
    pool = np.arange(n)  # rows scanned on a fallback (compacted when half visited)
    pool_rows = unit
    for step in range(1, n):
        nxt = -1
        lst, p = lists[cur], cursor[cur]
        while p < len(lst):
            if not visited[lst[p]]:
                nxt = lst[p]
                break
            p += 1
        cursor[cur] = p
        if nxt < 0:  # list used up: exact scan of the unvisited rows
            alive = ~visited[pool]
            if alive.sum() * 2 < len(pool):
                pool = pool[alive]
                pool_rows = unit[torch.from_numpy(pool)]
                alive = np.ones(len(pool), dtype=bool)
            sims = torch.mv(pool_rows, unit[cur]).numpy()  # (|pool|,)
            sims = np.where(alive, sims, -4.0)
            nxt = int(pool[int(np.argmax(sims))])
        visited[nxt] = True
        order[step] = nxt
        cur = nxt
        if on_progress and (step & 2047) == 0:
            on_progress(Progress("paper greedy", step, n))
    if on_progress:
        on_progress(Progress("paper greedy", n, n))
    return order


class _Fragments:
    """Union-find over path fragments with a degree cap of two (greedy matching)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.degree = [0] * n
        self.adjacent: list[list[int]] = [[] for _ in range(n)]
        self.edges = 0

    def root(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def add_shortest(self, src: IntArray, ids: IntArray, dists: FloatArray) -> int:
        """Add the candidate edges (src[i], ids[i, j]) shortest first where they keep a set of paths."""
        n_nodes = len(self.parent)
        a = np.repeat(src, ids.shape[1])
        b = ids.ravel()
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        keys, first = np.unique(lo * n_nodes + hi, return_index=True)
        order = np.lexsort((keys, dists.ravel()[first]))  # length, then ids: deterministic
        added = 0
        degree, adjacent = self.degree, self.adjacent
        for u, v in zip((keys[order] // n_nodes).tolist(), (keys[order] % n_nodes).tolist(), strict=True):
            if degree[u] >= 2 or degree[v] >= 2:
                continue
            ru, rv = self.root(u), self.root(v)
            if ru == rv:
                continue
            self.parent[ru] = rv
            degree[u] += 1
            degree[v] += 1
            adjacent[u].append(v)
            adjacent[v].append(u)
            added += 1
        self.edges += added
        return added

    def path(self) -> IntArray:
        """Walk the single remaining path from its lower-id end point."""
        n = len(self.parent)
        if n == 1:
            return np.zeros(1, np.int64)
        start = min(v for v in range(n) if self.degree[v] == 1)
        order = [start]
        prev, cur = -1, start
        while len(order) < n:
            nxt = next(v for v in self.adjacent[cur] if v != prev)
            order.append(nxt)
            prev, cur = cur, nxt
        return np.asarray(order, np.int64)


def greedy_edge(
    unit: torch.Tensor,
    ids: IntArray,
    dists: FloatArray,
    candidates: int,
    block_rows: int,
    bf16_prefilter: bool,
    on_progress: OnProgress | None = None,
) -> IntArray:
    """Greedy matching: shortest kNN edges first (degree <= 2, no cycle), then join the fragments.

    Fragment end points are joined by repeating the same rule on the end points' own kNN lists,
    until one path remains (a few rounds; each round's end-point set is ~5x smaller).
    """
    n = unit.shape[0]
    frags = _Fragments(n)
    frags.add_shortest(np.arange(n), ids, dists)
    while frags.edges < n - 1:
        ends = np.flatnonzero(np.asarray(frags.degree) < 2)
        k = min(ids.shape[1] if ids.shape[1] else 1, len(ends) - 1)
        sub_ids, sub_d = knn_lists(unit[torch.from_numpy(ends)], k, candidates, block_rows, bf16_prefilter)
        if frags.add_shortest(ends, ends[sub_ids], sub_d) == 0:  # cannot happen with k >= 2; be safe
            roots: dict[int, int] = {}
            for v in ends.tolist():
                r = frags.root(v)
                if r in roots:
                    continue
                roots[r] = v
            heads = list(roots.values())
            pairs = np.array([[heads[0], heads[1]]], np.int64)
            frags.add_shortest(pairs[:, 0], pairs[:, 1:], np.zeros((1, 1)))
        if on_progress:
            on_progress(Progress("construction", frags.edges, n - 1))
    return frags.path()


def two_neighbour_bound(dists: FloatArray) -> float:
    """Lower bound on any open path: every inner node pays at least half its two shortest edges.

    L >= (sum_v (d1(v) + d2(v)) - the two largest d2(v)) / 2, since each of the two end points has one
    path edge only. Valid when the lists hold each row's exact two nearest neighbours.
    """
    if dists.shape[0] < 3 or dists.shape[1] < 2:
        return 0.0
    d2 = np.sort(dists[:, 1])
    return float(0.5 * (dists[:, 0].sum() + d2.sum() - d2[-2:].sum()))


def held_karp_bound(ids: IntArray, dists: FloatArray, upper: float, iterations: int = 40) -> float:
    """Held-Karp style lower bound: spanning trees with node penalties, over the kNN graph.

    For penalties pi, any open path P satisfies L(P) >= MST_pi - 2 sum(pi) + 2 min(pi), where edge
    weights are d(u, v) + pi_u + pi_v. Edges outside the lists are not known, but d(u, v) >= r_u and
    >= r_v there (r = each row's k-th list distance), so such a pair weighs at least
    max(r_u + pi_u, r_v + pi_v) + min(pi); a star from the node of least r + pi spans those. Subgradient
    steps (Polyak, on the degree excess) raise the bound. Valid when the lists are exact.

    Args:
        ids, dists: (V, k) kNN lists, k >= 1.
        upper: length of a known path (the step size target).
        iterations: subgradient steps (each one Kruskal MST on ~V k / 2 edges, ~0.2 s at V = 49k).
    """
    n, k = ids.shape
    if n < 3 or k < 1:
        return 0.0
    radius = dists[:, -1]
    a = np.repeat(np.arange(n), k)
    b = ids.ravel()
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keys, first = np.unique(lo * n + hi, return_index=True)
    eu, ev, ew = keys // n, keys % n, dists.ravel()[first]
    nodes = np.arange(n)

    def bound(pi: FloatArray) -> tuple[float, IntArray]:
        capped = radius + pi
        centre = int(np.argmin(capped))
        star = nodes != centre
        u = np.concatenate([eu, np.full(n - 1, centre)])
        v = np.concatenate([ev, nodes[star]])
        w = np.concatenate([ew + pi[eu] + pi[ev], capped[star] + pi.min()])
        chosen, degree = spanning_forest(n, u, v, w)
        tree = float(w[chosen].sum())
        return tree - 2.0 * float(pi.sum()) + 2.0 * float(pi.min()), degree

    pi = np.zeros(n)
    value, degree = bound(pi)
    best, step_scale = value, 2.0
    for _ in range(iterations):
        g = (degree - 2).astype(np.float64)
        norm = float((g * g).sum())
        if norm == 0.0:
            break
        pi = pi + step_scale * max(upper - value, 0.0) / norm * g
        value, degree = bound(pi)
        if value > best:
            best = value
        else:
            step_scale *= 0.8
    return best
