"""In-place instances (``pacs import --in-place``): Part-10 files indexed where they lie.

Their location is ``ext:<absolute path>``; every blob store resolves such a location here,
read-only, so retrieve, WADO, export and ``pacs verify`` serve and check the file itself (it IS a
Part-10 file, served as it is). Deleting one (DELETE, retention, a kept duplicate) removes only the
index entry and never touches the file; compaction never sees it (it lives in no segment).

Which in-place files the archive holds is journaled in ``<blob_dir>/in-place.journal``: one line
``+<path>`` per indexed file and ``-<path>`` per removed one, appended with O_APPEND and
fdatasync'd before the index entries are committed. ``locations`` replays it, so ``pacs reindex``
rebuilds in-place entries from their files like stored ones, and ``pacs verify`` sees an in-place
instance that lost its index entry as an orphan. A file moved, deleted or changed after import is
reported by ``pacs verify`` (missing, size or digest mismatch).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from pacs.errors import BlobNotFound, StorageError
from pacs.store.fdio import read_range, stream

PREFIX = "ext:"
JOURNAL = "in-place.journal"
_CHUNK = 1 << 20


def is_external(location: str) -> bool:
    return location.startswith(PREFIX)


def location_for(path: str | os.PathLike[str]) -> str:
    """The location of a file indexed in place (its absolute, normalised path)."""
    return PREFIX + os.path.abspath(os.fspath(path))


def path_of(location: str) -> str:
    path = location[len(PREFIX):]
    if not is_external(location) or not os.path.isabs(path) or "\n" in path:
        raise BlobNotFound(f"not an in-place location: {location!r}")
    return path


def _open(location: str) -> int:
    path = path_of(location)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise BlobNotFound(f"in-place source file moved or deleted: {path}") from exc
    except OSError as exc:
        raise StorageError(f"cannot open in-place file {path}: {exc.strerror}") from exc


def get(location: str, offset: int = 0, length: int | None = None) -> bytes:
    """Read ``length`` bytes (to the end when None) from ``offset`` of the file."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError("offset and length must not be negative")
    fd = _open(location)
    try:
        return read_range(fd, offset, length)
    except OSError as exc:
        raise StorageError(f"cannot read {path_of(location)}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def iter_chunks(location: str, chunk_size: int = _CHUNK) -> Iterator[bytes]:
    """Stream the file; BlobNotFound is raised here, not at the first ``next``."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return stream(_open(location), chunk_size, path_of(location))


def size(location: str) -> int:
    path = path_of(location)
    try:
        return os.stat(path).st_size
    except FileNotFoundError as exc:
        raise BlobNotFound(f"in-place source file moved or deleted: {path}") from exc
    except OSError as exc:
        raise StorageError(f"cannot stat in-place file {path}: {exc.strerror}") from exc


class Journal:
    """The list of in-place files of one archive (``<root>/in-place.journal``)."""

    _lock = threading.Lock()  # one append at a time within a process (O_APPEND across them)

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / JOURNAL

    def _append(self, lines: Iterable[str]) -> None:
        data = "".join(lines).encode("utf-8", "surrogateescape")
        if not data:
            return
        with self._lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StorageError(f"cannot write {self.path}: {exc.strerror}") from exc

    def add(self, locations: Iterable[str]) -> None:
        """Record files about to be indexed in place (durable on return)."""
        self._append(f"+{path_of(loc)}\n" for loc in locations)

    def remove(self, location: str) -> None:
        """Forget an in-place file (its index entry goes; the file stays where it is)."""
        self._append([f"-{path_of(location)}\n"])

    def locations(self) -> Iterator[str]:
        """Every in-place file the journal holds now (added and not removed since)."""
        live: dict[str, None] = {}
        try:
            with open(self.path, "rb") as fh:
                for raw in fh:
                    if not raw.endswith(b"\n") or len(raw) < 3:
                        continue  # a torn last line: its files were never indexed
                    path = raw[1:-1].decode("utf-8", "surrogateescape")
                    if raw[:1] == b"+":
                        live[path] = None
                    elif raw[:1] == b"-":
                        live.pop(path, None)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {exc.strerror}") from exc
        for path in live:
            yield PREFIX + path
