"""The vector-operations interface the sampler circuit is written against.

The sampler of DESIGN.md section 2 is written once, against `VectorOps`, and runs unchanged on
float64 arrays (`NumpyOps`, the `simulate` mode) and on CKKS ciphertexts (the encrypted backend
in `crypto/`, which satisfies this protocol structurally and does not import this module).

Every operation returns a new value and never mutates its inputs. Vectors are 1-D and of one
length `n` throughout a circuit. Operations that consume multiplicative depth under CKKS say how
much in their docstring; `ensure_levels` is where a CKKS backend refreshes (or raises) before a
step that needs more levels than a value has left. In floating point it is the identity.

References: DESIGN.md sections 2 and 3; arXiv 2510.12343.
"""

from __future__ import annotations

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
    """`VectorOps` over float64 numpy arrays: the exact twin of the encrypted backend."""

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
        return c0 + a * (c1 + a * (c2 + a * c3))  # Horner: 3 multiplies, same values as the power form

    def prefix_sum(self, a: FloatArray) -> FloatArray:
        return np.cumsum(a)

    def shift_right(self, a: FloatArray) -> FloatArray:
        out = np.empty_like(a)
        out[0] = 0.0
        out[1:] = a[:-1]
        return out

    def ensure_levels(self, a: FloatArray, levels: int) -> FloatArray:
        return a

    def coarse(self, a: FloatArray) -> FloatArray:
        return a

    def fine(self, a: FloatArray) -> FloatArray:
        return a
