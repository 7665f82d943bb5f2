"""The generation pipeline: chat prompt -> prefill -> decode loop with a KV cache -> token stream.

One loop serves every mode. What differs between modes is the `Selector`: given the logits of the
last position and one uniform `r`, it returns the token to *display* and the embedding to *feed back*.
`ExactSelector` (plain mode) feeds back the embedding row of the drawn token; the sampler of DESIGN.md
section 2 (simulate mode) feeds back the mixture embedding `I'^T W`. The loop always continues from
`inputs_embeds`, never from a token id, so both selectors take exactly the same path through the model.

The `r` stream is `numpy.random.default_rng(seed).random()`, one draw per step in every mode, so plain
and simulate runs with the same seed are comparable token for token.

`decode` is the loop itself, over any `ModelSession` and `Selector`: plain and simulate run it on
transformers' KV cache (`DecodeSession`, through `generate`), the evaluation's fixed-length runs on it
with EOS banned, and each process of the encrypted worker runs it on ciphertexts (model/encrypted_rank.py),
where the selector cannot see the token (`Selection.token_id` is None) and the key holder ends the reply.
Each step is handed out *before* the next position is computed, so a consumer that stops after a token
(Stop, or the key holder seeing EOS) never pays for feeding it back.

A `DecodeSession` can continue: a chat keeps it between turns and prefills only the new positions.

References: DESIGN.md sections 2 and 3; transformers' generation loop (KV cache, stop on EOS).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import numpy as np
import torch
from transformers import DynamicCache

from core.errors import InputError
from model.conversation import check_messages, encode_text, template_text
from model.loading import LoadedModel
from model.sampler import probabilities

FinishReason = Literal["eos", "length", "context"]
MAX_NEW_TOKENS_LIMIT = 4096  # a reply cap; longer runs belong in the evaluation commands


@dataclass(frozen=True)
class GenerationSettings:
    """How one reply is generated. Validated on construction, so a bad UI field or CLI flag fails early."""

    max_new_tokens: int = 256  # reply length cap; generation also stops at EOS or a full context window
    temperature: float = 1.0  # softmax temperature (DESIGN.md default 1); 0 means greedy argmax
    seed: int = 0  # seeds the stream of uniforms r, one per step

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise InputError(f"max_new_tokens must be a whole number, got {self.max_new_tokens!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise InputError(
                f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens}"
            )
        if not isinstance(self.temperature, int | float) or not np.isfinite(self.temperature):
            raise InputError(f"temperature must be a finite number, got {self.temperature!r}")
        if not 0.0 <= self.temperature <= 5.0:
            raise InputError(
                f"temperature must be between 0 (greedy) and 5, got {self.temperature}; "
                "1 samples from the model's own distribution"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be a whole number between 0 and 2^63-1, got {self.seed!r}")


@dataclass(frozen=True)
class Selection:
    """What a selector decided for one step."""

    token_id: int | None  # the token shown to the user (post-corrected); None if the selector cannot see it
    embedding: Any = None  # the next input embedding fed back into the model, (d,) ...
    embed: Callable[[], Any] | None = None  # ... or a function computing it, called only if the loop goes on
    payload: Any = None  # what the selector hands the caller with the step (the encrypted worker: I')

    def next_input(self) -> Any:
        return self.embed() if self.embed is not None else self.embedding


class Selector(Protocol):
    """Next-token selection: logits of the last position and one uniform r -> a `Selection`."""

    def select(self, logits: Any, r: float) -> Selection: ...


class ModelSession(Protocol):
    """A model that continues from one input embedding at a time (its KV cache holds the rest)."""

    def step(self, embedding: Any) -> Any:
        """Feed one input embedding; return the next logits."""
        ...


@dataclass(frozen=True)
class Decoded:
    """One step of `decode`: the selection, and whether the reply ends with it."""

    index: int
    selection: Selection
    finish: FinishReason | None
    seconds: float  # wall time of this step: feeding the previous token back, then selecting


def decode(
    session: ModelSession,
    logits: Any,
    selector: Selector,
    budget: int,
    rng: np.random.Generator,
    eos: frozenset[int] = frozenset(),
    should_stop: Callable[[], bool] | None = None,
    length_finish: FinishReason = "length",
    started: float | None = None,
) -> Iterator[Decoded]:
    """The decode loop: up to `budget` selections, each fed back before the next.

    Args:
        session: the model state after the prompt; `logits` are the prompt's last logits.
        rng: the stream of uniforms r, one draw per step.
        eos: token ids that end the reply (empty: the selector cannot see tokens, or EOS is banned).
        should_stop: polled before every step; True ends the stream at once.
        length_finish: the finish reason of the last step when the budget runs out.
        started: when the first step's work began (default: now), for its `seconds`.
    """
    start = time.perf_counter() if started is None else started
    for index in range(budget):
        if should_stop is not None and should_stop():
            return
        choice = selector.select(logits, float(rng.random()))
        finish: FinishReason | None = None
        if choice.token_id is not None and choice.token_id in eos:
            finish = "eos"
        elif index == budget - 1:
            finish = length_finish
        yield Decoded(index, choice, finish, time.perf_counter() - start)
        if finish is not None:
            return
        start = time.perf_counter()
        logits = session.step(choice.next_input())


def inverse_transform(p: np.ndarray, r: float) -> int:
    """The index j with c_{j-1} <= r < c_j for c = cumsum(p): exact inverse-transform sampling."""
    c = np.cumsum(p)
    j = int(
        np.searchsorted(c, r * c[-1], side="right")
    )  # scale r by c[-1] so rounding never runs off the end
    return min(j, len(p) - 1)


class ExactSelector:
    """Plain mode: exact inverse-transform sampling in id order, fed back by the token's embedding row."""

    def __init__(self, embeddings: torch.Tensor, temperature: float) -> None:
        self.embeddings = embeddings  # (V, d)
        self.temperature = temperature

    def select(self, logits: torch.Tensor, r: float) -> Selection:
        if self.temperature == 0.0:
            token = int(torch.argmax(logits))
        else:
            token = inverse_transform(
                probabilities(logits.detach().numpy(), self.temperature, "fp64", False), r
            )
        return Selection(token_id=token, embedding=self.embeddings[token])


@dataclass(frozen=True)
class Step:
    """One generated token, as streamed to the caller."""

    index: int  # 0-based position in the reply
    token_id: int
    finish: FinishReason | None = None  # set on the last event of a reply
    seconds: float = 0.0  # wall time of this step (forward + selection)


def build_prompt(loaded: LoadedModel, messages: Sequence[dict[str, str]], reserve: int = 1) -> list[int]:
    """Apply the chat template and check the prompt fits the context window.

    Args:
        loaded: the model and tokenizer.
        messages: the conversation so far, ending with the user's new message.
        reserve: tokens that must remain free for the reply.

    Raises:
        InputError: no message, an empty last message, or a prompt that does not fit.
    """
    check_messages(messages)
    ids = encode_text(loaded.tokenizer, template_text(loaded.tokenizer, messages))
    window = loaded.context_window
    if len(ids) + reserve > window:
        raise InputError(
            f"The prompt is {len(ids):,} tokens but {loaded.name}'s context window is {window:,} tokens "
            f"(with {reserve} kept for the reply). Shorten the message or clear the history."
        )
    return ids


class DecodeSession:
    """The model side of generation: prefill, then one forward per step from an input embedding.

    It can continue: `prefill` appends positions to the cache, so a chat keeps one session between turns
    and prefills only what is new. `length` counts the positions in the cache.
    """

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.cache = DynamicCache()
        self.length = 0  # tokens in the KV cache

    @torch.inference_mode()
    def prefill(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        """Run new positions through the model; return the logits of the last one, shape (V,)."""
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)  # (1, T)
        positions = torch.arange(self.length, self.length + len(prompt_ids)).reshape(1, -1)
        out = self.loaded.model(
            input_ids=ids, cache=self.cache, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        self.length += len(prompt_ids)
        return cast(torch.Tensor, out.logits[0, -1].float())

    def truncate(self, positions: int) -> None:
        """Keep the first `positions` positions of the cache (a chat state that ends sooner)."""
        if positions < self.length:
            self.cache.crop(positions - self.length)  # transformers 5: a negative count removes that many
            self.length = positions

    @torch.inference_mode()
    def step(self, embedding: torch.Tensor) -> torch.Tensor:
        """Feed one input embedding (d,); return the next logits (V,)."""
        embeds = embedding.to(torch.float32).reshape(1, 1, -1)  # (1, 1, d)
        position = torch.tensor([[self.length]], dtype=torch.long)
        out = self.loaded.model(inputs_embeds=embeds, cache=self.cache, position_ids=position, use_cache=True)
        self.length += 1
        return cast(torch.Tensor, out.logits[0, -1].float())


def generate(
    loaded: LoadedModel,
    prompt_ids: Sequence[int],
    selector: Selector,
    settings: GenerationSettings,
    should_stop: Callable[[], bool] | None = None,
    session: DecodeSession | None = None,
) -> Iterator[Step]:
    """Stream a reply token by token. The last `Step` carries the finish reason.

    Args:
        loaded: the model.
        prompt_ids: the templated prompt (see `build_prompt`), or the new positions of a continued chat.
        selector: plain (`ExactSelector`) or the sampler of the simulate mode.
        settings: length cap and seed (the selector holds the temperature).
        should_stop: polled before every step; True ends the stream at once (no further events).
        session: continue this session (its cache holds the conversation so far); default a new one.
    """
    rng = np.random.default_rng(settings.seed)
    session = session if session is not None else DecodeSession(loaded)
    budget = min(settings.max_new_tokens, loaded.context_window - session.length - len(prompt_ids))
    if budget < 1:
        raise InputError(
            f"The conversation ({session.length + len(prompt_ids):,} tokens) fills {loaded.name}'s context "
            f"window ({loaded.context_window:,}); clear the history to go on."
        )
    started = time.perf_counter()
    logits = session.prefill(prompt_ids)
    reason: FinishReason = "length" if budget == settings.max_new_tokens else "context"
    eos = loaded.eos_token_ids
    for step in decode(session, logits, selector, budget, rng, eos, should_stop, reason, started):
        token = step.selection.token_id
        assert token is not None  # plain and simulate selectors always see the token
        yield Step(index=step.index, token_id=token, finish=step.finish, seconds=step.seconds)
