"""The parts of a study file (app/study/parts.py): each checks its own fields and names the field and the
fix (whole study files: test_file.py)."""

from __future__ import annotations

import pytest

from app.study.parts import Condition, Prompt, Question, StudyDesign, check_bool, check_id, check_int
from core.errors import StudyFileError


@pytest.mark.parametrize("good", ["a", "p-01", "Cond_2.b", "x" * 64])
def test_ids_of_letters_digits_and_marks_pass(good: str) -> None:
    assert check_id(good, "conditions[].id") == good


@pytest.mark.parametrize("bad", ["", "-a", "bad id", "c\n", "x" * 65, 7, None])
def test_other_ids_are_refused_naming_the_field(bad: object) -> None:
    with pytest.raises(StudyFileError, match=r"prompts\[\]\.id must be 1-64 letters"):
        check_id(bad, "prompts[].id")


def test_numbers_and_flags_are_not_taken_for_each_other() -> None:
    assert check_int(3, "points", 2, 11) == 3 and check_bool(False, "tsp") is False
    for value in (True, 3.0, "3", 12):
        with pytest.raises(StudyFileError, match="points must be a whole number between 2 and 11"):
            check_int(value, "points", 2, 11)
    for value in (1, "yes", None):
        with pytest.raises(StudyFileError, match="tsp must be true or false"):
            check_bool(value, "tsp")


def test_a_condition_gives_its_chat_settings_and_refuses_bad_values() -> None:
    condition = Condition("c", mode="encrypted", temperature=0, max_new_tokens=8, tsp=False, amp_rounds=2)
    settings = condition.settings_dict(seed=11)
    assert settings == {
        "mode": "encrypted",
        "temperature": 0.0,
        "max_new_tokens": 8,
        "seed": 11,
        "tsp": False,
        "pp": True,
        "amp_rounds": 2,
        "repetition_penalty": float(condition.repetition_penalty),
    }
    assert isinstance(settings["temperature"], float)
    for change, words in (
        ({"mode": "fast"}, "mode must be one of plain, simulate, encrypted"),
        ({"temperature": float("nan")}, "temperature must be a number between 0"),
        ({"temperature": True}, "temperature must be a number between 0"),
        ({"amp_rounds": 0}, "amp_rounds must be a whole number"),
        ({"repetition_penalty": 0.0}, "condition 'c'"),
    ):
        with pytest.raises(StudyFileError, match=words):
            Condition("c", **change)  # type: ignore[arg-type]


def test_prompts_questions_and_designs_check_their_fields() -> None:
    with pytest.raises(StudyFileError, match="prompt 'p': text must be a non-empty string"):
        Prompt("p", "  ")
    with pytest.raises(StudyFileError, match="reserved for the pairwise choice"):
        Question("preference", "Which?")
    with pytest.raises(StudyFileError, match="kind must be one of likert, text"):
        Question("q", "How?", kind="slider")
    assert Question("notes", "Notes", kind="text", required=False).points == 5
    with pytest.raises(StudyFileError, match="compares 'a' with itself"):
        StudyDesign("pairwise", pairs=(("a", "a"),))
    with pytest.raises(StudyFileError, match='only used with "kind": "pairwise"'):
        StudyDesign("single", pairs=(("a", "b"),))
    assert StudyDesign("pairwise", pairs=(("a", "b"),)).allow_tie
