"""Element-wise arithmetic on encrypted vectors: add, subtract, multiply, constants, masking.

Operands of different levels are aligned by dropping the higher one (`Engine.drop`, exact scale).
Depth: add / sub / add_const 0; mul / mul_const / clean 1. Each multiplying function checks the
level before computing and raises `LevelsExhausted(operation, needed, available)`.

References: DESIGN.md section 2 (the sampler's element-wise steps).
"""

from __future__ import annotations

import numpy as np

from core.errors import LayoutError
from crypto.engine import Engine
from crypto.vector import EncVector


def _check_layout(a: EncVector, b: EncVector, operation: str) -> None:
    if not a.same_layout(b):
        raise LayoutError(
            f"{operation}: vectors of length/chunk {a.length}/{a.chunk} and {b.length}/{b.chunk} do not match"
        )


def align(eng: Engine, a: EncVector, b: EncVector) -> tuple[EncVector, EncVector]:
    """Both vectors at the lower of their two levels."""
    if a.level == b.level:
        return a, b
    if a.level > b.level:
        return drop(eng, a, b.level), b
    return a, drop(eng, b, a.level)


def drop(eng: Engine, a: EncVector, level: int) -> EncVector:
    """`a` at a lower `level` (canonical scale). Costs one multiply by 1 and a rescale per ciphertext."""
    if level == a.level:
        return a
    return a.with_cts([eng.drop(ct, level) for ct in a.cts], level)


def add(eng: Engine, a: EncVector, b: EncVector) -> EncVector:
    """a + b. Depth 0."""
    _check_layout(a, b, "add")
    a, b = align(eng, a, b)
    return a.with_cts(
        [eng.add(x, y) for x, y in zip(a.cts, b.cts, strict=True)], a.level, a.clean and b.clean
    )


def sub(eng: Engine, a: EncVector, b: EncVector) -> EncVector:
    """a - b. Depth 0."""
    _check_layout(a, b, "sub")
    a, b = align(eng, a, b)
    return a.with_cts(
        [eng.sub(x, y) for x, y in zip(a.cts, b.cts, strict=True)], a.level, a.clean and b.clean
    )


def negate(eng: Engine, a: EncVector) -> EncVector:
    """-a. Depth 0."""
    return a.with_cts([eng.negate(x) for x in a.cts], a.level)


def add_const(eng: Engine, a: EncVector, c: float) -> EncVector:
    """a + c in every value slot (padding slots get c too, so the result is not clean). Depth 0."""
    a.require_unpacked("add_const")
    if c == 0.0:
        return a
    pt = eng.const(c, a.level)
    return a.with_cts([eng.add_plain(x, pt) for x in a.cts], a.level, clean=False)


def mul(eng: Engine, a: EncVector, b: EncVector) -> EncVector:
    """a * b element-wise (ciphertext x ciphertext). Depth 1."""
    _check_layout(a, b, "mul")
    a.require_unpacked("mul")
    eng.require("mul", min(a.level, b.level), 1)
    a, b = align(eng, a, b)
    if a is b:
        cts = [eng.square(x) for x in a.cts]
    else:
        cts = [eng.mul(x, y) for x, y in zip(a.cts, b.cts, strict=True)]
    return a.with_cts(cts, a.level - 1, a.clean or b.clean)


def mul_const(eng: Engine, a: EncVector, c: float) -> EncVector:
    """c * a. Depth 1 (the constant is encoded at the level's scale and divided out by one rescale)."""
    a.require_unpacked("mul_const")
    eng.require("mul_const", a.level, 1)
    pt = eng.const(c, a.level)
    return a.with_cts([eng.rescale(eng.mul_plain(x, pt)) for x in a.cts], a.level - 1)


def clean(eng: Engine, a: EncVector) -> EncVector:
    """Zero the padding slots (multiply by a 0/1 mask). Depth 1; returns `a` itself if already clean."""
    if a.clean:
        return a
    eng.require("clean", a.level, 1)
    masks: dict[int, object] = {}
    cts = []
    for k, ct in enumerate(a.cts):
        n = a.count(k)
        if n not in masks:
            m = np.zeros(eng.slots)
            m[:n] = 1.0
            masks[n] = eng.encode(m, a.level)
        cts.append(eng.rescale(eng.mul_plain(ct, masks[n])))
    return a.with_cts(cts, a.level - 1, clean=True)
