"""Prefix sum and shift-by-one across slots and ciphertexts, against numpy, with the 1e-7 budget."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import LevelsExhausted
from crypto.ops import sampler_rotation_plan
from crypto.prefix import prefix_sum, shift_right
from crypto.vector import decrypt_slots, decrypt_vector, encrypt_vector
from crypto.vector_wire import vector_from_bytes, vector_to_bytes
from tests.conftest import assert_close


def _engine(keys, chunk=None):  # type: ignore[no-untyped-def]
    return keys.engine(sampler_rotation_plan(keys.params.slot_count, chunk))


@pytest.mark.parametrize("length,chunk", [(7, None), (2000, None), (4096, None), (10_001, None), (900, 256)])
def test_prefix_sum_and_shift_match_numpy(ckks, rng, length: int, chunk: int | None) -> None:  # type: ignore[no-untyped-def]
    eng = _engine(ckks, chunk)
    x = rng.uniform(-1, 1, length)
    v = vector_from_bytes(ckks.secret, vector_to_bytes(encrypt_vector(ckks.secret, x, chunk)))
    c = prefix_sum(eng, v)
    assert c.level == v.level - 2 and c.clean
    assert_close(decrypt_vector(ckks.secret, c), np.cumsum(x), 1e-7)
    s = shift_right(eng, v)
    assert s.level == v.level - 1
    assert_close(decrypt_vector(ckks.secret, s), np.concatenate([[0.0], x[:-1]]), 1e-8)
    pad = decrypt_slots(ckks.secret, c.cts[-1]).real[c.count(len(c.cts) - 1) :]
    assert_close(pad, np.zeros_like(pad), 1e-7)  # clean: nothing leaks into padding


def test_prefix_of_vocabulary_probabilities_within_noise_budget(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    """DESIGN.md section 2: the error of c - r must stay at or below 1e-7 over V = 49,152 slots."""
    from crypto.arith import add_const

    eng = _engine(ckks)
    z = rng.standard_normal(49_152) * 3
    q = np.exp(z - z.max())
    q = (q / q.sum()).astype(np.float16).astype(np.float64)
    r = 0.4321
    c_minus_r = add_const(eng, prefix_sum(eng, encrypt_vector(ckks.secret, q)), -r)
    assert_close(decrypt_vector(ckks.secret, c_minus_r), np.cumsum(q) - r, 1e-7)


def test_prefix_and_shift_need_levels(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    eng = _engine(ckks)
    with pytest.raises(LevelsExhausted) as info:
        prefix_sum(eng, encrypt_vector(ckks.secret, rng.uniform(size=10), level=1))
    assert (info.value.needed, info.value.available) == (2, 1)
    with pytest.raises(LevelsExhausted):
        shift_right(eng, encrypt_vector(ckks.secret, rng.uniform(size=10), level=0))


def test_prefix_on_small_preset(ckks_small, rng) -> None:  # type: ignore[no-untyped-def]
    eng = _engine(ckks_small)
    x = rng.uniform(0, 1, 3000) / 3000
    assert_close(
        decrypt_vector(ckks_small.secret, prefix_sum(eng, encrypt_vector(ckks_small.secret, x))),
        np.cumsum(x),
        1e-2,
    )
