"""The engine on real ciphertexts: canonical scales per level, products, drops, rotations, the monomial."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import LayoutError, LevelsExhausted, MissingRotationKey, ParamsError
from crypto.engine import Engine, monomial_slots
from crypto.keys_wire import RotationPlan
from crypto.params import CKKS_40, CKKSParams, sampler_tail
from crypto.vector import decrypt_slots, decrypt_vector, encrypt_vector
from tests.conftest import assert_close

ATOL = 1e-8  # CKKS_DEFAULT at 2^49: fresh values are good to ~1e-12, one product to ~1e-10


def _ct(ckks, values, level=None):  # type: ignore[no-untyped-def]
    """One fresh ciphertext of `values` (symmetric encryption, canonical scale of its level)."""
    return encrypt_vector(ckks.secret, values, level=level).cts[0]


def _values(ckks, ct, n: int):  # type: ignore[no-untyped-def]
    return decrypt_slots(ckks.secret, ct)[:n]


def test_scales_follow_the_canonical_chain(ckks) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    bits = ckks.params.coeff_mod_bit_sizes  # (60, 49, 49, 60): the last prime is the key's
    assert eng.top_level == len(bits) - 2
    assert eng.scale(eng.top_level) == 2.0**ckks.params.scale_bits
    for level in range(eng.top_level, 0, -1):
        assert eng.prime(level).bit_length() == bits[level]
        assert eng.scale(level - 1) == eng.scale(level) ** 2 / eng.prime(level)
    for level in range(eng.top_level + 1):
        assert abs(eng.modulus_bits(level) - sum(bits[: level + 1])) < 1.0


def test_level_and_ids_follow_the_chain(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    ids = set()
    for level in range(eng.top_level + 1):
        assert eng.level(_ct(ckks, rng.uniform(-1, 1, 8), level)) == level
        assert eng.plaintext_id(level) == (tuple(eng.parms_id(level)), eng.scale(level))
        ids.add(eng.plaintext_id(level))
    assert len(ids) == eng.top_level + 1
    warm = Engine.for_params(ckks.params)  # keyless, from the bit sizes alone: the same primes
    assert [warm.plaintext_id(lv) for lv in range(3)] == [eng.plaintext_id(lv) for lv in range(3)]
    other = Engine.for_params(CKKSParams(8192, ckks.params.coeff_mod_bit_sizes, 40))  # another scale
    assert other.plaintext_id(1) != eng.plaintext_id(1)
    assert Engine.for_params(CKKS_40).parms_id(1) != eng.parms_id(1)  # other primes


def test_products_rescale_onto_the_next_canonical_scale(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    top = eng.top_level
    x, y, w = rng.uniform(-1, 1, (3, 100))
    a, b = _ct(ckks, x), _ct(ckks, y)
    before = eng.counts.copy()
    p = eng.mul(a, b)
    assert eng.level(p) == top - 1 and p.scale == eng.scale(top - 1)
    assert eng.counts["mul"] - before["mul"] == 1 and eng.counts["rescale"] - before["rescale"] == 1
    assert_close(_values(ckks, p, 100).real, x * y, ATOL)
    assert_close(_values(ckks, eng.square(a), 100).real, x * x, ATOL)
    q = eng.rescale(eng.mul_plain(a, eng.encode(w, top)))  # ct x pt lands on the same scale
    assert eng.level(q) == top - 1 and q.scale == eng.scale(top - 1)
    assert_close(_values(ckks, eng.mul(p, q), 100).real, x * y * x * w, ATOL)


def test_nothing_is_computed_without_a_level(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    low = _ct(ckks, rng.uniform(-1, 1, 10), 0)
    before = eng.counts.copy()
    for op in (lambda: eng.mul(low, low), lambda: eng.square(low), lambda: eng.rescale(low)):
        with pytest.raises(LevelsExhausted) as info:
            op()
        assert (info.value.needed, info.value.available) == (1, 0)
    assert eng.counts == before
    with pytest.raises(LevelsExhausted):
        eng.require("matmul", 1, 2)
    eng.require("matmul", 2, 2)  # enough: no error


def test_linear_operations(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    top = eng.top_level
    x, y, w = rng.uniform(-1, 1, (3, 50))
    a, b = _ct(ckks, x), _ct(ckks, y)
    assert_close(_values(ckks, eng.add(a, b), 50).real, x + y, ATOL)
    assert_close(_values(ckks, eng.sub(a, b), 50).real, x - y, ATOL)
    assert_close(_values(ckks, eng.negate(a), 50).real, -x, ATOL)
    assert_close(_values(ckks, eng.add_plain(a, eng.const(0.5, top)), 50).real, x + 0.5, ATOL)
    copy = eng.copy(a)
    eng.add_inplace(copy, b)
    assert_close(_values(ckks, copy, 50).real, x + y, ATOL)
    assert_close(_values(ckks, a, 50).real, x, ATOL)  # the copy is its own ciphertext
    acc = eng.mul_plain_acc(None, a, eng.encode(w, top))
    acc = eng.mul_plain_acc(acc, b, eng.encode(w, top))
    assert_close(_values(ckks, eng.rescale(acc), 50).real, (x + y) * w, ATOL)


def test_drop_lands_on_the_canonical_scale_of_the_lower_level(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    x, y = rng.uniform(-1, 1, (2, 64))
    a = _ct(ckks, x)
    assert eng.drop(a, eng.top_level) is a
    for level in range(eng.top_level):
        d = eng.drop(a, level)
        assert eng.level(d) == level and d.scale == eng.scale(level)
        # SEAL adds only equal scales: a dropped value meets a fresh one of its new level
        assert_close(_values(ckks, eng.add(d, _ct(ckks, y, level)), 64).real, x + y, ATOL)
    with pytest.raises(LevelsExhausted):
        eng.drop(eng.drop(a, 0), 1)


def test_encode_checks_the_slot_count(ckks) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    before = eng.counts["encode"]
    eng.encode(np.ones(eng.slots), 1)
    assert eng.counts["encode"] == before + 1
    for bad in (np.ones(eng.slots + 1), np.ones((2, 3))):
        with pytest.raises(LayoutError, match="cannot encode"):
            eng.encode(bad, 1)


def test_zero_is_a_fresh_encryption_and_needs_a_public_key(ckks) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    zero = eng.zero(1)
    assert eng.level(zero) == 1 and zero.scale == eng.scale(1)
    assert_close(_values(ckks, zero, eng.slots).real, np.zeros(eng.slots), ATOL)
    with pytest.raises(LayoutError, match="no public key"):
        Engine.for_params(ckks.params).zero(1)


def test_rotations_need_a_planned_key(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    slots = ckks.params.slot_count
    eng = ckks.engine(RotationPlan.of([-2], slots))
    x = rng.uniform(-1, 1, slots)
    ct = _ct(ckks, x)
    assert eng.rotate(ct, 0) is ct and eng.rotate(ct, slots) is ct  # a whole turn: no key, no work
    assert eng.has_step(-2) and eng.has_step(slots - 2) and not eng.has_step(2)
    before = eng.counts["rotate"]
    assert_close(_values(ckks, eng.rotate(ct, -2), slots).real, np.roll(x, 2), ATOL)
    assert eng.counts["rotate"] == before + 1
    with pytest.raises(MissingRotationKey):
        eng.rotate(ct, 2)
    with pytest.raises(MissingRotationKey):
        eng.conjugate(ct)


def test_key_holder_engine_has_no_galois_keys(ckks_small) -> None:  # type: ignore[no-untyped-def]
    eng = Engine.for_key_holder(ckks_small.secret)
    v = encrypt_vector(ckks_small.secret, [1.0, 2.0])
    with pytest.raises(MissingRotationKey):
        eng.rotate(v.cts[0], 1)


def test_times_monomial_multiplies_each_slot_by_plus_or_minus_i(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine(RotationPlan(conjugate=True))
    slots = eng.slots
    assert np.array_equal(monomial_slots(4), [1j, -1j, 1j, -1j])
    x = rng.uniform(-1, 1, slots)
    ct = _ct(ckks, x, 1)
    m = eng.times_monomial(ct)
    assert eng.level(m) == 1 and m.scale == ct.scale  # no level, no scale change
    assert_close(np.abs(_values(ckks, m, slots) - x * monomial_slots(slots)), np.zeros(slots), ATOL)
    encodes = eng.counts["encode"]
    twice = eng.times_monomial(m)  # (+-i)^2 = -1; the monomial of level 1 is cached
    assert eng.counts["encode"] == encodes
    assert_close(_values(ckks, twice, slots).real, -x, ATOL)
    conj = eng.conjugate(m)  # conj(+-i x) = -(+-i x)
    assert_close(np.abs(_values(ckks, conj, slots) + x * monomial_slots(slots)), np.zeros(slots), ATOL)


def test_the_tail_engine_multiplies_in_the_tail_and_cannot_rotate(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    tail = ckks.tail_engine()
    assert tail.ring == 1 and tail.params == sampler_tail(ckks.params)
    x, y = rng.uniform(-1, 1, (2, 40))
    a = encrypt_vector(ckks.secret.tail, x)
    b = encrypt_vector(ckks.secret.tail, y)
    assert a.ring == 1 and a.level == tail.top_level
    p = a.with_cts([tail.mul(a.cts[0], b.cts[0])], a.level - 1)
    assert_close(decrypt_vector(ckks.secret.tail, p), x * y, 1e-6)  # 2^34: ~1e-7 after a product
    with pytest.raises(MissingRotationKey):
        tail.rotate(a.cts[0], 1)


def test_engine_refuses_params_that_are_not_its_contexts(ckks_small) -> None:  # type: ignore[no-untyped-def]
    liar = CKKSParams(8192, ckks_small.params.coeff_mod_bit_sizes, ckks_small.params.scale_bits)
    with pytest.raises(ParamsError, match="its SEAL context has N=4096"):
        Engine(liar, ckks_small.secret.seal_context)
