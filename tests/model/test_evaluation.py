"""Evaluation metrics (single-step error, collapse detector, the paper's criterion, intervals); the command
line that uses them: tests/app/research/test_evaluate.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.progress import Progress
from model.evaluation import (
    NO_DRAW,
    CollapseCriteria,
    batched_one_hot,
    bootstrap_mean_interval,
    cosine_distance,
    distinct_n,
    exact_positions,
    generate_fixed_length,
    max_errors,
    mcnemar_exact,
    periodic_suffix,
    repeat_run_start,
    score_generation,
    single_step_draws,
    token_nll,
)
from model.generate import DecodeSession, Selection, build_prompt
from model.loading import LoadedModel
from tests.conftest import assert_close

USER = [{"role": "user", "content": "Name three colours."}]


def test_periodic_suffix_finds_the_longest_loop() -> None:
    assert periodic_suffix([1, 2, 3, 4, 5], 4) == (0, 0)
    assert periodic_suffix([9, 1, 2, 1, 2, 1, 2], 4) == (6, 2)
    assert periodic_suffix([5] * 10, 4) == (10, 1)
    assert periodic_suffix([], 4) == (0, 0)


def test_the_paper_criterion_finds_the_first_run_of_a_repeated_unit_anywhere() -> None:
    assert repeat_run_start([1, 2] + [7] * 8 + [3, 4], max_unit=4, times=8) == 2
    assert repeat_run_start([1, 2] + [7] * 7 + [3, 4], max_unit=4, times=8) == -1  # 7 times is not enough
    assert repeat_run_start([9, 9, 9] + [5, 6, 7] * 8, max_unit=4, times=8) == 3  # a 3-token unit
    assert repeat_run_start([5, 6, 7, 8, 0] * 8, max_unit=4, times=8) == -1  # a 5-token unit is text
    assert repeat_run_start([], max_unit=4, times=8) == -1
    tokens = list(range(40)) + [3] * 10 + list(range(100, 110))
    score = score_generation(tokens, np.full(len(tokens), 7.0), CollapseCriteria(nll_window=8))
    assert (
        score.repeat_from == 40 and score.implausible_from == 0 and score.onset(CollapseCriteria(), 60) == 0
    )


def test_collapse_detector_flags_loops_and_implausible_text() -> None:
    criteria = CollapseCriteria()
    varied = list(range(300))
    calm = np.full(300, 2.0)
    assert not score_generation(varied, calm, criteria).collapsed(criteria)
    looping = list(range(200)) + [7, 8, 9, 10] * 25  # 100-token loop of period 4
    score = score_generation(looping, calm, criteria)
    assert score.repetition(criteria) and score.loop_period == 4 and score.loop_tokens >= 100
    short_loop = list(range(280)) + [7, 8] * 10  # 20 tokens: below min_loop_tokens
    assert not score_generation(short_loop, calm, criteria).repetition(criteria)
    spiky = calm.copy()
    spiky[100:164] = 9.0  # one window of nonsense under the plain model
    assert score_generation(varied, spiky, criteria).implausible(criteria)
    spiky[100:164] = 5.0
    assert not score_generation(varied, spiky, criteria).implausible(criteria)


def test_distinct_n() -> None:
    assert distinct_n([1, 2, 1, 2, 1, 2], 2) == 2 / 5
    assert distinct_n([1, 2, 3, 4], 2) == 1.0


def test_mcnemar_exact_is_the_two_sided_binomial_test_of_the_discordant_pairs() -> None:
    assert mcnemar_exact(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 0.109
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64) and mcnemar_exact(6, 0) == mcnemar_exact(0, 6)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_bootstrap_interval_covers_the_mean(rng: np.random.Generator) -> None:
    values = rng.normal(3.0, 1.0, 400)
    low, high = bootstrap_mean_interval(values, np.random.default_rng(0))
    assert low < values.mean() < high and high - low < 0.4
    assert all(math.isnan(v) for v in bootstrap_mean_interval([], np.random.default_rng(0)))


def test_max_errors_and_cosine_distance() -> None:
    weights = np.array([[0.0, 1.0, 0.0], [0.0, 0.7, 0.4], [0.0, 0.0, 0.0]])
    targets = np.array([1, 1, NO_DRAW])
    assert_close(max_errors(weights, targets), [0.0, 0.4, 0.0], atol=1e-15)
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert_close(cosine_distance(a, b), [0.0, 2.0, 1.0], atol=1e-15)


def test_exact_positions_marks_r_beyond_the_mass() -> None:
    q = np.array([0.5, 0.0, 0.4])
    assert exact_positions(q, np.array([0.2, 0.5, 0.95])).tolist() == [0, 2, NO_DRAW]


def test_single_step_draws_are_exact_away_from_boundaries_and_not_near_them(rng: np.random.Generator) -> None:
    q = np.array([0.3, 0.0, 0.0, 0.2, 0.5])
    table = rng.normal(0, 1, (5, 8))
    c = np.cumsum(q)
    rs = np.array([0.1, 0.4, 0.9, c[0] - 1e-7])
    draws = single_step_draws(q, table, rs, amp_rounds=3)
    assert draws.targets.tolist() == [0, 3, 4, 0]
    assert np.all(draws.error_raw[:3] < 1e-6) and np.all(draws.cosine_pp[:3] < 1e-9)
    assert draws.error_raw[3] > 0.1 and draws.cosine_raw[3] > 1e-3 and draws.sum_raw[3] > 1.0
    assert draws.error_pp[3] > 0.0


def test_single_step_draws_report_the_draws_done_after_every_batch(rng: np.random.Generator) -> None:
    seen: list[Progress] = []
    single_step_draws(rng.dirichlet(np.ones(6)), rng.normal(0, 1, (6, 4)), rng.random(5), 3, 2, seen.append)
    assert seen == [Progress("draws", 2, 5), Progress("draws", 4, 5), Progress("draws", 5, 5)]


def test_batched_one_hot_shape(rng: np.random.Generator) -> None:
    assert batched_one_hot(rng.dirichlet(np.ones(30)), rng.random(7), 3).shape == (7, 30)


class ArgmaxRecorder:
    """A selector double: greedy, remembering whether EOS was ever allowed."""

    def __init__(self, embeddings: torch.Tensor, eos: frozenset[int]) -> None:
        self.embeddings = embeddings
        self.eos = sorted(eos)
        self.eos_allowed = False

    def select(self, logits: torch.Tensor, r: float) -> Selection:
        self.eos_allowed |= bool(torch.isfinite(logits[self.eos]).any())
        token = int(torch.argmax(logits))
        return Selection(token_id=token, embedding=self.embeddings[token])


def test_fixed_length_generation_bans_eos_and_nll_matches_the_decode_logits(tiny: LoadedModel) -> None:
    prompt = build_prompt(tiny, USER)
    recorder = ArgmaxRecorder(tiny.input_embeddings(), tiny.eos_token_ids)
    ticks: list[Progress] = []
    tokens = generate_fixed_length(tiny, prompt, recorder, 12, seed=0, on_progress=ticks.append)
    assert len(tokens) == 12 and not recorder.eos_allowed
    assert ticks == [Progress("tokens", done, 12) for done in range(1, 13)]
    nll = token_nll(tiny, prompt, tokens)
    session = DecodeSession(tiny)
    logits = session.prefill(prompt)
    expected = []
    for token in tokens:
        expected.append(-float(torch.log_softmax(logits.double(), -1)[token]))
        logits = session.step(tiny.input_embeddings()[token])
    assert_close(nll, expected, atol=1e-4)
