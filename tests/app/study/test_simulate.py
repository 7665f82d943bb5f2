"""Simulated raters (app/study/simulate.py): word-like, on-topic text scores higher, and a rater answers
every item of its sequence through the store (the page over HTTP: test_ui.py and test_cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.study.simulate import StoreBackend, run_rater, text_quality
from tests.app.study.test_store import make_store


def test_word_like_varied_on_topic_text_scores_higher() -> None:
    prompt = "Describe the lighthouse keeper."
    good_form, good_relevance = text_quality("The lighthouse keeper climbs stairs every night.", prompt)
    loop_form, _ = text_quality("the the the the the the", prompt)
    junk_form, _ = text_quality("<|im_end|> 0x3f ##ing @@ )))", prompt)
    _, off_topic = text_quality("Cats sleep most of the day.", prompt)
    assert 0 <= junk_form < loop_form < good_form <= 1
    assert 0 <= off_topic < good_relevance <= 1
    assert text_quality("", prompt) == (0.0, 0.0)


@pytest.mark.parametrize("kind", ["single", "pairwise"])
def test_a_rater_answers_every_item_and_then_nothing(tmp_path: Path, kind: str) -> None:
    store = make_store(tmp_path / "s.db", kind)
    seen: list[tuple[str, dict[str, Any]]] = []
    count = run_rater(
        store.study, StoreBackend(store), "sim-001", seed=3, on_answer=lambda i, a, r: seen.append((i, a))
    )
    answers = store.answers()
    assert count == len(seen) == len(answers) > 0
    assert [a.item_id for a in answers] == [item for item, _ in seen]
    for _, answer in seen:
        assert set(answer) - {"notes"} == ({"fluency", "preference"} if kind == "pairwise" else {"fluency"})
    assert run_rater(store.study, StoreBackend(store), "sim-001", seed=3) == 0  # nothing left to answer
