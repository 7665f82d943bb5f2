"""The long-format export: a small hand-made study whose export matches what was submitted, and the CSV
round trip (the helpers here also feed tests/app/study/test_report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.study.export import CSV_COLUMNS, export_rows
from app.study.file import Study
from app.study.plan import study_texts
from app.study.records import TextRecord
from app.study.report import condition_means
from app.study.store import StudyStore
from app.tables import read_csv, write_csv


def hand_study(kind: str) -> Study:
    return Study.from_dict(
        {
            "id": "hand",
            "title": "Hand-computed",
            "consent": "c",
            "design": {"kind": kind},
            "conditions": [{"id": "a"}, {"id": "b", "tsp": False}],
            "prompts": [{"id": "p1", "text": "one"}, {"id": "p2", "text": "two"}],
            "questions": [
                {"id": "fluency", "text": "Fluent?"},
                {"id": "coherence", "text": "Coherent?"},
                {"id": "notes", "kind": "text", "text": "Notes", "required": False},
            ],
        }
    )


def hand_store(tmp_path: Path, kind: str) -> StudyStore:
    store = StudyStore.create(tmp_path / f"{kind}.db", hand_study(kind))
    for key in study_texts(store.study):
        provenance = {"model": {"name": "m"}, "model_sha256": "f" * 64, "order_id": "o" * 64}
        settings = {"mode": "simulate", "seed": 9, "tsp": key.condition_id == "a"}
        store.put_text(
            TextRecord(
                key.text_id, key.condition_id, key.prompt_id, 0, "t", "eos", 2, 0.1, settings, provenance
            )
        )
    return store


# (participant, condition, prompt) -> (fluency, coherence)
SINGLE = {
    ("r1", "a", "p1"): (4, 5),
    ("r1", "b", "p1"): (2, 3),
    ("r1", "a", "p2"): (5, 4),
    ("r1", "b", "p2"): (5, 4),  # tie
    ("r2", "a", "p1"): (3, 3),
    ("r2", "b", "p1"): (4, 4),
    ("r2", "a", "p2"): (4, 4),
    ("r2", "b", "p2"): (1, 2),
    ("r3", "a", "p1"): (2, 3),
    ("r3", "b", "p1"): (3, 1),  # 2.5 vs 2.0: a wins
    ("r3", "a", "p2"): (5, 5),
    ("r3", "b", "p2"): (3, 3),
}


def fill_single(store: StudyStore) -> dict[str, dict[str, Any]]:
    submitted: dict[str, dict[str, Any]] = {}
    for participant in ("r1", "r2", "r3"):
        store.register(participant)
        while not (item := store.current_item(participant))["done"]:
            key = store.sequence(participant)[item["position"] - 1]
            fluency, coherence = SINGLE[(participant, key.conditions[0], key.prompt_id)]
            answer = {"fluency": fluency, "coherence": coherence, "notes": f"{participant}:{key.prompt_id}"}
            submitted[store.submit(participant, item["item_id"], answer).answer_id] = answer
    return submitted


def test_export_matches_what_was_submitted(tmp_path: Path) -> None:
    store = hand_store(tmp_path, "single")
    submitted = fill_single(store)
    rows = export_rows(store.study, store.answers(), store.texts())
    assert len(rows) == len(submitted) * 3
    path = tmp_path / "answers.csv"
    assert write_csv(path, rows, CSV_COLUMNS) == len(rows)
    read = read_csv(path)
    assert list(read[0]) == list(CSV_COLUMNS)
    rebuilt: dict[str, dict[str, Any]] = {}
    for row in read:
        value = row["value"] if row["question_kind"] == "text" else int(row["value"])
        rebuilt.setdefault(row["answer_id"], {})[row["question"]] = value
        text = store.texts()[row["text_id"]]
        assert row["condition_id"] == text.condition_id and row["prompt_id"] == text.prompt_id
        assert row["model_sha256"] == "f" * 64 and row["tsp"] == str(row["condition_id"] == "a")
    assert rebuilt == submitted
    # the CSV is a complete analysis input: the same numbers from the file as from memory
    assert condition_means(read) == condition_means(rows)
