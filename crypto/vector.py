"""Encrypted vectors longer than one ciphertext, and their wire format.

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

Wire format (version 3): one header chunk (JSON: length, chunk, level, clean, count, period, copies, ring,
packed)
then one chunk per ciphertext (SEAL bytes), so a long vector streams as 1 + n messages;
`vector_to_bytes` frames the same chunks into one blob with u32 lengths.

References: DESIGN.md sections 4 and 7 (ciphertext sizes, chunked transfer).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sealapi

from crypto.engine import Ciphertext, Engine
from crypto.keys import SecretContext
from crypto.params import CKKSParams
from crypto.seal_io import seal_from_bytes, seal_to_bytes
from model.errors import LayoutError, WireFormatError

FloatArray = npt.NDArray[np.float64]
VECTOR_WIRE_VERSION = 3
_U32 = struct.Struct(">I")
_RINGS = {0: "the session's parameters", 1: "the sampler tail's parameters"}


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


class _HasSeal(Protocol):
    params: CKKSParams
    seal_context: Any
    ring: int


def chunk_values(values: npt.ArrayLike, chunk: int) -> list[FloatArray]:
    """Split a 1-D array into the per-ciphertext pieces of the layout."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    return [arr[i : i + chunk] for i in range(0, arr.size, chunk)]


def _laid_out(
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
    monomial = engine.encode(monomial_slots(engine.slots), vec.level, scale=1.0)
    cts = []
    for k, z in enumerate(vec.cts):
        conj = engine.conjugate(z)
        cts.append(engine.add(z, conj))  # 2 Re z = a
        if 2 * k + 1 < -(-vec.length // vec.chunk):
            cts.append(engine.mul_plain(engine.sub(z, conj), monomial))  # 2i Im z times X^(N/2) = b
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
    eng, pieces, shape = _laid_out(secret, values, chunk, level, engine, period, copies)
    cts = []
    for piece in pieces:
        ct = sealapi.Ciphertext()
        secret.encryptor.encrypt_symmetric(eng.encode(piece, shape.level), ct)
        cts.append(ct)
    return shape.with_cts(cts, shape.level)


def encrypt_vector_bytes(
    secret: SecretContext,
    values: npt.ArrayLike,
    chunk: int | None = None,
    level: int | None = None,
    engine: Engine | None = None,
    period: int = 0,
    copies: int = 1,
    packed: bool = False,
) -> bytes:
    """`vector_to_bytes(encrypt_vector(...))` with every ciphertext *seeded*: half the bytes; `packed`
    puts two chunks in each ciphertext (half again; the worker needs the conjugation key to `unpack`).

    A symmetric encryption's second polynomial is uniformly random; SEAL can write the seed that
    generates it instead (`Encryptor.encrypt_symmetric` returning a Serializable), and every loader
    regenerates it, so only the key holder's fresh ciphertexts can travel this way. Encrypt at the level
    the first use needs (`level`): a seeded ciphertext mod-switched later would be expanded again.
    """
    eng, pieces, shape = _laid_out(secret, values, chunk, level, engine, period, copies, packed)
    seeded = [seal_to_bytes(secret.encryptor.encrypt_symmetric(eng.encode(p, shape.level))) for p in pieces]
    return frame_chunks([_header(shape)] + seeded)


def for_key_holder(engine: Engine, vec: EncVector) -> EncVector:
    """`vec` mod-switched to level 0, the smallest ciphertext (131 KB instead of 249 KB or 364 KB at the
    default preset), and packed two chunks per ciphertext: the key holder only decrypts it, and the
    scale, so the precision, is unchanged. Values must fit level 0 (|value| * scale below half the last
    prime), as every level-0 value does."""
    low = vec if vec.level == 0 else vec.with_cts([engine.mod_switch(ct, 0) for ct in vec.cts], 0)
    if low.packed or len(low.cts) < 2:
        return low
    monomial = engine.encode(monomial_slots(engine.slots), 0, scale=1.0)  # X^(N/2), exactly
    cts = [
        engine.add(low.cts[k], engine.mul_plain(low.cts[k + 1], monomial))
        if k + 1 < len(low.cts)
        else low.cts[k]
        for k in range(0, len(low.cts), 2)
    ]
    return replace(low, cts=tuple(cts), packed=True)


def monomial_slots(slots: int) -> npt.NDArray[np.complex128]:
    """The slots of the polynomial X^(N/2): i at even slots, -i at odd ones (SEAL orders slot j by the
    root zeta^(3^j), and 3^j is 1 mod 4 for even j, 3 for odd j)."""
    return np.where(np.arange(slots) % 2 == 0, 1j, -1j)


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


# --- wire format ------------------------------------------------------------------------------


def _header(vec: EncVector) -> bytes:
    header = {
        "version": VECTOR_WIRE_VERSION,
        "length": vec.length,
        "chunk": vec.chunk,
        "level": vec.level,
        "clean": vec.clean,
        "count": len(vec.cts),
        "period": vec.period,
        "copies": vec.copies,
        "ring": vec.ring,
        "packed": vec.packed,
    }
    return json.dumps(header, sort_keys=True).encode()


def vector_to_chunks(vec: EncVector) -> list[bytes]:
    """Header chunk, then one chunk of SEAL bytes per ciphertext."""
    return [_header(vec)] + [seal_to_bytes(ct) for ct in vec.cts]


def vector_from_chunks(context: _HasSeal, chunks: Sequence[bytes], level: int | None = None) -> EncVector:
    """Inverse of `vector_to_chunks` under a public or secret context.

    Args:
        level: the level the receiver expects (None: any); each side knows the level of everything it
            receives (the key holder: 0; the worker: the level its oracle call asked for).

    Raises:
        WireFormatError: malformed header, wrong count, a ciphertext not valid for this context, at
            another level than the header says, or at another level than expected.
    """
    if not chunks:
        raise WireFormatError("an encrypted vector needs a header chunk")
    try:
        header = json.loads(chunks[0])
        version = header["version"] if isinstance(header, dict) else None
    except (ValueError, KeyError, TypeError) as exc:
        raise WireFormatError(f"bad encrypted-vector header: {exc}") from exc
    if version != VECTOR_WIRE_VERSION:
        raise WireFormatError(f"encrypted-vector wire version {version!r}, expected {VECTOR_WIRE_VERSION}")
    try:
        length, chunk, header_level, count, period, copies, ring = (
            _whole(header, name) for name in ("length", "chunk", "level", "count", "period", "copies", "ring")
        )
        clean, packed = header["clean"], header["packed"]
        if not isinstance(clean, bool) or not isinstance(packed, bool):
            raise TypeError("clean and packed must be true or false")
    except (KeyError, TypeError) as exc:
        raise WireFormatError(f"bad encrypted-vector header: {exc}") from exc
    if len(chunks) - 1 != count:
        raise WireFormatError(f"header announces {count} ciphertexts, got {len(chunks) - 1}")
    if ring != context.ring:
        raise WireFormatError(
            f"an encrypted vector of {_RINGS.get(ring, f'ring {ring}')} where one of "
            f"{_RINGS[context.ring]} was expected"
        )
    if level is not None and header_level != level:
        raise WireFormatError(f"an encrypted vector at level {header_level}, expected level {level}")
    cts = []
    for blob in chunks[1:]:
        ct = sealapi.Ciphertext()
        seal_from_bytes(ct, context.seal_context, blob)
        ct_level = int(context.seal_context.get_context_data(ct.parms_id()).chain_index())
        if ct_level != header_level:
            raise WireFormatError(f"ciphertext at level {ct_level}, header says {header_level}")
        cts.append(ct)
    try:
        return EncVector(tuple(cts), length, chunk, header_level, clean, period, copies, ring, packed)
    except LayoutError as exc:
        raise WireFormatError(str(exc)) from exc


def _whole(header: dict[str, Any], name: str) -> int:
    """A non-negative whole-number header field (never a bool, a float or a 5,000-digit number)."""
    value = header[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise TypeError(f"{name} must be a whole number in 0..2^31-1, got {str(value)[:40]}")
    return value


def frame_chunks(chunks: Sequence[bytes]) -> bytes:
    """Chunks in one blob: u32 count, then (u32 length, bytes) per chunk."""
    parts = [_U32.pack(len(chunks))]
    for c in chunks:
        parts += [_U32.pack(len(c)), c]
    return b"".join(parts)


def vector_to_bytes(vec: EncVector) -> bytes:
    """All of `vector_to_chunks` in one blob (`frame_chunks`)."""
    return frame_chunks(vector_to_chunks(vec))


def vector_ring(data: bytes) -> int:
    """The ring a `vector_to_bytes` blob says it is in (0 or 1), so a receiver holding both contexts can
    load it under the right one (`vector_from_bytes` checks the claim against the ciphertexts).

    Raises:
        WireFormatError: truncated bytes, a malformed header, or a ring other than 0 and 1.
    """
    chunks = split_vector_bytes(data)
    try:
        ring = _whole(json.loads(chunks[0]), "ring") if chunks else -1
    except (ValueError, KeyError, TypeError) as exc:
        raise WireFormatError(f"bad encrypted-vector header: {exc}") from exc
    if ring not in _RINGS:
        raise WireFormatError(f"an encrypted vector of ring {ring}; expected 0 (session) or 1 (sampler tail)")
    return ring


def vector_from_bytes(context: _HasSeal, data: bytes, level: int | None = None) -> EncVector:
    """Inverse of `vector_to_bytes` (and of `encrypt_vector_bytes`); `level` as in `vector_from_chunks`."""
    return vector_from_chunks(context, split_vector_bytes(data), level)


def split_vector_bytes(data: bytes) -> list[bytes]:
    """The chunks of a `vector_to_bytes` blob: the JSON header, then one SEAL ciphertext each.

    Raises:
        WireFormatError: truncated or trailing bytes.
    """
    try:
        (n,) = _U32.unpack_from(data, 0)
        pos, chunks = _U32.size, []
        for _ in range(n):
            (size,) = _U32.unpack_from(data, pos)
            pos += _U32.size
            if pos + size > len(data):
                raise WireFormatError("truncated encrypted vector")
            chunks.append(data[pos : pos + size])
            pos += size
    except struct.error as exc:
        raise WireFormatError(f"truncated encrypted vector: {exc}") from exc
    if pos != len(data):
        raise WireFormatError(f"{len(data) - pos} trailing bytes after the encrypted vector")
    return chunks


def encode_encrypt_serialize(secret: SecretContext, values: npt.ArrayLike, chunk: int | None = None) -> bytes:
    """Key holder: values -> wire bytes (top level)."""
    return vector_to_bytes(encrypt_vector(secret, values, chunk))


def deserialize_decrypt_decode(secret: SecretContext, data: bytes) -> FloatArray:
    """Key holder: wire bytes -> values."""
    return decrypt_vector(secret, vector_from_bytes(secret, data))


def vector_nbytes(vec: EncVector) -> int:
    """Serialised size in bytes (what the wire carries, header included)."""
    return sum(len(c) for c in vector_to_chunks(vec))
