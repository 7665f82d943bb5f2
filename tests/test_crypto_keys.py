"""Keys: public bytes carry no secret key and only the planned Galois keys; the loader refuses secrets."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tenseal as ts

from crypto import keys
from crypto.engine import Engine
from crypto.keys import (
    RotationPlan,
    create_secret_context,
    galois_element,
    load_public_context,
    public_context_bytes,
)
from crypto.params import CKKS_TEST
from crypto.seal_io import join_chunks, split_chunks
from crypto.vector import decrypt_slots, encrypt_vector
from model.errors import MissingRotationKey, SecretKeyError, WireFormatError


def test_galois_element_matches_seal_convention() -> None:
    assert galois_element(1, 8192) == 3
    assert galois_element(-1, 8192) == pow(3, 4095, 16384)


def test_public_bytes_round_trip_without_secret(ckks_small) -> None:  # type: ignore[no-untyped-def]
    plan = RotationPlan.of([1, -2], CKKS_TEST.slot_count, conjugate=True)
    data = public_context_bytes(ckks_small.secret, plan)
    public = load_public_context(join_chunks(split_chunks(data, 100_000)))
    assert not public.tenseal_context.is_private()
    assert public.plan == plan
    assert public.params == CKKS_TEST


def test_only_planned_rotations_work(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    slots = ckks.params.slot_count
    eng = ckks.engine(RotationPlan.of([3], slots))
    x = rng.uniform(-1, 1, slots)
    v = encrypt_vector(ckks.secret, x)
    got = decrypt_slots(ckks.secret, eng.rotate(v.cts[0], 3)).real
    assert np.abs(got - np.roll(x, -3)).max() < 1e-8
    with pytest.raises(MissingRotationKey):
        eng.rotate(v.cts[0], 1)
    with pytest.raises(MissingRotationKey):
        eng.conjugate(v.cts[0])


def test_upload_grows_with_planned_steps_only(ckks_small) -> None:  # type: ignore[no-untyped-def]
    slots = CKKS_TEST.slot_count
    none = len(public_context_bytes(ckks_small.secret, RotationPlan()))
    two = len(public_context_bytes(ckks_small.secret, RotationPlan.of([1, 2], slots)))
    four = len(public_context_bytes(ckks_small.secret, RotationPlan.of([1, 2, 4, 8], slots)))
    assert none < two < four
    assert four - two == pytest.approx(two - none, rel=0.1)  # one Galois key per step


def test_refuses_to_serialise_when_secret_key_survives(ckks_small, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(ts.Context, "make_context_public", lambda self, **kw: None)
    with pytest.raises(SecretKeyError):
        public_context_bytes(ckks_small.secret, RotationPlan())


def test_worker_rejects_context_with_secret_key() -> None:
    secret = create_secret_context(CKKS_TEST)
    good = public_context_bytes(secret, RotationPlan())
    _, version, header_len = keys._PREFIX.unpack_from(good)
    header = good[keys._PREFIX.size : keys._PREFIX.size + header_len]
    leaked = secret.tenseal_context.serialize(save_secret_key=True)
    import json

    h = json.loads(header)
    h["context_bytes"] = len(leaked)
    new_header = json.dumps(h).encode()
    forged = keys._PREFIX.pack(keys.MAGIC, version, len(new_header)) + new_header + leaked
    with pytest.raises(SecretKeyError):
        load_public_context(forged)


@pytest.mark.parametrize("mutate", ["magic", "version", "truncate", "short"])
def test_loader_rejects_malformed_bytes(ckks_small, mutate: str) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(public_context_bytes(ckks_small.secret, RotationPlan()))
    if mutate == "magic":
        data[0:6] = b"XXXXXX"
    elif mutate == "version":
        struct.pack_into(">H", data, 6, 99)
    elif mutate == "truncate":
        data = data[:-10]
    else:
        data = data[:5]
    with pytest.raises(WireFormatError):
        load_public_context(bytes(data))


def test_key_holder_engine_has_no_galois_keys(ckks_small) -> None:  # type: ignore[no-untyped-def]
    eng = Engine.for_key_holder(ckks_small.secret)
    v = encrypt_vector(ckks_small.secret, [1.0, 2.0])
    with pytest.raises(MissingRotationKey):
        eng.rotate(v.cts[0], 1)
