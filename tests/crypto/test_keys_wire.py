"""The public-key upload's wire format (crypto/keys_wire.py): the header is parsed strictly, the Galois keys
must be the planned ones of the context's parameters."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from core.errors import ParamsError, WireFormatError
from crypto.keys import create_secret_context, load_public_context, public_context_bytes
from crypto.keys_wire import MAGIC, PREFIX, WIRE_VERSION, RotationPlan, galois_element
from crypto.params import CKKS_40, CKKS_DEFAULT, CKKS_TEST


def split_upload(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(JSON header, context and Galois blobs) of an upload (format at the top of crypto/keys_wire.py)."""
    _, _, header_len = PREFIX.unpack_from(data)
    start = PREFIX.size
    return json.loads(data[start : start + header_len]), data[start + header_len :]


def forge_upload(header: dict[str, Any] | bytes, blobs: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return PREFIX.pack(MAGIC, WIRE_VERSION, len(raw)) + raw + blobs


def relabel_upload(data: bytes, **params: Any) -> bytes:
    """The upload with the header's params fields replaced (the byte counts are kept honest)."""
    header, blobs = split_upload(data)
    header["params"] = {**header["params"], **params}
    return forge_upload(header, blobs)


def test_galois_element_matches_seal_convention() -> None:
    assert galois_element(1, 8192) == 3
    assert galois_element(-1, 8192) == pow(3, 4095, 16384)


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
    header, blobs = split_upload(small_upload)
    header[field] = value
    with pytest.raises(WireFormatError, match=message):
        load_public_context(forge_upload(header, blobs))


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
        load_public_context(relabel_upload(small_upload, **params))


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
    _, blobs = split_upload(small_upload)
    with pytest.raises(WireFormatError, match="bad public context header"):
        load_public_context(forge_upload(raw, blobs))


def test_header_length_past_the_end_is_refused(small_upload: bytes) -> None:
    data = bytearray(small_upload)
    struct.pack_into(">I", data, 8, len(data))
    with pytest.raises(WireFormatError, match="header announces"):
        load_public_context(bytes(data))


def test_galois_keys_of_other_parameters_or_steps_are_refused(upload_40: bytes) -> None:
    default = create_secret_context(CKKS_DEFAULT)
    own = public_context_bytes(default, RotationPlan.of([1], CKKS_DEFAULT.slot_count))
    header, blobs = split_upload(own)
    keys_at = header["context_bytes"] + header["relin_bytes"]
    context_and_relin = blobs[:keys_at]
    tail = blobs[keys_at + header["galois_bytes"] :]
    foreign_header, foreign_blobs = split_upload(
        public_context_bytes(create_secret_context(CKKS_40), RotationPlan.of([1], CKKS_40.slot_count))
    )
    foreign_galois = foreign_blobs[foreign_header["context_bytes"] + foreign_header["relin_bytes"] :]
    with pytest.raises(WireFormatError, match="cannot load GaloisKeys"):  # SEAL's load checks parms_id
        load_public_context(
            forge_upload(
                {**header, "galois_bytes": len(foreign_galois)}, context_and_relin + foreign_galois + tail
            )
        )
    with pytest.raises(WireFormatError, match="Galois keys hold 1 key"):  # a step without its key
        load_public_context(forge_upload({**header, "steps": [1, 2]}, blobs))
    with pytest.raises(WireFormatError, match="no Galois keys were sent"):
        load_public_context(forge_upload({**header, "galois_bytes": 0}, context_and_relin + tail))
