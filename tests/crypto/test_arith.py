"""Element-wise arithmetic on encrypted vectors against numpy: levels, alignment, padding, layouts."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import LayoutError, LevelsExhausted
from crypto import arith
from crypto.vector import decrypt_slots, decrypt_vector, encrypt_vector, for_key_holder
from tests.conftest import assert_close

ATOL = 1e-8


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


def test_align_and_drop_bring_both_to_the_lower_level(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    x, y = rng.uniform(-1, 1, (2, 300))
    high, low = encrypt_vector(ckks.secret, x), encrypt_vector(ckks.secret, y, level=0)
    assert arith.drop(eng, high, high.level) is high
    for a, b in ((high, low), (low, high)):
        left, right = arith.align(eng, a, b)
        assert left.level == right.level == 0
        assert_close(decrypt_vector(ckks.secret, left), decrypt_vector(ckks.secret, a), ATOL)
        assert_close(decrypt_vector(ckks.secret, right), decrypt_vector(ckks.secret, b), ATOL)
    same = arith.align(eng, high, high)
    assert same[0] is high and same[1] is high


def test_ops_on_vectors_of_several_ciphertexts(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    x, y = rng.uniform(-1, 1, (2, 250))
    vx, vy = encrypt_vector(ckks.secret, x, chunk=100), encrypt_vector(ckks.secret, y, chunk=100)
    assert len(vx.cts) == 3  # 100 + 100 + 50 values
    assert_close(decrypt_vector(ckks.secret, arith.add(eng, vx, vy)), x + y, ATOL)
    assert_close(decrypt_vector(ckks.secret, arith.mul(eng, vx, vy)), x * y, ATOL)
    assert_close(decrypt_vector(ckks.secret, arith.mul_const(eng, vx, -0.5)), -0.5 * x, ATOL)


def test_clean_zeroes_padding(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    x = rng.uniform(-1, 1, 100)
    dirty = arith.add_const(eng, encrypt_vector(ckks.secret, x), 1.0)
    assert not dirty.clean
    c = arith.clean(eng, dirty)
    assert c.clean and c.level == dirty.level - 1
    slots = decrypt_slots(ckks.secret, c.cts[0]).real
    assert_close(slots[:100], x + 1.0, ATOL)
    assert_close(slots[100:], 0 * slots[100:], ATOL)
    assert arith.clean(eng, c) is c  # already clean: no level spent


def test_clean_masks_each_ciphertext_by_its_own_count(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    x = rng.uniform(-1, 1, 250)
    c = arith.clean(eng, arith.add_const(eng, encrypt_vector(ckks.secret, x, chunk=100), 2.0))
    for k, n in enumerate((100, 100, 50)):
        slots = decrypt_slots(ckks.secret, c.cts[k]).real
        assert_close(slots[:n], x[100 * k : 100 * k + n] + 2.0, ATOL)
        assert_close(slots[n:], np.zeros(eng.slots - n), ATOL)


def test_padding_flags(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    fresh = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 30))
    dirty = arith.add_const(eng, fresh, 1.0)
    assert arith.add_const(eng, fresh, 0.0) is fresh  # adding zero changes nothing, padding stays clean
    assert arith.add(eng, fresh, fresh).clean and not arith.add(eng, fresh, dirty).clean
    other = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 30))  # dirty - fresh would be transparent
    assert arith.sub(eng, fresh, other).clean and not arith.sub(eng, dirty, other).clean
    assert arith.mul(eng, fresh, dirty).clean  # zero padding times anything is zero
    assert not arith.mul(eng, dirty, dirty).clean


def test_multiplying_needs_a_level(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    low = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 100), level=0)
    dirty = arith.add_const(eng, low, 1.0)
    before = eng.counts.copy()
    for operation, op in (
        ("mul", lambda: arith.mul(eng, low, low)),
        ("mul_const", lambda: arith.mul_const(eng, low, 2.0)),
        ("clean", lambda: arith.clean(eng, dirty)),
    ):
        with pytest.raises(LevelsExhausted) as info:
            op()
        assert (info.value.operation, info.value.needed, info.value.available) == (operation, 1, 0)
    assert eng.counts == before  # nothing computed


def test_layout_mismatch_raises(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    a = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 100))
    b = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 101))
    c = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 100), chunk=50)
    for op in (arith.add, arith.sub, arith.mul):
        with pytest.raises(LayoutError, match=op.__name__):
            op(eng, a, b)
        with pytest.raises(LayoutError):
            op(eng, a, c)


def test_a_packed_vector_only_adds(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    x, y = rng.uniform(-1, 1, (2, 200))
    px = for_key_holder(eng, encrypt_vector(ckks.secret, x, chunk=100))
    py = for_key_holder(eng, encrypt_vector(ckks.secret, y, chunk=100))
    assert px.packed and len(px.cts) == 1
    assert_close(decrypt_vector(ckks.secret, arith.add(eng, px, py)), x + y, 1e-7)
    for op in (
        lambda: arith.add_const(eng, px, 1.0),
        lambda: arith.mul(eng, px, py),
        lambda: arith.mul_const(eng, px, 2.0),
    ):
        with pytest.raises(LayoutError, match="packed"):
            op()
