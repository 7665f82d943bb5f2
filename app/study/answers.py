"""What a participant may submit: participant ids and answers checked against the study's questions.

Pure validation, no I/O: `app.study.store` calls these before it opens the write transaction, so a
malformed answer never reaches the database. Every refusal is a typed `AnswerError` whose message names
the problem and the fix; no submission can raise a raw ValueError or RecursionError, and messages quote at
most a short excerpt of what was sent (`excerpt`).

Strict on purpose:

- ids are checked with `fullmatch` (`re.match` with `$` lets "abc\\n" through as a second "abc"), and a
  study with an invitation list (`Study.invited`) refuses every other id.
- a rating is an int (not a bool, and not a float: 3.0 is refused, so what is stored is exactly a point
  of the scale) or a string of the ASCII digits 0-9 ("3", as forms send it). Unicode digits such as "²",
  "①" or "٣" are refused, although `str.isdigit()` accepts them all (and `int()` accepts "٣").
- free text is at most MAX_FREE_TEXT characters of valid Unicode (no unpaired surrogates, which SQLite
  cannot store) without control characters other than tab and newlines.
- answer JSON (the HTTP API) is at most `max_answer_chars(study)` characters; nesting deeper than the
  parser's recursion limit and integers longer than Python's int-digit limit are refused as InvalidAnswer.
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.study.file import PARTICIPANT_FORM, PARTICIPANT_PATTERN, Study
from core.errors import InvalidAnswer, ParticipantError

MAX_FREE_TEXT = 4000  # characters; longer free text is refused, not truncated
RATING_DIGITS = re.compile(r"[0-9]{1,3}")  # fullmatch; [0-9] is ASCII only, unlike \d and str.isdigit
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, \n and \r are allowed in free text
EXCERPT_CHARS = 40  # how much of a refused value an error message quotes


def excerpt(value: Any) -> str:
    """A short description of a submitted value for an error message, safe for any value.

    `repr()` of 30,000 nested lists raises RecursionError, `str()` of a 5,000-digit int raises ValueError,
    and a megabyte string would flood the page; this does none of those.
    """
    if isinstance(value, str):
        return repr(value[:EXCERPT_CHARS]) + ("..." if len(value) > EXCERPT_CHARS else "")
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit integer"
    return f"a {type(value).__name__}"


def check_participant_id(participant_id: Any) -> str:
    """The id if it is well formed (the form only; `check_participant` also checks the invitation list).

    Raises:
        ParticipantError: not PARTICIPANT_FORM (1-64 letters, digits, '_' or '-').
    """
    if not isinstance(participant_id, str) or not PARTICIPANT_PATTERN.fullmatch(participant_id):
        raise ParticipantError(
            f"participant id must be {PARTICIPANT_FORM}, got {excerpt(participant_id)}; "
            "use the id from your invitation link"
        )
    return participant_id


def check_participant(study: Study, participant_id: Any) -> str:
    """The id if it is well formed and, when the study has an invitation list, on it.

    Raises:
        ParticipantError: a malformed id, or one the study's invitation list does not hold.
    """
    check_participant_id(participant_id)
    if study.invited and participant_id not in study.invited:
        raise ParticipantError(
            f"participant id {participant_id!r} is not on this study's invitation list; check the id in "
            "your invitation link, or ask the researcher named in the consent text to invite you"
        )
    return str(participant_id)


def max_answer_chars(study: Study) -> int:
    """The longest answer JSON the API reads: every question answered in full, every character escaped."""
    free_text = sum(question.kind == "text" for question in study.questions)
    return 1024 + 64 * len(study.questions) + free_text * 12 * MAX_FREE_TEXT  # 12: "\\ud83d\\ude00"


def parse_answer_json(study: Study, text: Any) -> Any:
    """Parse an answer sent as JSON text (the HTTP API); `normalise_answer` then checks the value.

    Raises:
        InvalidAnswer: not a string, too long, not JSON, nested too deeply, or a number too long to read.
    """
    example = '{"<question id>": 3}'
    if not isinstance(text, str):
        raise InvalidAnswer(f"answer_json must be a string of JSON such as {example}, got {excerpt(text)}")
    limit = max_answer_chars(study)
    if len(text) > limit:
        raise InvalidAnswer(
            f"answer_json has {len(text)} characters, more than this study's {limit}; "
            f"send one object of question id -> value such as {example}"
        )
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidAnswer(
            f"answer_json is nested too deeply; send one object of question id -> value such as {example}"
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(
            f"answer_json is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; "
            f"send an object such as {example}"
        ) from exc
    except ValueError as exc:  # an integer longer than sys.get_int_max_str_digits() (4300 digits)
        raise InvalidAnswer(
            "answer_json holds a number too long to read; ratings are small whole numbers such as 3"
        ) from exc


def _likert(value: Any, points: int, where: str) -> int:
    if isinstance(value, str) and RATING_DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= points:
        raise InvalidAnswer(
            f"{where} must be a whole number from 1 to {points}, written with the digits 0-9 "
            f"(3, not 3.0 or '³'); got {excerpt(value)}"
        )
    return value


def _free_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_FREE_TEXT:
        raise InvalidAnswer(f"{where!r} must be text of at most {MAX_FREE_TEXT} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAnswer(
            f"{where!r} holds an unpaired surrogate (invalid Unicode); retype the text and submit again"
        ) from None
    if CONTROL_CHARS.search(value):
        raise InvalidAnswer(f"{where!r} holds control characters; remove them (tabs and new lines are fine)")
    return value.strip()


def normalise_answer(study: Study, raw: Any) -> dict[str, Any]:
    """Check an answer against the study's questions and return its canonical form.

    Single design: {"<likert id>": 1..points, "<text id>": "..."}. Pairwise design: {"preference":
    "A" | "B" | "tie", "<likert id>": {"A": 1..points, "B": 1..points}, "<text id>": "..."}.
    Optional questions may be missing or null (they are left out).

    Raises:
        InvalidAnswer: a missing required answer, an unknown question, or a value off its scale.
    """
    if not isinstance(raw, dict):
        raise InvalidAnswer(f"an answer must be an object of question id -> value, got {excerpt(raw)}")
    pairwise = study.design.kind == "pairwise"
    known = {q.id for q in study.questions} | ({"preference"} if pairwise else set())
    unknown = sorted(excerpt(key) for key in raw if not isinstance(key, str) or key not in known)
    if unknown:
        raise InvalidAnswer(
            f"unknown question(s) {', '.join(unknown[:5])}; this study asks {', '.join(sorted(known))}"
        )
    out: dict[str, Any] = {}
    if pairwise:
        choices = ("A", "B", "tie") if study.design.allow_tie else ("A", "B")
        choice = raw.get("preference")
        if not isinstance(choice, str) or choice not in choices:
            raise InvalidAnswer(f"preference must be one of {', '.join(choices)}, got {excerpt(choice)}")
        out["preference"] = choice
    for question in study.questions:
        value = raw.get(question.id)
        if value is None or value == "" or value == {}:
            if question.required:
                raise InvalidAnswer(f"question {question.id!r} is required; answer it before submitting")
            continue
        if question.kind == "text":
            if text := _free_text(value, question.id):
                out[question.id] = text
        elif pairwise:
            if not isinstance(value, dict) or set(value) != {"A", "B"}:
                raise InvalidAnswer(f'{question.id!r} needs a rating for each reply: {{"A": n, "B": n}}')
            out[question.id] = {s: _likert(value[s], question.points, f"{question.id} ({s})") for s in "AB"}
        else:
            out[question.id] = _likert(value, question.points, question.id)
    return out
