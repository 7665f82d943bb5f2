"""Encrypted vector x plaintext matrix: `y = x^T W` for any shape, by generalised diagonals with BSGS.

Inputs longer than the slot count come as several ciphertexts (chunks of period `p`); outputs longer
than one ciphertext are computed as tiles of `nt` columns, each tile one output ciphertext. For one
chunk and one tile, with `x` replicated with period `p` along the slots,

    y[t] = sum_{k < p} x[(t + k) mod p] * W[(t + k) mod p, t]           (generalised diagonal k)

Replicated packing: when a tile is narrower than the slots, the `p` diagonals are split over `r`
blocks at slot offsets `o_rho = rho * stride`, block `rho` taking diagonals `rho*K .. rho*K + K - 1`;
the stride is chosen so block `rho` sees `x` already shifted by `rho*K` (stride = K mod p), so one
plaintext carries r diagonals. A final fold `sum_rho rot(y, o_rho)` adds the blocks (r - 1 rotations).

Baby-step / giant-step: diagonal `k = a*B + b`; the B baby rotations `rot(x, b)` (step 1, chained) are
shared by every tile, the plaintexts are pre-rotated by `-a*B`, and the giant steps are summed Horner
style, `(...(acc_{G-1} rot B) + acc_{G-2}) rot B ... + acc_0`, so a plan needs Galois keys for only
four steps: 1, B, the block stride and the replication period. Each giant accumulator is rescaled
before its rotation, so the giant steps and the fold rotate one-prime ciphertexts (level 0 for a
level-1 product: 0.7 ms instead of 1.7 ms at N = 8192), and the baby steps are the only rotations at the
product's level. The price is precision: each rescale and the lower-level rotations add their noise
at the canonical scale instead of its square (measured at 2^49: 2.7e-9 instead of 3.2e-10 for 500 x
1,600 at level 2, 1.2e-7 instead of 2.9e-8 for 4,100 x 30 at level 1, about float32 rounding; at the
test preset's 2^24, 1.3e-2 instead of 2.4e-3).
An input that arrives already replicated (the key holder encrypts it that way, `EncVector.copies`)
skips the replication rotations.

Plaintext diagonals are encoded on first use and cached in the `PlainMatrix` up to a byte budget (no
eviction: the first plaintexts stay hot, later ones are re-encoded each call); one plaintext at level l
takes N * (l + 1) * 8 bytes (131 KB at N = 8192, level 1).

Costs per product: rotations = chunks * (copies - 1 + B - 1) + tiles * (G - 1 + r - 1), plaintext
products = chunks * tiles * K, rescales = tiles * G. TenSEAL's `CKKSVector.mm` does one rotation and
one encoding per input row and is wrong when input + output length exceeds the slots + 1 (DESIGN.md
section 7).

References: Halevi & Shoup, "Algorithms in HElib" (2014), diagonal method and BSGS; Juvekar et al.,
GAZELLE (2018), hybrid/replicated packing; DESIGN.md section 7.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import LayoutError
from crypto import arith
from crypto.engine import Ciphertext, Engine, Plaintext
from crypto.matmul_plan import MatmulPlan, plan_matmul
from crypto.vector import EncVector

FloatArray = npt.NDArray[np.float64]
DEFAULT_CACHE_BYTES = 2 << 30  # per matrix: holds the LM head's 8,640 level-1 plaintexts (1.1 GB)


class PlainMatrix:
    """A plaintext weight matrix (m x n) with its cache of encoded diagonals.

    Args:
        weights: the matrix; `y = x^T W`. float32 is kept as it is (a view, no copy: the worker's blocks
            are slices of its matrices) and widened per diagonal; anything else becomes float64.
        cache_bytes: budget for encoded plaintexts (no eviction; beyond it they are re-encoded).
    """

    def __init__(self, weights: npt.ArrayLike, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        w = np.asarray(weights)
        if w.dtype not in (np.float32, np.float64):
            w = w.astype(np.float64)
        if w.ndim != 2:
            raise LayoutError(f"weights must be 2-D, got shape {w.shape}")
        self.weights = w
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0
        self._cache: dict[tuple[Any, ...], Plaintext] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.weights.shape[0]), int(self.weights.shape[1]))

    def clear_cache(self) -> None:
        self._cache.clear()
        self.cached_bytes = 0

    def plaintext(self, eng: Engine, key: tuple[Any, ...], level: int, build: Any) -> Plaintext | None:
        """Cached plaintext for `key`, built by `build()` (None if the diagonal block is all zero).

        The cache is keyed by the engine's real SEAL parameters at `level` (`Engine.plaintext_id`:
        parms_id and canonical scale), never by `eng.params`, which is a label: a plaintext belongs to
        one modulus chain and one scale, and a session over other primes must never be served it.
        """
        full = (eng.plaintext_id(level), key, level)
        if full in self._cache:
            return self._cache[full]
        values = build()
        if values is None:
            self._cache[full] = None  # an all-zero block: remembered, so it is never built again
            return None
        pt = eng.encode(values, level)
        size = int(pt.coeff_count()) * 8  # N * (level + 1) words
        if self.cached_bytes + size <= self.cache_bytes:
            self._cache[full] = pt
            self.cached_bytes += size
        return pt


def replicate(eng: Engine, ct: Ciphertext, period: int, copies: int) -> Ciphertext:
    """x + rot(x, -p) + rot(x, -2p) + ...: `copies` replicas (needs zero padding past the period)."""
    acc, cur = ct, ct
    for _ in range(copies - 1):
        cur = eng.rotate(cur, -period)
        acc = eng.add(acc, cur)
    return acc


def _diagonal_values(
    w: FloatArray,
    plan: MatmulPlan,
    blocks: list[tuple[int, int, int]],
    row0: int,
    d: int,
    shift: int,
    col0: int,
    t: npt.NDArray[np.int64],
) -> FloatArray | None:
    """Slot values of the plaintext for baby diagonal d pre-rotated by -shift (None if all zero)."""
    vec = np.zeros(plan.slots)
    for offset, first, count in blocks:
        if d >= count:
            continue
        rows = row0 + (first + d + t) % plan.period
        ok = rows < w.shape[0]
        vec[(offset + shift + t[ok]) % plan.slots] = w[rows[ok], col0 + t[ok]]
    return vec if np.any(vec) else None


def diagonal_sum(
    eng: Engine,
    mat: PlainMatrix,
    babies: list[list[Ciphertext]],
    plan: MatmulPlan,
    tile: int,
    blocks: list[tuple[int, int, int]],
    level: int,
    tag: str,
) -> Ciphertext:
    """sum_a rot(sum_i sum_b rot(x_i, b) * D[i, a, b], a*B), rescaled.

    blocks = (slot offset, first diagonal, diagonal count) per block.
    """
    result: Ciphertext = None
    for a in reversed(range(plan.giant)):
        acc: Ciphertext | None = None
        for i, xs in enumerate(babies):
            for b, xb in enumerate(xs):
                pt = _plaintext(eng, mat, plan, blocks, level, tag, i, tile, a, b)
                if pt is not None:
                    acc = eng.mul_plain_acc(acc, xb, pt)  # level l, scale[l]^2
        if result is not None:
            result = eng.rotate(result, plan.baby)  # level l-1: one prime cheaper than before the rescale
        if acc is not None:
            acc = eng.rescale(acc)  # level l -> l-1, canonical scale
            result = acc if result is None else eng.add(result, acc)
    if result is None:  # an all-zero tile of W
        return eng.zero(level - 1)
    return result


def _plaintext(
    eng: Engine,
    mat: PlainMatrix,
    plan: MatmulPlan,
    blocks: list[tuple[int, int, int]],
    level: int,
    tag: str,
    i: int,
    tile: int,
    a: int,
    b: int,
) -> Plaintext | None:
    """The cached plaintext of chunk i, tile, giant step a and baby step b (None: all zero)."""
    col0 = tile * plan.tile
    t = np.arange(min(plan.tile, plan.n - col0))
    d = a * plan.baby + b
    build = partial(_diagonal_values, mat.weights, plan, blocks, i * plan.period, d, a * plan.baby, col0, t)
    return mat.plaintext(eng, (tag, i, tile, a, b), level, build)


def _blocks(plan: MatmulPlan) -> list[tuple[int, int, int]]:
    """(slot offset, first diagonal, diagonal count) of each diagonal block of the plan."""
    return [
        (r * plan.stride, r * plan.diags, min(plan.diags, plan.period - r * plan.diags))
        for r in range(plan.blocks)
    ]


def prepare(eng: Engine, mat: PlainMatrix, plan: MatmulPlan, level: int) -> int:
    """Encode every plaintext a product at `level` will use (a warm cache); returns how many.

    `eng` needs no keys: plaintexts depend only on the parameters (`Engine.for_params`).
    """
    blocks = _blocks(plan)
    count = 0
    for tile in range(plan.tiles):
        for a in range(plan.giant):
            for i in range(plan.chunks):
                for b in range(plan.baby):
                    count += _plaintext(eng, mat, plan, blocks, level, "vec", i, tile, a, b) is not None
    return count


def _prepare(eng: Engine, x: EncVector, plan: MatmulPlan, level: int | None) -> tuple[EncVector, int]:
    lvl = x.level if level is None else level
    eng.require("matmul", min(x.level, lvl), 1)
    if lvl > x.level:
        raise LayoutError(f"cannot compute at level {lvl} above the input's level {x.level}")
    if x.copies > 1:
        if x.period != plan.period or x.copies < plan.copies:
            raise LayoutError(
                f"the input holds {x.copies} copies at period {x.period}; the plan needs "
                f"{plan.copies} at period {plan.period}"
            )
        return arith.drop(eng, x, lvl), lvl
    if plan.period < eng.slots and not x.clean:
        eng.require("matmul (clean input padding first)", x.level, 2)
        x = arith.clean(eng, x)
        lvl = min(lvl, x.level)
    return arith.drop(eng, x, lvl), lvl


def matmul(
    eng: Engine,
    x: EncVector,
    mat: PlainMatrix,
    plan: MatmulPlan | None = None,
    level: int | None = None,
    check: Callable[[], None] | None = None,
) -> EncVector:
    """y = x^T W for an encrypted vector x (length m) and plaintext W (m x n). Depth 1.

    Args:
        eng: worker engine with the plan's Galois keys (`plan.rotation_plan()`).
        x: encrypted input; needs clean padding if its period is below the slot count (else one
            extra level is spent to clean it).
        mat: the weights with their plaintext cache.
        plan: from `plan_matmul(m, n, slots, x.chunk)` (computed if omitted).
        level: multiply at this level (drop x first): level 1 is cheapest (smaller plaintexts and
            rotations) and leaves the result at level 0.
        check: called between output tiles (a cancellation point: it may raise).

    Returns:
        `n` values in ciphertexts of `plan.tile` values, one level below the level used.

    Raises:
        LevelsExhausted, LayoutError, MissingRotationKey.
    """
    m, n = mat.shape
    if x.length != m:
        raise LayoutError(f"input has {x.length} values, matrix has {m} rows")
    plan = plan if plan is not None else plan_matmul(m, n, eng.slots, x.chunk)
    if plan.chunks != len(x.cts) or (plan.chunks > 1 and plan.period != x.chunk):
        raise LayoutError(
            f"plan for {plan.chunks} chunks of {plan.period}, input has {len(x.cts)} of {x.chunk}"
        )
    x, lvl = _prepare(eng, x, plan, level)
    babies = []
    for ct in x.cts:
        replicated = x.copies > 1 or plan.period >= eng.slots
        rep = ct if replicated else replicate(eng, ct, plan.period, plan.copies)
        xs = [rep]
        for _ in range(1, plan.baby):
            xs.append(eng.rotate(xs[-1], 1))
        babies.append(xs)
    blocks = _blocks(plan)
    outs = []
    for tile in range(plan.tiles):
        if check is not None:
            check()
        y = diagonal_sum(eng, mat, babies, plan, tile, blocks, lvl, "vec")
        if plan.blocks > 1:
            acc, cur = y, y
            for _ in range(plan.blocks - 1):
                cur = eng.rotate(cur, plan.stride)
                acc = eng.add(acc, cur)
            y = acc
        outs.append(y)
    return EncVector(tuple(outs), n, plan.tile, lvl - 1, clean=plan.blocks == 1)
