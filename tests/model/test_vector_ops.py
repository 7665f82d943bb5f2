"""The float64 vector backend: NumpyOps on vectors and batches of rows, and the two CKKS-noise models."""

from __future__ import annotations

import numpy as np
import pytest

from model.sampler import (
    F1,
    F1_TO_UNIT,
    F_SHARPEN,
    G1,
    approx_one_hot,
    compose,
    one_hot_from_steps,
    post_process,
    step_polynomials,
)
from model.vector_ops import Cubic, FloatArray, NoisyOps, NumpyOps, PrefixNoisyOps, VectorOps
from tests.conftest import assert_close

OPS = NumpyOps()
FAST = NumpyOps(skip_zero_terms=True)
CUBICS = [G1, F1, F1_TO_UNIT, F_SHARPEN, (0.25, -1.0, 2.0, 0.5)]


def test_numpy_ops_satisfy_the_protocol_and_compute_element_wise(rng: np.random.Generator) -> None:
    typed: VectorOps[FloatArray] = OPS  # structural conformance, checked by mypy
    a, b = rng.normal(size=7), rng.normal(size=7)
    kept = (a.copy(), b.copy())
    assert np.array_equal(typed.add(a, b), a + b)
    assert np.array_equal(typed.sub(a, b), a - b)
    assert np.array_equal(typed.mul(a, b), a * b)
    assert np.array_equal(typed.mul_const(a, -2.5), -2.5 * a)
    assert np.array_equal(typed.add_const(a, 0.75), a + 0.75)
    for same in (typed.ensure_levels(a, 9), typed.coarse(a), typed.fine(a)):
        assert same is a  # no levels, one precision in floating point
    assert np.array_equal(a, kept[0]) and np.array_equal(b, kept[1])  # inputs untouched


@pytest.mark.parametrize("coeffs", CUBICS)
def test_cubic_is_the_polynomial_in_both_schemes(coeffs: Cubic, rng: np.random.Generator) -> None:
    x = rng.uniform(-1.5, 1.5, size=(3, 50))
    c0, c1, c2, c3 = coeffs
    expected = c0 + c1 * x + c2 * x**2 + c3 * x**3
    for ops in (OPS, FAST):
        before = x.copy()
        assert_close(ops.cubic(x, coeffs), expected, atol=1e-14)
        assert np.array_equal(x, before)  # the one-buffer scheme writes into a fresh array only


@pytest.mark.parametrize("coeffs", CUBICS)
def test_skipping_zero_terms_gives_the_same_values(coeffs: Cubic, rng: np.random.Generator) -> None:
    """Value for value (a zero may change sign: -0.0 == 0.0), on values where rounding shows."""
    x = np.concatenate([rng.uniform(-1.2, 1.2, 4000), [0.0, -0.0, 1e-300, -1e-300, 1.0, -1.0]])
    assert np.array_equal(FAST.cubic(x, coeffs), OPS.cubic(x, coeffs))


def test_prefix_sum_and_shift_act_along_rows(rng: np.random.Generator) -> None:
    batch = rng.dirichlet(np.ones(30), size=4)  # (4, 30)
    sums, shifted = OPS.prefix_sum(batch), OPS.shift_right(batch)
    assert sums.shape == shifted.shape == batch.shape
    for row, s, t in zip(batch, sums, shifted, strict=True):  # a row is the vector alone, bit for bit
        assert np.array_equal(s, OPS.prefix_sum(row)) and np.array_equal(s, np.cumsum(row))
        assert np.array_equal(t, OPS.shift_right(row))
    assert np.array_equal(OPS.shift_right(np.array([1.0, 2.0, 3.0])), [0.0, 1.0, 2.0])  # no wrap-around


def test_noise_sigma_zero_is_the_noiseless_path_and_positive_sigma_changes_values(
    rng: np.random.Generator,
) -> None:
    q = rng.dirichlet(np.full(500, 0.2))
    clean = approx_one_hot(OPS, q, 0.37, 3, pp=True)
    silent = approx_one_hot(NoisyOps(0.0, [np.random.default_rng(5)]), q, 0.37, 3, pp=True)
    assert np.array_equal(clean, silent)
    noisy = approx_one_hot(NoisyOps(1e-5, [np.random.default_rng(5)]), q, 0.37, 3, pp=True)
    assert not np.array_equal(clean, noisy)
    again = approx_one_hot(NoisyOps(1e-5, [np.random.default_rng(5)]), q, 0.37, 3, pp=True)
    assert np.array_equal(noisy, again)  # seeded


def test_noisy_ops_add_one_draw_per_entry_after_each_noisy_step(rng: np.random.Generator) -> None:
    a, b = rng.normal(size=20), rng.normal(size=20)
    draws = np.random.default_rng(3).normal(0.0, 1e-3, size=(3, 20))  # prefix sum, cubic, product
    ops = NoisyOps(1e-3, [np.random.default_rng(3)])
    assert np.array_equal(ops.prefix_sum(a), np.cumsum(a) + draws[0])
    assert np.array_equal(ops.cubic(a, G1), OPS.cubic(a, G1) + draws[1])
    assert np.array_equal(ops.mul(a, b), a * b + draws[2])
    assert np.array_equal(ops.add(a, b), a + b)  # additions are exact under CKKS: no noise
    assert np.array_equal(ops.shift_right(a), OPS.shift_right(a))


def test_a_noisy_batch_row_draws_what_its_generator_draws_alone(rng: np.random.Generator) -> None:
    q = rng.dirichlet(np.full(60, 0.3), size=3)  # (3, 60)
    batch = NoisyOps(1e-4, [np.random.default_rng(s) for s in range(3)], skip_zero_terms=True)
    c = batch.prefix_sum(q)
    s = compose(batch, c - 0.4, step_polynomials(2))
    for k in range(3):
        alone = NoisyOps(1e-4, [np.random.default_rng(k)], skip_zero_terms=True)
        assert np.array_equal(c[k], alone.prefix_sum(q[k]))
        assert np.array_equal(s[k], compose(alone, c[k] - 0.4, step_polynomials(2)))
    with pytest.raises(ValueError, match="2 noise generator"):
        NoisyOps(1e-4, [np.random.default_rng(0)] * 2).prefix_sum(q)


def test_prefix_noise_lands_on_c_minus_r_alone(rng: np.random.Generator) -> None:
    q = rng.dirichlet(np.full(500, 0.2))
    noisy = approx_one_hot(PrefixNoisyOps(1e-5, [np.random.default_rng(5)]), q, 0.37, 3, pp=True)
    c = np.cumsum(q) + 1e-5 * np.random.default_rng(5).standard_normal(500)  # the same draws, on c only
    by_hand = post_process(OPS, one_hot_from_steps(OPS, compose(OPS, c + -0.37, step_polynomials(3))))
    assert np.array_equal(noisy, by_hand)
    assert not np.array_equal(noisy, approx_one_hot(OPS, q, 0.37, 3, pp=True))


def test_prefix_noise_perturbs_each_row_with_its_own_generator(rng: np.random.Generator) -> None:
    c = np.cumsum(rng.dirichlet(np.ones(40), size=2), axis=1)
    perturbed = PrefixNoisyOps(1e-6, [np.random.default_rng(7), np.random.default_rng(8)]).perturb(c)
    for row, seed in enumerate((7, 8)):
        expected = c[row] + 1e-6 * np.random.default_rng(seed).standard_normal(40)
        assert np.array_equal(perturbed[row], expected)
    ops = PrefixNoisyOps(1e-6, [np.random.default_rng(7)])
    assert np.array_equal(ops.cubic(c[0], F1), OPS.cubic(c[0], F1))  # the polynomials stay exact
    with pytest.raises(ValueError, match="one per row"):
        ops.perturb(c)
