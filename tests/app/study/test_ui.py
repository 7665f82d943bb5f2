"""The participant page served for real on loopback: 20 concurrent participants over HTTP lose and duplicate
nothing; the page's own handlers (consent, one item at a time, resume); bad submissions over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from gradio_client import Client

from app.study.file import Study
from app.study.plan import item_id, study_texts
from app.study.records import TextRecord
from app.study.simulate import HttpBackend, run_rater
from app.study.store import StudyStore
from app.study.ui import launch_study_page

PARTICIPANTS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _study() -> Study:
    return Study.from_dict(
        {
            "id": "ui",
            "title": "Rate replies (test)",
            "consent": "Consent text for the test.",
            "seed": 8,
            "conditions": [{"id": "secret_cond_a"}, {"id": "secret_cond_b", "tsp": False}],
            "prompts": [{"id": f"p{i}", "text": f"Prompt {i}"} for i in range(3)],
            "questions": [
                {"id": "fluency", "text": "Fluent?"},
                {"id": "relevance", "text": "Relevant?", "points": 7},
                {"id": "comments", "kind": "text", "text": "Comments", "required": False},
            ],
        }
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, StudyStore]]:
    store = StudyStore.create(tmp_path_factory.mktemp("ui") / "study.db", _study())
    for k in study_texts(store.study):
        text = f"Reply number {k.prompt_id} {k.sample} " + (
            "clean words" if k.condition_id.endswith("a") else "x7 q#"
        )
        store.put_text(
            TextRecord(k.text_id, k.condition_id, k.prompt_id, k.sample, text, "eos", 5, 0.1, {}, {})
        )
    port = _free_port()
    page = launch_study_page(store, "127.0.0.1", port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", store
    finally:
        page.close()


def test_page_is_served_with_the_study_title(served: tuple[str, StudyStore]) -> None:
    url, _ = served
    with urllib.request.urlopen(url + "?participant=abc", timeout=30) as response:
        assert response.status == 200
        assert "Rate replies (test)" in response.read().decode()


def test_twenty_concurrent_participants_lose_and_duplicate_nothing(served: tuple[str, StudyStore]) -> None:
    url, store = served
    recorded: dict[str, list[tuple[str, dict[str, Any], str]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(PARTICIPANTS)

    def participant(index: int) -> None:
        pid = f"crowd-{index:02d}"
        mine: list[tuple[str, dict[str, Any], str]] = []
        recorded[pid] = mine
        try:
            backend = HttpBackend(url)
            barrier.wait(timeout=120)

            def on_answer(item_id: str, answer: dict[str, Any], result: dict[str, Any]) -> None:
                assert result["duplicate"] is False
                mine.append((item_id, answer, result["answer_id"]))
                if index % 4 == 0:  # a double click: the same answer again is accepted, not stored twice
                    again = backend.submit(pid, item_id, answer)
                    assert again["duplicate"] is True and again["answer_id"] == result["answer_id"]

            run_rater(store.study, backend, pid, seed=index, on_answer=on_answer)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=participant, args=(i,)) for i in range(PARTICIPANTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors, errors[:3]
    items = len(store.sequence("x"))
    answers = [a for a in store.answers() if a.participant_id.startswith("crowd-")]
    assert len(answers) == PARTICIPANTS * items  # nothing lost, nothing duplicated
    assert len({(a.participant_id, a.item_id) for a in answers}) == len(answers)
    for pid, mine in recorded.items():
        stored = [a for a in answers if a.participant_id == pid]
        assert [a.position for a in stored] == list(range(items))
        assert [(a.item_id, a.answer, a.answer_id) for a in stored] == mine  # exactly what was submitted
    assert store.integrity_check() == "ok"


def _error(call: Any) -> str:
    with pytest.raises(Exception) as info:  # gradio_client's AppError carries the server's message
        call()
    return str(info.value)


def test_bad_submissions_over_http_are_refused(served: tuple[str, StudyStore]) -> None:
    url, store = served
    client = Client(url, verbose=False)
    assert "consent" in _error(lambda: client.predict("hacker", "0" * 24, "{}", api_name="/study_submit"))
    first = client.predict("solo", True, api_name="/study_start")
    assert first["position"] == 1 and "secret_cond" not in json.dumps(first)  # blind
    good = json.dumps({"fluency": 3, "relevance": 6})
    tampered = first["item_id"][:-1] + ("a" if first["item_id"][-1] != "a" else "b")
    assert "not part of" in _error(lambda: client.predict("solo", tampered, good, api_name="/study_submit"))
    later = item_id(store.secret, store.study, "solo", store.sequence("solo")[1])
    assert "is next" in _error(lambda: client.predict("solo", later, good, api_name="/study_submit"))
    assert "1 to 7" in _error(
        lambda: client.predict(
            "solo", first["item_id"], '{"fluency": 3, "relevance": 9}', api_name="/study_submit"
        )
    )
    assert "not valid JSON" in _error(
        lambda: client.predict("solo", first["item_id"], "{", api_name="/study_submit")
    )
    assert not [a for a in store.answers() if a.participant_id == "solo"]  # nothing was written
    done = client.predict("solo", first["item_id"], good, api_name="/study_submit")
    assert done["next"]["position"] == 2 and not done["duplicate"]
    assert "answered differently" in _error(
        lambda: client.predict(
            "solo", first["item_id"], '{"fluency": 1, "relevance": 1}', api_name="/study_submit"
        )
    )


def test_the_page_handlers_consent_rate_and_resume(served: tuple[str, StudyStore]) -> None:
    url, store = served
    client = Client(url, verbose=False)
    refused = client.predict("page-user", False, api_name="/ui_start")
    assert "tick the consent box" in refused[-1]
    shown = client.predict("page-user", True, api_name="/ui_start")
    progress, prompt, reply = shown[0], shown[1], shown[2]
    assert (
        progress.startswith("**Item 1 of 6**") and prompt.startswith("Prompt ") and reply.startswith("Reply")
    )
    # inputs: the (hidden) pairwise choice, fluency, relevance, comments
    missing = client.predict(None, None, None, "", api_name="/ui_submit")
    assert "required" in missing[-1]
    after = client.predict(None, 4, 6, "ok", api_name="/ui_submit")
    assert after[0].startswith("**Item 2 of 6**") and after[-1] == ""
    (answer,) = [a for a in store.answers() if a.participant_id == "page-user"]
    assert answer.answer == {"fluency": 4, "relevance": 6, "comments": "ok"}
    resumed = Client(url, verbose=False).predict("page-user", True, api_name="/ui_start")  # a new browser
    assert resumed[0].startswith("**Item 2 of 6** · 1 answered") and resumed[1:3] != shown[1:3]


@pytest.mark.parametrize(
    ("answer_json", "words"),
    [
        ('{"fluency": "²", "relevance": 3}', ["fluency", "digits 0-9"]),
        ('{"fluency": "①", "relevance": 3}', ["fluency", "digits 0-9"]),
        ('{"fluency": 3, "relevance": ' + "7" * 5000 + "}", ["number too long"]),
        ("[" * 20_000 + "]" * 20_000, ["nested too deeply"]),
        ('{"fluency": 3, "relevance": 3, "comments": "\\ud800"}', ["unpaired surrogate"]),
    ],
    ids=["superscript", "circled", "long-int", "bomb", "surrogate"],
)
def test_hostile_answers_over_http_get_typed_refusals(
    served: tuple[str, StudyStore], answer_json: str, words: list[str]
) -> None:
    url, store = served
    client = Client(url, verbose=False)
    first = client.predict("hostile", True, api_name="/study_start")
    before = len(store.answers())
    message = _error(
        lambda: client.predict("hostile", first["item_id"], answer_json, api_name="/study_submit")
    )
    for word in words:
        assert word in message, message
    assert len(store.answers()) == before  # nothing was written
    assert client.predict("hostile", api_name="/study_item")["item_id"] == first["item_id"]


def test_a_bad_answer_through_the_page_handler_is_shown_not_raised(served: tuple[str, StudyStore]) -> None:
    url, store = served
    client = Client(url, verbose=False)
    shown = client.predict("page-hostile", True, api_name="/ui_start")
    assert shown[0].startswith("**Item 1 of 6**")
    # inputs: the (hidden) pairwise choice, fluency, relevance, comments (a NUL byte is refused)
    refused = client.predict(None, 4, 6, "fine\x00text", api_name="/ui_submit")
    assert refused[-1].startswith("⚠️") and "control characters" in refused[-1]
    assert not [a for a in store.answers() if a.participant_id == "page-hostile"]
    accepted = client.predict(None, 4, 6, "fine text", api_name="/ui_submit")
    assert accepted[0].startswith("**Item 2 of 6**") and accepted[-1] == ""
