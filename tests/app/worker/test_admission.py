"""Tests for app/worker/admission.py: who may connect, the reply line, and a Generate's checks.

The same checks over a real socket are in test_server.py (a bad Generate gets 4009 and the session goes
on) and test_server_attacks.py; here each rule on its own, fast.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from app import protocol as p
from app.worker.admission import (
    ReplyLine,
    WorkerAccess,
    check_generate,
    new_token,
    ordinal,
    redact,
    with_token,
)
from core.errors import AccessDenied, InputError
from model.sampler import SamplerConfig

WINDOW = 64


def _generate(**changes: Any) -> p.Generate:
    request = p.Generate("s", "r", 0, "", 2, 4, 7, 0, SamplerConfig().to_dict(), [b"a", b"b"])
    return replace(request, **changes)


def test_a_token_travels_in_the_url_and_is_never_shown() -> None:
    token = new_token()
    url = with_token("ws://127.0.0.1:8765", token)
    assert url == f"ws://127.0.0.1:8765/?token={token}" and len(token) >= 43
    assert redact(url) == "ws://127.0.0.1:8765/?token=***" and token not in redact(url)
    assert redact("ws://127.0.0.1:8765/") == "ws://127.0.0.1:8765/" and redact(None) == ""
    assert with_token("ws://h:1/", None) == "ws://h:1/" and new_token() != token


def test_access_wants_the_token_and_an_allowed_origin() -> None:
    access = WorkerAccess("secret", ("https://chat.example",))
    access.check("/?token=secret", None)
    access.check("/?token=secret", "https://chat.example")
    with pytest.raises(AccessDenied, match="missing"):
        access.check("/", None)
    with pytest.raises(AccessDenied, match="wrong"):
        access.check("/?token=secreT", None)
    with pytest.raises(AccessDenied, match="not allowed"):
        access.check("/?token=secret", "https://evil.example")
    WorkerAccess(None).check("/", None)  # no token: anyone who reaches the port (tests, by choice)


def test_the_line_is_first_come_first_served_and_a_leaver_loses_its_place() -> None:
    line: ReplyLine[str] = ReplyLine(capacity=2)
    first, second = _generate(request="1"), _generate(request="2")
    line.join("a", first)
    assert not line.full
    line.join("b", second)
    assert line.full and [(w.session, place) for w, place in line.places()] == [("a", 1), ("b", 2)]
    left = line.leave("a")
    assert left is not None and left.request is first and line.leave("a") is None
    assert [(w.session, place) for w, place in line.places()] == [("b", 1)]
    waiting = line.next()
    assert waiting is not None and waiting.request is second and line.next() is None and len(line) == 0
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd"
    ]  # fmt: skip


def test_a_generate_in_range_passes() -> None:
    check_generate(_generate(), WINDOW, {})
    check_generate(_generate(prefix="default", start=3), WINDOW, {"default": 3})


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({"positions": 3}, "match the 2 ciphertexts"),
        ({"positions": 0, "blobs": []}, "positions must be"),
        ({"start": WINDOW - 2}, "leave no room"),
        ({"start": -1}, "leave no room"),
        ({"prefix": "other"}, "unknown public prefix"),
        ({"prefix": "default", "start": 1}, "inside the public prefix"),
        ({"max_new_tokens": -1}, "max_new_tokens must be"),
        ({"max_new_tokens": WINDOW + 1}, "max_new_tokens must be"),
        ({"seed": -1}, "seed must be"),
        ({"sampler": {**SamplerConfig().to_dict(), "noise_sigma": 0.1}}, "simulation settings"),
        ({"sampler": {**SamplerConfig().to_dict(), "colour": 1}}, "unknown sampler setting"),
    ],
)
def test_a_generate_out_of_range_names_its_field(changes: dict[str, Any], text: str) -> None:
    with pytest.raises(InputError, match=text):
        check_generate(_generate(**changes), WINDOW, {"default": 3})
