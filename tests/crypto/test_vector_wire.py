"""Encrypted vectors on the wire (crypto/vector_wire.py): whole and chunked bytes, seeded uploads, the
header's level and ring checked on load."""

from __future__ import annotations

import json

import pytest

from core.errors import WireFormatError
from crypto.vector import decrypt_vector, encrypt_vector
from crypto.vector_wire import (
    deserialize_decrypt_decode,
    encode_encrypt_serialize,
    encrypt_vector_bytes,
    frame_chunks,
    split_vector_bytes,
    vector_from_bytes,
    vector_from_chunks,
    vector_nbytes,
    vector_ring,
    vector_to_bytes,
    vector_to_chunks,
)
from tests.conftest import assert_close
from tests.crypto.test_vector import ATOL


@pytest.mark.parametrize("length,chunk", [(1, None), (4096, None), (10_000, None), (1000, 300)])
def test_encrypt_decrypt_and_round_trips(ckks, rng, length: int, chunk: int | None) -> None:  # type: ignore[no-untyped-def]
    x = rng.uniform(-1, 1, length)
    v = encrypt_vector(ckks.secret, x, chunk)
    assert v.level == ckks.params.depth
    assert len(v.cts) == -(-length // (chunk or ckks.params.slot_count))
    assert_close(decrypt_vector(ckks.secret, v), x, ATOL)
    worker = ckks.engine()
    public = type("P", (), {"seal_context": worker.seal_context, "params": worker.params, "ring": 0})()
    w = vector_from_bytes(public, vector_to_bytes(v))
    assert (w.length, w.chunk, w.level) == (v.length, v.chunk, v.level)
    assert_close(decrypt_vector(ckks.secret, w), x, ATOL)
    chunks = vector_to_chunks(v)
    assert len(chunks) == 1 + len(v.cts)
    assert_close(decrypt_vector(ckks.secret, vector_from_chunks(public, chunks)), x, ATOL)
    assert vector_nbytes(v) == sum(len(c) for c in chunks)


def test_encode_encrypt_serialize_pipeline(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    x = rng.uniform(-1, 1, 5000)
    assert_close(deserialize_decrypt_decode(ckks.secret, encode_encrypt_serialize(ckks.secret, x)), x, ATOL)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_seeded_vectors_are_half_the_bytes_and_decrypt_the_same(ckks, rng, level: int) -> None:  # type: ignore[no-untyped-def]
    x = rng.uniform(-1, 1, 10_000)  # 3 ciphertexts
    seeded = encrypt_vector_bytes(ckks.secret, x, level=level)
    full = vector_to_bytes(encrypt_vector(ckks.secret, x, level=level))
    assert len(seeded) < 0.55 * len(full)
    worker = ckks.engine()
    public = type("P", (), {"seal_context": worker.seal_context, "params": worker.params, "ring": 0})()
    on_worker = vector_from_bytes(public, seeded, level=level)  # the worker expands the seeds on load
    assert_close(decrypt_vector(ckks.secret, on_worker), x, ATOL)
    other = (level + 1) % 3
    with pytest.raises(WireFormatError, match=f"at level {level}, expected level {other}"):
        vector_from_bytes(public, seeded, level=other)


def test_header_level_mismatch_and_garbage_are_rejected(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    v = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 10))
    chunks = vector_to_chunks(v)
    header = json.loads(chunks[0])
    header["level"] = 0
    with pytest.raises(WireFormatError):
        vector_from_chunks(ckks.secret, [json.dumps(header).encode(), *chunks[1:]])
    with pytest.raises(WireFormatError):
        vector_from_chunks(ckks.secret, [chunks[0], b"not a ciphertext"])
    with pytest.raises(WireFormatError):
        vector_from_bytes(ckks.secret, vector_to_bytes(v)[:-7])


def test_a_vector_says_its_ring_and_loads_under_that_context_only(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    values = rng.uniform(-1, 1, 10)
    tail = ckks.secret.tail
    blob = vector_to_bytes(encrypt_vector(tail, values))
    head = vector_to_chunks(encrypt_vector(ckks.secret, values))
    assert vector_ring(split_vector_bytes(blob)) == 1 and vector_ring(head) == 0
    assert_close(decrypt_vector(tail, vector_from_bytes(tail, blob, level=4)), values, 1e-7)
    with pytest.raises(WireFormatError, match="sampler tail's parameters where one of the session's"):
        vector_from_bytes(ckks.secret, blob)
    chunks = vector_to_chunks(encrypt_vector(ckks.secret, values))
    header = json.loads(chunks[0])
    for ring, problem in ((1, "cannot load Ciphertext"), (7, "ring 7")):  # a false claim, an unknown ring
        forged = frame_chunks([json.dumps({**header, "ring": ring}).encode(), *chunks[1:]])
        with pytest.raises(WireFormatError, match=problem):
            vector_from_bytes(tail, forged) if ring == 1 else vector_ring(split_vector_bytes(forged))
