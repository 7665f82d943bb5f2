"""Answer validation (pure): canonical forms, optional questions, pairwise shape, participant ids and the
invitation list, and strictness against hostile input (Unicode digits, JSON bombs, huge numbers)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.study.answers import (
    check_participant,
    check_participant_id,
    excerpt,
    max_answer_chars,
    normalise_answer,
    parse_answer_json,
)
from app.study.file import Study
from core.errors import InvalidAnswer, ParticipantError


def _study(kind: str, allow_tie: bool = True, **extra: Any) -> Study:
    return Study.from_dict(
        extra
        | {
            "id": "ans",
            "title": "t",
            "consent": "c",
            "design": {"kind": kind, "allow_tie": allow_tie} if kind == "pairwise" else {"kind": kind},
            "conditions": [{"id": "a"}, {"id": "b"}],
            "prompts": [{"id": "p", "text": "x"}],
            "questions": [
                {"id": "fluency", "text": "?", "points": 7},
                {"id": "notes", "kind": "text", "text": "?", "required": False},
            ],
        }
    )


def test_single_answers_are_canonical() -> None:
    study = _study("single")
    assert normalise_answer(study, {"fluency": "7", "notes": "  "}) == {"fluency": 7}
    assert normalise_answer(study, {"fluency": 1, "notes": None}) == {"fluency": 1}
    for bad in ({"fluency": 0}, {"fluency": 8}, {"fluency": 2.5}, {"fluency": "x"}, {"notes": "only"}):
        with pytest.raises(InvalidAnswer):
            normalise_answer(study, bad)


def test_pairwise_answers_need_a_choice_and_both_sides() -> None:
    study = _study("pairwise", allow_tie=False)
    answer = {"preference": "B", "fluency": {"A": "3", "B": 7}}
    assert normalise_answer(study, answer) == {"preference": "B", "fluency": {"A": 3, "B": 7}}
    with pytest.raises(InvalidAnswer, match="A, B"):  # ties not offered in this study
        normalise_answer(study, {**answer, "preference": "tie"})
    with pytest.raises(InvalidAnswer, match="each reply"):
        normalise_answer(study, {**answer, "fluency": 3})


def _label(value: object) -> str:
    """A test id for a parameter that pytest cannot print (str(10**5000) raises ValueError)."""
    return f"{type(value).__name__}-{len(value)}" if isinstance(value, str | list) else type(value).__name__


@pytest.mark.parametrize(
    "bad", ["", "a b", "x" * 65, "é", None, 7, "../etc", "abc\n", "\nabc", 10**5000], ids=_label
)
def test_participant_ids_are_checked(bad: object) -> None:
    with pytest.raises(ParticipantError, match="invitation link") as info:
        check_participant_id(bad)
    assert "1-64 letters, digits, '_' or '-'" in str(info.value)  # names the allowed form
    assert check_participant_id("p-01_X") == "p-01_X"


def test_the_invitation_list_admits_only_its_ids() -> None:
    study = _study("single", invited=["p-01", "p-02"])
    assert check_participant(study, "p-02") == "p-02"
    for outsider in ("p-03", "P-01"):
        with pytest.raises(ParticipantError, match="not on this study's invitation list") as info:
            check_participant(study, outsider)
        assert "ask the researcher" in str(info.value)
    with pytest.raises(ParticipantError, match="1-64 letters"):  # the form is checked first
        check_participant(study, "p-01\n")
    assert check_participant(_study("single"), "anyone") == "anyone"  # no list: open as before


def _nested(depth: int) -> Any:
    value: Any = 3
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "bad",
    [
        "²",
        "①",
        "٣",
        "３",
        "3.0",
        "+3",
        "3_0",
        "1" * 5000,
        3.0,
        2.5,
        True,
        10**5000,
        _nested(30_000),
        {"A": 3},
    ],
    ids=_label,
)
def test_ratings_are_ascii_whole_numbers(bad: object) -> None:
    with pytest.raises(InvalidAnswer) as info:
        normalise_answer(_study("single"), {"fluency": bad})
    message = str(info.value)
    assert "fluency" in message and "1 to 7" in message and "digits 0-9" in message
    assert len(message) < 300


@pytest.mark.parametrize(
    ("notes", "words"),
    [
        ("x" * 4001, ["at most 4000"]),
        ("bad \ud800 half", ["unpaired surrogate", "retype"]),
        ("nul \x00 byte", ["control characters"]),
        (["a list"], ["must be text"]),
    ],
)
def test_free_text_is_bounded_valid_unicode(notes: object, words: list[str]) -> None:
    with pytest.raises(InvalidAnswer) as info:
        normalise_answer(_study("single"), {"fluency": 3, "notes": notes})
    for word in words:
        assert word in str(info.value)
    assert normalise_answer(_study("single"), {"fluency": 3, "notes": " two\r\nlines\t"}) == {
        "fluency": 3,
        "notes": "two\r\nlines",
    }


def test_hostile_values_elsewhere_get_short_typed_refusals() -> None:
    study = _study("pairwise")
    for answer in (
        {"preference": _nested(30_000)},
        {"preference": 10**5000},
        {"preference": "A", "fluency": {"A": "²", "B": 3}},
        {"x" * 10_000: 1},
        {7: 1},
        _nested(30_000),
    ):
        with pytest.raises(InvalidAnswer) as info:
            normalise_answer(study, answer)
        assert len(str(info.value)) < 300
    assert excerpt(_nested(30_000)) == "a list" and excerpt(10**5000) == "a 16610-bit integer"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * 20_000 + "]" * 20_000, ["nested too deeply"]),
        ('{"fluency": ' + "9" * 5000 + "}", ["number too long", "small whole numbers"]),
        ('{"fluency": ', ["not valid JSON", "line 1"]),
        (" " * 100_000, ["characters, more than"]),
        (None, ["must be a string"]),
    ],
    ids=["bomb", "long-int", "truncated", "too-long", "not-a-string"],
)
def test_answer_json_is_parsed_strictly(text: object, words: list[str]) -> None:
    study = _study("single")
    with pytest.raises(InvalidAnswer) as info:
        parse_answer_json(study, text)
    for word in words:
        assert word in str(info.value)
    full = json.dumps({"fluency": 7, "notes": "\U0001f600" * 4000})  # the longest real answer fits
    assert len(full) <= max_answer_chars(study) and parse_answer_json(study, full)["fluency"] == 7
