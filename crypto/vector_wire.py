"""The wire format of encrypted vectors (`crypto.vector.EncVector`), and the key holder's seeded bytes.

Version 3: one header chunk (JSON: length, chunk, level, clean, count, period, copies, ring, packed), then
one chunk per ciphertext (SEAL bytes), so a long vector streams as 1 + n messages; `vector_to_bytes`
frames the same chunks into one blob with u32 lengths. A receiver checks every claim against the
ciphertexts: their number, their level, and their ring (a ciphertext of the sampler tail does not load
under the session's context, and the other way round).

References: DESIGN.md sections 4 and 7 (ciphertext sizes, chunked transfer).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any, Protocol

import numpy.typing as npt
import tenseal.sealapi as sealapi

from core.errors import LayoutError, WireFormatError
from crypto.engine import Engine
from crypto.keys import SecretContext
from crypto.params import CKKSParams
from crypto.seal_io import seal_from_bytes, seal_to_bytes
from crypto.vector import EncVector, FloatArray, decrypt_vector, encrypt_vector, laid_out

VECTOR_WIRE_VERSION = 3
_U32 = struct.Struct(">I")
_RINGS = {0: "the session's parameters", 1: "the sampler tail's parameters"}


class _HasSeal(Protocol):
    params: CKKSParams
    seal_context: Any
    ring: int


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
    eng, pieces, shape = laid_out(secret, values, chunk, level, engine, period, copies, packed)
    seeded = [seal_to_bytes(secret.encryptor.encrypt_symmetric(eng.encode(p, shape.level))) for p in pieces]
    return frame_chunks([_header(shape)] + seeded)


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


def vector_ring(chunks: Sequence[bytes]) -> int:
    """The ring a vector's chunks (`split_vector_bytes`) say it is in (0 or 1), so a receiver holding both
    contexts can load it under the right one (`vector_from_chunks` checks the claim against the
    ciphertexts).

    Raises:
        WireFormatError: a malformed header, or a ring other than 0 and 1.
    """
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
