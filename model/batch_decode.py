"""Batched generation for the evaluation: B sequences through the model in one forward pass per step.

Each sequence (a `BatchRequest`) has its own prompt, its own stream of uniforms
(`numpy.random.default_rng(seed).random()`, one per step, as in `model.generate`), its own feedback (the
selector's embedding for its row) and its own stop rule (its length, or EOS when EOS is not banned). A
sequence that stops leaves the batch, so the others go on at the smaller size.

The prompts are prefilled one by one, exactly as `model.generate.DecodeSession.prefill` does, and their
caches are stacked left-padded, so the first step's logits are the unbatched ones. A step's attention reads
each row's own positions (no padding, no mask; `per_row_attention`); the projections are batched.

A generation does not depend on the batch it runs in (its companions, their number, its row): with one
intra-op thread, MKL rounds each row of a product of at least MIN_ROWS rows the same way wherever it sits,
and SDPA rounds each row of an unpadded batch as it rounds that row alone (both measured bit for bit; with
two threads neither holds). `generate_batch` therefore runs on one thread; a study gets its parallelism
from processes. Against B unbatched runs (`model.generate`, a one-row product) a later step differs by the
rounding of the product (about 1e-6 on a logit), which changes a token only when r falls that close to a
boundary.

The KV cache grows in place inside buffers allocated for the whole run (`PreallocatedLayer`): transformers'
`DynamicCache` concatenates on every step, which at B = 32 and 1,500 tokens copies about a gigabyte per step.

References: DESIGN.md section 3; transformers' batched generation (left padding, attention mask).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

from core.errors import InputError
from core.progress import OnProgress, Progress
from model.batch_sampler import NOTHING, BatchSelection, BatchSelector
from model.generate import DecodeSession
from model.loading import LoadedModel
from model.vector_ops import FloatArray

MAX_BATCH = 64
MIN_ROWS = 4  # MKL rounds products of 1-3 rows their own way; from 4 rows on a row's result is its own
PER_ROW = "he_chat_per_row_sdpa"  # the attention implementation of a batch step (see `per_row_attention`)
ROW_GROUPS = "he_chat_row_groups"  # the model-call keyword that carries a step's row groups to the attention
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


RowGroups = list[tuple[int, slice]]  # (first cache column a group of rows reads, those rows)


def per_row_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of a batch step: each group of rows over its own cache columns, without padding or mask.

    A row then gets exactly what an unbatched decode step computes, whatever its companions: torch's fused
    CPU kernel, given a padded batch and its mask, rounds a row differently depending on the other rows'
    data (measured: 2e-9 per layer, enough to move a token at a near tie). Rows with the same prompt length
    share a call (`row_groups`); other calls (the per-row prefill) go to transformers' SDPA.
    """
    groups: RowGroups | None = kwargs.pop(ROW_GROUPS, None)
    if groups is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    parts = [
        sdpa_attention_forward(
            module, query[rows], key[rows, :, start:], value[rows, :, start:], None, **kwargs
        )[0]
        for start, rows in groups
    ]  # each (rows, 1, heads, dim)
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), None


def row_groups(starts: Sequence[int]) -> RowGroups:
    """Runs of equal first columns as slices (rows come sorted by prompt length, longest first)."""
    groups: RowGroups = []
    for row, start in enumerate(starts):
        if groups and groups[-1][0] == start:
            groups[-1] = (start, slice(groups[-1][1].start, row + 1))
        else:
            groups.append((start, slice(row, row + 1)))
    return groups


def _no_mask(*args: object, **kwargs: object) -> None:
    return None  # a batch step's attention reads its row groups, never a mask


AttentionInterface.register(PER_ROW, per_row_attention)
AttentionMaskInterface.register(PER_ROW, _no_mask)


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
    """The model side of a batch: per-row prefill, then one forward of all live rows per step.

    Rows must come sorted by prompt length, longest first, so rows of equal length are neighbours.
    """

    def __init__(self, loaded: LoadedModel, prompts: Sequence[Sequence[int]], steps: int) -> None:
        lengths = [len(p) for p in prompts]
        if lengths != sorted(lengths, reverse=True):
            raise InputError("BatchDecode takes its prompts longest first; sort them")
        self.loaded = loaded
        width = lengths[0]
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
        self.starts = [width - length for length in lengths]  # each row's first cache column
        self.positions = torch.tensor(lengths, dtype=torch.long)  # (B,) the next position of each row

    @torch.inference_mode()
    def step(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Feed one input embedding per live row, (B, d); return the next logits (B, V)."""
        model = self.loaded.model
        before = model.config._attn_implementation
        model.set_attn_implementation(PER_ROW)
        try:
            out = model(
                inputs_embeds=embeddings.to(torch.float32).unsqueeze(1),
                position_ids=self.positions.unsqueeze(1),
                cache=self.cache,
                use_cache=True,
                **{ROW_GROUPS: row_groups(self.starts)},
            )
        finally:
            model.set_attn_implementation(before)
        self.positions = self.positions + 1
        return cast(torch.Tensor, out.logits[:, -1].float())

    def keep(self, rows: Sequence[int]) -> None:
        """Go on with these rows only (increasing indices into the current batch)."""
        index = torch.tensor(rows, dtype=torch.long)
        self.cache.select(index)
        self.starts = [self.starts[row] for row in rows]
        self.positions = self.positions[index]


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """(1, heads, T, dim) -> (1, heads, width, dim) with zeros in front."""
    pad = width - tensor.shape[2]
    return torch.nn.functional.pad(tensor, (0, 0, pad, 0)) if pad else tensor


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (what makes a batch row's rounding its own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generate_batch(
    loaded: LoadedModel,
    requests: Sequence[BatchRequest],
    selector: BatchSelector,
    ban_eos: bool = True,
    on_progress: OnProgress | None = None,
) -> list[BatchResult]:
    """Generate every request in one batch; each stops at its length (or at EOS when `ban_eos` is off).

    EOS logits are set to -inf when `ban_eos`, as in `model.evaluation.generate_fixed_length`. A batch never
    runs with fewer than MIN_ROWS rows (finished or copied rows fill it and are not recorded), and it runs on
    one intra-op thread, so what a sequence produces does not depend on the batch it ran in.

    Args:
        on_progress: gets Progress("tokens", tokens produced so far, tokens wanted) after every step.

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
    produced, wanted = 0, sum(request.length for request in requests)
    live = sorted(range(len(rows)), key=lambda i: -len(rows[i].prompt_ids))  # the request of each row
    with one_thread():
        model = BatchDecode(loaded, [rows[i].prompt_ids for i in live], max(r.length for r in requests))
        streams = [np.random.default_rng(r.seed) for r in rows]
        noise = [np.random.default_rng(r.noise_seed) for r in rows]
        eos = sorted(loaded.eos_token_ids)
        results = [BatchResult() for _ in rows]
        done = [index >= len(requests) for index in range(len(rows))]
        logits = model.first_logits
        while True:
            values: FloatArray = logits.detach().numpy().astype(np.float64)
            if ban_eos and eos:
                values[:, eos] = -math.inf
            rs = np.array([streams[i].random() for i in live])
            choice = selector.select(values, rs, [noise[i] for i in live])
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
                on_progress(Progress("tokens", produced, wanted))
            if all(done):
                break
            going = [row for row, index in enumerate(live) if not done[index]]
            going += [row for row, index in enumerate(live) if done[index]][: max(0, MIN_ROWS - len(going))]
            embeddings = choice.embeddings
            if len(going) < len(live):
                going.sort()
                model.keep(going)
                embeddings = embeddings[torch.tensor(going, dtype=torch.long)]
                live = [live[row] for row in going]
            logits = model.step(embeddings)
    return results[: len(requests)]
