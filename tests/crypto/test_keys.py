"""Keys: public bytes carry no secret key and only the planned Galois keys; the loader refuses secrets."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

from core.errors import MissingRotationKey, ParamsError, SecretKeyError, WireFormatError
from crypto.keys import create_secret_context, load_public_context, public_context_bytes
from crypto.keys_wire import MAGIC, PREFIX, RotationPlan, galois_element
from crypto.params import CKKS_40, CKKS_DEFAULT, CKKS_TEST, sampler_tail
from crypto.seal_io import join_chunks, seal_to_bytes, split_chunks
from crypto.vector import decrypt_slots, encrypt_vector
from tests.crypto.test_keys_wire import forge_upload, relabel_upload, split_upload


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
    _, version, header_len = PREFIX.unpack_from(good)
    header = good[PREFIX.size : PREFIX.size + header_len]
    leaked = secret.tenseal_context.serialize(save_secret_key=True)
    h = json.loads(header)
    h.update(context_bytes=len(leaked), relin_bytes=0, galois_bytes=0)
    new_header = json.dumps(h).encode()
    forged = PREFIX.pack(MAGIC, version, len(new_header)) + new_header + leaked
    with pytest.raises(SecretKeyError):
        load_public_context(forged)


# --- the worker derives the parameters from the context, never from the header ------------------


def test_valid_upload_loads_with_the_presets_params(small_upload: bytes, upload_40: bytes) -> None:
    public = load_public_context(small_upload, expected=CKKS_TEST)
    assert public.params == CKKS_TEST and public.params.name == "test"
    assert public.plan == RotationPlan.of([1, 2], CKKS_TEST.slot_count, True)
    assert load_public_context(upload_40).params == CKKS_40


def test_header_claiming_default_over_n8192_s40_keys_is_refused(upload_40: bytes) -> None:
    forged = relabel_upload(upload_40, **CKKS_DEFAULT.to_dict())
    with pytest.raises(
        WireFormatError, match=r"the header says 'default'.*the context is 'n8192-s40'"
    ) as err:
        load_public_context(forged)
    assert "upload public_context_bytes() output unchanged" in str(err.value)


@pytest.mark.parametrize(
    "field,value",
    [
        ("poly_modulus_degree", 32768),  # N=32768 claimed over an N=4096 context
        ("poly_modulus_degree", 8192),
        ("coeff_mod_bit_sizes", [30, 25, 24, 30]),
        ("scale_bits", 25),
        ("name", "default"),  # a preset's name over another preset's numbers
        ("name", "mine"),  # the numbers are the test preset's: its name is not free
    ],
)
def test_header_disagreeing_with_the_context_in_any_field_is_refused(
    small_upload: bytes, field: str, value: object
) -> None:
    with pytest.raises(WireFormatError, match="the header says .* the context is 'test'"):
        load_public_context(relabel_upload(small_upload, **{field: value}))


def test_expected_preset_mismatch_is_refused(small_upload: bytes, upload_40: bytes) -> None:
    with pytest.raises(ParamsError, match=r"session announced preset 'default'.*keys are for 'n8192-s40'"):
        load_public_context(upload_40, expected=CKKS_DEFAULT)
    with pytest.raises(ParamsError, match="announced preset 'n8192-s40'"):
        load_public_context(small_upload, expected=CKKS_40)


def _field(tag: int, wire: int, payload: bytes) -> bytes:
    """One protobuf field (tag < 16): key byte, then the length for length-delimited fields."""
    if wire != 2:
        return bytes([tag << 3 | wire]) + payload
    n, size = len(payload), b""
    while True:
        size += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            break
    return bytes([tag << 3 | 2]) + size + payload


def _crafted_prime_context() -> bytes:
    """A TenSEAL public context (hand-built protobuf, tensealcontext.proto) whose primes have the test
    preset's bit sizes (30, 24, 24, 30) but are not the ones CoeffModulus.Create gives."""
    n = CKKS_TEST.poly_modulus_degree
    c30, c24 = sealapi.CoeffModulus.Create(n, [30] * 4), sealapi.CoeffModulus.Create(n, [24] * 2)
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus([c30[0], c24[0], c24[1], c30[1]])  # Create gives c30[2], c30[3]
    seal = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    assert seal.parameters_set()
    public_key = sealapi.PublicKey()
    sealapi.KeyGenerator(seal).create_public_key(public_key)
    public = (
        _field(1, 2, seal_to_bytes(public_key))
        + _field(2, 0, bytes([7]))  # auto_flags as TenSEAL writes them
        + _field(3, 1, struct.pack("<d", CKKS_TEST.scale))
    )
    return _field(1, 2, seal_to_bytes(parms)) + _field(2, 2, public)


def test_crafted_primes_of_the_same_bit_sizes_are_refused() -> None:
    context = _crafted_prime_context()
    moduli = ts.context_from(context).seal_context().data.key_context_data().parms().coeff_modulus()
    standard = sealapi.CoeffModulus.Create(4096, list(CKKS_TEST.coeff_mod_bit_sizes))
    assert [q.bit_count() for q in moduli] == list(CKKS_TEST.coeff_mod_bit_sizes)  # TenSEAL loads it
    assert [q.value() for q in moduli] != [q.value() for q in standard]
    header = {
        "params": CKKS_TEST.to_dict(),
        "steps": [],
        "conjugate": False,
        "context_bytes": len(context),
        "relin_bytes": 0,
        "galois_bytes": 0,
        "tail": None,
        "tail_relin_bytes": 0,
    }
    with pytest.raises(ParamsError, match="not SEAL's standard primes"):
        load_public_context(forge_upload(header, context))


def test_the_sampler_tail_key_comes_with_its_preset_and_nowhere_else(upload_40: bytes) -> None:
    default = create_secret_context(CKKS_DEFAULT)
    own = public_context_bytes(default, RotationPlan.of([1], CKKS_DEFAULT.slot_count))
    public = load_public_context(own)
    assert public.tail is not None and public.tail.params == sampler_tail(CKKS_DEFAULT)
    assert public.tail.relin_keys.size() == 1
    header, blobs = split_upload(own)
    head = blobs[: len(blobs) - header["tail_relin_bytes"]]
    tail = blobs[len(head) :]
    with pytest.raises(WireFormatError, match="sampler tail of none, preset 'default' has 'default-tail'"):
        load_public_context(forge_upload({**header, "tail": None, "tail_relin_bytes": 0}, head))
    with pytest.raises(WireFormatError, match="no relinearisation keys"):
        load_public_context(forge_upload({**header, "tail_relin_bytes": 0}, head))
    main_relin = blobs[header["context_bytes"] : header["context_bytes"] + header["relin_bytes"]]
    with pytest.raises(WireFormatError, match="cannot load RelinKeys"):  # the head's key in the tail's place
        load_public_context(forge_upload({**header, "tail_relin_bytes": len(main_relin)}, head + main_relin))
    other, other_blobs = split_upload(upload_40)  # a preset without a tail: tail keys are refused
    with pytest.raises(WireFormatError, match="sampler tail of 'default-tail'"):
        load_public_context(
            forge_upload({**other, "tail": header["tail"], "tail_relin_bytes": len(tail)}, other_blobs + tail)
        )
    with pytest.raises(WireFormatError, match="tail relinearisation keys without a sampler tail"):
        load_public_context(forge_upload({**other, "tail_relin_bytes": len(tail)}, other_blobs + tail))


def test_keys_travel_seeded_and_relinearisation_keys_are_checked(small_upload: bytes) -> None:
    secret = create_secret_context(CKKS_40)
    upload = public_context_bytes(secret, RotationPlan.of([1], CKKS_40.slot_count))
    header, blobs = split_upload(upload)
    context = blobs[: header["context_bytes"]]
    galois = blobs[header["context_bytes"] + header["relin_bytes"] :]
    full_galois, full_relin = sealapi.GaloisKeys(), sealapi.RelinKeys()
    secret.key_generator().create_galois_keys([galois_element(1, 8192)], full_galois)
    secret.key_generator().create_relin_keys(full_relin)
    assert len(galois) < 0.55 * len(seal_to_bytes(full_galois))  # seeded: half the bytes
    assert header["relin_bytes"] < 0.55 * len(seal_to_bytes(full_relin))
    public = load_public_context(upload)
    assert public.relin_keys.size() == 1 and public.galois_keys.has_key(galois_element(1, 8192))
    with pytest.raises(WireFormatError, match="no relinearisation keys"):
        load_public_context(forge_upload({**header, "relin_bytes": 0}, context + galois))
    foreign, foreign_blobs = split_upload(small_upload)  # relinearisation keys of other parameters
    other = foreign_blobs[foreign["context_bytes"] : foreign["context_bytes"] + foreign["relin_bytes"]]
    with pytest.raises(WireFormatError, match="cannot load RelinKeys"):
        load_public_context(forge_upload({**header, "relin_bytes": len(other)}, context + other + galois))
    with_relin = secret.tenseal_context.copy()  # the old layout: relinearisation keys inside the context
    with_relin.make_context_public(generate_galois_keys=False, generate_relin_keys=False)
    old = with_relin.serialize(save_public_key=True, save_secret_key=False, save_relin_keys=True)
    with pytest.raises(WireFormatError, match="no relinearisation keys"):
        load_public_context(forge_upload({**header, "context_bytes": len(old)}, old + blobs[len(context) :]))
