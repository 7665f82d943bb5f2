"""Evaluation metrics for the sampler: single-step approximation error and generation collapse.

Pure functions over arrays and token lists (plus one model call for perplexity); the command line in
`app/research/evaluate.py` runs them and writes the tables.

Single step (the paper's Fig. 10 setting): for one distribution q and many uniforms r, the max-errors
`||I - e_k||_inf`, `||I' - e_k||_inf` against the exact one-hot `e_k`, and the cosine distance between the
mixture embedding and the target embedding. The circuit is the one of `model.sampler`, run on a row-wise
backend so a batch of draws is one array.

Collapse (our definition, model-agnostic): a generation has *collapsed* when its displayed tokens end in a
degenerate loop (a suffix that repeats with a short period) or when a stretch of it is text the plain model
itself finds implausible (a sliding-window mean negative log-likelihood above a threshold). Both read only
the token ids and the plain model, so any condition (plain, simulate, encrypted) is scored the same way, and
the plain condition measures the detector's false-positive rate. Distinct-n and the mean NLL are reported
alongside, with bootstrap and Wilson (`model.stats`) intervals.

References: arXiv 2510.12343 (Fig. 10, collapse study); Holtzman et al. 2020 (degenerate repetition);
Li et al. 2016 (distinct-n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from core.errors import InputError
from core.progress import OnProgress, Progress
from model.generate import DecodeSession, Selection, Selector, decode
from model.loading import LoadedModel
from model.sampler import compose, one_hot_from_steps, post_process, step_polynomials
from model.simulate import mixture
from model.vector_ops import FloatArray, NumpyOps

IntArray = npt.NDArray[np.int64]
NO_DRAW = -1  # target position when r >= sum(q): exact sampling draws nothing


def batched_one_hot(q: FloatArray, rs: FloatArray, amp_rounds: int) -> FloatArray:
    """I (B, V) without PP for one q (V,) and B uniforms: the circuit of `approx_one_hot`, one row per r."""
    ops = NumpyOps(skip_zero_terms=True)
    c = ops.prefix_sum(q)  # (V,)
    # S is element-wise, so equal c_j (runs of zero-probability tokens, ~80% of the vocabulary in fp16)
    # give bit-identical s_j: evaluate S once per distinct value and scatter back. Exact, ~5x faster.
    distinct, where = np.unique(c, return_inverse=True)
    x = ops.sub(distinct[None, :], rs[:, None])  # (B, U): c_j - r, the same rounding as add_const(c, -r)
    s = compose(ops, x, step_polynomials(amp_rounds))[:, where]  # (B, V)
    return one_hot_from_steps(ops, s)


def batched_post_process(one_hot: FloatArray) -> FloatArray:
    """I' = f(I) row-wise."""
    return post_process(NumpyOps(skip_zero_terms=True), one_hot)


def exact_positions(q: FloatArray, rs: FloatArray) -> IntArray:
    """Exact inverse-transform positions for each r (NO_DRAW when r >= sum(q))."""
    c = np.cumsum(q)
    j = np.searchsorted(c, rs, side="right").astype(np.int64)
    j[j >= len(q)] = NO_DRAW
    return j


def max_errors(weights: FloatArray, targets: IntArray) -> FloatArray:
    """||w - e_k||_inf per row (B,); for NO_DRAW rows the target is the zero vector."""
    error = np.abs(weights).copy()  # (B, V)
    rows = np.flatnonzero(targets != NO_DRAW)
    error[rows, targets[rows]] = np.abs(weights[rows, targets[rows]] - 1.0)
    return np.asarray(error.max(axis=1), dtype=np.float64)


def cosine_distance(a: FloatArray, b: FloatArray) -> FloatArray:
    """1 - cos(a_i, b_i) per row; 1 when either vector is zero."""
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    dot = np.sum(a * b, axis=-1)
    denom = na * nb
    cos = np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0)
    return np.asarray(1.0 - cos, dtype=np.float64)


@dataclass(frozen=True)
class SingleStepDraws:
    """Per-draw results of the single-step study for one distribution and one order."""

    targets: IntArray  # (B,) exact position, NO_DRAW if r >= sum(q)
    error_raw: FloatArray  # (B,) ||I - e_k||_inf
    error_pp: FloatArray  # (B,) ||I' - e_k||_inf
    cosine_raw: FloatArray  # (B,) cosine distance of I @ W_pi to the target row
    cosine_pp: FloatArray  # (B,) the same with I'
    sum_raw: FloatArray  # (B,) sum(I)


def single_step_draws(
    q: FloatArray,
    table: FloatArray,
    rs: FloatArray,
    amp_rounds: int,
    batch: int = 64,
    on_progress: OnProgress | None = None,
) -> SingleStepDraws:
    """Run the circuit for every r on one ordered distribution q; `table` is W_pi (V, d) in the same order.

    Args:
        on_progress: called after every batch with `Progress("draws", done, len(rs))`, `done` the draws
            of this call finished so far.
    """
    norm_max = float(np.linalg.norm(table, axis=1).max())
    parts: list[tuple[FloatArray, ...]] = []
    targets = exact_positions(q, rs)
    for start in range(0, len(rs), batch):
        chunk = slice(start, start + batch)
        raw = batched_one_hot(q, rs[chunk], amp_rounds)
        pp = batched_post_process(raw)
        t = targets[chunk]
        target_rows = np.where(t[:, None] != NO_DRAW, table[np.maximum(t, 0)], 0.0)  # (b, d)
        mix_raw = np.stack([mixture(w, table, norm_max) for w in raw])
        mix_pp = np.stack([mixture(w, table, norm_max) for w in pp])
        parts.append(
            (
                max_errors(raw, t),
                max_errors(pp, t),
                cosine_distance(mix_raw, target_rows),
                cosine_distance(mix_pp, target_rows),
                raw.sum(axis=1),
            )
        )
        if on_progress is not None:
            on_progress(Progress("draws", start + len(t), len(rs)))
    columns = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    return SingleStepDraws(targets, *columns)


# --- collapse -----------------------------------------------------------------------------------


def periodic_suffix(tokens: Sequence[int], max_period: int) -> tuple[int, int]:
    """The longest suffix of `tokens` that repeats with some period p <= max_period.

    Returns:
        (length of that suffix, its period); (0, 0) for an empty sequence.
    """
    best = (0, 0)
    n = len(tokens)
    for period in range(1, min(max_period, n // 2) + 1):
        length = period
        while length < n and tokens[n - 1 - length] == tokens[n - 1 - length + period]:
            length += 1
        if length > best[0] and length >= 2 * period:
            best = (length, period)
    return best


@dataclass(frozen=True)
class CollapseCriteria:
    """Thresholds of the collapse detector (each with the reason for its value)."""

    max_period: int = 32  # loops of up to 32 tokens (a repeated sentence or line)
    min_loop_tokens: int = 48  # the loop must cover at least this many tokens ...
    min_loop_repeats: int = 3  # ... and repeat at least 3 times: two repeats happen in lists and code
    nll_window: int = 64  # tokens per sliding window of the implausibility check
    nll_threshold: float = 6.0  # nats/token; ppl ~400; plain T=1 text averages ~2-3 nats (calibrated below)
    repeat_unit: int = 4  # the paper's criterion, translated: a unit of 1..4 tokens ...
    repeat_times: int = 8  # ... repeated 8 times in a row anywhere ("meaningless repeated tokens")


@dataclass(frozen=True)
class CollapseScore:
    """What the detector found in one generation."""

    loop_tokens: int  # length of the periodic suffix (0 if none qualifies)
    loop_period: int
    max_window_nll: float  # largest sliding-window mean NLL under the plain model (nats/token)
    mean_nll: float  # mean NLL of the whole generation under the plain model
    distinct_2: float  # distinct bigrams / bigrams
    implausible_from: int = -1  # first position of a window over the NLL threshold (-1: none)
    repeat_from: int = -1  # first position of a repeat run (the paper's criterion; -1: none)

    def onset(self, criteria: CollapseCriteria, length: int) -> int:
        """The first position where the detector sees collapse (-1 when it does not)."""
        starts = [self.implausible_from] if self.implausible(criteria) else []
        starts += [length - self.loop_tokens] if self.repetition(criteria) else []
        return min(starts, default=-1)

    def repetition(self, criteria: CollapseCriteria) -> bool:
        return self.loop_tokens > 0

    def implausible(self, criteria: CollapseCriteria) -> bool:
        return self.max_window_nll > criteria.nll_threshold

    def collapsed(self, criteria: CollapseCriteria) -> bool:
        return self.repetition(criteria) or self.implausible(criteria)


def distinct_n(tokens: Sequence[int], n: int) -> float:
    """Distinct n-grams / n-grams (1.0 for sequences shorter than n + 1 tokens)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if len(grams) > 1 else 1.0


@torch.inference_mode()
def token_nll(loaded: LoadedModel, prompt_ids: Sequence[int], tokens: Sequence[int]) -> FloatArray:
    """Negative log-likelihood (nats) of each generated token under the plain model, given the prompt."""
    if not tokens:
        return np.zeros(0)
    ids = torch.tensor([list(prompt_ids) + list(tokens)], dtype=torch.long)  # (1, T)
    logits = loaded.model(input_ids=ids).logits[0].float()  # (T, V)
    start = len(prompt_ids) - 1  # logits at position t predict token t + 1
    log_probs = torch.log_softmax(logits[start : start + len(tokens)], dim=-1)
    picked = log_probs.gather(1, torch.tensor(list(tokens)).unsqueeze(1))[:, 0]
    return np.asarray(-picked.double().numpy(), dtype=np.float64)


def repeat_run_start(tokens: Sequence[int], max_unit: int, times: int) -> int:
    """Where a unit of 1..max_unit tokens first repeats `times` times in a row (-1 when it never does).

    The paper scores corruption with GPT-4 ("meaningless repeated tokens"); this is the part of that
    judgement a token-level rule can make: "the the the ..." or ". . . ." anywhere, not only at the end.
    """
    first = -1
    for unit in range(1, max_unit + 1):
        matched = 0  # tokens equal to the one `unit` before, in a row
        for i in range(unit, len(tokens)):
            matched = matched + 1 if tokens[i] == tokens[i - unit] else 0
            if matched >= (times - 1) * unit:
                start = i - matched - unit + 1
                first = start if first < 0 else min(first, start)
                break
    return first


def score_generation(tokens: Sequence[int], nll: FloatArray, criteria: CollapseCriteria) -> CollapseScore:
    """Apply the collapse detector to one generation and its per-token NLL."""
    length, period = periodic_suffix(tokens, criteria.max_period)
    loop = length >= criteria.min_loop_tokens and length >= criteria.min_loop_repeats * period
    window = min(criteria.nll_window, len(nll))
    worst, implausible_from = 0.0, -1
    if window > 0:
        means = np.convolve(nll, np.ones(window), mode="valid") / window  # sliding means
        worst = float(means.max())
        over = np.flatnonzero(means > criteria.nll_threshold)
        implausible_from = int(over[0]) if over.size else -1
    return CollapseScore(
        loop_tokens=length if loop else 0,
        loop_period=period if loop else 0,
        max_window_nll=worst,
        mean_nll=float(nll.mean()) if len(nll) else 0.0,
        distinct_2=distinct_n(tokens, 2),
        implausible_from=implausible_from,
        repeat_from=repeat_run_start(tokens, criteria.repeat_unit, criteria.repeat_times),
    )


# --- intervals ----------------------------------------------------------------------------------


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for paired yes/no outcomes (1.0 when no pair disagrees).

    Args:
        only_first: pairs where the first condition says yes and the second no.
        only_second: pairs where the second says yes and the first no.
    """
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail: float = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_mean_interval(
    values: npt.ArrayLike, rng: np.random.Generator, resamples: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; (nan, nan) for no values."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (math.nan, math.nan)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2
    return (float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)))


# --- fixed-length generation for the collapse study ---------------------------------------------


class BanTokens:
    """A selector that never picks `banned` tokens: their logits are set to -inf first."""

    def __init__(self, selector: Selector, banned: frozenset[int]) -> None:
        self.selector = selector
        self.banned = torch.tensor(sorted(banned), dtype=torch.long)

    def select(self, logits: torch.Tensor, r: float) -> Selection:
        if self.banned.numel():
            logits = logits.clone()
            logits[self.banned] = -math.inf
        return self.selector.select(logits, r)


def generate_fixed_length(
    loaded: LoadedModel,
    prompt_ids: Sequence[int],
    selector: Selector,
    length: int,
    seed: int,
    ban_eos: bool = True,
    on_progress: OnProgress | None = None,
) -> list[int]:
    """Generate exactly `length` displayed tokens with the KV-cached loop of `model.generate`.

    EOS logits are set to -inf in every condition when `ban_eos` (the instruct model would otherwise end
    most replies after a few hundred tokens, and collapse is a long-generation effect). The r stream is
    `default_rng(seed).random()`, one per step, as in `generate`, so conditions with the same seed share it.

    Args:
        on_progress: called after every generated token with `Progress("tokens", done, length)`.

    Raises:
        InputError: the prompt plus `length` does not fit the context window.
    """
    if len(prompt_ids) + length > loaded.context_window:
        raise InputError(
            f"prompt ({len(prompt_ids)} tokens) + length ({length}) exceeds {loaded.name}'s context window "
            f"({loaded.context_window}); lower --length"
        )
    session = DecodeSession(loaded)
    logits = session.prefill(prompt_ids)
    banned = frozenset(loaded.eos_token_ids) if ban_eos else frozenset()
    tokens: list[int] = []
    stream = decode(session, logits, BanTokens(selector, banned), length, np.random.default_rng(seed))
    for step in stream:  # eos is never passed: with EOS banned or not, the run is `length` tokens
        assert step.selection.token_id is not None
        tokens.append(step.selection.token_id)
        if on_progress is not None:
            on_progress(Progress("tokens", len(tokens), length))
    return tokens
