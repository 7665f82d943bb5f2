"""The vector-operations interface the sampler circuit is written against.

The sampler of DESIGN.md section 2 is written once, against `VectorOps`, and runs unchanged on
float64 arrays (`NumpyOps`, the `simulate` mode and the batched evaluation; `NoisyOps` and
`PrefixNoisyOps` add the Gaussian model of CKKS noise) and on CKKS ciphertexts (the encrypted
backend in `crypto/`, which satisfies this protocol structurally and does not import this module).

Every operation returns a new value and never mutates its inputs. Vectors are 1-D and of one
length `n` throughout a circuit (the float64 backend also takes a batch of them, one per row).
Operations that consume multiplicative depth under CKKS say how much in their docstring;
`ensure_levels` is where a CKKS backend refreshes (or raises) before a step that needs more levels
than a value has left. In floating point it is the identity.

References: DESIGN.md sections 2 and 3; arXiv 2510.12343.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

V = TypeVar("V")

Cubic = tuple[float, float, float, float]
"""Coefficients (c0, c1, c2, c3) of c0 + c1*x + c2*x^2 + c3*x^3."""


class VectorOps(Protocol[V]):
    """Element-wise and prefix operations on length-n vectors of some backend type `V`."""

    def add(self, a: V, b: V) -> V:
        """a + b, element-wise. Depth 0."""
        ...

    def sub(self, a: V, b: V) -> V:
        """a - b, element-wise. Depth 0."""
        ...

    def mul(self, a: V, b: V) -> V:
        """a * b, element-wise (ciphertext x ciphertext under CKKS). Depth 1."""
        ...

    def mul_const(self, a: V, c: float) -> V:
        """c * a. Depth 1 under CKKS unless the backend folds it into the next product."""
        ...

    def add_const(self, a: V, c: float) -> V:
        """a + c in every slot. Depth 0."""
        ...

    def cubic(self, a: V, coeffs: Cubic) -> V:
        """c0 + c1*a + c2*a^2 + c3*a^3, element-wise. Depth 2."""
        ...

    def prefix_sum(self, a: V) -> V:
        """out[j] = a[0] + ... + a[j] (inclusive cumulative sum, no wrap-around). Depth 2 under CKKS."""
        ...

    def shift_right(self, a: V) -> V:
        """out[0] = 0, out[j] = a[j-1]: the `s_{j-1}` of the sampler with `s_{-1} = 0`."""
        ...

    def ensure_levels(self, a: V, levels: int) -> V:
        """Return `a`, refreshed if it has fewer than `levels` multiplicative levels left."""
        ...

    def coarse(self, a: V) -> V:
        """`a` from here on at the coarser precision the circuit's contracting part allows (a CKKS
        backend moves it into its sampler tail: more levels per refresh). Identity in floating point."""
        ...

    def fine(self, a: V) -> V:
        """`a` back at full precision (before rotations, which the tail has no keys for)."""
        ...


FloatArray = npt.NDArray[np.float64]


class NumpyOps:
    """`VectorOps` over float64 numpy arrays: the exact twin of the encrypted backend.

    A value is one vector (V,) or a batch (B, V) of independent vectors, one per row: the prefix sum and
    the shift act along the last axis, so a row of a batch gets the values of the same vector alone.

    Args:
        skip_zero_terms: evaluate the cubic's Horner scheme in one fresh buffer and skip the additions of
            a zero coefficient: about twice as fast on large batches, equal value for value (adding 0.0
            changes at most the sign of a zero). The batched evaluation and selectors use it; simulate mode
            keeps the plain Horner scheme.
    """

    def __init__(self, skip_zero_terms: bool = False) -> None:
        self.skip_zero_terms = skip_zero_terms

    def add(self, a: FloatArray, b: FloatArray) -> FloatArray:
        return a + b

    def sub(self, a: FloatArray, b: FloatArray) -> FloatArray:
        return a - b

    def mul(self, a: FloatArray, b: FloatArray) -> FloatArray:
        return a * b

    def mul_const(self, a: FloatArray, c: float) -> FloatArray:
        return a * c

    def add_const(self, a: FloatArray, c: float) -> FloatArray:
        return a + c

    def cubic(self, a: FloatArray, coeffs: Cubic) -> FloatArray:
        c0, c1, c2, c3 = coeffs
        if not self.skip_zero_terms:
            return c0 + a * (c1 + a * (c2 + a * c3))  # Horner: 3 multiplies, same values as the power form
        out = np.multiply(a, c3)
        for c in (c2, c1):
            if c != 0.0:
                out += c
            out *= a
        if c0 != 0.0:
            out += c0
        return out

    def prefix_sum(self, a: FloatArray) -> FloatArray:
        return np.cumsum(a, axis=-1)

    def shift_right(self, a: FloatArray) -> FloatArray:
        out = np.empty_like(a)
        out[..., 0] = 0.0
        out[..., 1:] = a[..., :-1]
        return out

    def ensure_levels(self, a: FloatArray, levels: int) -> FloatArray:
        return a

    def coarse(self, a: FloatArray) -> FloatArray:
        return a

    def fine(self, a: FloatArray) -> FloatArray:
        return a


# --- the CKKS noise models (DESIGN.md section 2, noise-budget table) ---------------------------------


def _rows(rngs: Sequence[np.random.Generator], shape: tuple[int, ...], owner: str) -> int:
    """The length of each row of `shape`, after checking there is one generator per row."""
    rows = math.prod(shape[:-1])
    if rows != len(rngs):
        raise ValueError(f"{owner} has {len(rngs)} noise generator(s), one per row, for {rows} row(s)")
    return shape[-1]


class NoisyOps(NumpyOps):
    """`NumpyOps` plus Gaussian noise of std `sigma` after the prefix sum, every cubic and every product.

    The prefix-sum noise is the noise on `c - r` of DESIGN.md's noise-budget table; the rest models the
    rescale error each CKKS multiplication adds. Row b draws from `rngs[b]` (one generator for a vector),
    so a row of a batch gets the draws of the same vector alone on that generator.
    """

    def __init__(
        self, sigma: float, rngs: Sequence[np.random.Generator], skip_zero_terms: bool = False
    ) -> None:
        super().__init__(skip_zero_terms)
        self.sigma = sigma
        self.rngs = rngs

    def _noisy(self, a: FloatArray) -> FloatArray:
        n = _rows(self.rngs, a.shape, "NoisyOps")
        noise = np.stack([rng.normal(0.0, self.sigma, size=n) for rng in self.rngs]).reshape(a.shape)
        return np.asarray(a + noise, dtype=np.float64)

    def prefix_sum(self, a: FloatArray) -> FloatArray:
        return self._noisy(super().prefix_sum(a))

    def cubic(self, a: FloatArray, coeffs: Cubic) -> FloatArray:
        return self._noisy(super().cubic(a, coeffs))

    def mul(self, a: FloatArray, b: FloatArray) -> FloatArray:
        return self._noisy(super().mul(a, b))


class PrefixNoisyOps(NumpyOps):
    """`NumpyOps` plus Gaussian noise of std `sigma` on the prefix sum alone, so on `c - r`.

    The noise of the encrypted sampler at the default preset: its prefix sum's error (DESIGN.md section 2);
    the polynomials contract their own, much smaller, rounding error. Row b draws from `rngs[b]`.
    """

    def __init__(self, sigma: float, rngs: Sequence[np.random.Generator]) -> None:
        super().__init__()
        self.sigma = sigma
        self.rngs = rngs

    def perturb(self, c: FloatArray) -> FloatArray:
        """c + sigma * N(0, 1) per entry: the noise `prefix_sum` adds to the cumulative sums."""
        n = _rows(self.rngs, c.shape, "PrefixNoisyOps")
        draws = np.stack([rng.standard_normal(size=n) for rng in self.rngs]).reshape(c.shape)
        return np.asarray(c + self.sigma * draws, dtype=np.float64)

    def prefix_sum(self, a: FloatArray) -> FloatArray:
        return self.perturb(super().prefix_sum(a))
