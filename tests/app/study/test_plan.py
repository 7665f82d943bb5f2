"""Per-participant plans: deterministic, complete, counterbalanced, blind; item ids resist tampering."""

from __future__ import annotations

from collections import Counter
from typing import Any

from app.study.file import Study
from app.study.plan import (
    find_item,
    item_id,
    participant_sequence,
    sample_seed,
    study_items,
    study_texts,
)


def _study(kind: str = "single", samples: int = 2) -> Study:
    data: dict[str, Any] = {
        "id": "plan",
        "title": "t",
        "consent": "c",
        "seed": 11,
        "samples_per_prompt": samples,
        "design": {"kind": kind},
        "conditions": [{"id": "x"}, {"id": "y", "tsp": False}, {"id": "z", "pp": False}],
        "prompts": [{"id": "p1", "text": "a"}, {"id": "p2", "text": "b"}],
        "questions": [{"id": "q", "text": "?"}],
    }
    return Study.from_dict(data)


def test_texts_and_items_cover_the_design() -> None:
    single, pairwise = _study(), _study("pairwise")
    assert len(study_texts(single)) == 3 * 2 * 2
    assert len({t.text_id for t in study_texts(single)}) == 12
    assert len(study_items(single)) == 12
    assert len(study_items(pairwise)) == 3 * 2 * 2  # 3 pairs x 2 prompts x 2 samples
    assert {item.conditions for item in study_items(pairwise)} == {("x", "y"), ("x", "z"), ("y", "z")}


def test_conditions_of_a_prompt_share_the_sampler_seed() -> None:
    study = _study()
    seeds = {(t.prompt_id, t.sample): sample_seed(study, t.prompt_id, t.sample) for t in study_texts(study)}
    assert len(set(seeds.values())) == 4  # one per (prompt, sample), whatever the condition
    assert all(0 <= s < 2**63 for s in seeds.values())


def test_sequences_are_deterministic_complete_and_differ_between_participants() -> None:
    study = _study()
    first = participant_sequence(study, "alice")
    assert participant_sequence(study, "alice") == first  # leave and come back: the same order
    assert sorted(first, key=repr) == sorted(study_items(study), key=repr)
    orders = {tuple(participant_sequence(study, f"p{i}")) for i in range(20)}
    assert len(orders) > 15


def test_pairwise_sides_are_counterbalanced() -> None:
    study = _study("pairwise")
    n = len(study_items(study))
    shown_first: Counter[str] = Counter()
    for i in range(200):
        sequence = participant_sequence(study, f"p{i}")
        listed_order = sum(item.conditions in {("x", "y"), ("x", "z"), ("y", "z")} for item in sequence)
        assert listed_order == n // 2  # exactly half the items as listed, half swapped
        shown_first.update(item.conditions[0] for item in sequence)
    # each pair is shown in each order equally often in expectation: x leads in 2 of 3 pairs when listed
    expected_x = 200 * (n // 3) * 2 * 0.5  # x is in 2 pairs (8 items), first half the time
    assert abs(shown_first["x"] - expected_x) < 0.1 * expected_x


def test_item_ids_verify_only_for_their_participant_and_position() -> None:
    study, secret = _study(), b"k" * 32
    sequence = participant_sequence(study, "alice")
    ids = [item_id(secret, study, "alice", item) for item in sequence]
    assert len(set(ids)) == len(ids)
    for position, candidate in enumerate(ids):
        assert find_item(secret, study, "alice", candidate) == position
    assert find_item(secret, study, "bob", ids[0]) is None  # another participant's id
    assert find_item(b"x" * 32, study, "alice", ids[0]) is None  # another study database's secret
    tampered = ids[0][:-1] + ("0" if ids[0][-1] != "0" else "1")
    assert find_item(secret, study, "alice", tampered) is None
    for junk in ("", "zz" * 12, ids[0].upper(), ids[0] + "0", "é" * 24):
        assert find_item(secret, study, "alice", junk) is None
