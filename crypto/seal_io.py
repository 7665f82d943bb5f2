"""Bytes in and out of SEAL objects, and chunking for the wire.

TenSEAL's `sealapi` binds SEAL's `save` / `load` only with a file path. We pass the path of an
anonymous in-memory file (`memfd_create`, Linux), so nothing touches the disk; where memfd is not
available we fall back to a private temporary file that is deleted at once.

References: SEAL `Serializable::save`, Linux memfd_create(2).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from core.errors import WireFormatError

DEFAULT_CHUNK_BYTES = 1 << 20  # websockets' default max message size; ciphertexts do not compress


class _SealSavable(Protocol):
    def save(self, path: str) -> None: ...


def _scratch() -> tuple[int, str, str | None]:
    """An empty read/write file descriptor, its /proc path, and a disk path to unlink (if any)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ckks", 0)
        return fd, f"/proc/self/fd/{fd}", None
    fd, path = tempfile.mkstemp(prefix="ckks-")
    return fd, path, path


def seal_to_bytes(obj: _SealSavable) -> bytes:
    """Serialise a SEAL object (ciphertext, keys, parameters) to bytes (SEAL format, zstd inside)."""
    fd, path, disk = _scratch()
    try:
        obj.save(path)
        size = os.fstat(fd).st_size
        os.lseek(fd, 0, os.SEEK_SET)
        parts = []
        while size > 0:
            part = os.read(fd, size)
            if not part:
                break
            parts.append(part)
            size -= len(part)
        return b"".join(parts)
    finally:
        os.close(fd)
        if disk is not None:
            os.unlink(disk)


def seal_from_bytes(obj: Any, context: Any, data: bytes) -> None:
    """Load `data` (from `seal_to_bytes`) into the empty SEAL object `obj` under `context`.

    Raises:
        WireFormatError: the bytes are not a valid SEAL object for this context.
    """
    fd, path, disk = _scratch()
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        try:
            obj.load(context, path)
        except (RuntimeError, ValueError) as exc:
            raise WireFormatError(f"cannot load {type(obj).__name__} from {len(data)} bytes: {exc}") from exc
    finally:
        os.close(fd)
        if disk is not None:
            os.unlink(disk)


def split_chunks(data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[bytes]:
    """Cut `data` into pieces of at most `chunk_bytes` (the last may be shorter; empty data -> [])."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    return [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]


def join_chunks(chunks: Iterable[bytes]) -> bytes:
    """Inverse of `split_chunks`."""
    return b"".join(chunks)


def iter_chunks(data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Lazy `split_chunks`."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    for i in range(0, len(data), chunk_bytes):
        yield data[i : i + chunk_bytes]
