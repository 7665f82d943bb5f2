"""The repetition guard: a step of the selection chain that keeps a small model's replies from looping.

SmolLM2-135M at the chat temperature falls into loops ("1 cup of basil" until the token limit). The
guard is the repetition penalty of Keskar et al. (CTRL, 2019), as transformers applies it: the logit
`z` of every token already in the conversation becomes `z / penalty` if positive, `z * penalty` if
negative, before the softmax. Special tokens (the template's markers, EOS) are exempt, so the guard
never makes a reply longer by holding back its end.

It runs where the probabilities are formed, so all three modes keep one distribution: `Guarded`
wraps the plain and simulate selectors (logits in token-id order), and the encrypted key holder
applies the same `penalize` to the logits it decrypts for the softmax (in sampling order: `position`
maps each token id to its place). The key holder knows the conversation and the tokens it read; the
worker learns nothing new (the penalty never leaves the key holder).

References: Keskar et al., arXiv 1909.05858, section 4.1; transformers' RepetitionPenaltyLogitsProcessor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.errors import InputError
from model.generate import Selection, Selector

IntArray = npt.NDArray[np.int64]
NO_PENALTY = 1.0  # the paper's setting: the research commands keep it unless asked
MAX_PENALTY = 3.0  # far past any useful value: at 2 the model already avoids every word it has used


def check_penalty(value: object) -> float:
    """A repetition penalty in 1..MAX_PENALTY (1 = off).

    Raises:
        InputError: naming the accepted range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"repetition_penalty must be a finite number, got {value!r}")
    if not NO_PENALTY <= value <= MAX_PENALTY:
        raise InputError(
            f"repetition_penalty must be between 1 (off) and {MAX_PENALTY:g}, got {value}; "
            "1.1-1.3 keeps replies from looping"
        )
    return float(value)


@dataclass
class RepetitionGuard:
    """One reply's guard: the penalty, and the tokens seen so far (the conversation, then the reply).

    Args:
        penalty: 1 turns the guard off (`penalize` returns the logits unchanged).
        seen: token ids already in the conversation (the prompt of this reply).
        exempt: token ids never penalised (the tokenizer's special tokens).
    """

    penalty: float
    seen: set[int]
    exempt: frozenset[int]

    @classmethod
    def of(cls, penalty: float, seen: Iterable[int] = (), exempt: Iterable[int] = ()) -> RepetitionGuard:
        return cls(check_penalty(penalty), {int(t) for t in seen}, frozenset(int(t) for t in exempt))

    @property
    def active(self) -> bool:
        return self.penalty != NO_PENALTY

    def add(self, token: int) -> None:
        """A token of the reply: later steps penalise it too."""
        self.seen.add(int(token))

    def penalize(self, logits: npt.ArrayLike, position: IntArray | None = None) -> npt.NDArray[np.float64]:
        """The penalised logits, float64 (a copy). `position[t]` is token t's index in `logits` (default:
        the logits are in token-id order)."""
        z = np.array(logits, dtype=np.float64)
        if not self.active:
            return z
        ids = np.fromiter((t for t in self.seen if t not in self.exempt), dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < z.size)]
        where = ids if position is None else position[ids]
        picked = z[where]
        z[where] = np.where(picked > 0, picked / self.penalty, picked * self.penalty)
        return z


def conversation_guard(tokenizer: Any, penalty: float, context: Iterable[int]) -> RepetitionGuard:
    """The guard of a chat reply: `context` is the conversation's token ids (the prompt), and the
    tokenizer's special tokens (template markers, EOS) are exempt."""
    return RepetitionGuard.of(penalty, context, tokenizer.all_special_ids)


class Guarded:
    """A selector whose logits pass through the guard first; each shown token joins what it has seen."""

    def __init__(self, selector: Selector, guard: RepetitionGuard) -> None:
        self.selector = selector
        self.guard = guard

    def select(self, logits: torch.Tensor, r: float) -> Selection:
        penalized = torch.from_numpy(self.guard.penalize(logits.detach().cpu().numpy()))  # widened in numpy
        choice = self.selector.select(penalized, r)
        if choice.token_id is not None:
            self.guard.add(choice.token_id)
        return choice
