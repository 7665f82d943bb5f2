"""Fixtures of the crypto tests: real public-key uploads (test_keys.py and test_keys_wire.py forge them)."""

from __future__ import annotations

import pytest

from crypto.keys import create_secret_context, public_context_bytes
from crypto.keys_wire import RotationPlan
from crypto.params import CKKS_40, CKKS_TEST


@pytest.fixture(scope="module")
def small_upload(ckks_small) -> bytes:  # type: ignore[no-untyped-def]
    return public_context_bytes(ckks_small.secret, RotationPlan.of([1, 2], CKKS_TEST.slot_count, True))


@pytest.fixture(scope="module")
def upload_40() -> bytes:
    """Real keys of n8192-s40, the preset with default's N and a chain of other primes."""
    return public_context_bytes(create_secret_context(CKKS_40), RotationPlan())
