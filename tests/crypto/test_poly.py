"""Element-wise arithmetic and cubics against numpy, level bookkeeping and level errors."""

from __future__ import annotations

import pytest

from core.errors import LayoutError, LevelsExhausted
from crypto import arith
from crypto.poly import cubic
from crypto.vector import decrypt_vector, encrypt_vector
from crypto.vector_wire import vector_from_bytes, vector_to_bytes
from tests.conftest import assert_close

ATOL = 1e-8
G1 = (0.0, 2126 / 1024, 0.0, -1359 / 1024)
F = (0.0, 0.0, 3.0, -2.0)


@pytest.mark.parametrize("roundtrip", [False, True])
@pytest.mark.parametrize(
    "coeffs", [G1, F, (0.5, -1.0, 0.25, 0.0), (0.1, 0.2, 0.3, 0.4), (0.3, 2.0, 0.0, 0.0)]
)
def test_cubic_matches_numpy(ckks, rng, coeffs, roundtrip: bool) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    x = rng.uniform(-1, 1, 5000)
    v = encrypt_vector(ckks.secret, x)
    if roundtrip:
        v = vector_from_bytes(ckks.secret, vector_to_bytes(v))
    y = cubic(eng, v, coeffs)
    c0, c1, c2, c3 = coeffs
    assert y.level == v.level - (1 if c2 == c3 == 0 else 2)
    assert_close(decrypt_vector(ckks.secret, y), c0 + c1 * x + c2 * x**2 + c3 * x**3, ATOL)


def test_elementwise_ops_with_mixed_levels(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    a, b = rng.uniform(-1, 1, 4500), rng.uniform(-1, 1, 4500)
    va, vb = encrypt_vector(ckks.secret, a), encrypt_vector(ckks.secret, b)
    three_a = arith.mul_const(eng, va, 3.0)  # level 1
    assert three_a.level == va.level - 1
    s = arith.add(eng, three_a, vb)  # vb dropped to level 1
    assert s.level == three_a.level
    assert_close(decrypt_vector(ckks.secret, s), 3 * a + b, ATOL)
    assert_close(decrypt_vector(ckks.secret, arith.sub(eng, vb, three_a)), b - 3 * a, ATOL)
    p = arith.mul(eng, s, vb)
    assert p.level == 0
    assert_close(decrypt_vector(ckks.secret, p), (3 * a + b) * b, ATOL)
    assert_close(decrypt_vector(ckks.secret, arith.add_const(eng, p, -0.25)), (3 * a + b) * b - 0.25, ATOL)
    assert_close(decrypt_vector(ckks.secret, arith.negate(eng, p)), -(3 * a + b) * b, ATOL)
    assert_close(decrypt_vector(ckks.secret, arith.mul(eng, va, va)), a * a, ATOL)


def test_level_errors_are_raised_before_computing(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    v = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 100), level=1)
    before = dict(eng.counts)
    with pytest.raises(LevelsExhausted) as info:
        cubic(eng, v, G1)
    assert (info.value.needed, info.value.available, info.value.operation) == (2, 1, "cubic")
    assert dict(eng.counts) == before  # nothing computed
    low = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 100), level=0)
    for op in (lambda: arith.mul(eng, low, low), lambda: arith.mul_const(eng, low, 2.0)):
        with pytest.raises(LevelsExhausted):
            op()


def test_layout_mismatch_raises(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    a = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 100))
    b = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 101))
    with pytest.raises(LayoutError):
        arith.add(eng, a, b)


def test_clean_zeroes_padding(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    from crypto.vector import decrypt_slots

    eng = ckks.engine()
    x = rng.uniform(-1, 1, 100)
    dirty = arith.add_const(eng, encrypt_vector(ckks.secret, x), 1.0)
    assert not dirty.clean
    c = arith.clean(eng, dirty)
    assert c.clean and c.level == dirty.level - 1
    slots = decrypt_slots(ckks.secret, c.cts[0]).real
    assert_close(slots[:100], x + 1.0, ATOL)
    assert_close(slots[100:], 0 * slots[100:], ATOL)
