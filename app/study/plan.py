"""What each participant sees, in which order: items, blind randomisation, counterbalancing, item ids.

Everything here is a pure function of the study (its seed) and the participant id, so a participant who
leaves and comes back gets the same sequence, and the server can re-derive any participant's assignment
to check a submitted item id without storing it.

- texts: one per (condition, prompt, sample); the sampler seed depends on (study seed, prompt, sample)
  only, so every condition of one prompt and sample uses the same stream of uniforms r (paired design).
- single design: one item per text; pairwise design: one item per (pair, prompt, sample).
- order: shuffled per participant (`random.Random` seeded with SHA-256(study seed, participant id)).
- pairwise sides: within a participant exactly half the items (rounded) show the pair's first condition
  as A; which half is random per participant, so across participants each side is shown first equally
  often in expectation.
- item ids: HMAC-SHA256(study secret, participant, item) truncated to 96 bits; a tampered, guessed or
  another participant's id fails verification.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from dataclasses import dataclass

from app.study.file import Study

ITEM_ID_HEX = 24  # 96 bits: not guessable, short enough for URLs and logs
ITEM_ID_PATTERN = re.compile(f"[0-9a-f]{{{ITEM_ID_HEX}}}")  # fullmatch: `$` would allow a final "\n"


@dataclass(frozen=True)
class TextKey:
    """One generated text of the study."""

    condition_id: str
    prompt_id: str
    sample: int  # 0-based

    @property
    def text_id(self) -> str:
        return f"{self.condition_id}/{self.prompt_id}/{self.sample}"


@dataclass(frozen=True)
class ItemKey:
    """One item as shown to a participant (never sent to the page: it names the conditions)."""

    prompt_id: str
    sample: int
    conditions: tuple[str, ...]  # single: (condition,); pairwise: (shown as A, shown as B)

    def texts(self) -> tuple[TextKey, ...]:
        return tuple(TextKey(c, self.prompt_id, self.sample) for c in self.conditions)

    def canonical(self) -> str:
        """A stable name independent of the A/B sides (the unique item of the study)."""
        return f"{'|'.join(sorted(self.conditions))}/{self.prompt_id}/{self.sample}"


def sample_seed(study: Study, prompt_id: str, sample: int) -> int:
    """The sampler seed of every condition's text for this prompt and sample (63-bit)."""
    digest = hashlib.sha256(f"{study.seed}:{prompt_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def study_texts(study: Study) -> list[TextKey]:
    """Every text the study needs, in generation order (prompt-major, so early stops cover all conditions)."""
    return [
        TextKey(condition.id, prompt.id, sample)
        for prompt in study.prompts
        for sample in range(study.samples_per_prompt)
        for condition in study.conditions
    ]


def study_items(study: Study) -> list[ItemKey]:
    """The study's items in canonical order (pairwise: the pair as listed, before side assignment)."""
    groups: list[tuple[str, ...]]
    if study.design.kind == "pairwise":
        groups = [tuple(pair) for pair in study.pairs()]
    else:
        groups = [(c.id,) for c in study.conditions]
    return [
        ItemKey(prompt.id, sample, group)
        for prompt in study.prompts
        for sample in range(study.samples_per_prompt)
        for group in groups
    ]


def participant_rng(study: Study, participant_id: str) -> random.Random:
    seed = hashlib.sha256(f"{study.seed}:{study.id}:{participant_id}".encode()).digest()
    return random.Random(int.from_bytes(seed, "big"))


def participant_sequence(study: Study, participant_id: str) -> list[ItemKey]:
    """This participant's items in presentation order, with pairwise sides assigned."""
    rng = participant_rng(study, participant_id)
    items = study_items(study)
    rng.shuffle(items)
    if study.design.kind != "pairwise":
        return items
    swaps = [i % 2 == 1 for i in range(len(items))]  # half swapped, half as listed
    rng.shuffle(swaps)
    return [
        ItemKey(item.prompt_id, item.sample, item.conditions[::-1] if swap else item.conditions)
        for item, swap in zip(items, swaps, strict=True)
    ]


def item_id(secret: bytes, study: Study, participant_id: str, item: ItemKey) -> str:
    """The opaque id the page uses for this participant's item (HMAC over the assignment)."""
    message = f"{study.id}\x00{participant_id}\x00{item.canonical()}\x00{'|'.join(item.conditions)}"
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()[:ITEM_ID_HEX]


def find_item(secret: bytes, study: Study, participant_id: str, candidate: str) -> int | None:
    """The 0-based position of `candidate` in the participant's sequence, or None if it is not theirs."""
    if not isinstance(candidate, str) or not ITEM_ID_PATTERN.fullmatch(candidate):
        return None
    found = None
    for position, item in enumerate(participant_sequence(study, participant_id)):
        if hmac.compare_digest(item_id(secret, study, participant_id, item), candidate):
            found = position
    return found
