"""The sampler's VectorOps on ciphertexts: same results as NumpyOps, counted refreshes, level errors."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import LayoutError, LevelsExhausted
from crypto.ops import CkksOps, local_refresh, sampler_rotation_plan
from crypto.vector import EncVector, decrypt_vector, encrypt_vector
from model.sampler import approx_one_hot, exact_one_hot
from model.vector_ops import NumpyOps, VectorOps
from tests.conftest import assert_close

G1 = (0.0, 2126 / 1024, 0.0, -1359 / 1024)
F1 = (0.0, 1.5, 0.0, -0.5)
F = (0.0, 0.0, 3.0, -2.0)


def _circuit(ops, q, r: float):  # type: ignore[no-untyped-def]
    """A shortened sampler step (DESIGN.md section 2) written once against VectorOps."""
    stages = {}
    c = ops.prefix_sum(q)
    x = ops.add_const(c, -r)
    stages["c - r"] = x
    for name, coeffs in (("g1", G1), ("g1 again", G1), ("f1", F1)):
        x = ops.cubic(ops.ensure_levels(x, 2), coeffs)
        stages[name] = x
    s = ops.mul_const(ops.add_const(ops.ensure_levels(x, 1), 1.0), 0.5)  # (x + 1) / 2
    stages["H"] = s
    prev = ops.shift_right(s)
    one_hot = ops.mul(ops.add_const(ops.mul_const(prev, -1.0), 1.0), s)
    stages["I"] = one_hot
    stages["PP"] = ops.cubic(ops.ensure_levels(one_hot, 2), F)
    stages["sum"] = ops.add(ops.sub(stages["PP"], stages["I"]), stages["I"])
    return stages


@pytest.mark.parametrize("length", [300, 6000])
def test_sampler_circuit_matches_numpy(ckks, rng, length: int) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine(sampler_rotation_plan(ckks.params.slot_count))
    ops = CkksOps(eng, local_refresh(ckks.secret))
    typed: VectorOps[EncVector] = ops  # structural conformance, checked by mypy
    q = rng.dirichlet(np.ones(length))
    r = float(rng.uniform())
    enc = _circuit(typed, encrypt_vector(ckks.secret, q), r)
    ref = _circuit(NumpyOps(), q, r)
    for name, value in enc.items():
        assert_close(decrypt_vector(ckks.secret, value), ref[name], 1e-6)
    assert ops.refreshes >= 4
    assert ops.refreshed_ciphertexts == ops.refreshes * -(-length // ckks.params.slot_count)


def test_without_auto_refresh_levels_are_errors(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine(sampler_rotation_plan(ckks.params.slot_count))
    ops = CkksOps(eng, local_refresh(ckks.secret), auto_refresh=False)
    low = encrypt_vector(ckks.secret, rng.uniform(size=20), level=1)
    with pytest.raises(LevelsExhausted):
        ops.cubic(low, G1)
    with pytest.raises(LevelsExhausted):
        ops.prefix_sum(low)
    assert ops.refreshes == 0
    fresh = ops.ensure_levels(low, 2)
    assert fresh.level == 2 and ops.refreshes == 1
    with pytest.raises(LevelsExhausted):
        ops.ensure_levels(fresh, 3)  # deeper than the chain: no refresh helps


def test_mul_const_shortcuts_cost_no_level(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    ops = CkksOps(ckks.engine(), local_refresh(ckks.secret))
    x = rng.uniform(size=10)
    v = encrypt_vector(ckks.secret, x)
    assert ops.mul_const(v, 1.0).level == v.level
    neg = ops.mul_const(v, -1.0)
    assert neg.level == v.level
    assert_close(decrypt_vector(ckks.secret, neg), -x, 1e-9)


def test_the_sampler_tail_halves_the_refreshes_and_keeps_the_draw(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    plan = sampler_rotation_plan(ckks.params.slot_count)
    refresh = local_refresh(ckks.secret)
    rings: list[tuple[int, int]] = []

    def recorded(vec: EncVector, into: int) -> EncVector:
        rings.append((vec.ring, into))
        return refresh(vec, into)

    q = rng.dirichlet(np.full(6000, 0.05))  # two ciphertexts; a few large probabilities, many tiny ones
    c = np.cumsum(q)
    r = float(c[np.argmax(q)] - q.max() / 2)  # the middle of the largest step: far from every c_j
    enc = encrypt_vector(ckks.secret, q)
    tail = CkksOps(ckks.engine(plan), recorded, tail=ckks.tail_engine())
    one_hot = approx_one_hot(tail, enc, r, amp_rounds=3, pp=True)
    assert one_hot.ring == 0 and one_hot.level == 0  # back in the session's parameters
    assert_close(decrypt_vector(ckks.secret, one_hot), exact_one_hot(q, r), 1e-4)
    # 7 sharp cubics, one refresh each (the first after the prefix sum); 18 in the tail, two per
    # refresh; then the shift and the product, and PP, in the session's parameters
    assert tail.refreshes == 7 + 9 + 2 and tail.refreshed_ciphertexts == 2 * tail.refreshes
    assert rings == [(0, 0)] * 7 + [(0, 1)] + [(1, 1)] * 8 + [(1, 0), (0, 0)]
    plain = CkksOps(ckks.engine(plan), refresh)  # the same circuit without a tail
    approx_one_hot(plain, enc, r, amp_rounds=3, pp=True)
    assert plain.refreshes == 27


def test_vectors_of_two_rings_do_not_mix(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    ops = CkksOps(ckks.engine(), local_refresh(ckks.secret), tail=ckks.tail_engine())
    head = encrypt_vector(ckks.secret, rng.uniform(size=10))
    moved = ops.coarse(head)
    assert (moved.ring, moved.level, ops.coarse(moved) is moved) == (1, 4, True)
    assert_close(decrypt_vector(ckks.secret.tail, moved), decrypt_vector(ckks.secret, head), 1e-7)  # 2^34
    with pytest.raises(LayoutError):
        ops.add(head, moved)
    back = ops.fine(moved)
    assert (back.ring, back.level, ops.refreshes) == (0, 2, 2)
