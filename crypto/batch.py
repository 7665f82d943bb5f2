"""Batch product for prompt prefill: several token vectors packed in one ciphertext times one matrix.

Token `j` occupies slots `j*stride .. j*stride + stride - 1`: its `m` values first, zeros after. The
worker replicates every token inside its own block (the same rotations for all tokens), then runs the
diagonal method of `crypto.matmul` with one block per token, every block using all `m` diagonals; the
result for token `j` is at `j*stride .. j*stride + n - 1`, and the output is clean, so it can feed the
next product with the same stride. A block needs `stride >= m * ceil((n + m - 1) / m)`; at N = 8192
that packs 3 tokens per ciphertext for 576 x 576 and 1 for 576 x 1536.

References: DESIGN.md section 4 (prefill); `crypto.matmul` for the diagonal method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sealapi

from core.errors import LayoutError
from crypto.engine import Ciphertext, Engine
from crypto.keys import SecretContext
from crypto.matmul import MatmulPlan, PlainMatrix, diagonal_sum, replicate

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class EncBatch:
    """`tokens` vectors of `length` values, token j at slot offset j * stride, in one ciphertext."""

    ct: Ciphertext
    tokens: int
    length: int
    stride: int
    level: int


def batch_stride(m: int, n: int) -> int:
    """Smallest block stride for an m x n batch product (room for the replicated input)."""
    return m * (-(-(n + m - 1) // m))


def batch_capacity(m: int, n: int, slots: int) -> int:
    """Tokens per ciphertext for an m x n batch product (0 if one token does not fit)."""
    return slots // batch_stride(m, n)


def plan_batch(m: int, n: int, slots: int, tokens: int, stride: int) -> MatmulPlan:
    """The diagonal plan of a batch product (one block per token)."""
    if stride < batch_stride(m, n) or tokens * stride > slots or tokens < 1:
        raise LayoutError(
            f"{tokens} token(s) of {m} -> {n} need stride >= {batch_stride(m, n)} "
            f"and tokens * stride <= {slots}"
        )
    b = max(1, round(math.sqrt(m)))
    return MatmulPlan(m, n, slots, m, 1, n, tokens, m, stride, -(-(n + m - 1) // m), b, -(-m // b))


def encrypt_batch(
    secret: SecretContext, rows: npt.ArrayLike, stride: int, engine: Engine | None = None
) -> EncBatch:
    """Key holder: encrypt a (tokens x m) array, one token per block of `stride` slots."""
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] > stride or x.shape[0] * stride > secret.params.slot_count:
        raise LayoutError(f"cannot pack {x.shape} at stride {stride} into {secret.params.slot_count} slots")
    eng = engine if engine is not None else Engine.for_key_holder(secret)
    slots = np.zeros(secret.params.slot_count)
    for j, row in enumerate(x):
        slots[j * stride : j * stride + row.size] = row
    ct = sealapi.Ciphertext()
    secret.encryptor.encrypt_symmetric(eng.encode(slots, eng.top_level), ct)
    return EncBatch(ct, int(x.shape[0]), int(x.shape[1]), stride, eng.top_level)


def decrypt_batch(secret: SecretContext, batch: EncBatch) -> FloatArray:
    """Key holder: the (tokens x length) values of a batch."""
    pt = sealapi.Plaintext()
    secret.decryptor.decrypt(batch.ct, pt)
    slots = np.asarray(sealapi.CKKSEncoder(secret.seal_context).decode_double(pt))
    return np.stack([slots[j * batch.stride : j * batch.stride + batch.length] for j in range(batch.tokens)])


def matmul_batch(eng: Engine, batch: EncBatch, mat: PlainMatrix, level: int | None = None) -> EncBatch:
    """Every packed token times W: (tokens x m) -> (tokens x n), same stride. Depth 1.

    Galois keys: `plan_batch(...).rotation_plan()`.
    """
    m, n = mat.shape
    if batch.length != m:
        raise LayoutError(f"batch tokens have {batch.length} values, matrix has {m} rows")
    plan = plan_batch(m, n, eng.slots, batch.tokens, batch.stride)
    lvl = batch.level if level is None else level
    eng.require("matmul_batch", min(lvl, batch.level), 1)
    ct = eng.drop(batch.ct, lvl)
    rep = replicate(eng, ct, m, plan.copies)
    xs = [rep]
    for _ in range(1, plan.baby):
        xs.append(eng.rotate(xs[-1], 1))
    blocks = [(j * batch.stride, 0, m) for j in range(batch.tokens)]
    y = diagonal_sum(eng, mat, [xs], plan, 0, blocks, lvl, f"batch{batch.tokens}x{batch.stride}")
    return EncBatch(y, batch.tokens, n, batch.stride, lvl - 1)
