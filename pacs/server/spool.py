"""Collect the P-DATA fragments of one dataset: in memory up to a bound, then in a temp file.

A 1 GB instance must not need 1 GB of RAM, and a small one must not touch the disk twice. The
fragments arrive as memoryviews of the receive buffer, valid only during the call, so they are
copied once here (into a list of bytes, or by ``write`` into the file).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("pacs.spool")


class Spool:
    """One dataset being received; ``finish`` hands over bytes or the path of a temp file."""

    __slots__ = ("_chunks", "_fh", "_limit", "_path", "_size", "_tmp_dir")

    def __init__(self, memory_limit: int, tmp_dir: Path) -> None:
        self._limit = memory_limit
        self._tmp_dir = tmp_dir
        self._chunks: list[bytes] = []
        self._size = 0
        self._fh: int | None = None
        self._path: Path | None = None

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: memoryview | bytes) -> None:
        """Append one fragment (copied; the caller's buffer may be reused afterwards)."""
        self._size += len(data)
        if self._fh is None and self._size <= self._limit:
            self._chunks.append(bytes(data))
            return
        if self._fh is None:
            self._fh, name = tempfile.mkstemp(prefix="spool-", suffix=".dcm", dir=self._tmp_dir)
            self._path = Path(name)
            log.debug("data set over %d bytes: spooling to %s", self._limit, name)
            for chunk in self._chunks:
                self._write_all(chunk)
            self._chunks = []
        self._write_all(data)

    def _write_all(self, data: memoryview | bytes) -> None:
        assert self._fh is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fh, view)
            view = view[written:]

    def finish(self) -> bytes | Path:
        """The whole dataset: bytes when it fit in memory, else the temp file's path.

        The caller owns a returned path and must unlink it (``discard`` does).
        """
        if self._fh is None:
            data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks = []
            return data
        os.close(self._fh)
        self._fh = None
        assert self._path is not None
        return self._path

    def discard(self) -> None:
        """Drop everything received (abort, disconnect or a refused store)."""
        self._chunks = []
        if self._fh is not None:
            os.close(self._fh)
            self._fh = None
        if self._path is not None:
            try:
                self._path.unlink()
            except FileNotFoundError:
                pass
            self._path = None
