"""The study database (SQLite): the study definition, its generated texts, participants and answers.

Guarantees, and how they are kept:

- No committed answer is lost if the server is killed: WAL journal, `PRAGMA synchronous=FULL`, and one
  `BEGIN IMMEDIATE ... COMMIT` per answer; `submit` returns only after the commit.
- Double submits are idempotent: UNIQUE(participant, item) and UNIQUE(participant, position); the same
  answer again returns the stored one (`duplicate=True`), a different one raises `AnswerConflict`.
- Answers come in order: an item after the participant's next unanswered one raises `OutOfOrderAnswer`.
- Item ids are HMACs over the participant's assignment (`app.study.plan`): a tampered id raises
  `TamperedItem`. Every check runs inside the write transaction, and a rejected answer writes nothing.
- The schema is versioned (`schema_version` table); a database of another version or made from another
  study file is refused with a message saying what to do.

Every call opens its own short-lived connection, so the store is safe to share between threads and
processes (Gradio workers, the generator and the exporter can run at the same time).

The tables and the records read from them are in `app.study.records`.
"""

from __future__ import annotations

import hmac
import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.study.answers import check_participant, excerpt, normalise_answer
from app.study.file import Study, canonical_json, study_hash
from app.study.plan import ItemKey, TextKey, find_item, item_id, participant_sequence, study_texts
from app.study.records import (
    SCHEMA,
    SCHEMA_VERSION,
    AnswerRecord,
    TextRecord,
    answer_from_row,
    text_from_row,
    text_values,
)
from core.errors import (
    AnswerConflict,
    OutOfOrderAnswer,
    ParticipantError,
    StudyStoreError,
    TamperedItem,
)

BUSY_TIMEOUT_MS = 30_000  # concurrent writers wait for each other this long before "database is locked"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class SubmitResult:
    answer_id: str
    position: int  # 0-based
    duplicate: bool  # the same answer had already been committed; nothing was written
    answered: int  # answers committed for this participant
    total: int


class StudyStore:
    """One study database file. Create it with `StudyStore.create`, open it with `StudyStore.open`."""

    def __init__(self, path: Path, study: Study, secret: bytes) -> None:
        self.path = path
        self.study = study
        self.secret = secret  # keys the item-id HMACs; never leaves the server
        self._sequences: dict[str, list[ItemKey]] = {}

    # --- opening ---------------------------------------------------------------------------------

    @staticmethod
    def _raw_connect(path: Path) -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = self._raw_connect(self.path)
        try:
            yield connection
        finally:
            connection.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE (takes the write lock first), COMMIT or ROLLBACK."""
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    @classmethod
    def create(cls, path: str | Path, study: Study) -> StudyStore:
        """Create the database for `study`, or open it if it was already created from the same definition.

        Raises:
            StudyStoreError: the file holds another study (or another version of this one).
        """
        path = Path(path)
        if path.exists():
            store = cls.open(path)
            if study_hash(store.study) != study_hash(study):
                raise StudyStoreError(
                    f"{path} was created from a different study definition ({store.study.id!r}); "
                    "use a new --db path for a changed study (answers must stay tied to what raters saw)"
                )
            return store
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(32)
        connection = cls._raw_connect(path)
        try:
            connection.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            meta = {
                "study_json": canonical_json(study.to_dict()),
                "study_hash": study_hash(study),
                "secret": secret.hex(),
                "created_at": _now(),
            }
            connection.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            connection.execute("COMMIT")
        finally:
            connection.close()
        return cls(path, study, secret)

    @classmethod
    def open(cls, path: str | Path) -> StudyStore:
        """Open an existing study database.

        Raises:
            StudyStoreError: no such file, not a study database, or another schema version.
        """
        path = Path(path)
        if not path.is_file():
            raise StudyStoreError(
                f"no study database at {path}; create it with `python -m app.study.cli init`"
            )
        try:
            connection = cls._raw_connect(path)
            try:
                version = connection.execute("SELECT version FROM schema_version").fetchone()
                meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
            finally:
                connection.close()
        except sqlite3.DatabaseError as exc:
            raise StudyStoreError(f"{path} is not a study database ({exc}); check the --db path") from exc
        if version is None or version[0] != SCHEMA_VERSION:
            found = None if version is None else version[0]
            raise StudyStoreError(
                f"{path} has schema version {found}, this app reads version {SCHEMA_VERSION}; "
                "export it with the app version that created it"
            )
        study = Study.from_dict(json.loads(meta["study_json"]))
        return cls(path, study, bytes.fromhex(meta["secret"]))

    # --- texts -----------------------------------------------------------------------------------

    def put_text(self, record: TextRecord) -> None:
        """Commit one generated text (its own transaction; an existing text is kept, never replaced)."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO texts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                text_values(record, _now()),
            )

    def texts(self) -> dict[str, TextRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM texts ORDER BY rowid").fetchall()
        return {row[0]: text_from_row(row) for row in rows}

    def missing_texts(self) -> list[TextKey]:
        """Texts the study needs that have not been generated yet, in generation order."""
        with self._connect() as db:
            present = {row[0] for row in db.execute("SELECT text_id FROM texts")}
        return [key for key in study_texts(self.study) if key.text_id not in present]

    # --- participants ----------------------------------------------------------------------------

    def sequence(self, participant_id: str) -> list[ItemKey]:
        if participant_id not in self._sequences:
            self._sequences[participant_id] = participant_sequence(self.study, participant_id)
        return self._sequences[participant_id]

    def register(self, participant_id: str) -> int:
        """Record consent (idempotent) and return how many items this participant has answered.

        Raises:
            ParticipantError: a malformed participant id, or one not on the study's invitation list.
            StudyStoreError: texts are still missing (the study cannot be served yet).
        """
        check_participant(self.study, participant_id)
        missing = self.missing_texts()
        if missing:
            raise StudyStoreError(
                f"{len(missing)} of the study's texts are not generated yet; run "
                "`python -m app.study.cli generate` before serving the study"
            )
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO participants VALUES (?, ?)", (participant_id, _now()))
            return int(
                db.execute(
                    "SELECT COUNT(*) FROM answers WHERE participant_id = ?", (participant_id,)
                ).fetchone()[0]
            )

    def answered(self, participant_id: str) -> int:
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM answers WHERE participant_id = ?", (participant_id,)
            ).fetchone()
        return int(row[0])

    def _check_consented(self, db: sqlite3.Connection, participant_id: str) -> None:
        check_participant(self.study, participant_id)
        if (
            db.execute("SELECT 1 FROM participants WHERE participant_id = ?", (participant_id,)).fetchone()
            is None
        ):
            raise ParticipantError(
                f"participant {participant_id!r} has not started the study; agree to the consent text first"
            )

    def current_item(self, participant_id: str) -> dict[str, Any]:
        """The participant's next item as the page shows it (no condition ids), or {"done": True, ...}.

        Raises:
            ParticipantError: a malformed or uninvited id, or no consent recorded.
        """
        with self._connect() as db:
            self._check_consented(db, participant_id)  # before `sequence`, which caches per id
            sequence = self.sequence(participant_id)
            answered = int(
                db.execute(
                    "SELECT COUNT(*) FROM answers WHERE participant_id = ?", (participant_id,)
                ).fetchone()[0]
            )
            if answered >= len(sequence):
                return {"done": True, "position": len(sequence), "total": len(sequence)}
            item = sequence[answered]
            texts = {}
            for key in item.texts():
                row = db.execute("SELECT text FROM texts WHERE text_id = ?", (key.text_id,)).fetchone()
                if row is None:
                    raise StudyStoreError(
                        f"text {key.text_id} is missing; run `python -m app.study.cli generate`"
                    )
                texts[key.text_id] = row[0]
        pairwise = len(item.conditions) == 2
        return {
            "done": False,
            "item_id": item_id(self.secret, self.study, participant_id, item),
            "position": answered + 1,  # 1-based for people
            "total": len(sequence),
            "prompt": self.study.prompt(item.prompt_id).text,
            "texts": [texts[key.text_id] for key in item.texts()],
            "labels": ["Reply A", "Reply B"] if pairwise else ["Reply"],
        }

    def submit(self, participant_id: str, candidate_item_id: str, raw_answer: Any) -> SubmitResult:
        """Commit one answer in one transaction (see the module docstring for the checks).

        Raises:
            AnswerError: ParticipantError, TamperedItem, OutOfOrderAnswer, AnswerConflict or
                InvalidAnswer; nothing is written.
        """
        with self._connect() as db:
            self._check_consented(db, participant_id)  # first: an unknown participant learns nothing more
        answer = normalise_answer(self.study, raw_answer)
        position = find_item(self.secret, self.study, participant_id, candidate_item_id)
        if position is None:
            raise TamperedItem(
                f"item id {excerpt(candidate_item_id)} is not part of participant "
                f"{participant_id!r}'s study; "
                "reload the page to get your current item"
            )
        item = self.sequence(participant_id)[position]
        answer_id = hmac.new(
            self.secret, f"answer\x00{participant_id}\x00{candidate_item_id}".encode(), "sha256"
        )
        answer_key = answer_id.hexdigest()[:24]
        payload = canonical_json(answer)
        total = len(self.sequence(participant_id))
        with self._write() as db:
            self._check_consented(db, participant_id)
            existing = db.execute(
                "SELECT answer_json FROM answers WHERE participant_id = ? AND item_id = ?",
                (participant_id, candidate_item_id),
            ).fetchone()
            answered = int(
                db.execute(
                    "SELECT COUNT(*) FROM answers WHERE participant_id = ?", (participant_id,)
                ).fetchone()[0]
            )
            if existing is not None:
                if existing[0] != payload:
                    raise AnswerConflict(
                        f"item {position + 1} was already answered differently; answers are final, "
                        "continue with the next item"
                    )
                return SubmitResult(answer_key, position, True, answered, total)
            if position != answered:
                raise OutOfOrderAnswer(
                    f"item {position + 1} was submitted but item {answered + 1} is next; "
                    "reload the page to continue where you are"
                )
            db.execute(
                "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    answer_key,
                    participant_id,
                    candidate_item_id,
                    position,
                    item.prompt_id,
                    item.sample,
                    json.dumps(list(item.conditions)),
                    payload,
                    _now(),
                ),
            )
        return SubmitResult(answer_key, position, False, answered + 1, total)

    # --- reading back ----------------------------------------------------------------------------

    def answers(self) -> list[AnswerRecord]:
        """Every committed answer, by participant and position."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT answer_id, participant_id, item_id, position, prompt_id, sample, conditions_json, "
                "answer_json, submitted_at FROM answers ORDER BY participant_id, position"
            ).fetchall()
        return [answer_from_row(row) for row in rows]

    def participants(self) -> dict[str, str]:
        """Participant id -> consent time."""
        with self._connect() as db:
            return dict(db.execute("SELECT participant_id, consented_at FROM participants").fetchall())

    def integrity_check(self) -> str:
        with self._connect() as db:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])
