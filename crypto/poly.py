"""Polynomial evaluation on encrypted vectors with level bookkeeping (the sampler's cubics).

`cubic(x, (c0, c1, c2, c3))` costs depth 2 for any cubic or quadratic and depth 1 for a linear
polynomial, with two ciphertext products per ciphertext:

    x2 = x * x                       level l   -> l-1
    u  = c3 * x + c2                 level l   -> l-1   (plaintext product, exact canonical scale)
    w  = u * x2                      level l-1 -> l-2   (= c3 x^3 + c2 x^2)
    v  = c1 * x  (+ c0)              level l   -> l-2   (one rescale, constant encoded at the scale
                                                          that lands on scale[l-2] after a mod switch)
    out = w + v + c0                 level l-2

The level check happens before any computation (`LevelsExhausted("cubic", 2, available)`), so the
caller can refresh instead of SEAL failing with "scale out of bounds".

References: DESIGN.md section 2 (g1, f1, f and their compositions); SEAL examples 4_ckks_basics.
"""

from __future__ import annotations

from crypto.engine import Ciphertext, Engine
from crypto.vector import EncVector

Cubic = tuple[float, float, float, float]


def cubic_depth(coeffs: Cubic) -> int:
    """Levels `cubic` consumes for these coefficients (2, or 1 if linear, 0 if constant)."""
    _, c1, c2, c3 = coeffs
    if c2 == 0.0 and c3 == 0.0:
        return 0 if c1 == 0.0 else 1
    return 2


def _cubic_ct(eng: Engine, x: Ciphertext, level: int, coeffs: Cubic) -> Ciphertext:
    c0, c1, c2, c3 = coeffs
    lo = level - 2
    x2 = eng.square(x)  # level l-1, scale[l-1]
    if c3 != 0.0:
        u = eng.rescale(eng.mul_plain(x, eng.const(c3, level)))  # c3 x at l-1
        if c2 != 0.0:
            u = eng.add_plain(u, eng.const(c2, level - 1))
        w = eng.mul(u, x2)  # c3 x^3 + c2 x^2 at l-2
    else:
        w = eng.rescale(eng.mul_plain(x2, eng.const(c2, level - 1)))  # c2 x^2 at l-2
    if c1 != 0.0:
        # x * c1@s' -> scale[l] * s' / q_l == scale[l-2]; then drop one prime without rescaling
        s_prime = eng.scale(lo) * float(eng.prime(level)) / eng.scale(level)
        v = eng.mod_switch(eng.rescale(eng.mul_plain(x, eng.const(c1, level, s_prime))), lo)
        v.scale = eng.scale(lo)
        eng.add_inplace(w, v)
    if c0 != 0.0:
        w = eng.add_plain(w, eng.const(c0, lo))
    return w


def cubic(eng: Engine, x: EncVector, coeffs: Cubic) -> EncVector:
    """c0 + c1 x + c2 x^2 + c3 x^3 element-wise. Depth 2 (1 if linear).

    Raises:
        LevelsExhausted: `x` has fewer levels left than the polynomial needs (checked first).
    """
    x.require_unpacked("cubic")
    c0, c1, c2, c3 = (float(c) for c in coeffs)
    depth = cubic_depth((c0, c1, c2, c3))
    eng.require("cubic", x.level, depth)
    if depth == 0:
        zero = [eng.add_plain(eng.sub(ct, ct), eng.const(c0, x.level)) for ct in x.cts]
        return x.with_cts(zero, x.level, clean=c0 == 0.0)
    if depth == 1:
        pt = eng.const(c1, x.level)
        cts = [eng.rescale(eng.mul_plain(ct, pt)) for ct in x.cts]
        if c0 != 0.0:
            cts = [eng.add_plain(ct, eng.const(c0, x.level - 1)) for ct in cts]
        return x.with_cts(cts, x.level - 1, clean=x.clean and c0 == 0.0)
    cts = [_cubic_ct(eng, ct, x.level, (c0, c1, c2, c3)) for ct in x.cts]
    return x.with_cts(cts, x.level - 2, clean=x.clean and c0 == 0.0)
