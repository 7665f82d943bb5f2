"""The wire protocol: round trips of every message, and every way a frame can be wrong."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from app import protocol as p
from core.errors import (
    CODE_BAD_CIPHERTEXT,
    CODE_INTERNAL,
    CODE_SECRET_KEY,
    MessageTooLarge,
    ProtocolError,
    SecretKeyError,
    UnknownMessageType,
    VersionMismatch,
    WireFormatError,
)

EXAMPLES: list[p.Message] = [
    p.Hello(version=p.PROTOCOL_VERSION, preset="test", client="pytest"),
    p.Welcome(
        "s1",
        "SmolLM2",
        49152,
        "abc",
        "default",
        8192,
        [1, 2, -4],
        True,
        1 << 20,
        1 << 16,
        40,
        ["default-0123"],
        [[1, 9690, 198]],
        [b"keys", b"values"],
    ),  # fmt: skip
    p.KeyChunk("s1", 0, 2, [b"\x00\x01" * 100]),
    p.KeysAccepted("s1", 12345),
    p.Generate("s1", "r1", 24, "default-0123", 3, 20, 7, 0, {"tsp": True, "pp": True}, [b"ct0", b"", b"c"]),
    p.OracleRequest("r1", 3, "rmsnorm", 5, [[0, 0], [0, 0]], [[0, 0, 576, 576, 7, 1]], [b"x" * 10, b"y"]),
    p.OracleReply("s1", "r1", 3, [b"y" * 10]),
    p.Progress("r1", "layer 3/30", 3, 30),
    p.Token("r1", 0, {"seconds": {"layers": 1.5}, "oracle_calls": 120}, [b"z"]),
    p.Cancel("s1", "r1"),
    p.Done("r1", "length"),
    p.Error(4004, "unknown session", "r1"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.type)
def test_every_message_round_trips(message: p.Message) -> None:
    assert p.decode(p.encode(message)) == message


def test_every_message_type_has_an_example() -> None:
    assert {m.type for m in EXAMPLES} == set(p.MESSAGE_TYPES)


def test_payload_is_raw_bytes_not_base64() -> None:
    blob = bytes(range(256)) * 4
    frame = p.encode(p.KeyChunk("s", 0, 1, [blob]))
    assert frame.endswith(blob) and len(frame) < len(blob) + 200


def frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + payload


V = p.PROTOCOL_VERSION
GOOD = {"v": V, "type": "cancel", "session": "s", "request": "r", "blobs": []}


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        ("a text frame", ProtocolError, "binary frame"),
        (b"\x00\x00", ProtocolError, "shorter"),
        (struct.pack(">I", 10**6) + b"{}", ProtocolError, "header length"),
        (struct.pack(">I", 4) + b"\xff\xfe{}", ProtocolError, "UTF-8 JSON"),
        (frame([1, 2]), ProtocolError, "JSON object"),  # type: ignore[arg-type]
        (frame({**GOOD, "v": 9}), VersionMismatch, "version 9 is not supported"),
        (frame({**GOOD, "type": "launch_missiles"}), UnknownMessageType, "launch_missiles"),
        (frame({**GOOD, "session": 5}), ProtocolError, "cancel.session must be str"),
        (frame({k: v for k, v in GOOD.items() if k != "request"}), ProtocolError, "missing field 'request'"),
        (frame({**GOOD, "evil": 1}), ProtocolError, "unexpected field"),
        (frame({**GOOD, "blobs": [3]}, b"abc"), ProtocolError, "carries no payload"),
        (frame({**GOOD, "blobs": [5]}, b"abc"), ProtocolError, "do not add up"),
        (frame({**GOOD, "blobs": "many"}), ProtocolError, "byte counts"),
        (
            frame(
                {
                    "v": V,
                    "type": "generate",
                    "session": "s",
                    "request": "r",
                    "start": 0,
                    "prefix": "",
                    "positions": True,
                    "max_new_tokens": 1,
                    "seed": 1,
                    "first_index": 0,
                    "sampler": {},
                    "blobs": [],
                }
            ),
            ProtocolError,
            "positions must be int",
        ),
        (
            frame(
                {
                    "v": V,
                    "type": "oracle_request",
                    "request": "r",
                    "call": 0,
                    "fn": "rmsnorm",
                    "layer": 0,
                    "parts": [[0, "a"]],
                    "pieces": [],
                    "blobs": [],
                }
            ),
            ProtocolError,
            "parts must be",
        ),  # fmt: skip
    ],
)
def test_malformed_frames_raise_typed_errors(data: bytes | str, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        p.decode(data)


def test_oversized_message_is_refused_before_parsing() -> None:
    data = p.encode(p.KeyChunk("s", 0, 1, [b"x" * 2000]))
    with pytest.raises(MessageTooLarge, match="exceeds the limit of 1,000 bytes"):
        p.decode(data, max_bytes=1000)


def test_errors_map_to_close_codes() -> None:
    assert p.error_message(VersionMismatch("v")).code == 4002
    assert p.error_message(SecretKeyError("sk")).code == CODE_SECRET_KEY
    assert p.error_message(WireFormatError("bad")).code == CODE_BAD_CIPHERTEXT
    internal = p.error_message(ZeroDivisionError("secret detail"))
    assert internal.code == CODE_INTERNAL and "secret detail" not in internal.message
    assert all(4000 <= p.error_message(e).code <= 4999 for e in (ProtocolError("x"), KeyError("y")))
