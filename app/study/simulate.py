"""Simulated raters: fill a study with answers for demos and tests. They are NOT human judgements.

A simulated rater scores a text by a crude heuristic of the text alone (share of word-like tokens,
share of distinct words, overlap with the prompt's words), adds its own bias and per-answer noise, and
rounds onto the scale. It answers through a backend: the store directly, or the real page's HTTP API
(`HttpBackend`, via gradio_client). Their participant ids start with `sim-` and the report says so.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from app.study.file import Study
from app.study.store import StudyStore

SIMULATED_PREFIX = "sim-"
WORD = re.compile(r"^[A-Za-z][a-z']*[.,!?;:]?$")


def text_quality(text: str, prompt: str = "") -> tuple[float, float]:
    """(form, relevance) in [0, 1]: word-likeness x diversity, and the share of prompt words reused."""
    words = text.split()
    if not words:
        return 0.0, 0.0
    wordlike = sum(bool(WORD.match(w)) for w in words) / len(words)
    distinct = len({w.lower() for w in words}) / len(words)
    form = wordlike * (0.5 + 0.5 * distinct)
    content = {w.lower().strip(".,!?") for w in prompt.split() if len(w) > 3}
    reused = {w.lower().strip(".,!?") for w in words} & content
    relevance = min(1.0, 0.3 * form + len(reused) / max(1, len(content)))
    return form, relevance


def simulated_answer(study: Study, item: dict[str, Any], rng: random.Random, bias: float) -> dict[str, Any]:
    """One simulated rater's answer to an item as served by the page (`StudyStore.current_item`)."""
    pairwise = study.design.kind == "pairwise"
    sides = ("A", "B") if pairwise else ("",)
    qualities = [text_quality(text, item["prompt"]) for text in item["texts"]]
    answer: dict[str, Any] = {}
    means = [0.0 for _ in sides]
    for question in study.questions:
        if question.kind == "text":
            if rng.random() < 0.2:
                answer[question.id] = "(simulated rater) some words do not fit."
            continue
        ratings = {}
        for index, side in enumerate(sides):
            form, relevance = qualities[index]
            score = relevance if question.id == "relevance" else form
            value = 1 + (question.points - 1) * score + bias + rng.gauss(0.0, 0.7)
            ratings[side] = max(1, min(question.points, round(value)))
            means[index] += ratings[side]
        answer[question.id] = ratings if pairwise else ratings[""]
    if pairwise:
        difference = means[0] - means[1] + rng.gauss(0.0, 0.5)
        tie = study.design.allow_tie and abs(difference) < 0.5
        answer["preference"] = "tie" if tie else ("A" if difference > 0 else "B")
    return answer


class Backend(Protocol):
    """Where a simulated rater's answers go: the store, or the page over HTTP."""

    def start(self, participant_id: str) -> dict[str, Any]: ...

    def submit(self, participant_id: str, item_id: str, answer: dict[str, Any]) -> dict[str, Any]: ...


@dataclass
class StoreBackend:
    store: StudyStore

    def start(self, participant_id: str) -> dict[str, Any]:
        self.store.register(participant_id)
        return self.store.current_item(participant_id)

    def submit(self, participant_id: str, item_id: str, answer: dict[str, Any]) -> dict[str, Any]:
        self.store.submit(participant_id, item_id, answer)
        return {"next": self.store.current_item(participant_id)}


@dataclass
class HttpBackend:
    """The real page's API endpoints through gradio_client (one client per rater thread)."""

    url: str
    client: Any = None

    def __post_init__(self) -> None:
        from gradio_client import Client

        self.client = Client(self.url, verbose=False)

    def start(self, participant_id: str) -> dict[str, Any]:
        return dict(self.client.predict(participant_id, True, api_name="/study_start"))

    def submit(self, participant_id: str, item_id: str, answer: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.client.predict(participant_id, item_id, json.dumps(answer), api_name="/study_submit")
        )


def run_rater(
    study: Study,
    backend: Backend,
    participant_id: str,
    seed: int = 0,
    on_answer: Callable[[str, dict[str, Any], dict[str, Any]], None] | None = None,
) -> int:
    """Answer every remaining item as one simulated rater; returns the number of answers submitted.

    `on_answer(item_id, answer, result)` is called after each committed answer (tests record them).
    """
    digest = hashlib.sha256(f"{seed}:{participant_id}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    bias = rng.gauss(0.0, 0.4)
    item = backend.start(participant_id)
    count = 0
    while not item.get("done"):
        answer = simulated_answer(study, item, rng, bias)
        result = backend.submit(participant_id, item["item_id"], answer)
        if on_answer is not None:
            on_answer(item["item_id"], answer, result)
        count += 1
        item = result["next"]
    return count
