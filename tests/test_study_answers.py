"""Answer validation (pure): canonical forms, optional questions, pairwise shape, participant ids."""

from __future__ import annotations

import pytest

from app.study_answers import check_participant_id, normalise_answer
from app.study_file import Study
from model.errors import InvalidAnswer, ParticipantError


def _study(kind: str, allow_tie: bool = True) -> Study:
    return Study.from_dict(
        {
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


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "é", None, 7, "../etc"])
def test_participant_ids_are_checked(bad: object) -> None:
    with pytest.raises(ParticipantError, match="invitation link"):
        check_participant_id(bad)
    assert check_participant_id("p-01_X") == "p-01_X"
