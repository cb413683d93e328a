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

    __slots__ = ("_buf", "_fh", "_first", "_limit", "_path", "_size", "_tmp_dir")

    def __init__(self, memory_limit: int, tmp_dir: Path) -> None:
        self._limit = memory_limit
        self._tmp_dir = tmp_dir
        # A data set of one fragment stays the bytes it was copied into; from the second on,
        # they are appended to one bytearray (grown in place by realloc/mremap), so a large
        # data set is not copied a second time by a join.
        self._first: bytes | None = None
        self._buf: bytearray | None = None
        self._size = 0
        self._fh: int | None = None
        self._path: Path | None = None

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: memoryview | bytes, last: bool = True) -> None:
        """Append one fragment (copied; the caller's buffer may be reused afterwards).

        ``last=False`` says more fragments follow: a first fragment then starts the bytearray
        at once instead of being copied into bytes, then into the bytearray."""
        self._size += len(data)
        if self._fh is None and self._size <= self._limit:
            if self._buf is not None:
                self._buf += data
            elif self._first is None:
                if last:
                    self._first = bytes(data)
                else:
                    self._buf = bytearray(data)
            else:
                self._buf = bytearray(self._first)
                self._buf += data
                self._first = None
            return
        if self._fh is None:
            self._fh, name = tempfile.mkstemp(prefix="spool-", suffix=".dcm", dir=self._tmp_dir)
            self._path = Path(name)
            log.debug("data set over %d bytes: spooling to %s", self._limit, name)
            held = self._buf if self._buf is not None else self._first
            if held:
                self._write_all(held)
            self._first = self._buf = None
        self._write_all(data)

    def _write_all(self, data: memoryview | bytes | bytearray) -> None:
        assert self._fh is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fh, view)
            view = view[written:]

    def finish(self) -> bytes | bytearray | Path:
        """The whole dataset: bytes (a bytearray when it came in several fragments) when it fit
        in memory, else the temp file's path.

        The caller owns a returned path and must unlink it (``discard`` does).
        """
        if self._fh is None:
            data: bytes | bytearray = (self._buf if self._buf is not None
                                       else self._first or b"")
            self._first = self._buf = None
            return data
        os.close(self._fh)
        self._fh = None
        assert self._path is not None
        return self._path

    def discard(self) -> None:
        """Drop everything received (abort, disconnect or a refused store)."""
        self._first = self._buf = None
        if self._fh is not None:
            os.close(self._fh)
            self._fh = None
        if self._path is not None:
            try:
                self._path.unlink()
            except FileNotFoundError:
                pass
            self._path = None
