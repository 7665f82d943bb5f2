"""The study definition file: conditions, prompts, questions and design of a rating study (issue 7).

A study file is JSON (or YAML, `.yaml`/`.yml`) holding one object; `load_study` validates every field
and raises `StudyFileError` naming the field and the fix, so a typo never reaches the database. The
dataclasses are frozen and round-trip as dicts (`Study.from_dict(study.to_dict()) == study`).

    {"format": 1, "id": "demo", "title": "...", "consent": "...", "seed": 7, "samples_per_prompt": 1,
     "design": {"kind": "single"},                      # or {"kind": "pairwise", "pairs": [["a","b"]]}
     "conditions": [{"id": "a", "mode": "simulate", "tsp": false, "pp": false, "max_new_tokens": 40}, ...],
     "prompts": [{"id": "p1", "text": "What is the capital of France?"}, ...],
     "questions": [{"id": "fluency", "kind": "likert", "text": "How fluent is the reply?", "points": 5,
                    "low": "not at all", "high": "very"}, {"id": "comments", "kind": "text", ...}],
     "invited": ["p-01", "p-02"]}  # optional: only these participant ids may take part; without it, any
                                    # well-formed id may (and the study's hash is as before the key existed)

Setting ranges mirror `app.chat.service.ChatSettings`, which `app.study.generate` builds from each
condition and which checks them again. This module imports neither torch nor Gradio, so it loads fast
anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, cast

from core.errors import InputError, StudyFileError, UnknownCondition
from model.repetition import NO_PENALTY, check_penalty

STUDY_FORMAT = 1  # bump when the file layout changes incompatibly
MODES = ("plain", "simulate", "encrypted")  # app.chat.service.MODES (not imported: that pulls in torch)
DESIGNS = ("single", "pairwise")
QUESTION_KINDS = ("likert", "text")
MAX_NEW_TOKENS_LIMIT = 4096  # model.generate.MAX_NEW_TOKENS_LIMIT
MAX_AMP_ROUNDS = 12  # model.sampler.MAX_AMP_ROUNDS; ChatSettings re-checks with the sampler's own constant
MAX_SAMPLES = 100
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: `$` allows a final "\n"
ID_FORM = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
PARTICIPANT_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch; safe in URLs, file names and CSV
PARTICIPANT_FORM = "1-64 letters, digits, '_' or '-'"
RESERVED_QUESTION_IDS = ("preference",)  # the pairwise design's own question

Design = Literal["single", "pairwise"]
QuestionKind = Literal["likert", "text"]


def _check_id(value: Any, where: str, pattern: re.Pattern[str] = ID_PATTERN, form: str = ID_FORM) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise StudyFileError(f"{where} must be {form}; got {value!r}")
    return value


def _check_text(value: Any, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise StudyFileError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _check_int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StudyFileError(f"{where} must be a whole number between {low} and {high}, got {value!r}")
    return value


def _check_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise StudyFileError(f"{where} must be true or false, got {value!r}")
    return value


def _fields_from(cls: type, data: Any, where: str) -> dict[str, Any]:
    """The object's keys, rejecting unknown ones (a typo such as "temprature" must not pass silently)."""
    if not isinstance(data, dict):
        raise StudyFileError(f"{where} must be an object ({{...}}), got {type(data).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise StudyFileError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(known)}"
        )
    return dict(data)


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
        _check_id(self.id, "conditions[].id")
        if self.mode not in MODES:
            raise StudyFileError(f"{where}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not 0 <= t <= 5:
            raise StudyFileError(f"{where}: temperature must be a number between 0 (greedy) and 5, got {t!r}")
        _check_int(self.max_new_tokens, f"{where}: max_new_tokens", 1, MAX_NEW_TOKENS_LIMIT)
        _check_bool(self.tsp, f"{where}: tsp")
        _check_bool(self.pp, f"{where}: pp")
        _check_int(self.amp_rounds, f"{where}: amp_rounds", 1, MAX_AMP_ROUNDS)
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
        _check_id(self.id, "prompts[].id")
        _check_text(self.text, f"prompt {self.id!r}: text")


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
        _check_id(self.id, "questions[].id")
        where = f"question {self.id!r}"
        if self.id in RESERVED_QUESTION_IDS:
            raise StudyFileError(
                f"{where}: the id {self.id!r} is reserved for the pairwise choice; rename it"
            )
        _check_text(self.text, f"{where}: text")
        if self.kind not in QUESTION_KINDS:
            raise StudyFileError(
                f"{where}: kind must be one of {', '.join(QUESTION_KINDS)}, got {self.kind!r}"
            )
        _check_int(self.points, f"{where}: points", 2, 11)
        _check_text(self.low, f"{where}: low", allow_empty=True)
        _check_text(self.high, f"{where}: high", allow_empty=True)
        _check_bool(self.required, f"{where}: required")


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
        _check_bool(self.allow_tie, "design.allow_tie")
        _check_text(self.preference_text, "design.preference_text")


@dataclass(frozen=True)
class Study:
    """A whole study definition. Validated on construction; see the module docstring for the layout."""

    id: str  # names the study in the database; a database holds exactly one study
    title: str  # the participant page's heading
    consent: str  # shown before the first item; participants must agree to continue (Markdown)
    conditions: tuple[Condition, ...]
    prompts: tuple[Prompt, ...]
    questions: tuple[Question, ...]
    design: StudyDesign = StudyDesign()
    samples_per_prompt: int = 1  # texts per (condition, prompt), each with its own sampler seed
    seed: int = 0  # seeds the sampler seeds and every participant's item order
    instructions: str = ""  # shown above each item (Markdown)
    description: str = ""  # for researchers only (what is compared and why); never shown to raters
    invited: tuple[str, ...] = ()  # the participant ids allowed to take part; empty = any well-formed id
    format: int = STUDY_FORMAT  # the file layout version

    def __post_init__(self) -> None:
        if self.format != STUDY_FORMAT:
            raise StudyFileError(
                f"format must be {STUDY_FORMAT} (this app's study file version), got {self.format!r}"
            )
        _check_id(self.id, "id")
        _check_text(self.title, "title")
        _check_text(self.consent, "consent")
        _check_text(self.instructions, "instructions", allow_empty=True)
        _check_text(self.description, "description", allow_empty=True)
        _check_int(self.samples_per_prompt, "samples_per_prompt", 1, MAX_SAMPLES)
        _check_int(self.seed, "seed", 0, 2**62)
        if not isinstance(self.invited, tuple):
            raise StudyFileError(f"invited must be a list of participant ids, got {self.invited!r:.60}")
        for index, participant_id in enumerate(self.invited):
            _check_id(participant_id, f"invited[{index}]", PARTICIPANT_PATTERN, PARTICIPANT_FORM)
        for name, items, minimum in (("conditions", self.conditions, 1), ("prompts", self.prompts, 1)):
            if len(items) < minimum:
                raise StudyFileError(f"{name} must list at least {minimum} entry; add one")
        id_lists = {
            "conditions": [c.id for c in self.conditions],
            "prompts": [p.id for p in self.prompts],
            "questions": [q.id for q in self.questions],
            "invited": list(self.invited),
        }
        for name, ids in id_lists.items():
            duplicates = sorted({i for i, n in Counter(ids).items() if n > 1})
            if duplicates:
                raise StudyFileError(f"{name}: duplicate id(s) {', '.join(duplicates)}; ids must be unique")
        known = {c.id for c in self.conditions}
        for pair in self.design.pairs:
            for condition in pair:
                if condition not in known:
                    raise UnknownCondition(
                        f"design.pairs names condition {condition!r}, which is not defined; "
                        f"defined conditions: {', '.join(sorted(known))}"
                    )
        if self.design.kind == "pairwise" and len(self.conditions) < 2:
            raise StudyFileError("the pairwise design needs at least two conditions; add one or use single")
        if self.design.kind == "single" and not self.questions:
            raise StudyFileError("the single design needs at least one question; add a likert question")

    def condition(self, condition_id: str) -> Condition:
        """The condition with this id.

        Raises:
            UnknownCondition: no such condition (the message lists the defined ones).
        """
        for condition in self.conditions:
            if condition.id == condition_id:
                return condition
        known = ", ".join(c.id for c in self.conditions)
        raise UnknownCondition(f"unknown condition {condition_id!r}; the study defines: {known}")

    def prompt(self, prompt_id: str) -> Prompt:
        for prompt in self.prompts:
            if prompt.id == prompt_id:
                return prompt
        raise StudyFileError(f"unknown prompt {prompt_id!r}")

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The compared condition pairs (pairwise design): as listed, else every pair in file order."""
        if self.design.pairs:
            return self.design.pairs
        ids = [c.id for c in self.conditions]
        return tuple((a, b) for i, a in enumerate(ids) for b in ids[i + 1 :])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `Study.from_dict` reverses it."""
        data = asdict(self)
        data["design"]["pairs"] = [list(p) for p in self.design.pairs]
        for key in ("conditions", "prompts", "questions"):
            data[key] = list(data[key])
        for condition in data["conditions"]:  # no guard: the dict (and the study's hash) stays as before
            if condition["repetition_penalty"] == NO_PENALTY:
                del condition["repetition_penalty"]
        data["invited"] = list(self.invited)
        if not self.invited:  # an open study: the dict (and the hash) stays as before the field existed
            del data["invited"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Study:
        """Build and validate a study from parsed JSON/YAML.

        Raises:
            StudyFileError: a missing, unknown or invalid field (named in the message).
        """
        values = _fields_from(cls, data, "the study")
        for required in ("id", "title", "consent", "conditions", "prompts", "questions"):
            if required not in values:
                raise StudyFileError(f"the study is missing the required key {required!r}")
        parts: list[tuple[str, type]] = [
            ("conditions", Condition),
            ("prompts", Prompt),
            ("questions", Question),
        ]
        for key, item_cls in parts:
            raw = values[key]
            if not isinstance(raw, list):
                raise StudyFileError(f"{key} must be a list, got {type(raw).__name__}")
            values[key] = tuple(_build(item_cls, item, f"{key}[{i}]") for i, item in enumerate(raw))
        if "invited" in values:  # an explicit [] would invite nobody: refuse it rather than guess
            if not isinstance(values["invited"], list) or not values["invited"]:
                raise StudyFileError(
                    "invited must be a non-empty list of participant ids; remove the key "
                    "to let anyone with a link take part"
                )
            values["invited"] = tuple(values["invited"])
        if "design" in values:
            design = _fields_from(StudyDesign, values["design"], "design")
            if "pairs" in design:
                raw_pairs = design["pairs"]
                if not isinstance(raw_pairs, list):
                    raise StudyFileError(f"design.pairs must be a list of pairs, got {raw_pairs!r}")
                design["pairs"] = tuple(tuple(p) if isinstance(p, list) else p for p in raw_pairs)
            values["design"] = _build(StudyDesign, design, "design")
        try:
            return cls(**values)
        except TypeError as exc:  # a field of the wrong type that __post_init__ could not name
            raise StudyFileError(f"the study: {exc}") from exc


def _build(cls: type, data: Any, where: str) -> Any:
    values = _fields_from(cls, data, where)
    try:
        return cls(**values)
    except TypeError as exc:
        raise StudyFileError(f"{where}: {exc}") from exc
    except StudyFileError as exc:
        raise type(exc)(f"{where}: {exc}") from exc


def study_hash(study: Study) -> str:
    """SHA-256 of the canonical JSON of the study: names the exact definition a database was made from."""
    return hashlib.sha256(canonical_json(study.to_dict()).encode()).hexdigest()


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_study(text: str, suffix: str = ".json") -> Study:
    """Parse and validate study text; `suffix` picks the parser (.json, or .yaml/.yml).

    Raises:
        StudyFileError: the text does not parse, or a field is invalid.
    """
    try:
        if suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StudyFileError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    except Exception as exc:  # yaml.YAMLError; yaml is imported lazily
        raise StudyFileError(f"not valid YAML: {exc}") from exc
    return Study.from_dict(data)


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (.json, .yaml or .yml).

    Raises:
        StudyFileError: the file is missing, unreadable, does not parse, or has an invalid field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudyFileError(f"cannot read the study file {path}: {exc.strerror}; check the path") from exc
    try:
        return parse_study(text, path.suffix)
    except StudyFileError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def save_study(study: Study, path: str | Path) -> None:
    """Write the study as indented JSON (or YAML for .yaml/.yml)."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        text = cast(str, yaml.safe_dump(study.to_dict(), sort_keys=False, allow_unicode=True))
    else:
        text = json.dumps(study.to_dict(), indent=2, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")
