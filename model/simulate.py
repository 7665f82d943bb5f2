"""Simulate mode: the sampler circuit in float64 with mixture-embedding feedback (DESIGN.md section 3).

`SimulateSelector` plugs into `model.generate.generate` like `ExactSelector`, but instead of feeding
back the drawn token's embedding row it feeds back the mixture `e = I'^T W_pi`, and it displays
`pi[argmax I']` (the key holder's post-correction). Selection is a chain of small steps with one
signature `(values, r) -> values` (STYLE rule 15):

    logits --Probabilities--> p --Reorder--> q --InputNoise--> q~ --OneHotCircuit--> I'

`pi` is baked in once: the embedding rows are reordered at construction (`W_pi = W[perm]`), so no
per-step permutation of the mixture is needed, exactly as the worker bakes `pi` into its weights.

The mixture is summed only over weights above 1e-18 in magnitude; the dropped part is bounded by
(sum of dropped |weights|) x (largest row norm) and the full product is used whenever that bound
exceeds 1e-12, so the result equals the full product to within 1e-12 (measured: usually one term).

References: DESIGN.md sections 2 and 3; arXiv 2510.12343.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from core.errors import SamplerError
from model.generate import Selection
from model.sampler import (
    Precision,
    SamplerConfig,
    approx_one_hot,
    exact_one_hot,
    exact_position,
    probabilities,
)
from model.vector_ops import FloatArray, NoisyOps, NumpyOps, PrefixNoisyOps

IntArray = npt.NDArray[np.int64]
MIXTURE_WEIGHT_FLOOR = 1e-18  # weights at or below this are left out of the mixture sum ...
MIXTURE_TOLERANCE = 1e-12  # ... as long as the certified bound on what they add stays below this
CLEAN_STEPS = 2  # Probabilities and Reorder; any later step adds noise
SPARSE_SHARE = 0.25  # above this share of kept rows the dense product is faster than gathering rows


class SelectionStep(Protocol):
    """One link of the selection chain: a vector and the step's uniform r -> a new vector."""

    def __call__(self, values: FloatArray, r: float) -> FloatArray: ...


class Probabilities:
    """Logits -> p = softmax(z / T), rounded to the configured precision (fp16 as in the paper)."""

    def __init__(self, temperature: float, precision: Precision, renormalize: bool) -> None:
        self.temperature = temperature
        self.precision: Precision = precision
        self.renormalize = renormalize

    def __call__(self, values: FloatArray, r: float) -> FloatArray:
        return probabilities(values, self.temperature, self.precision, self.renormalize)


class Reorder:
    """p -> q with q_j = p[perm[j]]: the sampling order (TSP path or token ids)."""

    def __init__(self, perm: IntArray) -> None:
        self.perm = perm

    def __call__(self, values: FloatArray, r: float) -> FloatArray:
        return values[self.perm]


class InputNoise:
    """q -> q + N(0, sigma^2) per entry: the error of a freshly encrypted probability vector."""

    def __init__(self, sigma: float, rng: np.random.Generator) -> None:
        self.sigma = sigma
        self.rng = rng

    def __call__(self, values: FloatArray, r: float) -> FloatArray:
        return values + self.rng.normal(0.0, self.sigma, size=values.shape)


class OneHotCircuit:
    """q, r -> I' by the circuit of `model.sampler.approx_one_hot` on a numpy backend."""

    def __init__(self, ops: NumpyOps, amp_rounds: int, pp: bool) -> None:
        self.ops = ops
        self.amp_rounds = amp_rounds
        self.pp = pp

    def __call__(self, values: FloatArray, r: float) -> FloatArray:
        return approx_one_hot(self.ops, values, r, self.amp_rounds, self.pp)


@dataclass(frozen=True)
class StepTrace:
    """Diagnostics of one simulate step (recorded only when asked for)."""

    position: int  # argmax of I' (in sampling order)
    exact_position: int | None  # where exact inverse-transform sampling would land; None = nothing drawn
    max_error: float  # ||I' - e_k||_inf against the exact one-hot (all zeros when nothing is drawn)
    weight_sum: float  # sum(I'); above 1 when several tokens get weight


def check_perm(perm: npt.ArrayLike, vocab_size: int) -> IntArray:
    """Validate a vocabulary order: a permutation of 0..V-1.

    Raises:
        SamplerError: wrong length, wrong dtype or not a permutation.
    """
    array = np.asarray(perm)
    if array.ndim != 1 or array.shape[0] != vocab_size:
        raise SamplerError(
            f"perm must list all {vocab_size:,} token ids once, got shape {array.shape}; "
            "pass the ordering computed for this model (or np.arange(V) for token-id order)"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise SamplerError(f"perm must hold integer token ids, got dtype {array.dtype}")
    seen = np.zeros(vocab_size, dtype=bool)
    if array.min() < 0 or array.max() >= vocab_size:
        raise SamplerError(f"perm holds ids outside 0..{vocab_size - 1}; it was made for another vocabulary")
    seen[array] = True
    if not seen.all():
        raise SamplerError(f"perm is not a permutation: {int((~seen).sum())} token ids are missing")
    return array.astype(np.int64)


class SimulateSelector:
    """The `Selector` of simulate mode: the float64 sampler circuit with mixture-embedding feedback.

    Args:
        embeddings: the model's input embedding matrix W, (V, d).
        perm: the sampling order, perm[j] = token id at position j (identity when `config.tsp` is off).
        config: the sampler settings.
        noise_rng: generator for the noise model; default `np.random.default_rng(config.noise_seed)`.
        record: keep a `StepTrace` per step in `self.trace` (costs one extra prefix sum per step).

    Raises:
        SamplerError: `perm` is not a permutation of the embedding rows.
    """

    def __init__(
        self,
        embeddings: torch.Tensor,
        perm: npt.ArrayLike,
        config: SamplerConfig,
        noise_rng: np.random.Generator | None = None,
        record: bool = False,
    ) -> None:
        table = _as_float64(embeddings)  # (V, d)
        self.perm = check_perm(perm, table.shape[0])
        self.config = config
        self.table = np.ascontiguousarray(table[self.perm])  # (V, d) W_pi: pi baked into the rows
        self.row_norm_max = float(np.linalg.norm(self.table, axis=1).max())
        rng = noise_rng if noise_rng is not None else np.random.default_rng(config.noise_seed)
        ops = noise_ops(config, rng)
        steps: list[SelectionStep] = [
            Probabilities(config.temperature, config.softmax_precision, config.renormalize),
            Reorder(self.perm),
        ]
        if config.input_noise_sigma > 0:
            steps.append(InputNoise(config.input_noise_sigma, rng))
        self.steps: tuple[SelectionStep, ...] = tuple(steps)
        self.circuit = OneHotCircuit(ops, config.amp_rounds, config.pp)
        self.record = record
        self.trace: list[StepTrace] = []

    def ordered_probabilities(self, logits: torch.Tensor | FloatArray, r: float) -> FloatArray:
        """The chain up to the circuit: q (V,), float64, in sampling order (noisy if so configured)."""
        values = _as_float64(logits)
        for step in self.steps:
            values = step(values, r)
        return values

    def _clean_probabilities(self, logits: torch.Tensor | FloatArray, r: float) -> FloatArray:
        values = _as_float64(logits)
        for step in self.steps[:CLEAN_STEPS]:
            values = step(values, r)
        return values

    def one_hot(self, logits: torch.Tensor | FloatArray, r: float) -> FloatArray:
        """The whole chain: I' (V,) in sampling order."""
        return self.circuit(self.ordered_probabilities(logits, r), r)

    def mixture(self, weights: FloatArray) -> FloatArray:
        """e = weights @ W_pi (d,), exact to 1e-12 (see `mixture`)."""
        return mixture(weights, self.table, self.row_norm_max)

    def select(self, logits: torch.Tensor, r: float) -> Selection:
        q = self.ordered_probabilities(logits, r)
        weights = self.circuit(q, r)
        position = int(np.argmax(weights))
        if self.record:
            clean = q if len(self.steps) == CLEAN_STEPS else self._clean_probabilities(logits, r)
            self.trace.append(_trace(clean, r, weights, position))

        def embed() -> torch.Tensor:  # computed only if the loop feeds this step back
            return torch.from_numpy(self.mixture(weights).astype(np.float32))  # (d,) the model's dtype

        return Selection(token_id=int(self.perm[position]), embed=embed, payload=weights)


def noise_ops(config: SamplerConfig, rng: np.random.Generator) -> NumpyOps:
    """The backend of the configured noise model: every step, c - r alone, or none."""
    if config.noise_sigma > 0:
        return NoisyOps(config.noise_sigma, [rng])
    if config.prefix_noise_sigma > 0:
        return PrefixNoisyOps(config.prefix_noise_sigma, [rng])
    return NumpyOps()


def mixture(weights: FloatArray, table: FloatArray, row_norm_max: float) -> FloatArray:
    """e = weights @ table (d,), summed over the weights above MIXTURE_WEIGHT_FLOOR.

    The left-out part has norm at most (sum of left-out |weights|) x `row_norm_max`; when that bound
    exceeds MIXTURE_TOLERANCE (or most weights are kept anyway) the full product is computed instead.
    """
    magnitude = np.abs(weights)
    keep = magnitude > MIXTURE_WEIGHT_FLOOR
    kept = np.flatnonzero(keep)
    dropped = float(magnitude[~keep].sum())
    if dropped * row_norm_max > MIXTURE_TOLERANCE or kept.size > SPARSE_SHARE * weights.size:
        return np.asarray(weights @ table, dtype=np.float64)
    return np.asarray(weights[kept] @ table[kept], dtype=np.float64)


def _trace(q: FloatArray, r: float, weights: FloatArray, position: int) -> StepTrace:
    exact = exact_one_hot(q, r)
    return StepTrace(
        position=position,
        exact_position=exact_position(q, r),
        max_error=float(np.max(np.abs(weights - exact))),
        weight_sum=float(weights.sum()),
    )


def _as_float64(values: Any) -> FloatArray:
    """Widen in numpy: torch's dtype conversion costs ~10-20 ms per call on this machine (thread wake-up)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def identity_perm(vocab_size: int) -> IntArray:
    """Token-id order (TSP off)."""
    return np.arange(vocab_size, dtype=np.int64)
