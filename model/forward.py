"""The Llama forward pass as explicit steps: weighted linear maps and an allow-list of non-linear functions.

This is the pipeline the encrypted mode runs (DESIGN.md section 4). Every step with weights is a
`Backend.linear` (the worker computes it on ciphertexts); every non-linear step is a `Backend.apply` of
one of `NONLINEAR` (model/oracle.py, the allow-list: in encrypted mode the worker asks the key holder to
evaluate it through the oracle). Running the same steps with `PlainBackend` is the plaintext twin,
tested against transformers' own forward pass.

Offline preparation (`PreparedModel.from_loaded`) moves work off the key holder and the sampler:
- RMSNorm gains are folded into the matrices that follow them, so `rmsnorm` is the bare x / rms(x);
- the vocabulary order `pi` is baked into the LM-head columns and the embedding rows, so the logits come
  out already in TSP order and the mixture embedding is `I' @ embed_pi` with no permutation under
  encryption.

Shapes: T positions, d model width, V vocabulary. Matrices are stored (in, out) so a step is `x @ W`.

References: transformers' LlamaModel (RMSNorm, RoPE, grouped-query attention, SwiGLU); DESIGN.md 2, 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from core.errors import InputError
from core.progress import OnProgress, Progress
from model.loading import LoadedModel
from model.oracle import NONLINEAR, NonLinear

T = TypeVar("T")


@dataclass(frozen=True)
class LlamaShape:
    """The numbers of a Llama-family model that the steps need."""

    d: int  # model width (576 for SmolLM2-135M)
    heads: int  # query heads (9)
    kv_heads: int  # key/value heads (3): grouped-query attention
    head_dim: int  # d / heads (64)
    ffn: int  # MLP width (1536)
    layers: int  # decoder layers (30)
    vocab: int  # V (49,152)
    eps: float  # RMSNorm epsilon
    rope_theta: float  # RoPE base

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @classmethod
    def from_config(cls, cfg: Any) -> LlamaShape:
        """The shape of a transformers Llama-family config (no weights needed)."""
        heads = int(cfg.num_attention_heads)
        rope = getattr(cfg, "rope_parameters", None) or {}
        return cls(
            d=int(cfg.hidden_size),
            heads=heads,
            kv_heads=int(cfg.num_key_value_heads),
            head_dim=int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
            ffn=int(cfg.intermediate_size),
            layers=int(cfg.num_hidden_layers),
            vocab=int(cfg.vocab_size),
            eps=float(cfg.rms_norm_eps),
            rope_theta=float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))),
        )


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's matrices, (in, out), with the RMSNorm gains folded in."""

    q: torch.Tensor  # (d, d)       attention norm gain folded into the rows
    kv: torch.Tensor  # (d, 2 kv)   keys then values: one product for both (they share the input)
    o: torch.Tensor  # (d, d)
    gate: torch.Tensor  # (d, ffn)  MLP norm gain folded into the rows
    up: torch.Tensor  # (d, ffn)
    down: torch.Tensor  # (ffn, d)


@dataclass(frozen=True)
class PreparedModel:
    """Everything the worker needs: matrices with norms folded and `pi` baked in."""

    shape: LlamaShape
    layers: tuple[LayerWeights, ...]
    lm_head: torch.Tensor  # (d, V): columns in TSP order, final norm gain folded into the rows
    embed_pi: torch.Tensor  # (V, d): embedding rows in TSP order, for the mixture embedding I' @ embed_pi
    perm: npt.NDArray[np.int64]  # (V,): perm[j] = original token id at position j

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, perm: npt.ArrayLike | None = None) -> PreparedModel:
        """Extract and prepare the weights of a Llama-family causal LM.

        Raises:
            InputError: the model is not Llama-shaped, or `perm` is not a permutation of the vocabulary.
        """
        model: Any = loaded.model  # transformers modules are untyped; the shapes are checked below
        cfg = model.config
        if getattr(cfg, "model_type", None) not in ("llama", "mistral", "qwen2") or getattr(
            cfg, "attention_bias", False
        ):
            raise InputError(
                f"{loaded.name} is a {getattr(cfg, 'model_type', '?')!r} model; the encrypted pipeline "
                "supports Llama-shaped models without attention biases."
            )
        vocab = int(cfg.vocab_size)
        order = np.arange(vocab, dtype=np.int64) if perm is None else np.asarray(perm, dtype=np.int64)
        if order.shape != (vocab,) or not np.array_equal(np.sort(order), np.arange(vocab)):
            raise InputError(f"perm must be a permutation of 0..{vocab - 1}; got shape {order.shape}")
        shape = LlamaShape.from_config(cfg)
        with torch.no_grad():
            layers = []
            for layer in model.model.layers:
                attn_gain = layer.input_layernorm.weight.detach().float()[:, None]  # (d, 1)
                mlp_gain = layer.post_attention_layernorm.weight.detach().float()[:, None]
                a, m = layer.self_attn, layer.mlp
                k = a.k_proj.weight.detach().float().T
                v = a.v_proj.weight.detach().float().T
                layers.append(
                    LayerWeights(
                        q=attn_gain * a.q_proj.weight.detach().float().T,
                        kv=attn_gain * torch.cat((k, v), dim=1),
                        o=a.o_proj.weight.detach().float().T.contiguous(),
                        gate=mlp_gain * m.gate_proj.weight.detach().float().T,
                        up=mlp_gain * m.up_proj.weight.detach().float().T,
                        down=m.down_proj.weight.detach().float().T.contiguous(),
                    )
                )
            final_gain = model.model.norm.weight.detach().float()[:, None]
            head = model.get_output_embeddings().weight.detach().float()  # (V, d)
            index = torch.from_numpy(order)
            lm_head = (final_gain * head[index].T).contiguous()  # (d, V) in TSP order
            embed_pi = model.get_input_embeddings().weight.detach().float()[index].contiguous()
        return cls(shape=shape, layers=tuple(layers), lm_head=lm_head, embed_pi=embed_pi, perm=order)

    def reordered(self, perm: npt.ArrayLike) -> PreparedModel:
        """The same model with another vocabulary order; the layer matrices are shared, not copied."""
        order = np.asarray(perm, dtype=np.int64)
        if order.shape != self.perm.shape or not np.array_equal(np.sort(order), np.arange(self.shape.vocab)):
            raise InputError(
                f"perm must be a permutation of 0..{self.shape.vocab - 1}; got shape {order.shape}"
            )
        position = np.empty_like(self.perm)
        position[self.perm] = np.arange(self.shape.vocab)  # token id -> its position in the current order
        index = torch.from_numpy(position[order])
        return PreparedModel(
            self.shape,
            self.layers,
            self.lm_head[:, index].contiguous(),
            self.embed_pi[index].contiguous(),
            order,
        )


class KeyHolderFunctions:
    """The allow-listed non-linear functions, in plaintext, as the key holder evaluates them.

    It keeps the attention KV cache: keys and values are the key holder's own data (they derive from the
    user's text), so in encrypted mode they never go back to the worker. One instance per conversation.
    """

    def __init__(self, shape: LlamaShape) -> None:
        self.shape = shape
        self.keys: list[torch.Tensor] = [torch.empty(shape.kv_heads, 0, shape.head_dim)] * shape.layers
        self.values: list[torch.Tensor] = [torch.empty(shape.kv_heads, 0, shape.head_dim)] * shape.layers
        half = torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim
        self.inv_freq = 1.0 / (shape.rope_theta**half)  # (head_dim/2,)

    @property
    def positions(self) -> int:
        """Positions every layer's cache holds (a cancelled forward can leave later layers shorter)."""
        return min(k.shape[1] for k in self.keys)

    def truncate(self, positions: int) -> None:
        """Keep the first `positions` positions of every layer (drop a half-finished forward)."""
        self.keys = [k[:, :positions] for k in self.keys]
        self.values = [v[:, :positions] for v in self.values]

    def load(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
        """Start from given caches: per layer (kv_heads, T, head_dim), keys after RoPE (a public prefix)."""
        s = self.shape
        ok = len(keys) == len(values) == s.layers and all(
            k.shape == v.shape and k.shape[0] == s.kv_heads and k.shape[2] == s.head_dim
            for k, v in zip(keys, values, strict=True)
        )
        if not ok or len({k.shape[1] for k in keys}) != 1:
            raise InputError(
                f"a cache needs {s.layers} layers of ({s.kv_heads}, T, {s.head_dim}) keys and values"
            )
        self.keys = [k.float() for k in keys]
        self.values = [v.float() for v in values]

    def evaluate(self, fn: NonLinear, layer: int, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Dispatch one allow-listed call (the oracle's entry point)."""
        if fn == "rmsnorm" and len(xs) == 1:
            return self.rmsnorm(xs[0])
        if fn == "attention" and len(xs) == 2:
            kv = self.shape.kv_width
            return self.attention(layer, xs[0], xs[1][:, :kv], xs[1][:, kv:])
        if fn == "swiglu" and len(xs) == 2:
            return self.swiglu(xs[0], xs[1])
        if fn == "final_norm" and len(xs) == 1:
            return self.rmsnorm(xs[0][-1:])  # only the last position goes on to the LM head
        raise InputError(f"{fn!r} with {len(xs)} input(s) is not an allowed function; allowed: {NONLINEAR}")

    def rmsnorm(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x) per row (the gain is folded into the next matrix). (T, d) -> (T, d)"""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.shape.eps)

    def swiglu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up. (T, ffn) x 2 -> (T, ffn)"""
        return torch.nn.functional.silu(gate) * up

    def _rope(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rotary position embedding for positions start..start+T-1. x: (heads, T, head_dim)."""
        positions = torch.arange(start, start + x.shape[1], dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq[None, :]  # (T, head_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * emb.cos() + rotated * emb.sin()

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal grouped-query attention of T new positions over the cache. Returns (T, d)."""
        s = self.shape
        if not 0 <= layer < s.layers:
            raise InputError(f"layer must be in 0..{s.layers - 1}, got {layer}")
        t = q.shape[0]
        start = self.keys[layer].shape[1]  # positions already cached in this layer
        qh = self._rope(q.reshape(t, s.heads, s.head_dim).transpose(0, 1), start)  # (H, T, hd)
        kh = self._rope(k.reshape(t, s.kv_heads, s.head_dim).transpose(0, 1), start)  # (KV, T, hd)
        vh = v.reshape(t, s.kv_heads, s.head_dim).transpose(0, 1)
        self.keys[layer] = torch.cat((self.keys[layer], kh), dim=1)  # (KV, start+T, hd)
        self.values[layer] = torch.cat((self.values[layer], vh), dim=1)
        group = s.heads // s.kv_heads
        keys = self.keys[layer].repeat_interleave(group, dim=0)  # (H, S, hd)
        values = self.values[layer].repeat_interleave(group, dim=0)
        scores = qh @ keys.transpose(1, 2) / s.head_dim**0.5  # (H, T, S)
        total = start + t
        causal = torch.arange(total)[None, :] <= (start + torch.arange(t))[:, None]  # (T, S)
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ values  # (H, T, hd)
        return out.transpose(0, 1).reshape(t, s.d)


Consumer = Literal["qkv", "o", "gate_up", "down", "lm_head"]
"""Which products read a non-linear step's result (the encrypted worker asks for the layout they need)."""


def prefix_cache(
    prepared: PreparedModel, embeddings: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The attention cache after `embeddings` (T, d): per layer keys (after RoPE) and values, as the key
    holder keeps them. The worker computes a public prefix's this way, in the clear."""
    functions = KeyHolderFunctions(prepared.shape)
    with torch.no_grad():
        forward(PlainBackend(functions), prepared, embeddings.float())
    return functions.keys, functions.values


class Backend(Protocol, Generic[T]):
    """Where the steps run: in plaintext (`PlainBackend`) or on ciphertexts (the worker's backend)."""

    def linear(self, x: T, key: str, weight: Any) -> T:
        """x @ weight; `key` names the matrix (e.g. "layers.3.q") so a backend can cache its encoding."""
        ...

    def add(self, a: T, b: T) -> T: ...

    def apply(self, fn: NonLinear, layer: int, xs: Sequence[T], into: Consumer) -> T:
        """An allow-listed non-linear function (the key holder's, in encrypted mode); `into` names the
        products that read its result."""
        ...


class PlainBackend:
    """The plaintext twin: torch tensors, the key holder's functions called directly."""

    def __init__(self, functions: KeyHolderFunctions) -> None:
        self.functions = functions

    def linear(self, x: torch.Tensor, key: str, weight: torch.Tensor) -> torch.Tensor:
        return x @ weight

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def apply(self, fn: NonLinear, layer: int, xs: Sequence[torch.Tensor], into: Consumer) -> torch.Tensor:
        return self.functions.evaluate(fn, layer, xs)


class ModelWeights(Protocol):
    """What the steps read: a `PreparedModel` (torch), or the encrypted worker's numpy weights."""

    @property
    def shape(self) -> LlamaShape: ...

    @property
    def layers(self) -> Sequence[Any]: ...

    @property
    def lm_head(self) -> Any: ...


def decoder_layer(backend: Backend[T], prepared: ModelWeights, index: int, x: T) -> T:
    """One Llama decoder layer: 6 linear steps, 4 key-holder calls, 2 residual adds."""
    w = prepared.layers[index]
    key = f"layers.{index}"
    h = backend.apply("rmsnorm", index, [x], "qkv")  # (T, d)
    q = backend.linear(h, f"{key}.q", w.q)  # (T, d)
    kv = backend.linear(h, f"{key}.kv", w.kv)  # (T, 2 kv): keys, then values
    attended = backend.apply("attention", index, [q, kv], "o")  # (T, d)
    x = backend.add(x, backend.linear(attended, f"{key}.o", w.o))
    h = backend.apply("rmsnorm", index, [x], "gate_up")
    gate = backend.linear(h, f"{key}.gate", w.gate)  # (T, ffn)
    up = backend.linear(h, f"{key}.up", w.up)  # (T, ffn)
    mixed = backend.apply("swiglu", index, [gate, up], "down")  # (T, ffn)
    return backend.add(x, backend.linear(mixed, f"{key}.down", w.down))


def forward(
    backend: Backend[T],
    prepared: ModelWeights,
    x: T,
    on_progress: OnProgress | None = None,
    head: bool = True,
) -> T:
    """Input embeddings of T new positions (T, d) -> logits of the last position in TSP order, (1, V).

    `on_progress` hears `Progress("layers", i, layers)` before layer i: i layers are done (the encrypted
    worker reports it to the key holder and checks for a Cancel there). With `head` False the pass stops
    after the last layer and returns its output (T, d): the positions are read into the attention cache
    and nothing is predicted (a read-ahead of text that is known before it is needed).
    """
    layers = prepared.shape.layers
    for index in range(layers):
        if on_progress is not None:
            on_progress(Progress("layers", index, layers))
        x = decoder_layer(backend, prepared, index, x)
    if not head:
        return x
    h = backend.apply("final_norm", prepared.shape.layers, [x], "lm_head")  # (1, d): the last position only
    return backend.linear(h, "lm_head", prepared.lm_head)  # (1, V)
