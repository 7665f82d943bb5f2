"""The study database: pragmas and schema version, the answer checks, idempotent double submits, and that a
rejected answer writes nothing."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from app.study.file import Study
from app.study.plan import study_texts
from app.study.records import SCHEMA_VERSION, TextRecord
from app.study.store import StudyStore
from core.errors import (
    AnswerConflict,
    InvalidAnswer,
    OutOfOrderAnswer,
    ParticipantError,
    StudyStoreError,
    TamperedItem,
)


def study_dict(kind: str = "single") -> dict[str, Any]:
    return {
        "id": "store",
        "title": "t",
        "consent": "c",
        "seed": 5,
        "design": {"kind": kind},
        "conditions": [{"id": "a"}, {"id": "b", "tsp": False}],
        "prompts": [{"id": "p1", "text": "one"}, {"id": "p2", "text": "two"}],
        "questions": [
            {"id": "fluency", "text": "Fluent?", "points": 5},
            {"id": "notes", "kind": "text", "text": "Notes", "required": False},
        ],
    }


def make_store(path: Path, kind: str = "single", **extra: Any) -> StudyStore:
    store = StudyStore.create(path, Study.from_dict(study_dict(kind) | extra))
    for key in study_texts(store.study):
        store.put_text(
            TextRecord(
                key.text_id,
                key.condition_id,
                key.prompt_id,
                key.sample,
                f"T:{key.text_id}",
                "length",
                3,
                0.1,
                {},
                {},
            )
        )
    return store


@pytest.fixture
def store(tmp_path: Path) -> StudyStore:
    return make_store(tmp_path / "s.db")


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])


def _nested(depth: int) -> Any:
    value: Any = 3
    for _ in range(depth):
        value = [value]
    return value


def test_database_uses_wal_and_a_versioned_schema(store: StudyStore) -> None:
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    with store._connect() as db:  # every store connection
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_reopening_checks_the_schema_and_the_study(tmp_path: Path, store: StudyStore) -> None:
    assert StudyStore.open(store.path).study == store.study
    assert StudyStore.create(store.path, store.study).secret == store.secret  # init twice: same database
    other = study_dict()
    other["seed"] = 6
    with pytest.raises(StudyStoreError, match="different study definition"):
        StudyStore.create(store.path, Study.from_dict(other))
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StudyStoreError, match="schema version 99"):
        StudyStore.open(store.path)
    with pytest.raises(StudyStoreError, match="no study database"):
        StudyStore.open(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StudyStoreError, match="not a study database"):
        StudyStore.open(tmp_path / "junk.db")


def test_a_study_with_missing_texts_is_not_served(tmp_path: Path) -> None:
    store = StudyStore.create(tmp_path / "s.db", Study.from_dict(study_dict()))
    with pytest.raises(StudyStoreError, match="not generated yet"):
        store.register("p1")


def test_an_id_with_a_trailing_newline_is_not_a_second_participant(store: StudyStore) -> None:
    store.register("abc")
    for variant in ("abc\n", "abc\r\n", "\nabc"):
        with pytest.raises(ParticipantError, match="1-64 letters, digits, '_' or '-'"):
            store.register(variant)
        with pytest.raises(ParticipantError, match="1-64 letters"):
            store.current_item(variant)
    assert store.participants().keys() == {"abc"}


def test_only_invited_participants_take_part(tmp_path: Path) -> None:
    store = make_store(tmp_path / "i.db", invited=["alice", "bob"])
    assert StudyStore.open(store.path).study.invited == ("alice", "bob")
    store.register("alice")
    item = store.current_item("alice")
    store.submit("alice", item["item_id"], {"fluency": 2})
    from app.study.plan import item_id

    mallory_item = item_id(store.secret, store.study, "mallory", store.sequence("mallory")[0])
    for attempt in (
        lambda: store.register("mallory"),
        lambda: store.current_item("mallory"),
        lambda: store.submit("mallory", mallory_item, {"fluency": 2}),
    ):
        with pytest.raises(ParticipantError, match="not on this study's invitation list") as info:
            attempt()
        assert "ask the researcher" in str(info.value)
    assert store.participants().keys() == {"alice"} and _rows(store.path) == 1
    open_store = make_store(tmp_path / "o.db")  # no list: anyone with a well-formed id, as before
    assert open_store.register("mallory") == 0


def test_items_are_blind_and_answers_come_in_order(store: StudyStore) -> None:
    store.register("alice")
    seen = []
    while not (item := store.current_item("alice"))["done"]:
        assert set(item) == {"done", "item_id", "position", "total", "prompt", "texts", "labels"}
        assert not any(c in json.dumps(item) for c in ('"a/', '"b/', "tsp"))  # no condition ids leak
        seen.append(item["texts"][0])
        result = store.submit("alice", item["item_id"], {"fluency": 3})
        assert (result.position, result.duplicate) == (item["position"] - 1, False)
    assert sorted(seen) == sorted(f"T:{k.text_id}" for k in study_texts(store.study))
    assert item == {"done": True, "position": 4, "total": 4}
    assert [a.position for a in store.answers()] == [0, 1, 2, 3]


def test_double_submit_is_idempotent_and_a_changed_answer_is_refused(store: StudyStore) -> None:
    store.register("alice")
    item = store.current_item("alice")
    first = store.submit("alice", item["item_id"], {"fluency": 4, "notes": " hi "})
    again = store.submit(
        "alice", item["item_id"], {"fluency": "4", "notes": "hi"}
    )  # same, as a form sends it
    assert again.duplicate and again.answer_id == first.answer_id and _rows(store.path) == 1
    with pytest.raises(AnswerConflict, match="already answered"):
        store.submit("alice", item["item_id"], {"fluency": 5})
    assert store.answers()[0].answer == {"fluency": 4, "notes": "hi"}


def test_concurrent_double_submits_write_one_row(store: StudyStore) -> None:
    store.register("alice")
    item = store.current_item("alice")
    results: list[bool] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(store.submit("alice", item["item_id"], {"fluency": 2}).duplicate)
        )
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] + [True] * 7
    assert _rows(store.path) == 1


@pytest.mark.parametrize(
    ("who", "which", "answer", "error", "words"),
    [
        ("alice", "tampered", {"fluency": 3}, TamperedItem, ["not part of"]),
        ("alice", "bob's", {"fluency": 3}, TamperedItem, ["not part of"]),
        ("alice", "second", {"fluency": 3}, OutOfOrderAnswer, ["item 2", "item 1 is next"]),
        ("alice", "first", {"fluency": 6}, InvalidAnswer, ["fluency", "1 to 5"]),
        ("alice", "first", {"fluency": None}, InvalidAnswer, ["required"]),
        ("alice", "first", {"fluency": 3, "color": "red"}, InvalidAnswer, ["unknown question", "color"]),
        ("alice", "first", {"fluency": True}, InvalidAnswer, ["fluency"]),
        ("alice", "first", {"fluency": 3, "notes": "x" * 5000}, InvalidAnswer, ["at most"]),
        ("alice", "first", [3], InvalidAnswer, ["object"]),
        ("alice", "first", {"fluency": "²"}, InvalidAnswer, ["fluency", "digits 0-9"]),
        ("alice", "first", {"fluency": "①"}, InvalidAnswer, ["fluency", "digits 0-9"]),
        ("alice", "first", {"fluency": "1" * 5000}, InvalidAnswer, ["fluency", "digits 0-9"]),
        ("alice", "first", {"fluency": 10**5000}, InvalidAnswer, ["fluency", "bit integer"]),
        ("alice", "first", {"fluency": 3.0}, InvalidAnswer, ["fluency", "not 3.0"]),
        ("alice", "first", {"fluency": _nested(30_000)}, InvalidAnswer, ["fluency", "a list"]),
        ("alice", "first", _nested(30_000), InvalidAnswer, ["object"]),
        ("alice", "first", {"fluency": 3, "notes": "\ud800"}, InvalidAnswer, ["unpaired surrogate"]),
        ("alice", "first", {"fluency": 3, "notes": "a\x00b"}, InvalidAnswer, ["control characters"]),
        ("alice", "first\n", {"fluency": 3}, TamperedItem, ["not part of"]),
        ("alice", "huge", {"fluency": 3}, TamperedItem, ["not part of", "bit integer"]),
        ("alice", "nested", {"fluency": 3}, TamperedItem, ["not part of", "a list"]),
        ("alice\n", "first", {"fluency": 3}, ParticipantError, ["participant id", "1-64"]),
        ("bob", "first", {"fluency": 3}, TamperedItem, ["not part of"]),  # alice's item
        ("dave", "dave's", {"fluency": 3}, ParticipantError, ["consent"]),
        ("bad id!", "first", {"fluency": 3}, ParticipantError, ["participant id"]),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else v if isinstance(v, str) else type(v).__name__,
)
def test_bad_submissions_are_refused_and_write_nothing(
    store: StudyStore, who: str, which: str, answer: Any, error: type, words: list[str]
) -> None:
    store.register("alice")
    store.register("bob")
    first = store.current_item("alice")["item_id"]
    from app.study.plan import item_id

    ids: dict[str, Any] = {
        "first": first,
        "first\n": first + "\n",
        "huge": 10**5000,
        "nested": _nested(30_000),
        "second": item_id(store.secret, store.study, "alice", store.sequence("alice")[1]),
        "tampered": first[:-2] + ("00" if first[-2:] != "00" else "11"),
        "bob's": store.current_item("bob")["item_id"],
        "dave's": item_id(store.secret, store.study, "dave", store.sequence("dave")[0]),
    }
    with pytest.raises(error) as info:
        store.submit(who, ids[which], answer)
    for word in words:
        assert word in str(info.value)
    assert _rows(store.path) == 0
    assert store.integrity_check() == "ok"


def test_pairwise_answers_need_both_sides_and_a_choice(tmp_path: Path) -> None:
    store = make_store(tmp_path / "p.db", "pairwise")
    store.register("alice")
    item = store.current_item("alice")
    assert item["labels"] == ["Reply A", "Reply B"] and len(item["texts"]) == 2
    with pytest.raises(InvalidAnswer, match="preference"):
        store.submit("alice", item["item_id"], {"fluency": {"A": 2, "B": 3}})
    with pytest.raises(InvalidAnswer, match="each reply"):
        store.submit("alice", item["item_id"], {"preference": "A", "fluency": {"A": 2}})
    store.submit("alice", item["item_id"], {"preference": "tie", "fluency": {"A": 2, "B": "3"}})
    (answer,) = store.answers()
    assert answer.answer == {"preference": "tie", "fluency": {"A": 2, "B": 3}}
    assert len(answer.conditions) == 2 and set(answer.conditions) == {"a", "b"}
