"""The encrypted pipeline's shared parts: how the worker splits the work, and what an oracle call says.

Worker, per token (DESIGN.md section 4), with the same steps as the plaintext twin (`model.forward`):

    x (d,) ──30 x [rmsnorm*, q | kv, attention*, o, +, rmsnorm*, gate | up, swiglu*, down, +]──
      ──final_norm*── LM head (pi baked in) ── softmax* ── sampler circuit (refresh* as needed)
      ──> I' (sent to the key holder as the token) ── mixture I' @ W_pi ──> next x

Steps marked * are oracle calls to the key holder (model/key_holder.py); everything else runs on
ciphertexts in the worker's processes (model/encrypted_rank.py), `world` of them, each a `rank`:

- Weights are cut into blocks (`Layout`): q, kv (keys and values in one product), o, gate, up and the
  two row halves of down per layer; the LM head and the mixture into one block per rank (its chunks of
  the vocabulary). Every process shares one warm plaintext cache (forked copy-on-write).
- A prompt of T positions is split by position: each rank runs every product for T // world of them. The
  positions left over (T mod world; a decoded token is one) are split by block: q and kv, gate and up,
  the halves of down run on different ranks at once, and so do each rank's chunks of the LM head, the
  sampler and the mixture.
- A value is held in shares (`Part`s: a position, an offset, a vector): column blocks land side by side,
  row blocks give partial sums, and the residual stream stays a sum of shares. The ranks never add each
  other's shares, so they never wait for each other except at the oracle (and twice per sampler step, to
  pass the prefix-sum carry and the shifted last value); the worker's router adds the shares of one place
  as it merges the call (model/encrypted_router.py, which also packs side-by-side shares two to a
  ciphertext), and the key holder adds the rest as it decrypts.

An `OracleCall` carries, besides the ciphertexts, where each input share goes (`parts`: position and
offset in the function's input) and what each rank needs back (`pieces`: a slice of the output, its
replicated layout and level), so the key holder returns fresh ciphertexts laid out for the next product:
no rotation is spent replicating an input and no level is spent dropping one. The worker's router
(model/encrypted_router.py) merges k ranks' shares into one call and hands each rank its answers back.

References: DESIGN.md sections 2 and 4; `crypto.matmul` (products), `crypto.ops` (the split sampler).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import InputError
from core.progress import OnProgress, Progress
from crypto.engine import Engine
from crypto.matmul import PlainMatrix, prepare
from crypto.matmul_plan import MatmulPlan, plan_matmul
from crypto.params import CKKSParams
from model.forward import LlamaShape, PreparedModel

MATMUL_LEVEL = 1  # products run at level 1: the cheapest level that can still rescale
LAYER_MATRICES = ("q", "kv", "o", "gate", "up", "down")
# Decode: the block that runs on each rank when one position is split by block (rank % world).
BLOCK_RANKS = {"q": 0, "kv": 1, "o": 0, "gate": 0, "up": 1, "down.0": 0, "down.1": 1}
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PieceSpec:
    """A slice of an oracle function's output that a rank needs, and how to encrypt it."""

    position: int  # row of the output (0 .. T-1; final_norm and softmax have one row)
    start: int  # first value
    stop: int  # one past the last value
    period: int = 0  # replicated layout: copies at slots k * period (0: plain chunks of all slots)
    copies: int = 1
    level: int = -1  # encrypt at this level (-1: the top)

    def as_list(self) -> list[int]:
        return [self.position, self.start, self.stop, self.period, self.copies, self.level]

    def level_under(self, top: int) -> int:
        """The level this piece is encrypted at in a chain whose top level is `top` (-1: the top)."""
        return top if self.level < 0 else self.level

    @classmethod
    def from_list(cls, values: Sequence[int]) -> PieceSpec:
        if len(values) != 6:
            raise InputError(f"a piece is [position, start, stop, period, copies, level], got {list(values)}")
        return cls(*(int(v) for v in values))


@dataclass(frozen=True)
class OracleCall:
    """One oracle round trip: shares of the function's input, and the output pieces wanted back.

    `refresh` is per ciphertext vector: each input blob comes back re-encrypted at the top level with the
    same layout (parts and pieces are not used); `refresh_tail` likewise, into the sampler tail. Every
    other function has one logical input of T rows (for attention: q then kv; for swiglu: gate then up),
    assembled by adding each part at its place.
    """

    fn: str
    layer: int
    parts: list[tuple[int, int]]  # (position, offset) of each blob in the function's input
    blobs: list[bytes]
    pieces: list[PieceSpec] = field(default_factory=list)


def input_widths(shape: LlamaShape, fn: str) -> list[int]:
    """The widths of an oracle function's inputs, in the order they sit side by side in its one input."""
    widths = {
        "rmsnorm": [shape.d],
        "final_norm": [shape.d],
        "attention": [shape.d, 2 * shape.kv_width],  # q, then keys and values
        "swiglu": [shape.ffn, shape.ffn],  # gate, then up
        "softmax": [shape.vocab],
    }
    if fn not in widths:
        raise InputError(f"{fn!r} has no input layout; functions: {', '.join(widths)}")
    return widths[fn]


# --- the worker's weights and how they are cut -------------------------------------------------------


@dataclass(frozen=True)
class LayerArrays:
    """One decoder layer's matrices (in, out), float32, the RMSNorm gains folded in (model.forward)."""

    q: FloatArray
    kv: FloatArray
    o: FloatArray
    gate: FloatArray
    up: FloatArray
    down: FloatArray


@dataclass(frozen=True)
class WorkerWeights:
    """The worker's plaintext weights in both vocabulary orders (TSP on and token-id order)."""

    shape: LlamaShape
    layers: tuple[LayerArrays, ...]
    lm_head: dict[bool, FloatArray]  # tsp -> (d, V), columns in that order
    embed: dict[bool, FloatArray]  # tsp -> (V, d), rows in that order (the mixture's matrix)

    @classmethod
    def from_prepared(cls, tsp: PreparedModel, identity: PreparedModel) -> WorkerWeights:
        """From the prepared model in TSP order and in token-id order (they share the layers)."""

        def arr(t: Any) -> FloatArray:
            return np.ascontiguousarray(t.detach().numpy(), dtype=np.float32)

        layers = tuple(
            LayerArrays(arr(w.q), arr(w.kv), arr(w.o), arr(w.gate), arr(w.up), arr(w.down))
            for w in tsp.layers
        )
        return cls(
            tsp.shape,
            layers,
            {True: arr(tsp.lm_head), False: arr(identity.lm_head)},
            {True: arr(tsp.embed_pi), False: arr(identity.embed_pi)},
        )

    def ordered(self, tsp: bool) -> OrderedWeights:
        return OrderedWeights(self.shape, self.layers, self.lm_head[tsp])


@dataclass(frozen=True)
class OrderedWeights:
    """The weights in one vocabulary order, shaped like `PreparedModel` for `model.forward.forward`."""

    shape: LlamaShape
    layers: tuple[LayerArrays, ...]
    lm_head: FloatArray


@dataclass(frozen=True)
class Block:
    """A rectangle of one matrix: rows [row0, row0 + rows) of its input, columns placed at col0."""

    key: str  # unique, e.g. "layers.3.down.1", "lm_head.tsp.5", "mixture.ids.11"
    name: str  # which decode rank it belongs to: a BLOCK_RANKS key, or "" for tiles and chunks
    row0: int
    col0: int
    rows: int
    cols: int
    plan: MatmulPlan


def whole_positions(rank: int, world: int, positions: int) -> range:
    """The positions a rank runs every product of: an equal share of the prompt each."""
    share = positions // world
    return range(rank * share, (rank + 1) * share)


def shared_positions(world: int, positions: int) -> range:
    """The positions left over (T mod world; a decoded token is one): split by block over the ranks."""
    return range(positions // world * world, positions)


def positions_of(rank: int, world: int, positions: int) -> list[int]:
    """The positions whose input embedding starts on a rank (a shared position's on rank 0)."""
    mine = list(whole_positions(rank, world, positions))
    return mine + list(shared_positions(world, positions)) if rank == 0 else mine


class Layout:
    """Every block of the model for one slot count and `world` ranks, and which rank computes what.

    The layer blocks do not depend on `world` (a prompt's positions are split over the ranks, so every
    rank needs all of them); the LM head and the mixture are cut into one block per rank (its vocabulary
    chunks), so a rank's product shares its baby steps over all its tiles.
    """

    def __init__(self, shape: LlamaShape, slots: int, world: int = 1) -> None:
        self.shape = shape
        self.slots = slots
        self.world = world
        s = shape
        half = s.ffn // 2

        def block(key: str, name: str, row0: int, col0: int, rows: int, cols: int, chunk: bool) -> Block:
            # a product's input is a fresh piece from the key holder, laid out replicated for its plan;
            # a mixture chunk is one refreshed ciphertext of the one-hot vector
            plan = plan_matmul(rows, cols, slots, slots if chunk else None, replicated=not chunk)
            return Block(key, name, row0, col0, rows, cols, plan)

        shapes = {
            "q": [(0, 0, s.d, s.d)],
            "kv": [(0, 0, s.d, 2 * s.kv_width)],
            "o": [(0, 0, s.d, s.d)],
            "gate": [(0, 0, s.d, s.ffn)],
            "up": [(0, 0, s.d, s.ffn)],
            "down": [(0, 0, half, s.d), (half, 0, s.ffn - half, s.d)],
        }
        self.matrices: dict[str, list[Block]] = {}
        for i in range(s.layers):
            for name, rects in shapes.items():
                blocks = []
                for j, (r0, c0, rows, cols) in enumerate(rects):
                    suffix = f".{j}" if len(rects) > 1 else ""
                    blocks.append(
                        block(f"layers.{i}.{name}{suffix}", f"{name}{suffix}", r0, c0, rows, cols, False)
                    )
                self.matrices[f"layers.{i}.{name}"] = blocks
        self.tiles = -(-s.vocab // slots)
        if not 1 <= world <= self.tiles:
            raise InputError(
                f"{world} ranks cannot share {self.tiles} vocabulary chunks; use 1..{self.tiles}"
            )
        for tsp in (True, False):
            order = "tsp" if tsp else "ids"
            heads, mixtures = [], []
            for rank in range(world):
                chunks = self.chunks_of(rank, world)
                first, stop = chunks.start * slots, min(chunks.stop * slots, s.vocab)
                heads.append(block(f"lm_head.{order}.{rank}", "", 0, first, s.d, stop - first, False))
                mixtures.append(block(f"mixture.{order}.{rank}", "", first, 0, stop - first, s.d, True))
            self.matrices[f"lm_head.{order}"] = heads
            self.matrices[f"mixture.{order}"] = mixtures

    def blocks(self) -> list[Block]:
        return [b for blocks in self.matrices.values() for b in blocks]

    def blocks_for(self, orders: Sequence[bool]) -> list[Block]:
        """The blocks a worker serving these vocabulary orders (TSP on / off) multiplies by."""
        return [
            b
            for b in self.blocks()
            if not b.key.startswith(("lm_head.", "mixture.")) or (b.key.split(".")[1] == "tsp") in orders
        ]

    def chunks_of(self, rank: int, world: int) -> range:
        """The vocabulary chunks (LM head tiles, sampler ciphertexts, mixture blocks) of a rank."""
        return range(rank * self.tiles // world, (rank + 1) * self.tiles // world)

    def work(self, matrix: str, rank: int, world: int, positions: int) -> list[tuple[int, Block]]:
        """(position, block) of every product of `matrix` this rank computes."""
        blocks = self.matrices[matrix]
        if matrix.startswith(("lm_head.", "mixture.")):
            return [(0, blocks[rank])]  # one block per rank: its vocabulary chunks
        whole = [(p, b) for p in whole_positions(rank, world, positions) for b in blocks]
        return whole + [
            (p, b)
            for p in shared_positions(world, positions)
            for b in blocks
            if BLOCK_RANKS[b.name] % world == rank
        ]


class RankCaches:
    """The plaintext matrices of every block, with their encoded diagonals (shared by all sessions)."""

    def __init__(self, weights: WorkerWeights) -> None:
        self.weights = weights
        self._matrices: dict[str, PlainMatrix] = {}

    def matrix(self, block: Block) -> PlainMatrix:
        if block.key not in self._matrices:
            self._matrices[block.key] = PlainMatrix(self._source(block))
        return self._matrices[block.key]

    def _source(self, block: Block) -> Any:
        parts = block.key.split(".")
        if parts[0] == "layers":
            array = getattr(self.weights.layers[int(parts[1])], parts[2])
        elif parts[0] == "lm_head":
            array = self.weights.lm_head[parts[1] == "tsp"]
        else:
            array = self.weights.embed[parts[1] == "tsp"]
        return array[block.row0 : block.row0 + block.rows, block.col0 : block.col0 + block.cols]

    def warm(
        self, params: CKKSParams, layout: Layout, orders: Sequence[bool], on_progress: OnProgress
    ) -> int:
        """Encode every plaintext the products use, before any session (a warm worker).

        `on_progress` gets Progress("warm", blocks done, blocks) after every block."""
        engine = Engine.for_params(params)
        wanted = layout.blocks_for(orders)
        count = 0
        for done, block in enumerate(wanted, start=1):
            count += prepare(engine, self.matrix(block), block.plan, MATMUL_LEVEL)
            on_progress(Progress("warm", done, len(wanted)))
        return count


# --- the public prefix's keys and values -----------------------------------------------------------


def cache_to_bytes(keys: Sequence[Any], values: Sequence[Any]) -> list[bytes]:
    """Per-layer caches (kv_heads, T, head_dim) -> two float32 blobs (keys, values), layers stacked."""
    return [np.stack([np.asarray(k, dtype=np.float32) for k in kv]).tobytes() for kv in (keys, values)]


def cache_from_bytes(
    shape: LlamaShape, blobs: Sequence[bytes], positions: int
) -> tuple[FloatArray, FloatArray]:
    """Inverse of `cache_to_bytes` for `positions` positions.

    Raises:
        InputError: the sizes do not fit the model, or the values are not finite.
    """
    dims = (shape.layers, shape.kv_heads, positions, shape.head_dim)
    size = int(np.prod(dims)) * 4
    if len(blobs) != 2 or any(len(b) != size for b in blobs):
        raise InputError(f"a public prefix of {positions} positions needs two blobs of {size:,} bytes")
    keys, values = (np.frombuffer(b, dtype=np.float32).reshape(dims) for b in blobs)
    if not (np.isfinite(keys).all() and np.isfinite(values).all()):
        raise InputError("the public prefix holds values that are not finite")
    return keys, values
