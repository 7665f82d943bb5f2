"""One worker process's share of an encrypted reply: every rank runs this, in lockstep, on ciphertexts.

The reply is `model.generate.decode` over a `RankSession` (the forward pass of `model.forward` on this
rank's shares) and a `RankSelector` (the key holder's softmax, then the sampler circuit of
`model.sampler` on this rank's vocabulary chunks, then the mixture embedding). What the ranks compute
and how values are shared is in model/encrypted.py. A rank reaches the outside only through its
`RankLink`: the oracle and the exchange are collective (every rank calls them at the same point and the
worker merges the calls), the token is collective and needs no answer, progress comes from rank 0, and
`check` raises `JobCancelled` when the key holder cancelled (it is called before every product, between
output tiles and between sampler operations, so a Stop ends the job within a fraction of a second).

References: DESIGN.md sections 2 and 4; model/encrypted.py; model/generate.py (the loop).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from core.errors import InputError
from core.progress import Progress
from crypto import arith
from crypto.engine import Engine
from crypto.keys import PublicContext
from crypto.matmul import matmul
from crypto.ops import CkksOps
from crypto.vector import EncVector, for_key_holder, unpack
from crypto.vector_wire import vector_from_bytes, vector_to_bytes
from model.encrypted import (
    MATMUL_LEVEL,
    Layout,
    OracleCall,
    PieceSpec,
    RankCaches,
    WorkerWeights,
    input_widths,
)
from model.forward import Consumer, forward
from model.generate import FinishReason, Selection, decode
from model.oracle import REFRESHES, NonLinear
from model.sampler import SamplerConfig, approx_one_hot

CONSUMERS: dict[str, tuple[str, ...]] = {
    "qkv": ("q", "kv"),
    "o": ("o",),
    "gate_up": ("gate", "up"),
    "down": ("down",),
}


class RankLink(Protocol):
    """A rank's channel to the worker (and through it to the key holder and the other ranks)."""

    rank: int
    world: int

    def oracle(self, call: OracleCall) -> list[bytes]:
        """Collective: this rank's share of an oracle call -> the pieces it asked for, in order."""
        ...

    def exchange(self, tag: str, blobs: list[bytes]) -> list[list[bytes]]:
        """Collective: every rank's blobs, in rank order."""
        ...

    def token(self, index: int, telemetry: dict[str, Any], blobs: list[bytes]) -> None:
        """Collective: this rank's part of the token's one-hot vector."""
        ...

    def progress(self, update: Progress) -> None:
        """Where the reply is (only rank 0's reports reach the key holder)."""
        ...

    def check(self) -> None:
        """Raise `JobCancelled` if the reply was cancelled."""
        ...


@dataclass(frozen=True)
class RankRequest:
    """One reply, as each rank sees it (the worker validated the request and cut the prompt)."""

    positions: int  # T: new positions this reply starts with
    prompt: dict[int, bytes]  # this rank's positions -> the key holder's ciphertext of that embedding
    budget: int  # tokens to generate (the worker clamped max_new_tokens to the context window); 0 reads
    finish: FinishReason  # why the reply ends after `budget` tokens: "length" or "context"
    seed: int  # the uniforms r: default_rng(seed), one draw per token
    first_index: int  # draws to skip (a reply resumed after a lost worker continues its stream)
    sampler: SamplerConfig


@dataclass
class Part:
    """A share of a value: `vec` holds values offset .. offset + vec.length of row `position`."""

    position: int
    offset: int
    vec: EncVector


@dataclass
class Telemetry:
    """What one token cost this rank (the worker merges the ranks' reports)."""

    seconds: dict[str, float] = field(default_factory=dict)
    oracle_calls: dict[str, int] = field(default_factory=dict)
    bytes_to_key_holder: int = 0
    bytes_from_key_holder: int = 0
    refreshes: int = 0
    rotations: int = 0

    def add_time(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "oracle_calls": dict(self.oracle_calls),
            "bytes_to_key_holder": self.bytes_to_key_holder,
            "bytes_from_key_holder": self.bytes_from_key_holder,
            "refreshes": self.refreshes,
            "rotations": self.rotations,
        }


class Shares:
    """This rank's parts of one logical value (T rows)."""

    def __init__(self, parts: Sequence[Part] = ()) -> None:
        self.parts = list(parts)

    def find(self, position: int, offset: int, length: int) -> EncVector:
        for part in self.parts:
            if (part.position, part.offset, part.vec.length) == (position, offset, length):
                return part.vec
        raise InputError(f"no share of row {position} at {offset} with {length} values on this rank")


class RankBackend:
    """`model.forward.Backend` over this rank's shares: its products, and collective oracle calls."""

    def __init__(
        self,
        engine: Engine,
        public: PublicContext,
        layout: Layout,
        caches: RankCaches,
        link: RankLink,
        tsp: bool,
    ) -> None:
        self.engine = engine
        self.engines = [engine] if public.tail is None else [engine, Engine.for_tail(public.tail)]  # by ring
        self.public = public
        self.layout = layout
        self.caches = caches
        self.link = link
        self.order = "tsp" if tsp else "ids"
        self.positions = 1  # rows of the forward pass under way
        self.telemetry = Telemetry()

    def _matrix(self, key: str) -> str:
        return f"lm_head.{self.order}" if key == "lm_head" else key

    def _rows(self, matrix: str) -> int:
        return 1 if matrix.startswith("lm_head.") else self.positions

    def linear(self, x: Shares, key: str, weight: Any) -> Shares:
        start = time.perf_counter()
        matrix = self._matrix(key)
        out = []
        for position, block in self.layout.work(matrix, self.link.rank, self.link.world, self._rows(matrix)):
            self.link.check()
            piece = x.find(position, block.row0, block.rows)
            y = matmul(
                self.engine, piece, self.caches.matrix(block), block.plan, MATMUL_LEVEL, self.link.check
            )
            out.append(Part(position, block.col0, y))
        self.telemetry.add_time("lm_head" if key == "lm_head" else "layers", time.perf_counter() - start)
        return Shares(out)

    def add(self, a: Shares, b: Shares) -> Shares:
        """Shares of a + b: parts of the same slice are added, the others kept (sums of shares)."""
        out = list(a.parts)
        for part in b.parts:
            for i, mine in enumerate(out):
                if (mine.position, mine.offset) == (part.position, part.offset) and mine.vec.same_layout(
                    part.vec
                ):
                    out[i] = Part(mine.position, mine.offset, arith.add(self.engine, mine.vec, part.vec))
                    break
            else:
                out.append(part)
        return Shares(out)

    def apply(self, fn: NonLinear, layer: int, xs: Sequence[Shares], into: Consumer) -> Shares:
        return self.call(fn, layer, xs, self.wanted(into, layer))

    def call(self, fn: str, layer: int, xs: Sequence[Shares], pieces: list[PieceSpec]) -> Shares:
        """One collective oracle call: this rank's input shares out, the pieces it needs back."""
        parts, blobs, offset = [], [], 0
        for x, width in zip(xs, input_widths(self.layout.shape, fn), strict=True):
            for part in x.parts:
                parts.append((part.position, part.offset + offset))
                blobs.append(vector_to_bytes(for_key_holder(self.engine, part.vec)))
            offset += width
        reply = self._oracle(OracleCall(fn, layer, parts, blobs, pieces))
        top = self.engine.top_level
        return Shares(
            [
                Part(s.position, s.start, vector_from_bytes(self.public, b, s.level_under(top)))
                for s, b in zip(pieces, reply, strict=True)
            ]
        )

    def _oracle(self, call: OracleCall) -> list[bytes]:
        tel = self.telemetry
        start = time.perf_counter()
        reply = self.link.oracle(call)
        tel.add_time("oracle", time.perf_counter() - start)
        tel.oracle_calls[call.fn] = tel.oracle_calls.get(call.fn, 0) + 1
        tel.bytes_to_key_holder += sum(len(b) for b in call.blobs)
        tel.bytes_from_key_holder += sum(len(b) for b in reply)
        return reply

    def refresh(self, vec: EncVector, ring: int) -> EncVector:
        """`vec` re-encrypted by the key holder at the top of `ring` (0: the session's, 1: the tail)."""
        into = self.public if ring == 0 else self.public.tail
        if into is None:
            raise InputError("a refresh into the sampler tail, but the session's preset has none")
        self.telemetry.refreshes += 1
        sent = vector_to_bytes(for_key_holder(self.engines[vec.ring], vec))
        (blob,) = self._oracle(OracleCall(REFRESHES[ring], -1, [(0, 0)], [sent]))
        return unpack(self.engines[ring], vector_from_bytes(into, blob, self.engines[ring].top_level))

    def wanted(self, into: Consumer, layer: int) -> list[PieceSpec]:
        """The input pieces this rank's next products need, laid out for their plans."""
        rank, world = self.link.rank, self.link.world
        if into == "lm_head":
            work = self.layout.work(self._matrix("lm_head"), rank, world, 1)
        else:
            work = [
                item
                for name in CONSUMERS[into]
                for item in self.layout.work(f"layers.{layer}.{name}", rank, world, self.positions)
            ]
        best: dict[tuple[int, int, int, int], int] = {}  # one piece per slice and period, most copies
        for position, block in work:
            plan = block.plan
            key = (position, block.row0, block.row0 + block.rows, plan.period)
            best[key] = max(best.get(key, 1), plan.copies)
        return [
            PieceSpec(p, r0, r1, period, copies, MATMUL_LEVEL) for (p, r0, r1, period), copies in best.items()
        ]


class RankOps(CkksOps):
    """The sampler's operations on this rank's vocabulary chunks, with cancellation points."""

    def __init__(self, backend: RankBackend, link: RankLink) -> None:
        tail = backend.engines[1] if len(backend.engines) > 1 else None
        super().__init__(backend.engine, backend.refresh, peers=link if link.world > 1 else None, tail=tail)
        self.link = link

    def cubic(self, a: EncVector, coeffs: tuple[float, float, float, float]) -> EncVector:
        self.link.check()
        return super().cubic(a, coeffs)

    def prefix_sum(self, a: EncVector) -> EncVector:
        self.link.check()
        return super().prefix_sum(a)

    def mul(self, a: EncVector, b: EncVector) -> EncVector:
        self.link.check()
        return super().mul(a, b)


class RankSession:
    """`model.generate.ModelSession` on ciphertexts: the forward pass over this rank's shares."""

    def __init__(self, backend: RankBackend, weights: WorkerWeights, tsp: bool, link: RankLink) -> None:
        self.backend = backend
        self.weights = weights.ordered(tsp)
        self.link = link
        self.tokens = 0

    def _forward(self, x: Shares, positions: int, stage: str, head: bool = True) -> Shares:
        self.backend.positions = positions
        layers = self.weights.shape.layers
        total = layers + 3 if head else layers  # the layers, then LM head and softmax, sampler, mixture

        def on_layer(done: Progress) -> None:  # before each layer: a Cancel stops the pass here
            self.link.check()
            self.link.progress(Progress(f"{stage}: layer {done.done + 1}/{layers}", done.done, total))

        out = forward(self.backend, self.weights, x, on_layer, head)
        if head:
            self.link.progress(Progress("sampler", layers + 1, total))
        return out

    def prefill(self, x: Shares, positions: int) -> Shares:
        return self._forward(x, positions, f"prompt ({positions} positions)")

    def read(self, x: Shares, positions: int) -> None:
        """The layers only: the key holder's cache gains the positions; nothing is predicted."""
        self._forward(x, positions, f"reading ahead ({positions} positions)", head=False)

    def step(self, embedding: Shares) -> Shares:
        self.tokens += 1
        return self._forward(embedding, 1, "token")


class RankSelector:
    """`model.generate.Selector` on ciphertexts: softmax (key holder), the circuit, the mixture (lazy)."""

    def __init__(self, backend: RankBackend, ops: RankOps, caches: RankCaches, config: SamplerConfig) -> None:
        self.backend = backend
        self.ops = ops
        self.caches = caches
        self.config = config

    def select(self, logits: Shares, r: float) -> Selection:
        layout, link = self.backend.layout, self.backend.link
        chunks = layout.chunks_of(link.rank, link.world)
        start = time.perf_counter()
        stop = min(chunks.stop * layout.slots, layout.shape.vocab)
        piece = PieceSpec(0, chunks.start * layout.slots, stop)  # this rank's chunks of q, top level
        (q,) = self.backend.call("softmax", -1, [logits], [piece]).parts
        one_hot = approx_one_hot(self.ops, q.vec, r, self.config.amp_rounds, self.config.pp)
        self.backend.telemetry.add_time("sampler", time.perf_counter() - start)
        return Selection(token_id=None, embed=lambda: self.mixture(one_hot), payload=one_hot)

    def mixture(self, one_hot: EncVector) -> Shares:
        """This rank's share of the next input embedding: its chunks of I' times their rows of W_pi."""
        backend, link = self.backend, self.backend.link
        start = time.perf_counter()
        layers = backend.layout.shape.layers
        link.progress(Progress("mixture embedding", layers + 2, layers + 3))
        ready = self.ops.ensure_levels(one_hot, MATMUL_LEVEL)
        ((_, block),) = backend.layout.work(f"mixture.{backend.order}", link.rank, link.world, 1)
        matrix = self.caches.matrix(block)
        y = matmul(backend.engine, ready, matrix, block.plan, MATMUL_LEVEL, link.check)  # a partial sum
        backend.telemetry.add_time("mixture", time.perf_counter() - start)
        return Shares([Part(0, 0, y)])


def run_rank(
    link: RankLink,
    public: PublicContext,
    weights: WorkerWeights,
    caches: RankCaches,
    layout: Layout,
    request: RankRequest,
) -> FinishReason:
    """Generate `request.budget` tokens; each goes out through `link.token`. Returns the finish reason.

    A budget of 0 reads the prompt into the key holder's cache and predicts nothing (a read-ahead)."""
    engine = Engine.for_worker(public)
    tsp = request.sampler.tsp
    backend = RankBackend(engine, public, layout, caches, link, tsp)
    ops = RankOps(backend, link)
    session = RankSession(backend, weights, tsp, link)
    selector = RankSelector(backend, ops, caches, request.sampler)
    rng = np.random.default_rng(request.seed)
    for _ in range(request.first_index):
        rng.random()
    x = Shares([Part(p, 0, vector_from_bytes(public, blob, 0)) for p, blob in sorted(request.prompt.items())])
    if any(part.vec.length != layout.shape.d for part in x.parts):
        raise InputError(f"every prompt position must be one encrypted vector of {layout.shape.d} values")
    if request.budget == 0:
        session.read(x, request.positions)
        return request.finish
    logits = session.prefill(x, request.positions)
    steps: Iterator[Any] = decode(
        session, logits, selector, request.budget, rng, length_finish=request.finish
    )
    for step in steps:
        tel = backend.telemetry
        tel.rotations = engine.counts["rotate"]
        payload = vector_to_bytes(for_key_holder(engine, step.selection.payload))
        link.token(request.first_index + step.index, tel.as_dict(), [payload])
        engine.counts.clear()
        backend.telemetry = Telemetry()
    return request.finish
