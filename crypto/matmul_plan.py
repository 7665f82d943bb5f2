"""The geometry and the cost of one encrypted vector x plaintext matrix product (crypto/matmul.py).

`plan_matmul` chooses, for an m x n matrix and a slot count, the input period, the output tiles, the
diagonal blocks per plaintext and the baby/giant split that minimise the estimated time on one core
(`MatmulPlan.cost_ms`, from operation costs measured on this machine). It is a pure function of shapes,
so the worker can plan, warm and generate the Galois keys of every product before any session.

References: Halevi & Shoup (2014) BSGS; Juvekar et al., GAZELLE (2018) hybrid packing; DESIGN.md 7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from core.errors import LayoutError
from crypto.keys_wire import RotationPlan

# Measured at N = 8192 on one core (DESIGN.md section 7): a rotation at the product's level (two primes),
# a rotation one level lower, a rescale, and a product with a cached plaintext.
_ROT_MS, _ROT_LOW_MS, _RESCALE_MS, _PT_MS = 1.7, 0.72, 0.35, 0.19


@dataclass(frozen=True)
class MatmulPlan:
    """Geometry of one product: period, tiles, blocks and baby/giant split. Pure function of shapes."""

    m: int  # input length
    n: int  # output length
    slots: int
    period: int  # p: input values per chunk (zero rows pad the last chunk)
    chunks: int  # input ciphertexts
    tile: int  # nt: output values per output ciphertext
    blocks: int  # r: diagonal blocks per plaintext
    diags: int  # K: diagonals per block
    stride: int  # slot distance between blocks
    copies: int  # replicas of the input needed along the slots
    baby: int  # B
    giant: int  # G

    @property
    def tiles(self) -> int:
        return -(-self.n // self.tile)

    @property
    def rotations(self) -> int:
        return self.chunks * (self.copies - 1 + self.baby - 1) + self.tiles * (
            self.giant - 1 + self.blocks - 1
        )

    def cost_ms(self, replicated: bool = False) -> float:
        """Estimated time on one core: baby steps (and replication) at the product's level, giant steps
        and the fold one level lower after their rescales, plus the plaintext products."""
        high = self.chunks * ((0 if replicated else self.copies - 1) + self.baby - 1)
        low = self.tiles * (self.giant - 1 + self.blocks - 1)
        return (
            high * _ROT_MS
            + low * _ROT_LOW_MS
            + self.tiles * self.giant * _RESCALE_MS
            + self.plaintexts * _PT_MS
        )

    @property
    def plaintexts(self) -> int:
        return self.chunks * self.tiles * self.diags

    def rotation_plan(self) -> RotationPlan:
        """The Galois keys this product needs."""
        steps = [1, self.baby * 1]
        if self.blocks > 1:
            steps.append(self.stride)
        if self.copies > 1:
            steps.append(-self.period)
        return RotationPlan.of(steps, self.slots)


def _geometry(p: int, nt: int, r: int, slots: int) -> tuple[int, int, int] | None:
    """(K, stride, copies) for r blocks, or None if the blocks do not fit."""
    k = -(-p // r)
    if r > 1 and (r - 1) * k >= p:
        return None
    if slots % p == 0:  # cyclic: x repeats over all slots, windows may wrap
        stride = k
        if k < nt and r > 1:
            return None
        if slots - (r - 1) * stride < nt:
            return None
        reach = (r - 1) * stride + k + nt - 1
        return k, stride, -(-reach // p) if reach <= slots else slots // p
    stride = k + max(0, -(-(nt - k) // p)) * p  # = K mod p, >= nt
    reach = (r - 1) * stride + k + nt - 1
    if reach > (slots // p) * p:
        return None
    return k, stride, -(-reach // p)


@lru_cache(maxsize=1024)
def plan_matmul(
    m: int, n: int, slots: int, in_chunk: int | None = None, replicated: bool = False
) -> MatmulPlan:
    """Choose tiles, blocks and the baby/giant split minimising estimated time.

    Args:
        m, n: matrix shape (input length, output length).
        slots: slot count of the parameter set.
        in_chunk: values per input ciphertext (default: all slots). A single-ciphertext input uses
            period m; a multi-ciphertext input uses period `in_chunk`.
        replicated: the input will arrive already replicated (`EncVector.copies`), so replication
            costs nothing and more copies are free.
    """
    if m <= 0 or n <= 0:
        raise LayoutError(f"matrix shape must be positive, got {m} x {n}")
    chunk = slots if in_chunk is None else in_chunk
    chunks = -(-m // chunk)
    # candidate periods: the exact length, or zero-padded to a divisor of the slots (cyclic, no wrap issue)
    periods = {chunk} if chunks > 1 else {m, min(slots, 1 << (m - 1).bit_length())}
    best: tuple[float, MatmulPlan] | None = None
    for p in sorted(periods):
        found: tuple[float, MatmulPlan] | None = None
        tiles = -(-n // slots) - 1
        while found is None and tiles < n:  # the fewest output ciphertexts that fit, then the best blocks
            tiles += 1
            nt = -(-n // tiles)
            for r in range(1, max(1, slots // nt) + 1):
                geo = _geometry(p, nt, r, slots)
                if geo is None:
                    continue
                k, stride, copies = geo
                for b in _baby_candidates(k, tiles, chunks):
                    plan = MatmulPlan(m, n, slots, p, chunks, nt, r, k, stride, copies, b, -(-k // b))
                    cost = plan.cost_ms(replicated)
                    if found is None or cost < found[0]:
                        found = (cost, plan)
        if found is not None and (best is None or found[0] < best[0]):
            best = found
    if best is None:
        raise LayoutError(f"no packing found for {m} x {n} with {slots} slots")
    return best[1]


def _baby_candidates(k: int, tiles: int, chunks: int) -> range:
    """Baby-step counts worth trying: around sqrt(K * tiles / chunks), the balance of the two kinds."""
    centre = max(1, round(math.sqrt(k * tiles / chunks)))
    return range(max(1, centre // 2), min(k, 2 * centre) + 1)
