"""The study database's rows (app/study/records.py): a text or an answer written in the schema's column
order reads back as the same record."""

from __future__ import annotations

import json
import sqlite3

from app.study.records import SCHEMA, AnswerRecord, TextRecord, answer_from_row, text_from_row, text_values


def _database() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    return db


def test_a_text_row_reads_back_as_its_record() -> None:
    record = TextRecord(
        "a/p1/0", "a", "p1", 0, "Hello there.", "length", 3, 0.25, {"seed": 4, "mode": "plain"}, {"v": "1"}
    )
    db = _database()
    db.execute(
        f"INSERT INTO texts VALUES ({', '.join('?' * 11)})", text_values(record, "2026-01-01T00:00:00")
    )
    (row,) = db.execute("SELECT * FROM texts").fetchall()
    assert text_from_row(row) == TextRecord(**{**record.__dict__, "created_at": "2026-01-01T00:00:00"})
    stamped = TextRecord(**{**record.__dict__, "created_at": "earlier"})
    assert text_values(stamped, "later")[-1] == "earlier"  # a record's own time is kept


def test_an_answer_row_reads_back_as_its_record() -> None:
    record = AnswerRecord("x1", "p-01", "item-3", 2, "p1", 1, ("a", "b"), {"fluency": {"A": 4}}, "now")
    db = _database()
    db.execute("INSERT INTO participants VALUES (?, ?)", ("p-01", "now"))
    values = (*(getattr(record, f) for f in ("answer_id", "participant_id", "item_id", "position")),
              record.prompt_id, record.sample, json.dumps(list(record.conditions)), json.dumps(record.answer),
              record.submitted_at)  # fmt: skip
    db.execute(f"INSERT INTO answers VALUES ({', '.join('?' * 9)})", values)
    (row,) = db.execute("SELECT * FROM answers").fetchall()
    assert answer_from_row(row) == record
