"""The worker's router: one call from the ranks' shares, sums of shares of one place, packed neighbours."""

from __future__ import annotations

import numpy as np

from crypto.engine import Engine
from crypto.vector import decrypt_vector, encrypt_vector, for_key_holder
from crypto.vector_wire import vector_from_bytes, vector_to_bytes
from model.encrypted import OracleCall, PieceSpec
from model.encrypted_router import merge_calls, share_combiner


def test_the_router_adds_shares_of_one_place_and_packs_neighbours(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    add = share_combiner(Engine.for_params(ckks.params))
    a0, a1, b = rng.uniform(-1, 1, (3, 64))

    def share(x: np.ndarray) -> bytes:
        return vector_to_bytes(encrypt_vector(ckks.secret, x, level=0))

    piece = [PieceSpec(0, 0, 64)]
    rank0 = OracleCall("rmsnorm", 3, [(0, 0), (1, 0)], [share(a0), share(b)], piece)
    rank1 = OracleCall("rmsnorm", 3, [(0, 0)], [share(a1)], piece)
    call, answers = merge_calls([rank0, rank1], add)
    assert call.parts == [(0, 0), (1, 0)] and answers == [[0], [0]]
    total, alone = (decrypt_vector(ckks.secret, vector_from_bytes(ckks.secret, blob)) for blob in call.blobs)
    np.testing.assert_allclose(total, a0 + a1, atol=1e-9)
    np.testing.assert_allclose(alone, b, atol=1e-9)
    shorter = OracleCall("rmsnorm", 3, [(0, 0)], [share(a1[:32])], piece)  # another layout: both travel
    assert len(merge_calls([rank0, shorter], add)[0].blobs) == 3
    assert len(merge_calls([rank0, rank1])[0].blobs) == 3  # without an adder the key holder adds them
    engine = Engine.for_params(ckks.params)  # a share mod-switched from level 1 keeps that level's scale
    lifted = vector_to_bytes(for_key_holder(engine, encrypt_vector(ckks.secret, a1, level=1)))
    assert len(merge_calls([rank0, OracleCall("rmsnorm", 3, [(0, 0)], [lifted], piece)], add)[0].blobs) == 3
    refresh = OracleCall("refresh", -1, [(0, 0)], [share(a0)])
    assert len(merge_calls([refresh, refresh], add)[0].blobs) == 2  # refreshes are per vector
    q, kv = rng.uniform(-1, 1, 64), rng.uniform(-1, 1, 40)  # attention's input: q, then kv after it
    halves = [
        OracleCall("attention", 3, [(2, 0)], [share(q)]),
        OracleCall("attention", 3, [(2, 64)], [share(kv)]),
    ]
    call, _ = merge_calls(halves, add)
    assert call.parts == [(2, 0)] and len(call.blobs) == 1  # one ciphertext: q real, kv imaginary
    both = vector_from_bytes(ckks.secret, call.blobs[0])
    assert both.packed and both.length == 104
    np.testing.assert_allclose(decrypt_vector(ckks.secret, both), np.concatenate([q, kv]), atol=1e-9)
    longer = OracleCall("attention", 3, [(2, 64)], [share(rng.uniform(-1, 1, 100))])  # longer than q: apart
    assert len(merge_calls([halves[0], longer], add)[0].blobs) == 2
