"""The parts of a study definition: its conditions, prompts, questions and design (`app.study.file`
assembles them into a `Study`).

Each part is a frozen dataclass that validates every field on construction and raises `StudyFileError`
naming the field and the fix. The `check_*` helpers are shared with `app.study.file`, which checks the
study's own fields the same way. Setting ranges mirror `app.chat.service.ChatSettings`, which
`app.study.generate` builds from each condition and which checks them again. Like `app.study.file`, this
module imports neither torch nor Gradio.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import InputError, StudyFileError
from model.repetition import NO_PENALTY, check_penalty

MODES = ("plain", "simulate", "encrypted")  # app.chat.service.MODES (not imported: that pulls in torch)
DESIGNS = ("single", "pairwise")
QUESTION_KINDS = ("likert", "text")
MAX_NEW_TOKENS_LIMIT = 4096  # model.generate.MAX_NEW_TOKENS_LIMIT
MAX_AMP_ROUNDS = 12  # model.sampler.MAX_AMP_ROUNDS; ChatSettings re-checks with the sampler's own constant
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: `$` allows a final "\n"
ID_FORM = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
RESERVED_QUESTION_IDS = ("preference",)  # the pairwise design's own question

Design = Literal["single", "pairwise"]
QuestionKind = Literal["likert", "text"]


def check_id(value: Any, where: str, pattern: re.Pattern[str] = ID_PATTERN, form: str = ID_FORM) -> str:
    """An id that fully matches `pattern` (described to the user as `form`)."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise StudyFileError(f"{where} must be {form}; got {value!r}")
    return value


def check_text(value: Any, where: str, allow_empty: bool = False) -> str:
    """A string, not blank unless `allow_empty`."""
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise StudyFileError(f"{where} must be a non-empty string, got {value!r}")
    return value


def check_int(value: Any, where: str, low: int, high: int) -> int:
    """A whole number (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StudyFileError(f"{where} must be a whole number between {low} and {high}, got {value!r}")
    return value


def check_bool(value: Any, where: str) -> bool:
    """true or false, nothing that merely looks like it."""
    if not isinstance(value, bool):
        raise StudyFileError(f"{where} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class Condition:
    """One way of generating texts; raters never see its id."""

    id: str  # names the condition in the database, the export and the report
    mode: str = "simulate"  # plain / simulate / encrypted (DESIGN.md section 3)
    temperature: float = 0.3  # the chat default; 0 = greedy (then every sample of a prompt is the same)
    max_new_tokens: int = 40  # short texts keep rating quick and generation cheap
    tsp: bool = True  # simulate/encrypted: TSP vocabulary order, the paper's first fix
    pp: bool = True  # simulate/encrypted: the post-processing polynomial, the paper's second fix
    amp_rounds: int = 3  # simulate/encrypted: rounds of g1^5; fewer rounds = blunter step, more collapse
    repetition_penalty: float = NO_PENALTY  # every mode; 1 = off, as the paper (the chat's guard is opt-in)

    def __post_init__(self) -> None:
        where = f"condition {self.id!r}"
        check_id(self.id, "conditions[].id")
        if self.mode not in MODES:
            raise StudyFileError(f"{where}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not 0 <= t <= 5:
            raise StudyFileError(f"{where}: temperature must be a number between 0 (greedy) and 5, got {t!r}")
        check_int(self.max_new_tokens, f"{where}: max_new_tokens", 1, MAX_NEW_TOKENS_LIMIT)
        check_bool(self.tsp, f"{where}: tsp")
        check_bool(self.pp, f"{where}: pp")
        check_int(self.amp_rounds, f"{where}: amp_rounds", 1, MAX_AMP_ROUNDS)
        try:
            check_penalty(self.repetition_penalty)
        except InputError as exc:
            raise StudyFileError(f"{where}: {exc}") from exc

    def settings_dict(self, seed: int) -> dict[str, Any]:
        """The `ChatSettings` fields for one text (the seed differs per prompt and sample)."""
        return {
            "mode": self.mode,
            "temperature": float(self.temperature),
            "max_new_tokens": self.max_new_tokens,
            "seed": seed,
            "tsp": self.tsp,
            "pp": self.pp,
            "amp_rounds": self.amp_rounds,
            "repetition_penalty": float(self.repetition_penalty),
        }


@dataclass(frozen=True)
class Prompt:
    """One user message that every condition answers."""

    id: str  # names the prompt in the export
    text: str  # sent as the single user turn of the chat template, shown to raters

    def __post_init__(self) -> None:
        check_id(self.id, "prompts[].id")
        check_text(self.text, f"prompt {self.id!r}: text")


@dataclass(frozen=True)
class Question:
    """One rating question asked about each text (in the pairwise design, about each of A and B)."""

    id: str  # the column name in the export
    text: str  # what the rater reads
    kind: str = "likert"  # likert (1..points) or text (free text)
    points: int = 5  # likert: scale length; 5 or 7 are the usual choices
    low: str = ""  # likert: the label of 1
    high: str = ""  # likert: the label of `points`
    required: bool = True  # a rater cannot submit without answering (free text is usually optional)

    def __post_init__(self) -> None:
        check_id(self.id, "questions[].id")
        where = f"question {self.id!r}"
        if self.id in RESERVED_QUESTION_IDS:
            raise StudyFileError(
                f"{where}: the id {self.id!r} is reserved for the pairwise choice; rename it"
            )
        check_text(self.text, f"{where}: text")
        if self.kind not in QUESTION_KINDS:
            raise StudyFileError(
                f"{where}: kind must be one of {', '.join(QUESTION_KINDS)}, got {self.kind!r}"
            )
        check_int(self.points, f"{where}: points", 2, 11)
        check_text(self.low, f"{where}: low", allow_empty=True)
        check_text(self.high, f"{where}: high", allow_empty=True)
        check_bool(self.required, f"{where}: required")


@dataclass(frozen=True)
class StudyDesign:
    """How texts are put in front of raters."""

    kind: str = "single"  # single: one text per item; pairwise: texts A and B of the same prompt and sample
    pairs: tuple[tuple[str, str], ...] = ()  # pairwise: conditions to compare; empty = every pair
    allow_tie: bool = True  # pairwise: offer "no preference" (forcing a choice adds noise, not signal)
    preference_text: str = "Which reply is better overall?"  # pairwise: the choice question

    def __post_init__(self) -> None:
        if self.kind not in DESIGNS:
            raise StudyFileError(f"design.kind must be one of {', '.join(DESIGNS)}, got {self.kind!r}")
        if not isinstance(self.pairs, tuple):
            raise StudyFileError(
                f"design.pairs must be a list of [condition, condition] pairs, got {self.pairs!r}"
            )
        for pair in self.pairs:
            if not isinstance(pair, tuple) or len(pair) != 2 or not all(isinstance(c, str) for c in pair):
                raise StudyFileError(f"design.pairs entries must be [condition, condition], got {pair!r}")
            if pair[0] == pair[1]:
                raise StudyFileError(f"design.pairs compares {pair[0]!r} with itself; pick two conditions")
        if self.pairs and self.kind != "pairwise":
            raise StudyFileError(
                'design.pairs is only used with "kind": "pairwise"; remove it or change kind'
            )
        check_bool(self.allow_tie, "design.allow_tie")
        check_text(self.preference_text, "design.preference_text")
