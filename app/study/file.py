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

The parts (`Condition`, `Prompt`, `Question`, `StudyDesign`) and their checks are in `app.study.parts`;
this module holds the whole `Study`, its hash and its reading and writing. It imports neither torch nor
Gradio, so it loads fast anywhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

from app.study.parts import (
    Condition,
    Prompt,
    Question,
    StudyDesign,
    check_id,
    check_int,
    check_text,
)
from core.errors import StudyFileError, UnknownCondition
from model.repetition import NO_PENALTY

STUDY_FORMAT = 1  # bump when the file layout changes incompatibly
MAX_SAMPLES = 100
PARTICIPANT_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch; safe in URLs, file names and CSV
PARTICIPANT_FORM = "1-64 letters, digits, '_' or '-'"


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
        check_id(self.id, "id")
        check_text(self.title, "title")
        check_text(self.consent, "consent")
        check_text(self.instructions, "instructions", allow_empty=True)
        check_text(self.description, "description", allow_empty=True)
        check_int(self.samples_per_prompt, "samples_per_prompt", 1, MAX_SAMPLES)
        check_int(self.seed, "seed", 0, 2**62)
        if not isinstance(self.invited, tuple):
            raise StudyFileError(f"invited must be a list of participant ids, got {self.invited!r:.60}")
        for index, participant_id in enumerate(self.invited):
            check_id(participant_id, f"invited[{index}]", PARTICIPANT_PATTERN, PARTICIPANT_FORM)
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
