"""Keys: public bytes carry no secret key and only the planned Galois keys; the loader refuses secrets."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

from core.errors import MissingRotationKey, ParamsError, SecretKeyError, WireFormatError
from crypto import keys
from crypto.keys import (
    RotationPlan,
    create_secret_context,
    galois_element,
    load_public_context,
    public_context_bytes,
)
from crypto.params import CKKS_40, CKKS_DEFAULT, CKKS_TEST, sampler_tail
from crypto.seal_io import join_chunks, seal_to_bytes, split_chunks
from crypto.vector import decrypt_slots, encrypt_vector


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
    h = json.loads(header)
    h.update(context_bytes=len(leaked), relin_bytes=0, galois_bytes=0)
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


# --- the worker derives the parameters from the context, never from the header ------------------


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(JSON header, context and Galois blobs) of an upload (format at the top of crypto/keys_wire.py)."""
    _, _, header_len = keys._PREFIX.unpack_from(data)
    start = keys._PREFIX.size
    return json.loads(data[start : start + header_len]), data[start + header_len :]


def _forge(header: dict[str, Any] | bytes, blobs: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return keys._PREFIX.pack(keys.MAGIC, keys.WIRE_VERSION, len(raw)) + raw + blobs


def _relabel(data: bytes, **params: Any) -> bytes:
    """The upload with the header's params fields replaced (the byte counts are kept honest)."""
    header, blobs = _split(data)
    header["params"] = {**header["params"], **params}
    return _forge(header, blobs)


@pytest.fixture(scope="module")
def small_upload(ckks_small) -> bytes:  # type: ignore[no-untyped-def]
    return public_context_bytes(ckks_small.secret, RotationPlan.of([1, 2], CKKS_TEST.slot_count, True))


@pytest.fixture(scope="module")
def upload_40() -> bytes:
    """Real keys of n8192-s40, the preset with default's N and a chain of other primes."""
    return public_context_bytes(create_secret_context(CKKS_40), RotationPlan())


def test_valid_upload_loads_with_the_presets_params(small_upload: bytes, upload_40: bytes) -> None:
    public = load_public_context(small_upload, expected=CKKS_TEST)
    assert public.params == CKKS_TEST and public.params.name == "test"
    assert public.plan == RotationPlan.of([1, 2], CKKS_TEST.slot_count, True)
    assert load_public_context(upload_40).params == CKKS_40


def test_header_claiming_default_over_n8192_s40_keys_is_refused(upload_40: bytes) -> None:
    forged = _relabel(upload_40, **CKKS_DEFAULT.to_dict())
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
        load_public_context(_relabel(small_upload, **{field: value}))


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
        load_public_context(_forge(header, context))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("conjugate", "no", "conjugate must be true or false"),  # bool("no") was True
        ("conjugate", 1, "conjugate must be true or false"),
        ("steps", [1, True], "every rotation step"),
        ("steps", [1.0], "every rotation step"),
        ("steps", [0], "every rotation step"),
        ("steps", [-1], "every rotation step"),
        ("steps", [2**40], "every rotation step"),
        ("steps", [1, 1], "repeat"),
        ("steps", [CKKS_TEST.slot_count], "below the slot count"),
        ("steps", "1", "list of integers"),
        ("context_bytes", -1, "context_bytes"),
        ("galois_bytes", 1.5, "galois_bytes"),
        ("relin_bytes", True, "relin_bytes"),
        ("galois_bytes", "0", "galois_bytes"),
    ],
)
def test_header_fields_are_strictly_typed(
    small_upload: bytes, field: str, value: object, message: str
) -> None:
    header, blobs = _split(small_upload)
    header[field] = value
    with pytest.raises(WireFormatError, match=message):
        load_public_context(_forge(header, blobs))


@pytest.mark.parametrize(
    "params,error",
    [
        ({"poly_modulus_degree": 4096.0}, WireFormatError),
        ({"poly_modulus_degree": "4096"}, WireFormatError),
        ({"scale_bits": True}, WireFormatError),
        ({"coeff_mod_bit_sizes": [30, "24", 24, 30]}, WireFormatError),
        ({"name": 3}, WireFormatError),
        ({"extra": 1}, WireFormatError),
        ({"coeff_mod_bit_sizes": [60, 60, 60, 60]}, ParamsError),  # above the security limit
    ],
)
def test_header_params_are_strictly_typed(small_upload: bytes, params: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        load_public_context(_relabel(small_upload, **params))


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # recursion bomb
        b'{"steps": [' + b"9" * 5000 + b"]}",  # above Python's int-digit limit
        b'{"conjugate": NaN}',
        b'{"conjugate": false, "conjugate": true}',
        b"\xff\xfe not utf-8",
        b"[]",
        b'{"steps": []}',
    ],
)
def test_hostile_json_headers_give_wire_format_errors(small_upload: bytes, raw: bytes) -> None:
    _, blobs = _split(small_upload)
    with pytest.raises(WireFormatError, match="bad public context header"):
        load_public_context(_forge(raw, blobs))


def test_header_length_past_the_end_is_refused(small_upload: bytes) -> None:
    data = bytearray(small_upload)
    struct.pack_into(">I", data, 8, len(data))
    with pytest.raises(WireFormatError, match="header announces"):
        load_public_context(bytes(data))


def test_galois_keys_of_other_parameters_or_steps_are_refused(upload_40: bytes) -> None:
    default = create_secret_context(CKKS_DEFAULT)
    own = public_context_bytes(default, RotationPlan.of([1], CKKS_DEFAULT.slot_count))
    header, blobs = _split(own)
    keys_at = header["context_bytes"] + header["relin_bytes"]
    context_and_relin = blobs[:keys_at]
    tail = blobs[keys_at + header["galois_bytes"] :]
    foreign_header, foreign_blobs = _split(
        public_context_bytes(create_secret_context(CKKS_40), RotationPlan.of([1], CKKS_40.slot_count))
    )
    foreign_galois = foreign_blobs[foreign_header["context_bytes"] + foreign_header["relin_bytes"] :]
    with pytest.raises(WireFormatError, match="cannot load GaloisKeys"):  # SEAL's load checks parms_id
        load_public_context(
            _forge({**header, "galois_bytes": len(foreign_galois)}, context_and_relin + foreign_galois + tail)
        )
    with pytest.raises(WireFormatError, match="Galois keys hold 1 key"):  # a step without its key
        load_public_context(_forge({**header, "steps": [1, 2]}, blobs))
    with pytest.raises(WireFormatError, match="no Galois keys were sent"):
        load_public_context(_forge({**header, "galois_bytes": 0}, context_and_relin + tail))


def test_the_sampler_tail_key_comes_with_its_preset_and_nowhere_else(upload_40: bytes) -> None:
    default = create_secret_context(CKKS_DEFAULT)
    own = public_context_bytes(default, RotationPlan.of([1], CKKS_DEFAULT.slot_count))
    public = load_public_context(own)
    assert public.tail is not None and public.tail.params == sampler_tail(CKKS_DEFAULT)
    assert public.tail.relin_keys.size() == 1
    header, blobs = _split(own)
    head = blobs[: len(blobs) - header["tail_relin_bytes"]]
    tail = blobs[len(head) :]
    with pytest.raises(WireFormatError, match="sampler tail of none, preset 'default' has 'default-tail'"):
        load_public_context(_forge({**header, "tail": None, "tail_relin_bytes": 0}, head))
    with pytest.raises(WireFormatError, match="no relinearisation keys"):
        load_public_context(_forge({**header, "tail_relin_bytes": 0}, head))
    main_relin = blobs[header["context_bytes"] : header["context_bytes"] + header["relin_bytes"]]
    with pytest.raises(WireFormatError, match="cannot load RelinKeys"):  # the head's key in the tail's place
        load_public_context(_forge({**header, "tail_relin_bytes": len(main_relin)}, head + main_relin))
    other, other_blobs = _split(upload_40)  # a preset without a tail: tail keys are refused
    with pytest.raises(WireFormatError, match="sampler tail of 'default-tail'"):
        load_public_context(
            _forge({**other, "tail": header["tail"], "tail_relin_bytes": len(tail)}, other_blobs + tail)
        )
    with pytest.raises(WireFormatError, match="tail relinearisation keys without a sampler tail"):
        load_public_context(_forge({**other, "tail_relin_bytes": len(tail)}, other_blobs + tail))


def test_keys_travel_seeded_and_relinearisation_keys_are_checked(small_upload: bytes) -> None:
    secret = create_secret_context(CKKS_40)
    upload = public_context_bytes(secret, RotationPlan.of([1], CKKS_40.slot_count))
    header, blobs = _split(upload)
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
        load_public_context(_forge({**header, "relin_bytes": 0}, context + galois))
    foreign, foreign_blobs = _split(small_upload)  # relinearisation keys of other parameters
    other = foreign_blobs[foreign["context_bytes"] : foreign["context_bytes"] + foreign["relin_bytes"]]
    with pytest.raises(WireFormatError, match="cannot load RelinKeys"):
        load_public_context(_forge({**header, "relin_bytes": len(other)}, context + other + galois))
    with_relin = secret.tenseal_context.copy()  # the old layout: relinearisation keys inside the context
    with_relin.make_context_public(generate_galois_keys=False, generate_relin_keys=False)
    old = with_relin.serialize(save_public_key=True, save_secret_key=False, save_relin_keys=True)
    with pytest.raises(WireFormatError, match="no relinearisation keys"):
        load_public_context(_forge({**header, "context_bytes": len(old)}, old + blobs[len(context) :]))
