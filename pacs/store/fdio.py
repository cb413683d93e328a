"""Reading an open file descriptor: a byte range, or a stream of chunks (both stores and the
in-place files use these; the caller owns the descriptor's opening, this closes streams)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from pacs.errors import StorageError


def read_range(fd: int, offset: int, length: int | None) -> bytes:
    """``length`` bytes from ``offset`` (to the end when None); short at the end of the file.
    Raises OSError (the caller names the file in its StorageError)."""
    if length is None:
        length = max(0, os.fstat(fd).st_size - offset)
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def stream(fd: int, chunk_size: int, name: str) -> Iterator[bytes]:
    """Chunks of ``fd`` from its position to the end; closes it when done or abandoned."""
    try:
        while True:
            try:
                chunk = os.read(fd, chunk_size)
            except OSError as exc:
                raise StorageError(f"cannot read {name}: {exc.strerror}") from exc
            if not chunk:
                return
            yield chunk
    finally:
        os.close(fd)
