"""SEAL objects to bytes and back (in-memory file, and the temporary-file fallback); wire chunks."""

from __future__ import annotations

import os
import tempfile

import pytest
import tenseal.sealapi as sealapi

from core.errors import WireFormatError
from crypto.seal_io import iter_chunks, join_chunks, seal_from_bytes, seal_to_bytes, split_chunks
from crypto.vector import decrypt_vector, encrypt_vector
from tests.conftest import assert_close


def _round_trip(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    x = rng.uniform(-1, 1, 300)
    v = encrypt_vector(ckks.secret, x)
    data = seal_to_bytes(v.cts[0])
    loaded = sealapi.Ciphertext()
    seal_from_bytes(loaded, ckks.secret.seal_context, data)
    assert seal_to_bytes(loaded) == data
    assert_close(decrypt_vector(ckks.secret, v.with_cts([loaded], v.level)), x, 1e-9)


def test_a_ciphertext_survives_bytes(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    _round_trip(ckks, rng)


def test_without_memfd_a_temporary_file_is_used_and_removed(ckks, rng, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delattr(os, "memfd_create", raising=False)
    made: list[str] = []
    mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args, **kwargs):  # type: ignore[no-untyped-def]
        fd, path = mkstemp(*args, **kwargs)
        made.append(path)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    _round_trip(ckks, rng)
    assert len(made) == 3  # save, load, save again
    assert not any(os.path.exists(path) for path in made)


def test_bytes_that_are_not_a_ciphertext_are_a_wire_format_error(ckks, rng) -> None:  # type: ignore[no-untyped-def]
    data = seal_to_bytes(encrypt_vector(ckks.secret, rng.uniform(-1, 1, 10)).cts[0])
    for bad in (b"", b"not a ciphertext", data[: len(data) // 2]):
        with pytest.raises(WireFormatError, match=f"cannot load Ciphertext from {len(bad)} bytes"):
            seal_from_bytes(sealapi.Ciphertext(), ckks.secret.seal_context, bad)


def test_chunks_cut_and_join() -> None:
    data = bytes(range(256)) * 10  # 2,560 bytes
    chunks = split_chunks(data, 1000)
    assert [len(c) for c in chunks] == [1000, 1000, 560]
    assert join_chunks(chunks) == data
    assert list(iter_chunks(data, 1000)) == chunks
    assert split_chunks(data, 2560) == [data] and split_chunks(b"", 10) == []
    assert split_chunks(data) == [data]  # the default chunk (1 MiB) holds it whole
    for bad in (0, -1):
        with pytest.raises(ValueError, match="chunk_bytes must be positive"):
            split_chunks(data, bad)
        with pytest.raises(ValueError, match="chunk_bytes must be positive"):
            next(iter_chunks(data, bad))
