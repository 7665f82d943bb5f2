"""One rank's shares (model/encrypted_rank.py), on real CKKS: a share is found by its slice, and shares of
the same slice add while the others are kept (the whole reply per rank: tests/model/test_encrypted.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.errors import InputError
from crypto.engine import Engine
from crypto.keys import load_public_context, public_context_bytes
from crypto.keys_wire import RotationPlan
from crypto.vector import decrypt_vector, encrypt_vector
from model.encrypted_rank import Part, RankBackend, Shares, Telemetry
from tests.conftest import assert_close


def test_a_share_is_found_by_its_row_offset_and_length(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    a, b = (encrypt_vector(ckks.secret, rng.uniform(-1, 1, n)) for n in (64, 32))
    shares = Shares([Part(0, 0, a), Part(0, 64, b)])
    assert shares.find(0, 64, 32) is b and shares.find(0, 0, 64) is a
    with pytest.raises(InputError, match="no share of row 1 at 0 with 64 values"):
        shares.find(1, 0, 64)
    with pytest.raises(InputError, match="no share of row 0 at 64 with 16 values"):
        shares.find(0, 64, 16)


def test_shares_of_the_same_slice_add_and_the_others_are_kept(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    public = load_public_context(public_context_bytes(ckks.secret, RotationPlan()))
    link = SimpleNamespace(rank=0, world=1)
    backend = RankBackend(Engine.for_worker(public), public, None, None, link, tsp=True)  # type: ignore[arg-type]
    x0, x1, y0, y2 = rng.uniform(-1, 1, (4, 64))
    enc = lambda v: encrypt_vector(ckks.secret, v)  # noqa: E731
    mine = Shares([Part(0, 0, enc(x0)), Part(0, 64, enc(x1))])
    theirs = Shares([Part(0, 0, enc(y0)), Part(1, 0, enc(y2))])
    total = backend.add(mine, theirs)
    assert [(part.position, part.offset) for part in total.parts] == [(0, 0), (0, 64), (1, 0)]
    for part, expected in zip(total.parts, (x0 + y0, x1, y2), strict=True):
        assert_close(decrypt_vector(ckks.secret, part.vec), expected, 1e-8)


def test_telemetry_adds_up_its_stages() -> None:
    tel = Telemetry()
    tel.add_time("layers", 0.25)
    tel.add_time("layers", 0.5)
    tel.add_time("oracle", 1 / 3)
    tel.oracle_calls["rmsnorm"] = 2
    report = tel.as_dict()
    assert report["seconds"] == {"layers": 0.75, "oracle": round(1 / 3, 4)}
    assert report["oracle_calls"] == {"rmsnorm": 2} and report["oracle_calls"] is not tel.oracle_calls
