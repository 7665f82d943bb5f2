"""The next-token sampler of arXiv 2510.12343 as one circuit over `VectorOps` (DESIGN.md section 2).

Per step: ordered probabilities `q` and one uniform `r` -> prefix sums `c` -> step values
`s_j = S(c_j - r)` -> approximate one-hot `I_j = (1 - s_{j-1}) s_j` with `s_{-1} = 0` -> optional
post-processing `I'_j = f(I_j)`. The circuit below is written once against `VectorOps`, so the same
code runs on float64 arrays (`NumpyOps`, simulate mode) and on CKKS ciphertexts (the encrypted
backend). It contains no numpy call; every operation goes through `ops`.

`exact_one_hot` is the twin with a true step function (inverse-transform sampling), used by tests
and the evaluation as the target `e_k`. The Gaussian CKKS-noise models of DESIGN.md's noise-budget
table (`NoisyOps`, `PrefixNoisyOps`) live beside `NumpyOps` in `model.vector_ops`.

References: DESIGN.md section 2; Rho et al., arXiv 2510.12343 (2025), Fig. 10 and their released
sampling code (whose cyclic roll for `s_{-1}` we deliberately do not copy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from core.config import dataclass_from_dict
from core.errors import InputError
from model.vector_ops import Cubic, FloatArray, VectorOps

V = TypeVar("V")

# --- the polynomials (DESIGN.md section 2, step 5) --------------------------------------------------

G1: Cubic = (0.0, 2126.0 / 1024.0, 0.0, -1359.0 / 1024.0)  # g1(x) = (2126 x - 1359 x^3) / 1024
F1: Cubic = (0.0, 1.5, 0.0, -0.5)  # f1(x) = (3 x - x^3) / 2
F1_TO_UNIT: Cubic = (0.5, 0.75, 0.0, -0.25)  # (f1(x) + 1) / 2: H's last f1 with its affine map folded in
F_SHARPEN: Cubic = (0.0, 0.0, 3.0, -2.0)  # f(x) = 3 x^2 - 2 x^3; also the PP polynomial

AMP_ROUND_LENGTH = 5  # one amplifier round is g1^5; DESIGN.md uses 3 rounds (g1^15)
H_G1_COUNT = 2  # H = (f1^3(g1^2(x)) + 1) / 2
H_F1_COUNT = 3
SHARPEN_COUNT = 5  # S = f^5(H(amp(x)))
LEVELS_PER_CUBIC = 2  # a cubic costs two multiplicative levels under CKKS
LEVELS_PER_PRODUCT = 2  # the shifted product: one for the ct x ct product, one spare for a masked shift
SHARP_CUBICS = 7  # cubics of S at full precision; after them g1's slope (2.08 each) has amplified the
# step 2.08^7 = 167-fold, so the coarse tail's ~3e-7 error per cubic weighs like ~4e-9 on c - r

Precision = Literal["fp16", "fp32", "fp64"]
PRECISIONS: tuple[Precision, ...] = ("fp16", "fp32", "fp64")
MAX_AMP_ROUNDS = 12  # g1^60: far past float64's resolution of c - r; more only costs time


@dataclass(frozen=True)
class SamplerConfig:
    """Everything that decides what the sampler computes. Round-trips as a dict (STYLE rule 5)."""

    tsp: bool = True  # use the TSP vocabulary order (the caller passes `perm`); False = token-id order
    pp: bool = True  # post-processing I' = f(I): one extra cubic that shrinks stray weights
    amp_rounds: int = 3  # rounds of g1^5 before H; 3 is the paper's g1^15, more = sharper step
    softmax_precision: Precision = "fp16"  # rounding of p before the circuit; the paper used fp16
    temperature: float = 1.0  # p = softmax(z / T); 0 = one-hot at the argmax (greedy)
    renormalize: bool = False  # divide the rounded p by its sum; False reproduces the paper, where an
    # r above sum(p) < 1 (fp16 underflow) selects nothing
    noise_sigma: float = 0.0  # std of Gaussian noise on c - r and after every cubic and product (CKKS model)
    prefix_noise_sigma: float = 0.0  # std of Gaussian noise on c - r alone: the encrypted prefix sum's
    # error, which dominates (each polynomial's own CKKS rounding is ~1e-13 at scale 2^49)
    input_noise_sigma: float = 0.0  # std of Gaussian noise on each p_j before the prefix sum
    noise_seed: int = 0  # seeds the noise when the caller gives no generator

    def __post_init__(self) -> None:
        for name in ("tsp", "pp", "renormalize"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.amp_rounds, bool) or not isinstance(self.amp_rounds, int):
            raise InputError(f"amp_rounds must be a whole number, got {self.amp_rounds!r}")
        if not 1 <= self.amp_rounds <= MAX_AMP_ROUNDS:
            raise InputError(
                f"amp_rounds must be between 1 and {MAX_AMP_ROUNDS}, got {self.amp_rounds}; "
                "3 is the paper's amplifier (g1 composed 15 times)"
            )
        if self.softmax_precision not in PRECISIONS:
            raise InputError(
                f"softmax_precision must be one of {', '.join(PRECISIONS)}, got {self.softmax_precision!r}"
            )
        _check_number("temperature", self.temperature, 0.0, 5.0, "0 is greedy, 1 the model's distribution")
        _check_number("noise_sigma", self.noise_sigma, 0.0, 1.0, "0 disables the noise model")
        _check_number("input_noise_sigma", self.input_noise_sigma, 0.0, 1.0, "0 disables the noise model")
        _check_number("prefix_noise_sigma", self.prefix_noise_sigma, 0.0, 1.0, "0 disables the noise model")
        if self.noise_sigma > 0 and self.prefix_noise_sigma > 0:
            raise InputError(
                "noise_sigma (every step) and prefix_noise_sigma (c - r alone) are two noise models; set one"
            )
        if isinstance(self.noise_seed, bool) or not isinstance(self.noise_seed, int) or self.noise_seed < 0:
            raise InputError(f"noise_seed must be a whole number >= 0, got {self.noise_seed!r}")

    @property
    def depth(self) -> int:
        """Multiplicative levels of one sampler step (53 for the paper's settings)."""
        cubics = self.amp_rounds * AMP_ROUND_LENGTH + H_G1_COUNT + H_F1_COUNT + SHARPEN_COUNT
        return cubics * LEVELS_PER_CUBIC + 1 + (LEVELS_PER_CUBIC if self.pp else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        """Inverse of `to_dict`; an unknown key is an `InputError` naming it, not silently dropped."""
        return dataclass_from_dict(cls, data, InputError, "sampler setting(s)")


def _check_number(name: str, value: object, low: float, high: float, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low:g} and {high:g}, got {value}; {hint}")


# --- the circuit -----------------------------------------------------------------------------------


def step_polynomials(amp_rounds: int) -> tuple[Cubic, ...]:
    """The cubics whose composition (applied left to right) is S: amp, then H, then f^5."""
    amp = (G1,) * (amp_rounds * AMP_ROUND_LENGTH)
    h = (G1,) * H_G1_COUNT + (F1,) * (H_F1_COUNT - 1) + (F1_TO_UNIT,)
    return amp + h + (F_SHARPEN,) * SHARPEN_COUNT


def compose(ops: VectorOps[V], x: V, polynomials: tuple[Cubic, ...]) -> V:
    """Apply cubics in order, making sure two levels are left before each (a CKKS refresh point)."""
    for coeffs in polynomials:
        x = ops.ensure_levels(x, LEVELS_PER_CUBIC)
        x = ops.cubic(x, coeffs)  # level L -> L-2
    return x


def step_values(ops: VectorOps[V], c: V, r: float, amp_rounds: int) -> V:
    """s_j = S(c_j - r): about 1 where c_j > r, about 0 where c_j < r.

    The first `SHARP_CUBICS` cubics run at full precision; the rest at the backend's coarse precision
    (`VectorOps.coarse`), which the amplification so far makes as good as the sharp one."""
    x = ops.add_const(c, -r)  # plaintext r, depth 0
    polynomials = step_polynomials(amp_rounds)
    x = compose(ops, x, polynomials[:SHARP_CUBICS])
    return compose(ops, ops.coarse(x), polynomials[SHARP_CUBICS:])


def one_hot_from_steps(ops: VectorOps[V], s: V) -> V:
    """I_j = (1 - s_{j-1}) s_j with s_{-1} = 0, computed as s_j - s_{j-1} s_j (one product, no constant)."""
    s = ops.ensure_levels(ops.fine(s), LEVELS_PER_PRODUCT)
    previous = ops.shift_right(s)  # s_{j-1}; out[0] = 0, never a cyclic wrap (that would hide position 0)
    return ops.sub(s, ops.mul(previous, s))  # level L -> L-1


def post_process(ops: VectorOps[V], one_hot: V) -> V:
    """PP: I'_j = f(I_j) = 3 I_j^2 - 2 I_j^3, pushing stray weights towards 0 and near-ones to 1."""
    return compose(ops, one_hot, (F_SHARPEN,))


def approx_one_hot(ops: VectorOps[V], q: V, r: float, amp_rounds: int, pp: bool) -> V:
    """The sampler circuit: ordered probabilities q (V,) and a uniform r -> I' (V,).

    Args:
        ops: the vector backend (float64 numpy for simulate mode, CKKS for encrypted mode).
        q: probabilities in sampling order, q_j = p[pi[j]].
        r: the step's uniform in [0, 1), in plaintext.
        amp_rounds: rounds of g1^5 (3 in the paper).
        pp: apply the post-processing polynomial.

    Returns:
        The approximate one-hot vector (I' with PP, I without).
    """
    c = ops.prefix_sum(q)  # c_j = q_0 + ... + q_j
    s = step_values(ops, c, r, amp_rounds)
    one_hot = one_hot_from_steps(ops, s)
    return post_process(ops, one_hot) if pp else one_hot


# --- the exact twin and helpers (numpy) ------------------------------------------------------------


def exact_one_hot(q: FloatArray, r: float) -> FloatArray:
    """The same chain with a true step (s_j = 1 iff c_j > r): exact inverse-transform sampling.

    Position j gets 1 exactly when c_{j-1} <= r < c_j; all zeros when r >= sum(q).
    """
    s = (np.cumsum(q) > r).astype(np.float64)
    previous = np.concatenate(([0.0], s[:-1]))
    return s - previous * s


def exact_position(q: FloatArray, r: float) -> int | None:
    """The index j with c_{j-1} <= r < c_j, or None when r >= sum(q) (nothing is drawn)."""
    c = np.cumsum(q)
    j = int(np.searchsorted(c, r, side="right"))
    return j if j < len(q) else None


def probabilities(
    logits: FloatArray, temperature: float, precision: Precision, renormalize: bool
) -> FloatArray:
    """p = softmax(z / T) rounded to `precision`, returned as float64 for the circuit.

    The softmax is computed in float64 and then rounded, so fp16 reproduces the paper's flush of small
    probabilities to zero (fp16 subnormals stop at 6e-8). Temperature 0 gives the one-hot of the argmax.
    """
    z: FloatArray = np.asarray(logits, dtype=np.float64)
    if temperature == 0.0:
        p: FloatArray = np.zeros_like(z)
        p[int(np.argmax(z))] = 1.0
        return p
    e = np.exp((z - z.max()) / temperature)  # (V,), largest term exactly 1
    p = e / e.sum()
    if precision == "fp16":
        p = round_to_fp16(p)
    elif precision == "fp32":
        p = p.astype(np.float32).astype(np.float64)  # rounded, then widened
    if renormalize:
        p /= p.sum()
    return p


FP16_MANTISSA_BITS = 11  # significand bits of IEEE binary16, the implicit one included
FP16_MIN_EXPONENT = -13  # frexp exponent of the smallest normal binary16 number, 2^-14 = 0.5 * 2^-13


def round_to_fp16(x: FloatArray) -> FloatArray:
    """Round float64 values in [0, 65504] to the nearest binary16 value (ties to even), kept in float64.

    Equal to `x.astype(np.float16).astype(np.float64)` (tested) but about 100x faster: numpy converts to
    float16 in software. The quantum is 2^(e - 11) for x = m 2^e, m in [0.5, 1), and 2^-24 for subnormals;
    dividing by a power of two, `rint` and multiplying back are exact.
    """
    _, exponent = np.frexp(x)
    quantum = np.ldexp(1.0, np.maximum(exponent, FP16_MIN_EXPONENT) - FP16_MANTISSA_BITS)
    return np.asarray(np.rint(x / quantum) * quantum, dtype=np.float64)
