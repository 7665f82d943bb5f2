"""The sampler circuit: polynomials, the exact twin, inverse-transform statistics, ambiguity, PP, noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import InputError
from model.evaluation import batched_one_hot, batched_post_process, exact_positions, max_errors
from model.sampler import (
    F1,
    F_SHARPEN,
    G1,
    SamplerConfig,
    approx_one_hot,
    exact_one_hot,
    exact_position,
    post_process,
    probabilities,
    round_to_fp16,
    step_polynomials,
    step_values,
)
from model.vector_ops import NumpyOps
from tests.conftest import assert_close

OPS = NumpyOps()
SIGNIFICANCE = 1e-3  # chi-square tests reject at p < 0.001 (fixed before looking at any result)


def planted() -> np.ndarray:
    """20 tokens: a heavy head at position 0, a run of zero-probability tokens, a long tail."""
    q = np.array([0.3, 0.0, 0.0, 0.15, 0.1, 0.0, 0.0, 0.0, 0.05, 0.05])
    q = np.concatenate([q, np.full(10, 0.035)])
    return q / q.sum()


def chi_square_p_value(counts: np.ndarray, q: np.ndarray) -> float:
    """p-value of Pearson's chi-square test of counts against probabilities q (cells with q > 0)."""
    n = counts.sum()
    support = q > 0
    expected = n * q[support]
    statistic = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    upper = torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), torch.tensor(statistic / 2))
    return float(upper)


def test_polynomial_constants_match_design() -> None:
    x = np.linspace(-1, 1, 11)
    assert_close(OPS.cubic(x, G1), (2126 * x - 1359 * x**3) / 1024, atol=1e-15)
    assert_close(OPS.cubic(x, F1), (3 * x - x**3) / 2, atol=1e-15)
    assert_close(OPS.cubic(x, F_SHARPEN), 3 * x**2 - 2 * x**3, atol=1e-15)
    polys = step_polynomials(3)
    assert len(polys) == 15 + 2 + 3 + 5
    assert polys[:17] == (G1,) * 17 and polys[17:19] == (F1, F1) and polys[-5:] == (F_SHARPEN,) * 5
    assert SamplerConfig().depth == 53  # DESIGN.md: about 53 multiplicative levels


def test_step_is_sharp_away_from_zero_and_half_at_zero() -> None:
    x = np.array([-1.0, -0.3, -1e-5, -1e-6, 0.0, 1e-6, 1e-5, 0.3, 1.0])
    s = step_values(OPS, x, 0.0, amp_rounds=3)
    assert_close(s, [0, 0, 0, 0, 0.5, 1, 1, 1, 1], atol=1e-6)


def test_exact_step_reproduces_inverse_transform_sampling(rng: np.random.Generator) -> None:
    q = planted()
    rs = rng.random(50_000)
    positions = np.array([int(np.argmax(exact_one_hot(q, r))) for r in rs[:2000]])
    assert np.array_equal(positions, exact_positions(q, rs[:2000]))  # the one-hot sits at the exact draw
    counts = np.bincount(exact_positions(q, rs), minlength=len(q))
    assert counts[q == 0].sum() == 0
    assert chi_square_p_value(counts, q) > SIGNIFICANCE


def test_circuit_samples_the_planted_distribution(rng: np.random.Generator) -> None:
    q = planted()
    rs = rng.random(20_000)
    weights = batched_post_process(batched_one_hot(q, rs, amp_rounds=3))
    counts = np.bincount(np.argmax(weights, axis=1), minlength=len(q))
    assert counts[0] > 0  # position 0 is sampleable (no cyclic roll)
    assert chi_square_p_value(counts, q) > SIGNIFICANCE


def test_chi_square_detects_a_wrong_distribution(rng: np.random.Generator) -> None:
    q = planted()
    counts = np.bincount(exact_positions(np.roll(q, 1), rng.random(20_000)), minlength=len(q))
    assert chi_square_p_value(counts, q) < SIGNIFICANCE  # so the test above can fail


def test_batched_circuit_equals_the_single_vector_circuit(rng: np.random.Generator) -> None:
    q = rng.dirichlet(np.full(300, 0.1))
    rs = rng.random(5)
    batch = batched_post_process(batched_one_hot(q, rs, amp_rounds=3))
    for row, r in zip(batch, rs, strict=True):
        assert np.array_equal(row, approx_one_hot(OPS, q, float(r), 3, pp=True))


def test_position_zero_is_sampleable() -> None:
    q = planted()
    one_hot = approx_one_hot(OPS, q, 0.1, amp_rounds=3, pp=True)
    assert int(np.argmax(one_hot)) == 0
    assert_close(one_hot, exact_one_hot(q, 0.1), atol=1e-6)
    shifted = OPS.shift_right(np.ones(4))
    assert shifted[0] == 0.0  # s_{-1} = 0, not s_{V-1}


def test_r_near_a_cumulative_value_gives_the_contiguous_fractional_block() -> None:
    q = planted()
    c = np.cumsum(q)
    r = float(c[0] - 1e-7)  # just below c_0; positions 1, 2 have zero probability
    one_hot = approx_one_hot(OPS, q, r, amp_rounds=3, pp=False)
    heavy = np.flatnonzero(one_hot > 1e-3)
    assert heavy.tolist() == [0, 1, 2, 3]  # the drawn token, the zero run after it, the next token
    assert np.all(one_hot[heavy] < 1.0 - 1e-3)  # all fractional
    assert one_hot.sum() > 1.0 + 1e-3  # the zero run makes the block weigh more than one token
    far = approx_one_hot(OPS, q, float(c[0] - 1e-3), amp_rounds=3, pp=False)
    assert_close(far, exact_one_hot(q, float(c[0] - 1e-3)), atol=1e-6)  # away from c_j: exact


def test_pp_maps_each_error_through_f_and_never_increases_errors_up_to_one_half(
    rng: np.random.Generator,
) -> None:
    q = planted()
    c = np.cumsum(q)
    offsets = np.array([-1e-6, -4e-7, -2e-7, -1e-7, -3e-8, 0.0, 3e-8, 1e-7, 2e-7, 4e-7, 1e-6])
    rs = np.clip(np.concatenate([c[:-1, None] + offsets[None, :]]).ravel(), 0.0, 1 - 1e-12)
    rs = np.concatenate([rs, rng.random(200)])
    raw = batched_one_hot(q, rs, amp_rounds=3)
    targets = exact_positions(q, rs)
    before = max_errors(raw, targets)
    after = max_errors(batched_post_process(raw), targets)
    assert (before > 1e-3).sum() > 20  # the cases really are ambiguous
    assert_close(after, OPS.cubic(before, F_SHARPEN), atol=1e-12)  # max-error e -> f(e) = 3e^2 - 2e^3
    small = before <= 0.5
    assert np.all(after[small] <= before[small] + 1e-15)
    # Above 0.5 PP sharpens the wrong way (f(e) > e): it cannot help a draw that is already a coin toss.
    assert np.all(after[~small] >= before[~small] - 1e-15)


def test_nothing_is_drawn_when_r_exceeds_the_probability_mass() -> None:
    q = np.array([0.2, 0.3, 0.4])  # sums to 0.9, as fp16 underflow can make it
    assert exact_position(q, 0.95) is None
    assert_close(approx_one_hot(OPS, q, 0.95, 3, pp=True), np.zeros(3), atol=1e-6)


def test_round_to_fp16_equals_numpy_float16(rng: np.random.Generator) -> None:
    x = np.concatenate(
        [
            rng.random(10_000) ** 8,
            np.ldexp(rng.integers(0, 4096, 2000).astype(np.float64), -25),  # subnormal ties
            np.ldexp(1.0, np.arange(-30, 1)).astype(np.float64),
            [0.0, 1.0, 6e-8, 2.9e-8, 3.0e-8, 5.96e-8],
        ]
    )
    assert np.array_equal(round_to_fp16(x), x.astype(np.float16).astype(np.float64))


@pytest.mark.parametrize("precision", ["fp16", "fp32", "fp64"])
def test_probabilities_are_rounded_to_the_precision(precision: str, rng: np.random.Generator) -> None:
    logits = rng.normal(0, 4, 5000)
    p = probabilities(logits, 1.0, precision, renormalize=False)  # type: ignore[arg-type]
    exact = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    dtype = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64}[precision]
    assert np.array_equal(p, exact.astype(dtype).astype(np.float64))
    renormalised = probabilities(logits, 1.0, precision, renormalize=True)  # type: ignore[arg-type]
    assert abs(renormalised.sum() - 1.0) < 1e-12


def test_temperature_zero_is_one_hot_at_the_argmax(rng: np.random.Generator) -> None:
    logits = rng.normal(0, 1, 100)
    p = probabilities(logits, 0.0, "fp16", renormalize=False)
    assert p.sum() == 1.0 and p[int(np.argmax(logits))] == 1.0


def test_post_process_is_the_sharpening_cubic() -> None:
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    assert_close(post_process(OPS, x), 3 * x**2 - 2 * x**3, atol=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"amp_rounds": 0}, "amp_rounds"),
        ({"amp_rounds": 2.0}, "amp_rounds"),
        ({"amp_rounds": 99}, "amp_rounds"),
        ({"softmax_precision": "bf16"}, "softmax_precision"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"noise_sigma": -1e-7}, "noise_sigma"),
        ({"input_noise_sigma": float("nan")}, "input_noise_sigma"),
        ({"prefix_noise_sigma": 2.0}, "prefix_noise_sigma"),
        ({"prefix_noise_sigma": 1e-7, "noise_sigma": 1e-7}, "two noise models"),
        ({"pp": 1}, "pp"),
        ({"noise_seed": -3}, "noise_seed"),
    ],
)
def test_invalid_config_names_the_field(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(InputError, match=name):
        SamplerConfig(**kwargs)  # type: ignore[arg-type]


def test_config_round_trips_as_a_dict() -> None:
    config = SamplerConfig(tsp=False, pp=False, amp_rounds=5, softmax_precision="fp32", temperature=0.7)
    assert SamplerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(
        InputError, match=r"unknown sampler setting\(s\) \['bogus'\]; remove them .*temperature"
    ):
        SamplerConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(InputError, match="must be a dict"):
        SamplerConfig.from_dict([("tsp", True)])  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_same_circuit_runs_on_ckks_ciphertexts(ckks, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    from crypto.ops import CkksOps, local_refresh, sampler_rotation_plan
    from crypto.vector import decrypt_vector, encrypt_vector

    ops = CkksOps(ckks.engine(sampler_rotation_plan(ckks.params.slot_count)), local_refresh(ckks.secret))
    q = rng.dirichlet(np.ones(300))
    r = float(np.cumsum(q)[100] + 1e-3)  # well away from a boundary: the step is sharp
    encrypted = approx_one_hot(ops, encrypt_vector(ckks.secret, q), r, amp_rounds=3, pp=True)
    assert_close(decrypt_vector(ckks.secret, encrypted), approx_one_hot(OPS, q, r, 3, pp=True), atol=1e-4)
    assert ops.refreshes >= SamplerConfig().depth // 2 - 1  # about one refresh per cubic at N = 8192
