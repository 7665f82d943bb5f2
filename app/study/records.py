"""The rows of the study database: its schema, and the records written to and read from its tables.

`app.study.store` runs the transactions; this module says what a `texts` or `answers` row holds and
converts between rows and the frozen records the rest of the study wing uses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.study.file import canonical_json

SCHEMA_VERSION = 1  # bump when a table changes; `StudyStore.open` refuses a database of another version

SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE texts (
    text_id TEXT PRIMARY KEY,
    condition_id TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    sample INTEGER NOT NULL,
    text TEXT NOT NULL,
    finish TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    settings_json TEXT NOT NULL,
    provenance_json TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE participants (participant_id TEXT PRIMARY KEY, consented_at TEXT NOT NULL);
CREATE TABLE answers (
    answer_id TEXT PRIMARY KEY,
    participant_id TEXT NOT NULL REFERENCES participants(participant_id),
    item_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    prompt_id TEXT NOT NULL,
    sample INTEGER NOT NULL,
    conditions_json TEXT NOT NULL,
    answer_json TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    UNIQUE (participant_id, item_id),
    UNIQUE (participant_id, position)
);
"""


@dataclass(frozen=True)
class TextRecord:
    """One generated text with its full provenance."""

    text_id: str  # "condition/prompt/sample"
    condition_id: str
    prompt_id: str
    sample: int
    text: str
    finish: str  # why generation stopped: eos, length, ...
    tokens: int
    seconds: float
    settings: dict[str, Any]  # the ChatSettings fields, seed included
    provenance: dict[str, Any]  # model and ordering fingerprints, versions, time
    created_at: str = ""


@dataclass(frozen=True)
class AnswerRecord:
    """One committed answer."""

    answer_id: str
    participant_id: str
    item_id: str
    position: int  # 0-based place in the participant's sequence
    prompt_id: str
    sample: int
    conditions: tuple[str, ...]  # as shown: (condition,) or (A, B)
    answer: dict[str, Any]
    submitted_at: str


def text_values(record: TextRecord, created_at: str) -> tuple[Any, ...]:
    """The `texts` row of `record`, in column order; `created_at` stands in for an empty one."""
    return (
        record.text_id,
        record.condition_id,
        record.prompt_id,
        record.sample,
        record.text,
        record.finish,
        record.tokens,
        record.seconds,
        canonical_json(record.settings),
        canonical_json(record.provenance),
        record.created_at or created_at,
    )


def text_from_row(row: Sequence[Any]) -> TextRecord:
    """The record of one `texts` row (every column, in table order)."""
    return TextRecord(
        text_id=row[0],
        condition_id=row[1],
        prompt_id=row[2],
        sample=int(row[3]),
        text=row[4],
        finish=row[5],
        tokens=int(row[6]),
        seconds=float(row[7]),
        settings=json.loads(row[8]),
        provenance=json.loads(row[9]),
        created_at=row[10],
    )


def answer_from_row(row: Sequence[Any]) -> AnswerRecord:
    """The record of one `answers` row (every column, in table order)."""
    r = row
    return AnswerRecord(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6])), json.loads(r[7]), r[8])
