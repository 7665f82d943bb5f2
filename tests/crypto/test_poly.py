"""Cubics on encrypted vectors against numpy, their level bookkeeping and level errors."""

from __future__ import annotations

import pytest

from core.errors import LevelsExhausted
from crypto.poly import cubic
from crypto.vector import decrypt_vector, encrypt_vector
from crypto.vector_wire import vector_from_bytes, vector_to_bytes
from tests.conftest import assert_close

ATOL = 1e-8
G1 = (0.0, 2126 / 1024, 0.0, -1359 / 1024)
F = (0.0, 0.0, 3.0, -2.0)


@pytest.mark.parametrize("roundtrip", [False, True])
@pytest.mark.parametrize(
    "coeffs", [G1, F, (0.5, -1.0, 0.25, 0.0), (0.1, 0.2, 0.3, 0.4), (0.3, 2.0, 0.0, 0.0)]
)
def test_cubic_matches_numpy(ckks, rng, coeffs, roundtrip: bool) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    x = rng.uniform(-1, 1, 5000)
    v = encrypt_vector(ckks.secret, x)
    if roundtrip:
        v = vector_from_bytes(ckks.secret, vector_to_bytes(v))
    y = cubic(eng, v, coeffs)
    c0, c1, c2, c3 = coeffs
    assert y.level == v.level - (1 if c2 == c3 == 0 else 2)
    assert_close(decrypt_vector(ckks.secret, y), c0 + c1 * x + c2 * x**2 + c3 * x**3, ATOL)


def test_level_errors_are_raised_before_computing(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = ckks.engine()
    v = encrypt_vector(ckks.secret, rng.uniform(-1, 1, 100), level=1)
    before = dict(eng.counts)
    with pytest.raises(LevelsExhausted) as info:
        cubic(eng, v, G1)
    assert (info.value.needed, info.value.available, info.value.operation) == (2, 1, "cubic")
    assert dict(eng.counts) == before  # nothing computed
