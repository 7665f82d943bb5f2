"""Study files: round trips (dict, JSON, YAML), the shipped demo, and clear errors for bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from app.study.file import Study, load_study, parse_study, save_study, study_hash
from core.errors import StudyFileError, UnknownCondition

DEMO = Path(__file__).resolve().parents[3] / "assets" / "studies" / "demo.json"


def _pairwise() -> dict[str, Any]:
    return {
        "id": "pw",
        "title": "A/B",
        "consent": "ok?",
        "seed": 3,
        "samples_per_prompt": 2,
        "design": {"kind": "pairwise", "pairs": [["b", "a"]], "allow_tie": False},
        "conditions": [
            {"id": "a", "mode": "plain", "temperature": 1.0},
            {"id": "b", "mode": "simulate", "tsp": False, "pp": True, "amp_rounds": 2},
            {"id": "c", "mode": "encrypted", "max_new_tokens": 8},
        ],
        "prompts": [{"id": "p1", "text": "Hi"}],
        "questions": [
            {"id": "fluency", "text": "Fluent?", "points": 7, "low": "no", "high": "yes"},
            {"id": "notes", "kind": "text", "text": "Notes", "required": False},
        ],
    }


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_round_trip_through_dict_and_file(tmp_path: Path, suffix: str) -> None:
    study = Study.from_dict(_pairwise())
    assert Study.from_dict(json.loads(json.dumps(study.to_dict()))) == study
    path = tmp_path / f"study{suffix}"
    save_study(study, path)
    loaded = load_study(path)
    assert loaded == study
    assert study_hash(loaded) == study_hash(study)
    assert loaded.design.pairs == (("b", "a"),)
    assert loaded.condition("c").mode == "encrypted"
    assert loaded.questions[0].kind == "likert" and loaded.questions[1].required is False


def test_the_shipped_demo_study_is_valid() -> None:
    study = load_study(DEMO)
    assert len(study.conditions) == 2 and len(study.prompts) == 3
    assert {(c.tsp, c.pp) for c in study.conditions} == {(False, False), (True, True)}
    assert [q.id for q in study.questions] == ["fluency", "coherence", "relevance", "comments"]


def test_the_hash_changes_with_any_field() -> None:
    data = _pairwise()
    changed = copy.deepcopy(data)
    changed["conditions"][1]["amp_rounds"] = 3
    assert study_hash(Study.from_dict(data)) != study_hash(Study.from_dict(changed))


def test_an_invitation_list_round_trips_and_leaves_open_studies_hashes_alone(tmp_path: Path) -> None:
    # the demo's hash before `invited` existed: databases made from it must still open (StudyStore.create)
    assert study_hash(load_study(DEMO)) == "6cda8dadf360bf83c9766d8295190676832c7a482d5a3b1bd7c6f609497a584a"
    assert "invited" not in Study.from_dict(_pairwise()).to_dict()
    invited = _pairwise() | {"invited": ["p-01", "p_02"]}
    study = Study.from_dict(invited)
    assert study.invited == ("p-01", "p_02") and study.to_dict()["invited"] == ["p-01", "p_02"]
    assert Study.from_dict(study.to_dict()) == study
    save_study(study, tmp_path / "s.yaml")
    assert load_study(tmp_path / "s.yaml") == study
    assert study_hash(study) != study_hash(Study.from_dict(_pairwise()))
    assert study_hash(study) != study_hash(Study.from_dict(_pairwise() | {"invited": ["p-01"]}))


def _edit(path: str, value: Any) -> dict[str, Any]:
    data = _pairwise()
    target: Any = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    if value is KeyError:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "error", "words"),
    [
        ("conditions.0.temprature", 1.0, StudyFileError, ["temprature", "allowed"]),
        ("conditions.0.mode", "fast", StudyFileError, ["conditions[0]", "mode", "plain"]),
        ("conditions.0.temperature", -1, StudyFileError, ["temperature", "between"]),
        ("conditions.1.max_new_tokens", 0, StudyFileError, ["max_new_tokens", "between 1"]),
        ("conditions.1.tsp", "yes", StudyFileError, ["tsp", "true or false"]),
        ("conditions.2.id", "a", StudyFileError, ["duplicate", "a"]),
        ("conditions.2.id", "bad id", StudyFileError, ["letters"]),
        ("conditions.2.id", "c\n", StudyFileError, ["letters"]),  # `$` alone would accept it
        ("prompts.0.id", "p1\n", StudyFileError, ["prompts[0]", "letters"]),
        ("invited", ["p-01", "p 02"], StudyFileError, ["invited[1]", "letters"]),
        ("invited", ["p-01", "p-01\n"], StudyFileError, ["invited[1]", "letters"]),
        ("invited", ["p-01", "p-01"], StudyFileError, ["invited", "duplicate", "p-01"]),
        ("invited", [], StudyFileError, ["non-empty", "remove the key"]),
        ("invited", "p-01", StudyFileError, ["invited", "list"]),
        ("invited", [7], StudyFileError, ["invited[0]"]),
        ("design.pairs", [["a", "zzz"]], UnknownCondition, ["zzz", "not defined"]),
        ("design.pairs", [["a", "a"]], StudyFileError, ["itself"]),
        ("design.kind", "triple", StudyFileError, ["single", "pairwise"]),
        ("questions.0.points", 1, StudyFileError, ["points", "between 2"]),
        ("questions.0.id", "preference", StudyFileError, ["reserved"]),
        ("questions.1.kind", "slider", StudyFileError, ["likert"]),
        ("prompts", [], StudyFileError, ["at least"]),
        ("prompts.0.text", " ", StudyFileError, ["text", "non-empty"]),
        ("consent", KeyError, StudyFileError, ["missing", "consent"]),
        ("samples_per_prompt", 0, StudyFileError, ["samples_per_prompt"]),
        ("format", 2, StudyFileError, ["format"]),
        ("conditions", {"id": "a"}, StudyFileError, ["conditions", "list"]),
    ],
)
def test_malformed_studies_name_the_problem(path: str, value: Any, error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        Study.from_dict(_edit(path, value))
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from {message!r}"


def test_unknown_condition_lookup_lists_the_defined_ones() -> None:
    with pytest.raises(UnknownCondition, match="a, b, c"):
        Study.from_dict(_pairwise()).condition("d")


@pytest.mark.parametrize(
    ("text", "suffix", "words"),
    [
        ('{"id": "x",', ".json", ["not valid JSON", "line 1"]),
        ("[1, 2]", ".json", ["must be an object"]),
        ("id: [unclosed", ".yaml", ["not valid YAML"]),
    ],
)
def test_unparseable_files_are_reported(text: str, suffix: str, words: list[str]) -> None:
    with pytest.raises(StudyFileError) as info:
        parse_study(text, suffix)
    for word in words:
        assert word in str(info.value)


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(StudyFileError, match="cannot read the study file"):
        load_study(tmp_path / "nope.json")
