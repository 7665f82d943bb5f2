"""Batched generation for the evaluation: B sequences through the model in one forward pass per step.

Each sequence (a `BatchRequest`) has its own prompt, its own stream of uniforms
(`numpy.random.default_rng(seed).random()`, one per step, as in `model.generate`), its own feedback (the
selector's embedding for its row) and its own stop rule (its length, or EOS when EOS is not banned). A
sequence that stops leaves the batch, so the others go on at the smaller size.

The prompts are prefilled one by one, exactly as `model.generate.DecodeSession.prefill` does, and their
caches are stacked left-padded (zeros behind an attention mask), so the first step's logits are the
unbatched ones; later steps differ from B unbatched runs only by the rounding of a batched matrix product
(about 1e-6 on a logit), which changes a token only when r falls that close to a boundary.

The KV cache grows in place inside buffers allocated for the whole run (`PreallocatedLayer`): transformers'
`DynamicCache` concatenates on every step, which at B = 32 and 1,500 tokens copies about a gigabyte per step.

References: DESIGN.md section 3; transformers' batched generation (left padding, attention mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from model.batch_sampler import NOTHING, BatchSelection, BatchSelector
from model.errors import InputError
from model.generate import DecodeSession
from model.loading import LoadedModel
from model.vector_ops import FloatArray

MAX_BATCH = 64
MIN_ROWS = 4  # below 4 rows MKL's matrix product rounds differently; from 4 on each row is batch-invariant
ALWAYS_MASKED = 1  # every row gets at least one padded column, so a batch step always carries its mask
PER_ROW = "he_chat_per_row_sdpa"  # the attention implementation of a batch step (see `per_row_attention`)
NOISE_STREAM = 1  # a request's noise generator is default_rng((seed, NOISE_STREAM)), apart from its r stream


@dataclass(frozen=True)
class BatchRequest:
    """One sequence of a batch: its prompt, the seed of its r stream, and how many tokens at most."""

    prompt_ids: tuple[int, ...]
    seed: int
    length: int

    @property
    def noise_seed(self) -> tuple[int, int]:
        return (self.seed, NOISE_STREAM)


@dataclass
class BatchResult:
    """What one sequence produced, step by step (the diagnostics only in simulate mode)."""

    tokens: list[int] = field(default_factory=list)
    finish: str = ""  # "length" or "eos"
    position: list[int] = field(default_factory=list)  # argmax of I' in sampling order
    exact: list[int] = field(default_factory=list)  # exact draw's position, NOTHING when nothing is drawn
    max_error: list[float] = field(default_factory=list)
    weight_sum: list[float] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)  # nan when nothing is drawn

    def record(self, choice: BatchSelection, row: int) -> None:
        self.tokens.append(int(choice.tokens[row]))
        if choice.position is not None:
            assert choice.exact is not None and choice.max_error is not None
            assert choice.weight_sum is not None and choice.cosine is not None
            self.position.append(int(choice.position[row]))
            self.exact.append(int(choice.exact[row]))
            self.max_error.append(float(choice.max_error[row]))
            self.weight_sum.append(float(choice.weight_sum[row]))
            self.cosine.append(float(choice.cosine[row]))

    @property
    def nothing_drawn(self) -> int:
        return sum(e == NOTHING for e in self.exact)

    @property
    def display_differs(self) -> int:
        return sum(p != e for p, e in zip(self.position, self.exact, strict=True))


def per_row_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of a batch step, one row at a time over that row's own positions, without a mask.

    Each call is then exactly the one an unbatched decode step makes (batch 1, no padding, no mask), so a
    row's attention does not depend on its companions: torch's fused CPU kernel, given the whole padded batch
    and its mask, rounds a row differently depending on the other rows' data (measured: 2e-9 per layer,
    enough to move a token at a near tie). The projections stay batched (MKL rounds each row of a product
    the same way from MIN_ROWS rows on). Calls without a mask (the per-row prefill) go to transformers' SDPA.
    """
    if attention_mask is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    visible = attention_mask[:, 0, -1]  # (B, L) for the one query position: bool, or 0 / -inf additive
    visible = visible if visible.dtype == torch.bool else visible == 0
    starts = visible.to(torch.int8).argmax(dim=1).tolist()  # left padding: the first visible column
    rows = [
        sdpa_attention_forward(
            module, query[b : b + 1], key[b : b + 1, :, s:], value[b : b + 1, :, s:], None, **kwargs
        )[0]
        for b, s in enumerate(starts)
    ]
    return torch.cat(rows), None


AttentionInterface.register(PER_ROW, per_row_attention)
AttentionMaskInterface.register(PER_ROW, sdpa_mask)  # the mask SDPA gets: tells each row's first position


class PreallocatedLayer:
    """One layer's K and V in buffers of the run's full length; `update` writes in place, returns views."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        batch, heads, length, dim = keys.shape
        self.keys_buffer = keys.new_zeros((batch, heads, capacity, dim))
        self.values_buffer = values.new_zeros((batch, heads, capacity, values.shape[-1]))
        self.keys_buffer[:, :, :length] = keys
        self.values_buffer[:, :, :length] = values
        self.length = length

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + keys.shape[-2]
        self.keys_buffer[:, :, self.length : end] = keys
        self.values_buffer[:, :, self.length : end] = values
        self.length = end
        return self.keys_buffer[:, :, :end], self.values_buffer[:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        self.keys_buffer = self.keys_buffer[rows]
        self.values_buffer = self.values_buffer[rows]


class BatchCache(DynamicCache):
    """A `DynamicCache` whose layers are `PreallocatedLayer`s (transformers calls `update` per layer)."""

    def __init__(self, layers: list[PreallocatedLayer]) -> None:
        super().__init__()
        self.buffers = layers

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: object,
        **kw: object,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.buffers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.buffers[layer_idx].length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.buffers[layer_idx].length + query_length, 0

    @property
    def is_compileable(self) -> bool:
        return False

    def select(self, rows: torch.Tensor) -> None:
        for layer in self.buffers:
            layer.select(rows)


class BatchDecode:
    """The model side of a batch: per-row prefill, then one forward of all live rows per step."""

    def __init__(self, loaded: LoadedModel, prompts: Sequence[Sequence[int]], steps: int) -> None:
        self.loaded = loaded
        width = max(len(p) for p in prompts) + ALWAYS_MASKED
        caches, logits = [], []
        for prompt in prompts:
            session = DecodeSession(loaded)
            logits.append(session.prefill(prompt))
            caches.append(session.cache)
        self.first_logits = torch.stack(logits)  # (B, V)
        layers = []
        for index in range(len(caches[0].layers)):
            keys = torch.cat([_left_pad(c.layers[index].keys, width) for c in caches])  # type: ignore[union-attr,arg-type]
            values = torch.cat([_left_pad(c.layers[index].values, width) for c in caches])  # type: ignore[union-attr,arg-type]
            layers.append(PreallocatedLayer(keys, values, width + steps))
        self.cache = BatchCache(layers)
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        self.mask = torch.zeros((len(prompts), width + steps), dtype=torch.long)
        for row, length in enumerate(lengths.tolist()):
            self.mask[row, width - length : width] = 1
        self.width = width  # filled columns of the mask
        self.positions = lengths  # (B,) the next position of each row

    @torch.inference_mode()
    def step(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Feed one input embedding per live row, (B, d); return the next logits (B, V)."""
        self.mask[:, self.width] = 1
        self.width += 1
        model = self.loaded.model
        before = model.config._attn_implementation
        model.set_attn_implementation(PER_ROW)
        try:
            out = model(
                inputs_embeds=embeddings.to(torch.float32).unsqueeze(1),
                attention_mask=self.mask[:, : self.width],
                position_ids=self.positions.unsqueeze(1),
                cache=self.cache,
                use_cache=True,
            )
        finally:
            model.set_attn_implementation(before)
        self.positions = self.positions + 1
        return cast(torch.Tensor, out.logits[:, -1].float())

    def keep(self, rows: torch.Tensor) -> None:
        """Go on with these rows only (indices into the current batch)."""
        self.cache.select(rows)
        self.mask = self.mask[rows]
        self.positions = self.positions[rows]


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """(1, heads, T, dim) -> (1, heads, width, dim) with zeros in front."""
    pad = width - tensor.shape[2]
    return torch.nn.functional.pad(tensor, (0, 0, pad, 0)) if pad else tensor


def generate_batch(
    loaded: LoadedModel,
    requests: Sequence[BatchRequest],
    selector: BatchSelector,
    ban_eos: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> list[BatchResult]:
    """Generate every request in one batch; each stops at its length (or at EOS when `ban_eos` is off).

    EOS logits are set to -inf when `ban_eos`, as in `model.evaluation.generate_fixed_length`. A batch never
    runs with fewer than MIN_ROWS rows (finished or copied rows fill it and are not recorded), so what a
    sequence produces does not depend on the batch it ran in.

    Args:
        on_progress: called after every step with the number of tokens that step produced.

    Raises:
        InputError: an empty batch, more than MAX_BATCH rows, or a prompt plus length over the context window.
    """
    if not 1 <= len(requests) <= MAX_BATCH:
        raise InputError(f"a batch holds 1 to {MAX_BATCH} sequences, got {len(requests)}; lower --batch")
    for request in requests:
        if request.length < 1 or len(request.prompt_ids) + request.length > loaded.context_window:
            raise InputError(
                f"prompt ({len(request.prompt_ids)} tokens) + length ({request.length}) must fit "
                f"{loaded.name}'s context window ({loaded.context_window}); lower --length"
            )
    rows = list(requests) + [requests[0]] * (MIN_ROWS - len(requests))  # filler copies, never recorded
    steps = max(r.length for r in requests)
    model = BatchDecode(loaded, [r.prompt_ids for r in rows], steps)
    streams = [np.random.default_rng(r.seed) for r in rows]
    noise = [np.random.default_rng(r.noise_seed) for r in rows]
    eos = sorted(loaded.eos_token_ids)
    results = [BatchResult() for _ in rows]
    done = [index >= len(requests) for index in range(len(rows))]
    live = list(range(len(rows)))  # which request each row of the current batch is
    logits = model.first_logits
    for _ in range(steps):
        values: FloatArray = logits.detach().numpy().astype(np.float64)
        if ban_eos and eos:
            values[:, eos] = -math.inf
        rs = np.array([streams[i].random() for i in live])
        choice = selector.select(values, rs, [noise[i] for i in live])
        produced = 0
        for row, index in enumerate(live):
            if done[index]:
                continue
            result = results[index]
            result.record(choice, row)
            produced += 1
            if not ban_eos and result.tokens[-1] in loaded.eos_token_ids:
                result.finish, done[index] = "eos", True
            elif len(result.tokens) == rows[index].length:
                result.finish, done[index] = "length", True
        if on_progress is not None:
            on_progress(produced)
        if all(done):
            break
        going = [row for row, index in enumerate(live) if not done[index]]
        going += [row for row, index in enumerate(live) if done[index]][: max(0, MIN_ROWS - len(going))]
        embeddings = choice.embeddings
        if len(going) < len(live):
            keep = torch.tensor(sorted(going), dtype=torch.long)
            model.keep(keep)
            embeddings = embeddings[keep]
            live = [live[row] for row in keep.tolist()]
        logits = model.step(embeddings)
    return results[: len(requests)]
