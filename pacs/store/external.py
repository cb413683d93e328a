"""In-place instances (``pacs import --in-place``): Part-10 files indexed where they lie.

Their location is ``ext:<absolute path>``; every blob store resolves such a location here,
read-only, so retrieve, WADO, export and ``pacs verify`` serve and check the file itself (it IS a
Part-10 file, served as it is). Deleting one (DELETE, retention, a kept duplicate) removes only the
index entry and never touches the file; compaction never sees it (it lives in no segment).

Which in-place files the archive holds is journaled in ``<blob_dir>/in-place.journal``: one line
``+<uid><TAB><path>`` per indexed file and ``-<uid><TAB><path>`` per removed entry, appended
with O_APPEND and fdatasync'd before the index entries are committed. The SOP Instance UID is
there because one path may carry several entries for a while (a file overwritten with another
instance): dropping the stale entry must not forget the live one. Lines of the older format
(``+<path>``, ``-<path>``: a path is absolute, a UID never starts with ``/``) are read as
before. ``locations`` replays it, so ``pacs reindex`` rebuilds in-place entries from their
files like stored ones, and ``pacs verify`` sees an in-place instance that lost its index entry
as an orphan, and an index entry the journal does not list. A file moved, deleted or changed
after import is
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

    def add(self, entries: Iterable[tuple[str, str]]) -> None:
        """Record files about to be indexed in place, as (location, SOP Instance UID) pairs
        (durable on return)."""
        self._append(f"+{_uid(uid)}\t{path_of(loc)}\n" for loc, uid in entries)

    def remove(self, location: str, uid: str = "") -> None:
        """Forget the entry of ``uid`` at an in-place file (its index entry goes; the file stays
        where it is); without a uid, every entry of that file."""
        path = path_of(location)
        self._append([f"-{_uid(uid)}\t{path}\n" if uid else f"-{path}\n"])

    def entries(self) -> dict[str, set[str]]:
        """path -> the SOP Instance UIDs journaled there now ("" for a line of the old format,
        whose UID is unknown)."""
        live: dict[str, set[str]] = {}
        try:
            with open(self.path, "rb") as fh:
                for raw in fh:
                    if not raw.endswith(b"\n") or len(raw) < 3:
                        continue  # a torn last line: its files were never indexed
                    body = raw[1:-1].decode("utf-8", "surrogateescape")
                    if body.startswith("/"):
                        uid, path = "", body
                    else:
                        uid, tab, path = body.partition("\t")
                        if not tab:
                            continue  # not a line this journal writes
                    if raw[:1] == b"+":
                        live.setdefault(path, set()).add(uid)
                    elif raw[:1] == b"-" and path in live:
                        uids = live[path]
                        if not uid:
                            uids.clear()  # the old format: the file forgotten whole
                        elif uid in uids:
                            uids.discard(uid)
                        else:
                            uids.discard("")  # journaled by the old format, UID unknown
                        if not uids:
                            del live[path]
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {exc.strerror}") from exc
        return live

    def locations(self) -> Iterator[str]:
        """Every in-place file the journal holds now (added and not removed since)."""
        for path in self.entries():
            yield PREFIX + path


def _uid(uid: str) -> str:
    if not uid or "\t" in uid or "\n" in uid or uid.startswith("/"):
        raise ValueError(f"not a SOP Instance UID for the in-place journal: {uid!r}")
    return uid
