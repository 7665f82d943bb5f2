"""What a participant may submit: participant ids and answers checked against the study's questions.

Pure validation, no I/O: `app.study_store` calls these before it opens the write transaction, so a
malformed answer never reaches the database.
"""

from __future__ import annotations

import re
from typing import Any

from app.study_file import Study
from model.errors import InvalidAnswer, ParticipantError

PARTICIPANT_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_FREE_TEXT = 4000  # characters; longer free text is refused, not truncated


def check_participant_id(participant_id: Any) -> str:
    if not isinstance(participant_id, str) or not PARTICIPANT_PATTERN.match(participant_id):
        raise ParticipantError(
            f"participant id must be 1-64 letters, digits, '_' or '-', got {participant_id!r}; "
            "use the id from your invitation link"
        )
    return participant_id


def _likert(value: Any, points: int, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= points:
        raise InvalidAnswer(f"{where} must be a whole number from 1 to {points}, got {value!r}")
    return value


def normalise_answer(study: Study, raw: Any) -> dict[str, Any]:
    """Check an answer against the study's questions and return its canonical form.

    Single design: {"<likert id>": 1..points, "<text id>": "..."}. Pairwise design: {"preference":
    "A" | "B" | "tie", "<likert id>": {"A": 1..points, "B": 1..points}, "<text id>": "..."}.
    Optional questions may be missing or null (they are left out).

    Raises:
        InvalidAnswer: a missing required answer, an unknown question, or a value off its scale.
    """
    if not isinstance(raw, dict):
        raise InvalidAnswer(f"an answer must be an object of question id -> value, got {type(raw).__name__}")
    pairwise = study.design.kind == "pairwise"
    known = {q.id for q in study.questions} | ({"preference"} if pairwise else set())
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidAnswer(
            f"unknown question(s) {', '.join(unknown)}; this study asks {', '.join(sorted(known))}"
        )
    out: dict[str, Any] = {}
    if pairwise:
        choices = ("A", "B", "tie") if study.design.allow_tie else ("A", "B")
        if raw.get("preference") not in choices:
            raise InvalidAnswer(
                f"preference must be one of {', '.join(choices)}, got {raw.get('preference')!r}"
            )
        out["preference"] = raw["preference"]
    for question in study.questions:
        value = raw.get(question.id)
        if value is None or value == "" or value == {}:
            if question.required:
                raise InvalidAnswer(f"question {question.id!r} is required; answer it before submitting")
            continue
        if question.kind == "text":
            if not isinstance(value, str) or len(value) > MAX_FREE_TEXT:
                raise InvalidAnswer(f"{question.id!r} must be text of at most {MAX_FREE_TEXT} characters")
            if value.strip():
                out[question.id] = value.strip()
        elif pairwise:
            if not isinstance(value, dict) or set(value) != {"A", "B"}:
                raise InvalidAnswer(f'{question.id!r} needs a rating for each reply: {{"A": n, "B": n}}')
            out[question.id] = {s: _likert(value[s], question.points, f"{question.id} ({s})") for s in "AB"}
        else:
            out[question.id] = _likert(value, question.points, question.id)
    return out
