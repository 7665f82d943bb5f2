"""Encrypted vectors longer than one ciphertext: levels, the key holder's packed layout, bad layouts (their
bytes on the wire: test_vector_wire.py)."""

from __future__ import annotations

import json

import pytest

from core.errors import LayoutError, MissingRotationKey, WireFormatError
from crypto import arith, poly
from crypto.ops import sampler_rotation_plan
from crypto.vector import decrypt_vector, encrypt_vector, for_key_holder, unpack
from crypto.vector_wire import (
    encrypt_vector_bytes,
    vector_from_bytes,
    vector_from_chunks,
    vector_to_bytes,
    vector_to_chunks,
)
from tests.conftest import assert_close

ATOL = 1e-9


def test_results_go_back_at_level_0_smaller_and_as_precise(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    x = rng.uniform(-300, 300, 4096)  # a level-0 value may be up to ~2^10 at scale 2^49
    worker = ckks.engine()
    v = encrypt_vector(ckks.secret, x, level=1)
    low = for_key_holder(worker, v)
    assert low.level == 0 and for_key_holder(worker, low) is low
    assert len(vector_to_bytes(low)) < 0.6 * len(vector_to_bytes(v))
    back = vector_from_bytes(ckks.secret, vector_to_bytes(low), level=0)
    assert_close(decrypt_vector(ckks.secret, back), x, 300 * ATOL)


@pytest.mark.parametrize("ring", [0, 1])
def test_vectors_travel_to_the_key_holder_two_chunks_per_ciphertext(ckks, rng, ring: int) -> None:  # type: ignore[no-untyped-def]
    secret, worker = (ckks.secret, ckks.engine()) if ring == 0 else (ckks.secret.tail, ckks.tail_engine())
    x, y = rng.uniform(-1, 1, (2, 3 * 4096 - 100))  # three ciphertexts: one pair and one alone
    v = encrypt_vector(secret, x, level=1)
    packed = for_key_holder(worker, v)
    assert (packed.packed, len(packed.cts), packed.level) == (True, 2, 0) and for_key_holder(
        worker, packed
    ) is packed
    unpacked_bytes = len(vector_to_bytes(v.with_cts([worker.mod_switch(ct, 0) for ct in v.cts], 0)))
    assert len(vector_to_bytes(packed)) < 0.7 * unpacked_bytes
    back = vector_from_bytes(secret, vector_to_bytes(packed), level=0)
    tolerance = ATOL if ring == 0 else 2e-7  # sqrt(2) times the noise of either half
    assert_close(decrypt_vector(secret, back), x, tolerance)
    total = arith.add(worker, back, for_key_holder(worker, encrypt_vector(secret, y, level=1)))
    assert_close(decrypt_vector(secret, total), x + y, 2 * tolerance)  # shares add while packed
    for refused in (
        lambda: arith.mul(worker, back, back),
        lambda: arith.add_const(worker, back, 1.0),
        lambda: poly.cubic(worker, back, (0.0, 1.0, 0.0, 1.0)),
    ):
        with pytest.raises(LayoutError, match="packed"):
            refused()
    with pytest.raises(LayoutError):
        arith.add(worker, back, encrypt_vector(secret, x, level=0))  # packed and not: different layouts
    chunks = vector_to_chunks(packed)
    header = json.loads(chunks[0])
    with pytest.raises(WireFormatError, match="need 3 ciphertexts, got 2"):  # a false claim of no packing
        vector_from_chunks(secret, [json.dumps({**header, "packed": False}).encode(), *chunks[1:]])


def test_the_key_holder_packs_two_chunks_a_ciphertext_and_the_worker_unpacks_them(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    x = rng.uniform(-1, 1, 3 * 4096 - 7)
    worker = ckks.engine(sampler_rotation_plan(ckks.params.slot_count))  # holds the conjugation key
    plain, packed = (encrypt_vector_bytes(ckks.secret, x, level=2, packed=p) for p in (False, True))
    assert len(packed) < 0.7 * len(plain)
    vec = vector_from_bytes(ckks.secret, packed, level=2)
    assert vec.packed and len(vec.cts) == 2
    back = unpack(worker, vec)
    assert (back.packed, len(back.cts), back.level) == (False, 3, 2) and unpack(worker, back) is back
    # the conjugation's key switch adds ~1e-9 at the top level (key-switching noise over scale 2^49)
    assert_close(decrypt_vector(ckks.secret, back), x, 5e-9)
    assert_close(decrypt_vector(ckks.secret, poly.cubic(worker, back, (0.0, 1.0, 0.0, 1.0))), x + x**3, 2e-8)
    with pytest.raises(MissingRotationKey):
        unpack(ckks.engine(), vec)  # no conjugation key: the key holder must not pack for this worker


def test_lower_level_encryption_is_tracked(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    x = rng.uniform(-1, 1, 10)
    v = encrypt_vector(ckks.secret, x, level=0)
    assert v.level == 0
    assert vector_from_bytes(ckks.secret, vector_to_bytes(v)).level == 0


def test_bad_layouts_raise(ckks) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LayoutError):
        encrypt_vector(ckks.secret, [])
    with pytest.raises(LayoutError):
        encrypt_vector(ckks.secret, [1.0], chunk=ckks.params.slot_count + 1)
