"""Tests for core/progress.py: the one progress record and its line."""

from __future__ import annotations

import dataclasses

import pytest

from core.progress import Progress


def test_a_count_reads_as_stage_done_of_total_with_its_note() -> None:
    assert Progress("knn", 3, 10).line() == "knn 3/10"
    assert Progress("texts", 2, 5, "sim/hi/0, 3 tokens").line() == "texts 2/5: sim/hi/0, 3 tokens"


def test_a_note_has_no_count() -> None:
    event = Progress("model", note="converting the GGUF file")
    assert (event.done, event.total) == (0, 0)
    assert event.line() == "model: converting the GGUF file"


def test_a_report_cannot_be_changed_after_it_is_sent() -> None:
    event = Progress("layers", 1, 30)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.done = 2  # type: ignore[misc]
    assert event == Progress("layers", 1, 30) and event != Progress("layers", 2, 30)
