"""Ahead-of-time generation on the tiny model: provenance, progress, resuming after an interruption gives
the same texts as an uninterrupted run, and a database written by another model is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.chat.service import ChatService, ChatSettings
from app.study.file import Study
from app.study.generate import STAGE, generate_texts
from app.study.plan import sample_seed, study_texts
from app.study.records import TextRecord
from app.study.store import StudyStore
from core.errors import InputError, StudyFileError, StudyStoreError
from core.progress import Progress
from model.loading import LoadedModel

TOKENS = 3


def _study(**condition: Any) -> Study:
    return Study.from_dict(
        {
            "id": "gen",
            "title": "t",
            "consent": "c",
            "seed": 4,
            "samples_per_prompt": 2,
            "conditions": [
                {"id": "plain", "mode": "plain", "max_new_tokens": TOKENS, "temperature": 1.0},
                {"id": "sim", "mode": "simulate", "max_new_tokens": TOKENS, "temperature": 1.0, **condition},
            ],
            "prompts": [{"id": "hi", "text": "Hello"}],
            "questions": [{"id": "q", "text": "?"}],
        }
    )


@pytest.fixture(scope="module")
def service(tiny: LoadedModel) -> ChatService:
    return ChatService.create(tiny)


class Interrupt(Exception):
    pass


def test_generation_resumes_where_it_stopped(tmp_path: Path, service: ChatService) -> None:
    study = _study(tsp=False, pp=True)
    interrupted = StudyStore.create(tmp_path / "a.db", study)
    events: list[Progress] = []

    def stop_at_third_text(event: Progress) -> None:
        events.append(event)
        if event.done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        generate_texts(interrupted, service, stop_at_third_text)
    assert len(interrupted.texts()) == 2  # each text committed as soon as it was generated
    starts = [e for e in events if e.note.endswith(", 0 tokens")]  # the report made before each text
    assert [e.done for e in starts] == [0, 1, 2] and events[0].total == 4
    assert all(e.stage == STAGE for e in events) and starts[0].note == "plain/hi/0, 0 tokens"
    summary = generate_texts(interrupted, service)
    assert (summary.generated, summary.skipped, summary.total) == (2, 2, 4)
    assert generate_texts(interrupted, service).generated == 0  # a finished study: nothing to do

    fresh = StudyStore.create(tmp_path / "b.db", study)
    generate_texts(fresh, service)
    resumed_texts = {k: (t.text, t.tokens, t.settings) for k, t in interrupted.texts().items()}
    assert resumed_texts == {k: (t.text, t.tokens, t.settings) for k, t in fresh.texts().items()}


def test_texts_carry_their_provenance(tmp_path: Path, service: ChatService) -> None:
    store = StudyStore.create(tmp_path / "p.db", _study(tsp=True, pp=False, amp_rounds=2))
    generate_texts(store, service)
    texts = store.texts()
    assert set(texts) == {k.text_id for k in study_texts(store.study)}
    for text in texts.values():
        provenance = text.provenance
        assert provenance["model"]["name"] == service.loaded.name
        assert len(provenance["model_sha256"]) == 64
        assert provenance["embedding_fingerprint"] == service.ordering.fingerprint
        assert text.settings["seed"] == sample_seed(store.study, text.prompt_id, text.sample)
        assert 1 <= text.tokens <= TOKENS and text.finish in ("length", "eos")
    sim = texts["sim/hi/0"]
    assert sim.settings | {"seed": 0} == {
        "mode": "simulate",
        "temperature": 1.0,
        "max_new_tokens": TOKENS,
        "seed": 0,
        "tsp": True,
        "pp": False,
        "amp_rounds": 2,
        "repetition_penalty": 1.0,  # a study samples without the chat's guard unless it asks
        "pad": False,  # (padding hides an encrypted reply's length; it changes no text)
    }
    assert sim.provenance["order_id"] == service.ordering.order_id
    assert texts["plain/hi/1"].provenance["order_id"] == "none"  # plain mode samples exactly, no order
    assert sim.provenance["label"] == "simulate (TSP on, PP off, amp 2)"


def test_another_models_database_is_refused(tmp_path: Path, service: ChatService) -> None:
    store = StudyStore.create(tmp_path / "m.db", _study())
    key = study_texts(store.study)[0]
    other = {"model": {"name": "other"}, "model_sha256": "0" * 64}
    store.put_text(
        TextRecord(key.text_id, key.condition_id, key.prompt_id, key.sample, "x", "eos", 1, 0, {}, other)
    )
    with pytest.raises(StudyStoreError, match="another model"):
        generate_texts(store, service)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amp_rounds", 0),
        ("amp_rounds", 1),
        ("amp_rounds", 12),
        ("amp_rounds", 13),
        ("temperature", 0.0),
        ("temperature", 5.0),
        ("temperature", 5.01),
        ("max_new_tokens", 4096),
        ("max_new_tokens", 4097),
    ],
)
def test_the_study_file_accepts_exactly_what_chat_settings_accepts(field: str, value: Any) -> None:
    try:
        ChatSettings(mode="simulate", **{field: value})
        chat_ok = True
    except InputError:
        chat_ok = False
    try:
        _study(**{field: value})
        file_ok = True
    except StudyFileError:
        file_ok = False
    assert file_ok == chat_ok


@pytest.mark.slow
def test_an_encrypted_condition_matches_simulate_with_the_same_seed(
    tmp_path: Path, service: ChatService
) -> None:
    """About 30 s on the tiny model: keys, a loopback worker, two tokens under CKKS."""
    from app.chat.service import start_local_worker

    study = Study.from_dict(
        {
            "id": "enc",
            "title": "t",
            "consent": "c",
            "conditions": [
                {"id": "sim", "mode": "simulate", "max_new_tokens": 2},
                {"id": "enc", "mode": "encrypted", "max_new_tokens": 2},
            ],
            "prompts": [{"id": "p", "text": "Hi"}],
            "questions": [{"id": "q", "text": "?"}],
        }
    )
    store = StudyStore.create(tmp_path / "e.db", study)
    worker = start_local_worker(service)
    try:
        generate_texts(store, service)
    finally:
        worker.stop()
        service.worker_url = None
    texts = store.texts()
    assert texts["enc/p/0"].provenance["ckks_preset"] == service.preset
    assert texts["enc/p/0"].text == texts["sim/p/0"].text  # tiny model: agreement is exact here
