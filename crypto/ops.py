"""The sampler's `VectorOps` interface on CKKS ciphertexts, with counted refreshes.

`CkksOps` satisfies `model.vector_ops.VectorOps[EncVector]` structurally (this module does not import
`model.vector_ops`), so the sampler runs unchanged on ciphertexts. Refresh is the key holder's oracle
(DESIGN.md section 4): a constructor argument `refresh(vec, ring) -> vec` that decrypts and re-encrypts
at the top level of ring 0 (the session's parameters) or 1 (the sampler tail); `local_refresh(secret)`
is that function for tests and benchmarks.

The sampler tail (`crypto.params.sampler_tail`): `coarse(vec)` refreshes into it, where a fresh
ciphertext has 4 levels at scale 2^34 instead of 2 at 2^49, and every later refresh stays there until
`fine(vec)` brings the vector back (rotations, so the shift, need the session's Galois keys). Without a
tail engine both are no-ops.

Depths at N = 8192 (2 levels per fresh ciphertext): cubic 2, mul / mul_const 1, prefix_sum 2,
shift_right 1, add / sub / add_const 0. Before an operation that needs more levels than its input has,
`CkksOps` refreshes the input (counted in `refreshes`) if `auto_refresh` is on, else raises
`LevelsExhausted` before computing. `ensure_levels` refreshes explicitly. A sampler step (DESIGN.md
section 2) takes 27 refreshes of the 12-ciphertext vocabulary vector at N = 8192 without a tail: one
per cubic (25; the prefix sum used both levels of the softmax's answer), one for the shift and the
product, one for PP; with the default preset's tail, 18: the first 7 cubics one each, the other 18 two
per refresh (9), then the product and PP.

A vocabulary vector may be split into contiguous parts held by several worker processes (`Peers`):
each `CkksOps` then works on its own part, and the two operations that cross part boundaries (the
prefix sum's carry and the shift by one) swap one or two ciphertexts with the other parts through
`Peers.exchange`. Every other operation is element-wise and needs nothing from the others.

References: model/vector_ops.py; DESIGN.md sections 2 and 4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import tenseal.sealapi as sealapi

from core.errors import LayoutError, LevelsExhausted
from crypto import arith, poly, prefix
from crypto.engine import Ciphertext, Engine
from crypto.keys import SecretContext
from crypto.keys_wire import RotationPlan
from crypto.seal_io import seal_from_bytes, seal_to_bytes
from crypto.vector import EncVector, decrypt_vector, encrypt_vector

Refresh = Callable[[EncVector, int], EncVector]  # (vector, ring to re-encrypt into) -> fresh vector
Cubic = tuple[float, float, float, float]


class Peers(Protocol):
    """The processes that hold the other parts of a split vector, in order (this one is `rank`)."""

    rank: int

    def exchange(self, tag: str, blobs: list[bytes]) -> list[list[bytes]]:
        """Every part's `blobs` (SEAL ciphertexts) in rank order; each part calls it at the same point."""
        ...


def local_refresh(secret: SecretContext) -> Refresh:
    """A refresh oracle run in-process by the key holder: decrypt, re-encrypt at the top of the ring asked
    for (the same layout)."""
    rings = [secret] if secret.tail is None else [secret, secret.tail]
    engines = [Engine.for_key_holder(r) for r in rings]

    def refresh(vec: EncVector, ring: int) -> EncVector:
        values = decrypt_vector(rings[vec.ring], vec)
        return encrypt_vector(rings[ring], values, chunk=vec.chunk, engine=engines[ring])

    return refresh


def sampler_rotation_plan(slot_count: int, chunk: int | None = None) -> RotationPlan:
    """Galois keys for every `CkksOps` operation on vectors of `chunk` values per ciphertext."""
    c = slot_count if chunk is None else chunk
    return prefix.prefix_rotation_plan(slot_count).union(prefix.shift_rotation_plan(slot_count, c))


class CkksOps:
    """`VectorOps[EncVector]` over a worker engine.

    Args:
        engine: the worker's engine (Galois keys from `sampler_rotation_plan`).
        refresh: the key holder's refresh oracle.
        auto_refresh: refresh automatically when an operation lacks levels (else raise LevelsExhausted).
        peers: the other parts of a split vector.
        tail: the worker's engine over the sampler tail (`Engine.for_tail`), or None.
    """

    def __init__(
        self,
        engine: Engine,
        refresh: Refresh,
        auto_refresh: bool = True,
        peers: Peers | None = None,
        tail: Engine | None = None,
    ) -> None:
        self.engine = engine
        self.engines = [engine] if tail is None else [engine, tail]  # by ring
        self._refresh = refresh
        self.auto_refresh = auto_refresh
        self.peers = peers
        self.refreshes = 0
        self.refreshed_ciphertexts = 0

    def refresh(self, a: EncVector, ring: int | None = None) -> EncVector:
        """Call the oracle (counted): `a` re-encrypted at the top of `ring` (default: its own)."""
        into = a.ring if ring is None else ring
        self.refreshes += 1
        self.refreshed_ciphertexts += len(a.cts)
        out = self._refresh(a, into)
        top = self.engines[into].top_level
        if out.ring != into:
            raise LayoutError(f"a refresh into ring {into} came back in ring {out.ring}")
        if out.level < top:
            raise LevelsExhausted("refresh", top, out.level)
        return out

    def coarse(self, a: EncVector) -> EncVector:
        """`a` refreshed into the sampler tail (no-op without one, or if it is there already)."""
        return a if len(self.engines) == 1 or a.ring == 1 else self.refresh(a, 1)

    def fine(self, a: EncVector) -> EncVector:
        """`a` back in the session's parameters (a refresh if it is in the tail)."""
        return a if a.ring == 0 else self.refresh(a, 0)

    def _engine(self, a: EncVector) -> Engine:
        return self.engines[a.ring]

    def _levels(self, a: EncVector, needed: int, operation: str) -> EncVector:
        if a.level >= needed:
            return a
        if not self.auto_refresh:
            raise LevelsExhausted(operation, needed, a.level)
        return self.ensure_levels(a, needed)

    def ensure_levels(self, a: EncVector, levels: int) -> EncVector:
        """`a`, refreshed if it has fewer than `levels` levels left.

        Raises:
            LevelsExhausted: `levels` exceeds the depth of the parameter set (no refresh can help).
        """
        top = self._engine(a).top_level
        if levels > top:
            raise LevelsExhausted("ensure_levels", levels, top)
        return a if a.level >= levels else self.refresh(a)

    def add(self, a: EncVector, b: EncVector) -> EncVector:
        return arith.add(self._engine(a), a, b)

    def sub(self, a: EncVector, b: EncVector) -> EncVector:
        return arith.sub(self._engine(a), a, b)

    def mul(self, a: EncVector, b: EncVector) -> EncVector:
        a = self._levels(a, 1, "mul")
        b = self._levels(b, 1, "mul")
        return arith.mul(self._engine(a), a, b)

    def mul_const(self, a: EncVector, c: float) -> EncVector:
        if c == 1.0:
            return a
        if c == -1.0:
            return arith.negate(self._engine(a), a)
        return arith.mul_const(self._engine(a), self._levels(a, 1, "mul_const"), c)

    def add_const(self, a: EncVector, c: float) -> EncVector:
        return arith.add_const(self._engine(a), a, c)

    def cubic(self, a: EncVector, coeffs: Cubic) -> EncVector:
        a = self._levels(a, poly.cubic_depth(coeffs), "cubic")
        return poly.cubic(self._engine(a), a, coeffs)

    def prefix_sum(self, a: EncVector) -> EncVector:
        a = self._levels(self.fine(a), prefix.PREFIX_DEPTH, "prefix_sum")
        if self.peers is None:
            return prefix.prefix_sum(self.engine, a)
        scan = prefix.prefix_scan(self.engine, a)  # the rotations, in parallel with the other parts
        totals = self.peers.exchange("prefix carry", [seal_to_bytes(ct) for ct in scan.total])
        carry: tuple[Ciphertext, Ciphertext] | None = None
        for blobs in totals[: self.peers.rank]:  # everything before this part
            re, im = (self._load(b) for b in blobs)
            if carry is not None:
                re, im = self.engine.add(carry[0], re), self.engine.add(carry[1], im)
            carry = (re, im)
        return prefix.prefix_finish(self.engine, scan, carry)

    def shift_right(self, a: EncVector) -> EncVector:
        a = self._levels(self.fine(a), prefix.SHIFT_DEPTH, "shift_right")
        if self.peers is None:
            return prefix.shift_right(self.engine, a)
        lasts = self.peers.exchange("shift carry", [seal_to_bytes(prefix.shift_carry(self.engine, a))])
        before = self._load(lasts[self.peers.rank - 1][0]) if self.peers.rank > 0 else None
        return prefix.shift_right(self.engine, a, before)

    def _load(self, blob: bytes) -> Ciphertext:
        ct = sealapi.Ciphertext()
        seal_from_bytes(ct, self.engine.seal_context, blob)
        return ct
