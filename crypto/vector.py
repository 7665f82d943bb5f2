"""Encrypted vectors longer than one ciphertext: layout, levels, rings, packing (wire: `crypto.vector_wire`).

An `EncVector` holds `length` real values in `ceil(length / chunk)` ciphertexts: ciphertext `k` holds
values `k*chunk ... k*chunk + chunk - 1` in its slots `0 .. chunk-1` (the last one may hold fewer).
The vocabulary (49,152) is 12 ciphertexts of 4,096 slots at N = 8192. Slots past a ciphertext's values
are *padding*: `clean` says they are known to be zero (fresh encryptions, masked results); linear maps
that replicate their input (`crypto.matmul`) need clean padding. A single-ciphertext vector may also
arrive *replicated*: `copies` copies of its values at slots `k * period` (the key holder lays fresh
vectors out that way, so a product does not spend rotations replicating them).

Every vector knows its level (rescales left) and all its ciphertexts sit at that level with the
canonical scale of `crypto.engine`.

A vector also knows its *ring*: 0 for the session's parameter set, 1 for the sampler tail
(`crypto.params.sampler_tail`), whose ciphertexts only load under the tail's context.

On its way to the key holder (`for_key_holder`) a vector of several ciphertexts is *packed*: CKKS slots
are complex and our values real, so ciphertext `2k + 1` is multiplied by the monomial X^(N/2) (exact: a
signed shift of the coefficients, no level, no key, no scale change; it multiplies slot j by +i or -i,
`monomial_slots`) and added to ciphertext `2k`. Half the ciphertexts travel; the key holder reads chunk
2k from the real parts and chunk 2k + 1 from the imaginary parts, at sqrt(2) times the noise of either.
A packed vector only adds to another and decrypts.

References: DESIGN.md sections 4 and 7 (ciphertext sizes, chunked transfer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sealapi

from core.errors import LayoutError
from crypto.engine import Ciphertext, Engine, monomial_slots
from crypto.keys import SecretContext

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class EncVector:
    """`length` values in ciphertexts of `chunk` values each, all at multiplicative level `level`."""

    cts: tuple[Ciphertext, ...]
    length: int
    chunk: int
    level: int
    clean: bool = True
    period: int = 0  # replicated layout: copy k of the values starts at slot k * period (0: not replicated)
    copies: int = 1  # how many copies of the values the ciphertext holds
    ring: int = 0  # 0: the session's parameters; 1: the sampler tail
    packed: bool = False  # two chunks per ciphertext, real and imaginary parts (for the key holder only)

    def __post_init__(self) -> None:
        if self.length <= 0 or self.chunk <= 0:
            raise LayoutError(f"length and chunk must be positive, got {self.length}, {self.chunk}")
        expected = -(-self.length // self.chunk)
        if self.packed:
            expected = -(-expected // 2)
        if len(self.cts) != expected:
            raise LayoutError(
                f"{self.length} values in chunks of {self.chunk} need {expected}"
                f"{' packed' if self.packed else ''} ciphertexts, got {len(self.cts)}"
            )
        if self.copies < 1 or (self.copies > 1 and (len(self.cts) != 1 or self.period < self.length)):
            raise LayoutError(
                f"{self.copies} copies at period {self.period} do not fit {self.length} values "
                "in one ciphertext"
            )

    def count(self, k: int) -> int:
        """How many values ciphertext `k` holds."""
        return min(self.chunk, self.length - k * self.chunk)

    def with_cts(self, cts: Sequence[Ciphertext], level: int, clean: bool | None = None) -> EncVector:
        """Same layout, new ciphertexts."""
        return replace(self, cts=tuple(cts), level=level, clean=self.clean if clean is None else clean)

    def same_layout(self, other: EncVector) -> bool:
        return (self.length, self.chunk, self.period, self.copies, self.ring, self.packed) == (
            other.length,
            other.chunk,
            other.period,
            other.copies,
            other.ring,
            other.packed,
        )

    def require_unpacked(self, operation: str) -> None:
        """Raise `LayoutError` for an operation that is not linear over the packed halves."""
        if self.packed:
            raise LayoutError(f"{operation} needs an unpacked vector; a packed one only adds and decrypts")


def chunk_values(values: npt.ArrayLike, chunk: int) -> list[FloatArray]:
    """Split a 1-D array into the per-ciphertext pieces of the layout."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    return [arr[i : i + chunk] for i in range(0, arr.size, chunk)]


def laid_out(
    secret: SecretContext,
    values: npt.ArrayLike,
    chunk: int | None,
    level: int | None,
    engine: Engine | None,
    period: int,
    copies: int,
    packed: bool = False,
) -> tuple[Engine, list[npt.NDArray[Any]], EncVector]:
    """The plaintext pieces of `encrypt_vector`'s layout, and the vector's shape (with no ciphertexts)."""
    eng = engine if engine is not None else Engine.for_key_holder(secret)
    slots = secret.params.slot_count
    c = slots if chunk is None else chunk
    if not 0 < c <= slots:
        raise LayoutError(f"chunk must be in 1..{slots}, got {c}")
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise LayoutError("cannot encrypt an empty vector")
    lvl = eng.top_level if level is None else level
    if not 0 <= lvl <= eng.top_level:
        raise LayoutError(f"level must be in 0..{eng.top_level}, got {lvl}")
    if copies > 1:
        if arr.size > period or copies * period > slots:
            raise LayoutError(f"{copies} copies of {arr.size} values at period {period} exceed {slots} slots")
        laid = np.zeros(copies * period)
        for k in range(copies):
            laid[k * period : k * period + arr.size] = arr
        pieces = [laid]
        c = arr.size
    else:
        pieces = chunk_values(arr, c)
    pack = packed and len(pieces) > 1
    if pack:
        pieces = _pack_pieces(pieces, slots)
    shape = EncVector(
        (None,) * len(pieces),
        int(arr.size),
        c,
        lvl,
        True,
        period if copies > 1 else 0,
        copies,
        secret.ring,
        pack,
    )
    return eng, pieces, shape


def _pack_pieces(pieces: list[FloatArray], slots: int) -> list[npt.NDArray[Any]]:
    """Pairs of pieces as complex slots a/2 + i c/2 with c = b / (i * monomial): the worker's `unpack`
    reads a as z + conj(z) and b as (z - conj(z)) * X^(N/2), without a level or a rescale."""
    towards = -1j / monomial_slots(slots)  # c_j = -s_j b_j when X^(N/2) multiplies slot j by i s_j
    out: list[npt.NDArray[Any]] = []
    for k in range(0, len(pieces), 2):
        z = np.zeros(slots, dtype=np.complex128)
        z[: pieces[k].size] = pieces[k] / 2
        if k + 1 < len(pieces):
            b = pieces[k + 1]
            z[: b.size] += 1j * (towards[: b.size] * b) / 2
        out.append(z)
    return out


def unpack(engine: Engine, vec: EncVector) -> EncVector:
    """A packed vector from the key holder (`encrypt_vector_bytes(..., packed=True)`) as ordinary
    ciphertexts, at the same level and scale: one conjugation (the plan's conjugation key) per pair."""
    if not vec.packed:
        return vec
    cts = []
    for k, z in enumerate(vec.cts):
        conj = engine.conjugate(z)
        cts.append(engine.add(z, conj))  # 2 Re z = a
        if 2 * k + 1 < -(-vec.length // vec.chunk):
            cts.append(engine.times_monomial(engine.sub(z, conj)))  # 2i Im z times X^(N/2) = b
    return replace(vec, cts=tuple(cts), packed=False)


def encrypt_vector(
    secret: SecretContext,
    values: npt.ArrayLike,
    chunk: int | None = None,
    level: int | None = None,
    engine: Engine | None = None,
    period: int = 0,
    copies: int = 1,
) -> EncVector:
    """Encode and encrypt (symmetric, secret key) a real vector, at the top level unless `level` is given.

    Args:
        secret: the key holder's context.
        values: 1-D real values.
        chunk: values per ciphertext (default: all slots).
        level: level to encrypt at (default: the top of the chain).
        engine: reuse an engine (saves rebuilding the level table).
        period, copies: lay `copies` copies of the values out at slots `k * period` (one ciphertext);
            the zero slots between copies stay zero, as `crypto.matmul.replicate` would leave them.
    """
    eng, pieces, shape = laid_out(secret, values, chunk, level, engine, period, copies)
    cts = []
    for piece in pieces:
        ct = sealapi.Ciphertext()
        secret.encryptor.encrypt_symmetric(eng.encode(piece, shape.level), ct)
        cts.append(ct)
    return shape.with_cts(cts, shape.level)


def for_key_holder(engine: Engine, vec: EncVector) -> EncVector:
    """`vec` mod-switched to level 0, the smallest ciphertext (131 KB instead of 249 KB or 364 KB at the
    default preset), and packed two chunks per ciphertext: the key holder only decrypts it, and the
    scale, so the precision, is unchanged. Values must fit level 0 (|value| * scale below half the last
    prime), as every level-0 value does."""
    low = vec if vec.level == 0 else vec.with_cts([engine.mod_switch(ct, 0) for ct in vec.cts], 0)
    if low.packed or len(low.cts) < 2:
        return low
    cts = [
        engine.add(low.cts[k], engine.times_monomial(low.cts[k + 1])) if k + 1 < len(low.cts) else low.cts[k]
        for k in range(0, len(low.cts), 2)
    ]
    return replace(low, cts=tuple(cts), packed=True)


def decrypt_slots(secret: SecretContext, ct: Ciphertext, engine: Engine | None = None) -> npt.NDArray[Any]:
    """All complex slots of one ciphertext (for tests and diagnostics)."""
    pt = sealapi.Plaintext()
    secret.decryptor.decrypt(ct, pt)
    eng = engine if engine is not None else Engine.for_key_holder(secret)
    return np.asarray(eng.encoder.decode_complex(pt))


def decrypt_vector(secret: SecretContext, vec: EncVector) -> FloatArray:
    """Decrypt and decode the `length` real values of `vec` (padding slots are ignored)."""
    encoder = sealapi.CKKSEncoder(secret.seal_context)
    out = np.empty(vec.length, dtype=np.float64)
    pt = sealapi.Plaintext()
    halves = monomial_slots(secret.params.slot_count).imag if vec.packed else None
    for k, ct in enumerate(vec.cts):
        secret.decryptor.decrypt(ct, pt)
        if halves is None:
            n = vec.count(k)
            out[k * vec.chunk : k * vec.chunk + n] = np.asarray(encoder.decode_double(pt))[:n]
            continue
        slots = np.asarray(encoder.decode_complex(pt))
        for chunk, values in ((2 * k, slots.real), (2 * k + 1, slots.imag * halves)):
            if chunk * vec.chunk < vec.length:
                n = vec.count(chunk)
                out[chunk * vec.chunk : chunk * vec.chunk + n] = values[:n]
    return out
