"""The selection chain on a batch: B rows of logits and B uniforms -> B tokens and B embeddings to feed back.

The batched twin of `model.simulate.SimulateSelector` (simulate mode) and `model.generate.ExactSelector`
(plain mode) for the evaluation, where B independent sequences go through the model together
(`model.batch_decode`). Row b computes exactly what the unbatched selector computes for the same logits and
the same `r` (tested value for value): the same softmax with fp16 or fp32 rounding, the same circuit of
`model.sampler` on a row-wise backend, the same mixture.

Why it is faster than B unbatched calls:
- the step polynomial S is element-wise, so equal prefix sums give identical `s_j`; with fp16 rounding 70-80%
  of the probabilities are zero and `c_j = c_{j-1}` there, so S runs once per change of `c` in each row and
  is scattered back (exact);
- the mixture `I'^T W` is a (V, d) float64 product, 226 MB of table for SmolLM2; rows whose stray weights
  are too large for the sparse sum (no PP: most rows) share one matrix product instead of one pass over the
  table each. This dense product is what made the unbatched collapse command 5x slower per token than
  simulate decode (which has PP on, so its mixtures are sparse).

With `noise_sigma > 0` (or `prefix_noise_sigma > 0`) each row draws the noise of `model.vector_ops.NoisyOps`
(`PrefixNoisyOps`) from its own generator (given with the step), so a row gets the same draws as an
unbatched selector built on that generator; S then runs on every entry.

References: DESIGN.md sections 2 and 3; arXiv 2510.12343.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from model.evaluation import cosine_distance
from model.sampler import (
    Precision,
    SamplerConfig,
    compose,
    one_hot_from_steps,
    post_process,
    round_to_fp16,
    step_polynomials,
)
from model.simulate import MIXTURE_TOLERANCE, MIXTURE_WEIGHT_FLOOR, check_perm
from model.vector_ops import FloatArray, NoisyOps, NumpyOps, PrefixNoisyOps

IntArray = npt.NDArray[np.int64]
# OpenBLAS's float64 product rounds a row by where it falls in the kernel's blocks unless the row count is a
# multiple of 4 (measured: 1-3, 5, 7, 13, 25 and 33 rows differ from the same rows in a 64-row product;
# padded with zero rows to a multiple of 4, none do), so a row's mixture does not depend on its companions.
DENSE_ROW_MULTIPLE = 4
# A row joins the shared product when it keeps more than this share of its weights. One more row costs the
# product about 1 ms, gathering 1-25% of the table for a sparse sum 5-15 ms (the unbatched `mixture`, which
# has no product to share, gathers up to 25%). The rule reads only the row's own weights: batch-invariant.
BATCH_SPARSE_SHARE = 0.01
NOTHING = -1  # exact position when r >= sum(q): exact inverse-transform sampling draws nothing


@dataclass(frozen=True)
class BatchSelection:
    """What a batch selector decided for one step of B rows."""

    tokens: IntArray  # (B,) the displayed token ids (post-corrected)
    embeddings: torch.Tensor  # (B, d) float32, the next input of each row
    position: IntArray | None = None  # (B,) argmax of I' in sampling order (simulate only)
    exact: IntArray | None = None  # (B,) exact inverse-transform position, NOTHING if nothing is drawn
    max_error: FloatArray | None = None  # (B,) ||I' - e_k||_inf against the exact one-hot
    weight_sum: FloatArray | None = None  # (B,) sum(I')
    cosine: FloatArray | None = None  # (B,) cosine distance of the mixture to the exact draw's embedding


class BatchSelector(Protocol):
    """Logits (B, V) float64, uniforms (B,) and each row's noise generator -> a `BatchSelection`."""

    def select(
        self, logits: FloatArray, rs: FloatArray, noise: Sequence[np.random.Generator]
    ) -> BatchSelection: ...


def rowwise_probabilities(
    logits: FloatArray, temperature: float, precision: Precision, renormalize: bool
) -> FloatArray:
    """`model.sampler.probabilities` for each row of a (B, V) array, value for value."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature == 0.0:
        p = np.zeros_like(z)
        p[np.arange(z.shape[0]), np.argmax(z, axis=1)] = 1.0
        return p
    e = np.exp((z - z.max(axis=1, keepdims=True)) / temperature)
    p = e / e.sum(axis=1, keepdims=True)
    if precision == "fp16":
        p = round_to_fp16(p)
    elif precision == "fp32":
        p = p.astype(np.float32).astype(np.float64)
    if renormalize:
        p /= p.sum(axis=1, keepdims=True)
    return np.asarray(p, dtype=np.float64)


def exact_draws(c: FloatArray, rs: FloatArray) -> IntArray:
    """First j with c_j > r in each row (exact inverse-transform sampling); NOTHING when r >= c_{V-1}."""
    above = c > rs[:, None]
    j = np.argmax(above, axis=1).astype(np.int64)
    j[~above[np.arange(c.shape[0]), j]] = NOTHING
    return np.asarray(j, dtype=np.int64)


def step_values_deduplicated(ops: NumpyOps, c: FloatArray, rs: FloatArray, amp_rounds: int) -> FloatArray:
    """s = S(c - r) row-wise; S runs once per run of equal neighbouring c_j (exact: S is element-wise).

    The runs of all rows go through S as one flat vector (no padding to the longest row) and are repeated
    back to their lengths.
    """
    change = np.empty(c.shape, dtype=bool)
    change[:, 0] = True  # every row starts a run
    np.not_equal(c[:, 1:], c[:, :-1], out=change[:, 1:])
    starts = np.flatnonzero(change)  # run starts in row-major order
    x = ops.sub(c.ravel()[starts], np.repeat(rs, change.sum(axis=1)))  # c_j - r, as add_const(c, -r)
    s = compose(ops, x, step_polynomials(amp_rounds))
    lengths = np.diff(starts, append=c.size)
    return np.repeat(s, lengths).reshape(c.shape)


def rowwise_mixture(weights: FloatArray, table: FloatArray, row_norm_max: float) -> FloatArray:
    """`model.simulate.mixture` for each row: sparse sums where certified, one shared product for the rest."""
    out = np.empty((weights.shape[0], table.shape[1]), dtype=np.float64)
    magnitude = np.abs(weights)
    keep = magnitude > MIXTURE_WEIGHT_FLOOR
    dropped = np.where(keep, 0.0, magnitude).sum(axis=1)
    kept = keep.sum(axis=1)
    dense = (dropped * row_norm_max > MIXTURE_TOLERANCE) | (kept > BATCH_SPARSE_SHARE * weights.shape[1])
    for b in np.flatnonzero(~dense):
        index = np.flatnonzero(keep[b])
        out[b] = weights[b, index] @ table[index]
    if dense.any():
        rows = weights[dense]
        padding = np.zeros((-rows.shape[0] % DENSE_ROW_MULTIPLE, rows.shape[1]))
        out[dense] = (np.vstack([rows, padding]) @ table)[: rows.shape[0]]
    return out


class BatchSimulate:
    """Simulate mode on a batch: the float64 circuit per row, mixture-embedding feedback.

    Args:
        embeddings: the model's input embedding matrix W, (V, d).
        perm: the sampling order (token-id order when `config.tsp` is off).
        config: the sampler settings.

    Raises:
        SamplerError: `perm` is not a permutation of the embedding rows.
    """

    def __init__(
        self,
        embeddings: torch.Tensor,
        perm: npt.ArrayLike,
        config: SamplerConfig,
    ) -> None:
        table = embeddings.detach().cpu().numpy().astype(np.float64)
        self.perm = check_perm(perm, table.shape[0])
        self.config = config
        self.table = np.ascontiguousarray(table[self.perm])  # W_pi
        self.row_norm_max = float(np.linalg.norm(self.table, axis=1).max())

    def select(
        self, logits: FloatArray, rs: FloatArray, noise: Sequence[np.random.Generator]
    ) -> BatchSelection:
        config = self.config
        p = rowwise_probabilities(logits, config.temperature, config.softmax_precision, config.renormalize)
        q = p[:, self.perm]
        clean_c = np.cumsum(q, axis=1)
        if config.input_noise_sigma > 0:
            q = q + np.stack([rng.normal(0.0, config.input_noise_sigma, size=q.shape[1]) for rng in noise])
        ops = (
            NoisyOps(config.noise_sigma, noise, skip_zero_terms=True)
            if config.noise_sigma > 0
            else NumpyOps(skip_zero_terms=True)
        )
        if config.noise_sigma > 0:  # every entry gets its own noise: nothing to share
            s = compose(ops, ops.prefix_sum(q) - rs[:, None], step_polynomials(config.amp_rounds))
        elif config.prefix_noise_sigma > 0:  # PrefixNoisyOps' draws, row by row; S on every entry
            c = PrefixNoisyOps(config.prefix_noise_sigma, noise).perturb(clean_c)
            s = compose(ops, ops.sub(c, rs[:, None]), step_polynomials(config.amp_rounds))
        else:
            c = clean_c if config.input_noise_sigma == 0 else ops.prefix_sum(q)
            s = step_values_deduplicated(ops, c, rs, config.amp_rounds)
        weights = one_hot_from_steps(ops, s)
        if config.pp:
            weights = post_process(ops, weights)
        position = np.argmax(weights, axis=1).astype(np.int64)
        mixed = rowwise_mixture(weights, self.table, self.row_norm_max)
        exact = exact_draws(clean_c, rs)
        rows = np.arange(weights.shape[0])
        drawn = exact != NOTHING
        error = np.abs(weights)
        error[rows[drawn], exact[drawn]] = np.abs(weights[rows[drawn], exact[drawn]] - 1.0)
        cosine = np.full(weights.shape[0], np.nan)
        cosine[drawn] = cosine_distance(mixed[drawn], self.table[exact[drawn]])
        return BatchSelection(
            tokens=self.perm[position],
            embeddings=torch.from_numpy(mixed.astype(np.float32)),
            position=position,
            exact=exact,
            max_error=error.max(axis=1),
            weight_sum=weights.sum(axis=1),
            cosine=cosine,
        )


class BatchExact:
    """Plain mode on a batch: exact inverse-transform sampling in id order, fed back by embedding rows."""

    def __init__(self, embeddings: torch.Tensor, temperature: float) -> None:
        self.embeddings = embeddings.detach().to(torch.float32)
        self.temperature = temperature

    def select(
        self, logits: FloatArray, rs: FloatArray, noise: Sequence[np.random.Generator]
    ) -> BatchSelection:
        if self.temperature == 0.0:
            tokens = np.argmax(logits, axis=1).astype(np.int64)
        else:
            p = rowwise_probabilities(logits, self.temperature, "fp64", False)
            c = np.cumsum(p, axis=1)
            tokens = np.array(  # as model.generate.inverse_transform: r scaled by c[-1], clamped
                [min(int(np.searchsorted(c[b], rs[b] * c[b, -1], side="right")), c.shape[1] - 1)
                 for b in range(c.shape[0])],
                dtype=np.int64,
            )  # fmt: skip
        return BatchSelection(tokens=tokens, embeddings=self.embeddings[torch.from_numpy(tokens)])
