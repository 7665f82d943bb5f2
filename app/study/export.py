"""The long-format export of a study: every answer joined with the provenance of the text(s) it rated.

`export_rows` gives one row per (answer, question, side) with the `CSV_COLUMNS`; written with
`app.tables.write_csv(path, rows, CSV_COLUMNS)`, the CSV is the analysis input, so anyone can redo the
numbers elsewhere (`app.study.report` computes them from the same rows).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.study.file import Study
from app.study.records import AnswerRecord, TextRecord

Row = dict[str, Any]

CSV_COLUMNS = (
    "study_id",
    "participant_id",
    "answer_id",
    "item_id",
    "position",
    "submitted_at",
    "design",
    "question",
    "question_kind",
    "side",
    "condition_id",
    "other_condition_id",
    "prompt_id",
    "sample",
    "value",
    "text_id",
    "mode",
    "temperature",
    "max_new_tokens",
    "tsp",
    "pp",
    "amp_rounds",
    "seed",
    "finish",
    "tokens",
    "model_name",
    "model_sha256",
    "embedding_fingerprint",
    "order_id",
    "generated_at",
)


def _text_columns(text: TextRecord | None) -> Row:
    if text is None:
        return {}
    settings, provenance = text.settings, text.provenance
    return {
        "text_id": text.text_id,
        **{key: settings.get(key, "") for key in ("mode", "temperature", "max_new_tokens", "tsp", "pp")},
        "amp_rounds": settings.get("amp_rounds", ""),
        "seed": settings.get("seed", ""),
        "finish": text.finish,
        "tokens": text.tokens,
        "model_name": provenance.get("model", {}).get("name", ""),
        "model_sha256": provenance.get("model_sha256", ""),
        "embedding_fingerprint": provenance.get("embedding_fingerprint", ""),
        "order_id": provenance.get("order_id", ""),
        "generated_at": text.created_at,
    }


def export_rows(study: Study, answers: Iterable[AnswerRecord], texts: dict[str, TextRecord]) -> list[Row]:
    """Long format: one row per (answer, question, side), joined with the rated text's provenance.

    Likert and text answers give one row per text (side "" in the single design, "A"/"B" for each reply
    of a pair; pairwise free text is about the pair: side "", no text columns). The pairwise choice gives
    one row per side with question "preference" and value 1 (chosen), 0 (not chosen) or 0.5 (tie).
    """
    rows: list[Row] = []
    for answer in answers:
        rows += _answer_rows(study, answer, texts)
    return rows


def _answer_rows(study: Study, answer: AnswerRecord, texts: dict[str, TextRecord]) -> list[Row]:
    pair = len(answer.conditions) == 2
    sides = ("A", "B") if pair else ("",)
    base: Row = {
        **{c: "" for c in CSV_COLUMNS},
        "study_id": study.id,
        "participant_id": answer.participant_id,
        "answer_id": answer.answer_id,
        "item_id": answer.item_id,
        "position": answer.position,
        "submitted_at": answer.submitted_at,
        "design": study.design.kind,
        "prompt_id": answer.prompt_id,
        "sample": answer.sample,
    }

    def row(question: str, kind: str, index: int, value: Any, with_text: bool = True) -> Row:
        text = texts.get(f"{answer.conditions[index]}/{answer.prompt_id}/{answer.sample}")
        return {
            **base,
            "question": question,
            "question_kind": kind,
            "side": sides[index] if with_text else "",
            "condition_id": answer.conditions[index],
            "other_condition_id": answer.conditions[1 - index] if pair else "",
            "value": value,
            **(_text_columns(text) if with_text else {}),
        }

    rows: list[Row] = []
    choice = answer.answer.get("preference")
    if choice is not None:
        for index, side in enumerate(sides):
            rows.append(row("preference", "choice", index, 0.5 if choice == "tie" else int(choice == side)))
    for question in study.questions:
        value = answer.answer.get(question.id)
        if value is None:
            continue
        if question.kind == "likert":
            for index, side in enumerate(sides):
                rows.append(row(question.id, "likert", index, value[side] if side else value))
        else:
            rows.append(row(question.id, "text", 0, value, with_text=not pair))
    return rows
