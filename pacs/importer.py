"""``pacs import``: bulk import of files, folders, zip archives and DICOMDIR sets.

The same write path as C-STORE (``Ingest.store``: scan, segment blob, batched catalog commits),
run in up to ``worker_count`` processes, each with its own event loop and its own segment writer
(``import0``, ``import1``, ...: never a server worker's ``wN``, so an import may run beside
``pacs serve`` on the same data directory). Each worker holds a lock on its writer name
(``state/importN.lock``): two imports at once take different writers.

Per file: the first 64 KiB are read and the file meta parsed; a file whose SOP Instance UID
(Media Storage SOP Instance UID, confirmed by the data set's own SOPInstanceUID in that head:
the meta's may be stale) is already indexed is skipped before the rest is read, which makes a
re-run (after an interruption, even kill -9) cheap and idempotent. The rest is read, the
data set handed to ``Ingest.store`` (source AE ``IMPORT``); files larger than
``spool_memory_limit`` are copied into the worker's spool folder and stored from there, never
held in memory. Non-DICOM and corrupt files are listed in a report (path and reason) and never
stop the run. Reads happen on a producer thread, in batches, overlapping with ingest.

``--in-place`` indexes files where they lie instead of copying them: the location is
``ext:<absolute path>`` (``pacs.store.external``), the size and digest are those of the
whole file, which retrieve serves as it is (a Part-10 file, like a stored blob). The producer
thread scans, digests and fsyncs each file (and its folder); per batch the paths are journaled
(one fdatasync) before their index entries are submitted, so ``pacs reindex`` rebuilds them
from the files. Files without a Part-10 header are rejected as in a copying import (they could
not be served as they are); zip members cannot be indexed in place and are copied into the
blob store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pacs.config import Settings
from pacs.diskspace import BELOW_WATERMARK, watermark
from pacs.errors import DicomFormatError, IngestError, PacsError
from pacs.index.records import InstanceRecord
from pacs.store import digest as blob_digest
from pacs.store import external
from pacs.writers import lock_first_free, lock_writer, stale_writers

if TYPE_CHECKING:
    from pacs.archive import Archive

log = logging.getLogger("pacs.import")

HEADER_READ = 64 * 1024
BATCH = 64  # files per hand-over from the reader thread to the event loop
CONCURRENCY = 256  # Ingest.store calls in flight per worker (the writer batches them)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SOP_INSTANCE_UID = 0x00080018  # the tag
SOURCE_AET = "IMPORT"
MAX_WRITERS = 64
SPOOL_CHUNK = 1 << 20  # bytes per read while spooling (limits checked between them)
MIN_FILES_PER_PROCESS = 1000  # below, one process: spawning costs more than it saves

# Shared counters per worker (a multiprocessing Array of int64, FIELDS slots per worker).
FILES, BYTES, IMPORTED, DUPLICATES, REJECTED, IGNORED = range(6)
FIELDS = 6


@dataclass
class WorkerResult:
    rejected: list[tuple[str, str]] = field(default_factory=list)
    writer_id: str = ""
    interrupted: bool = False
    disk_full: bool = False  # stopped at the free-space watermark (min_free_space)
    # Catalog checkpoints that failed (their LMDB sync may have lost commits): the import is
    # not durably indexed; the writer's replay-all marker makes its next open replay its log.
    checkpoint_failures: int = 0


@dataclass(slots=True)
class _Item:
    """One file read by the producer: ready to store, or already decided."""

    name: str
    size: int
    outcome: str = ""  # "", "duplicate", "ignored", "rejected"
    reason: str = ""
    transfer_syntax: str = ""
    sop_class: str = ""
    dataset: bytes | Path = b""
    record: InstanceRecord | None = None  # set for a file indexed in place (--in-place)
    # In place: the instance's entry names a file gone or changed (moved): this one replaces it.
    replaces: bool = False
    # In place: instances indexed at this very path before it was overwritten with another one.
    evicts: list[str] = field(default_factory=list)


# -- finding the files -------------------------------------------------------------------------


def collect(paths: Iterable[Path]) -> tuple[list[str], list[tuple[str, str]]]:
    """Every regular file under ``paths`` (folders recursively, sorted) and the files a DICOMDIR
    lists, each once; and the paths that cannot be imported (missing, broken links), with why."""
    found: list[str] = []
    missing: list[tuple[str, str]] = []
    seen_files: set[str] = set()
    # A symlinked folder is followed once: a link to an ancestor would repeat the walk (and
    # two such links never end it).
    seen_folders: set[tuple[int, int]] = set()

    def add(path: str) -> None:
        key = os.path.abspath(path)  # normalised too
        if key not in seen_files:
            seen_files.add(key)
            found.append(path)

    def add_dicomdir(path: str, named: bool) -> None:
        if os.path.abspath(path) not in seen_files:  # its list read once
            _dicomdir(path, add, missing, named)
        add(path)

    def walk(folder: str) -> None:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen_folders:
                return
            seen_folders.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            missing.append((folder, f"cannot list folder: {exc.strerror}"))
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=True):
                    walk(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    if entry.name.upper() == "DICOMDIR":
                        add_dicomdir(entry.path, named=False)
                    else:
                        add(entry.path)
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    missing.append((entry.path, "broken symbolic link"))
            except OSError as exc:
                missing.append((entry.path, f"cannot stat: {exc.strerror}"))

    for path in paths:
        if path.is_dir():
            walk(str(path))
        elif path.is_file():
            if _is_dicomdir(str(path)):
                add_dicomdir(str(path), named=True)
            else:
                add(str(path))
        elif path.is_symlink():
            missing.append((str(path), "broken symbolic link"))
        else:
            missing.append((str(path), "no such file or folder"))
    return found, missing


def _is_dicomdir(path: str) -> bool:
    """A DICOMDIR by its name, or by its Media Storage SOP Class (a renamed copy)."""
    from pacs.dicom.part10 import read_file_meta

    if os.path.basename(path).upper() == "DICOMDIR":
        return True
    try:
        with open(path, "rb") as fh:
            meta, _ = read_file_meta(fh.read(HEADER_READ))
    except (OSError, DicomFormatError):
        return False  # the reader reports it
    return bool(meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY)


def _dicomdir(path: str, add: Callable[[str], None], missing: list[tuple[str, str]],
              named: bool) -> None:
    """Hand every file ``path`` (a DICOMDIR) references to ``add``; list the missing ones.

    Named on the command line, a DICOMDIR that cannot be read is reported: nothing else would
    be imported. Met in a folder walk, it is left to the reader (ignored): the walk finds the
    set's files anyway."""
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():  # values not valid for their VR: judged below
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=False)
            file_ids = [record.get("ReferencedFileID")
                        for record in ds.get("DirectoryRecordSequence") or []]
    except Exception as exc:  # pydicom raises many kinds on a damaged file: reported, never fatal
        if named:
            missing.append((path, f"cannot read DICOMDIR: {exc}"))
        return
    root = os.path.dirname(path) or "."
    for file_id in file_ids:
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else [str(part) for part in file_id]
        listed = os.path.join(root, *parts)
        if any(not part or part in (".", "..") or "/" in part or os.sep in part or ":" in part
               for part in parts):
            # Only files inside the set's folder: the DICOMDIR is data, not a list of paths.
            missing.append((listed, "referenced by DICOMDIR, outside its folder"))
            continue
        resolved = _find_case_insensitive(root, parts)
        if resolved is None:
            missing.append((listed, "referenced by DICOMDIR, missing"))
        else:
            add(resolved)


def _find_case_insensitive(root: str, parts: list[str]) -> str | None:
    """``root/parts...`` as it exists, each part matched exactly or else case-insensitively (a
    CD's ISO 9660 names are upper case in the DICOMDIR, the copy's may not be); None if none."""
    exact = os.path.join(root, *parts)
    if os.path.isfile(exact):
        return exact
    folder = root
    for i, part in enumerate(parts):
        candidate = os.path.join(folder, part)
        if not os.path.lexists(candidate):
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                return None
            matches = [name for name in names if name.upper() == part.upper()]
            if not matches:
                return None
            candidate = os.path.join(folder, matches[0])
        folder = candidate
        if i < len(parts) - 1 and not os.path.isdir(folder):
            return None
    return folder if os.path.isfile(folder) else None


# -- reading one file (producer thread) --------------------------------------------------------


class _Refused(Exception):
    """A file not imported, for the reason given (the report's text)."""


class _Reader:
    """Turns paths (and zip members) into ``_Item``s; runs on the producer thread."""

    def __init__(self, archive: Archive, spool_limit: int, in_place: bool = False,
                 journaled: dict[str, set[str]] | None = None) -> None:
        self.catalog = archive.catalog
        # In place: path -> SOP Instance UIDs the journal holds there (``Journal.entries``),
        # read once per run before the first file.
        self.journaled = journaled or {}
        self.spool_dir = archive.spool_dir
        self.spool_limit = spool_limit
        self.in_place = in_place
        self._spooled = 0
        self._synced_folders: set[str] = set()
        self.max_dataset = archive.settings.max_dataset_size
        self.space = watermark(archive.settings)

    def items(self, paths: Iterable[str], stop: threading.Event) -> Iterator[_Item]:
        for path in paths:
            if stop.is_set():
                return
            if path.lower().endswith(".zip"):
                yield from self._zip(path, stop)
                continue
            if os.path.basename(path).upper() == "DICOMDIR":
                yield _Item(path, 0, "ignored", "DICOMDIR")
                continue
            try:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    yield self._read(path, fh, size, in_place=self.in_place)
            except OSError as exc:
                yield _Item(path, 0, "rejected", f"cannot read: {exc.strerror or exc}")

    def _zip(self, path: str, stop: threading.Event) -> Iterator[_Item]:
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if stop.is_set():
                        return
                    if info.is_dir():
                        continue
                    name = f"{path}!{info.filename}"
                    if os.path.basename(info.filename).upper() == "DICOMDIR":
                        yield _Item(name, 0, "ignored", "DICOMDIR")
                        continue
                    try:
                        with archive.open(info) as fh:
                            yield self._read(name, fh, info.file_size)
                    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:
                        yield _Item(name, 0, "rejected", f"cannot read zip member: {exc}")
        except (OSError, zipfile.BadZipFile) as exc:
            yield _Item(path, 0, "rejected", f"not a readable zip archive: {exc}")

    def _read(self, name: str, fh: IO[bytes], size: int, in_place: bool = False) -> _Item:
        from pacs.dicom.part10 import read_file_meta

        head = fh.read(HEADER_READ)
        if not head:
            return _Item(name, 0, "rejected", "empty file")
        try:
            meta, offset = read_file_meta(head)
        except DicomFormatError as exc:
            if len(head) < 132 or head[128:132] != b"DICM":
                return _Item(name, size, "rejected", "not a DICOM file (no DICM prefix)")
            return _Item(name, size, "rejected", f"bad file meta information: {exc}")
        sop_class = meta.get("MediaStorageSOPClassUID", "")
        if sop_class == MEDIA_STORAGE_DIRECTORY:
            return _Item(name, size, "ignored", "DICOMDIR")
        syntax = meta.get("TransferSyntaxUID", "")
        if not syntax:
            return _Item(name, size, "rejected", "no TransferSyntaxUID in the file meta")
        uid = meta.get("MediaStorageSOPInstanceUID", "")
        if uid and self._archived(uid, in_place):
            # The data set is stored under its own SOPInstanceUID, and the file meta's may be
            # stale (an anonymiser that changed the data set only): skipped only when the data
            # set's own UID is archived, else a new instance would be reported skipped.
            own = _head_sop_instance_uid(head, syntax, offset)
            if own == uid or (own and self._archived(own, in_place)):
                return _Item(name, size, "duplicate")
        if offset >= len(head) and len(head) < HEADER_READ:
            return _Item(name, size, "rejected", "no data set after the file meta")
        item = _Item(name, size, transfer_syntax=syntax, sop_class=sop_class)
        if in_place:
            if "\n" in name:  # the in-place journal is one path per line
                return _Item(name, size, "rejected", "a newline in the path: cannot index in place")
            item = _in_place(item, fh, head, offset)
            if item.record is not None:
                self._claims(item, item.record)
                try:
                    self._sync_in_place(name, fh)
                except OSError as exc:
                    return _Item(name, size, "rejected",
                                 f"cannot sync to disk: {exc.strerror or exc}")
            return item
        if size - offset > self.max_dataset:  # checked before a byte is spooled
            return _Item(name, size, "rejected",
                         f"data set larger than max_dataset_size ({self.max_dataset} bytes)")
        if size > self.spool_limit:
            try:
                item.dataset = self._spool(head[offset:], fh)
            except _Refused as exc:
                return _Item(name, size, "rejected", str(exc))
        elif len(head) < HEADER_READ:
            item.dataset = head[offset:]
        else:
            item.dataset = head[offset:] + fh.read()
        return item

    def _sync_in_place(self, name: str, fh: IO[bytes]) -> None:
        """fsync a file indexed in place, and its folder (once per run), before it is journaled
        and indexed: a file just copied there may be in the page cache only, and after a power
        cut the index would hold an entry whose bytes (or directory entry) are gone."""
        from pacs.store.files import fsync_dir

        with _read_only_ok():
            os.fsync(fh.fileno())
        folder = os.path.dirname(os.path.abspath(name))
        if folder not in self._synced_folders:
            with _read_only_ok():
                fsync_dir(Path(folder))
            self._synced_folders.add(folder)

    def _archived(self, uid: str, in_place: bool) -> bool:
        """Whether ``uid`` is indexed; in place, an entry naming a file now gone or of another
        size (moved, overwritten) does not count: the file at hand takes its place."""
        if not in_place:
            return self.catalog.has_instance(uid)
        record = self.catalog.get_instance(uid)
        return record is not None and _readable(record)

    def _claims(self, item: _Item, record: InstanceRecord) -> None:
        """What indexing ``item`` in place takes over: its instance's unreadable entry elsewhere
        (replaced), and other instances' entries at its path (the file now holds another data
        set: theirs is gone, and two entries for one file would serve it under both UIDs)."""
        current = self.catalog.get_instance(record.sop_instance_uid)
        item.replaces = current is not None and not _readable(current)
        for uid in self.journaled.get(external.path_of(record.location), ()):
            if uid and uid != record.sop_instance_uid:
                other = self.catalog.get_instance(uid)
                if other is not None and other.location == record.location:
                    item.evicts.append(uid)

    def _spool(self, start: bytes, fh: IO[bytes]) -> Path:
        """Copy a large data set into the spool folder; never left there partial (a bad zip
        CRC, a full disk), never past ``max_dataset_size`` nor the free-space watermark (a zip
        member's declared size may lie: the bytes written are what counts)."""
        self._spooled += 1
        target = self.spool_dir / f"spool-import-{self._spooled}"
        try:
            with open(target, "wb") as out:
                out.write(start)
                written = len(start)
                while chunk := fh.read(SPOOL_CHUNK):
                    written += len(chunk)
                    if written > self.max_dataset:
                        raise _Refused(f"data set larger than max_dataset_size "
                                       f"({self.max_dataset} bytes)")
                    self.space.note_written(len(chunk))
                    if self.space.below_watermark():
                        raise _Refused(f"{BELOW_WATERMARK} while spooling "
                                       f"(min_free_space {self.space.min_free} bytes)")
                    out.write(chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target


@contextlib.contextmanager
def _read_only_ok() -> Iterator[None]:
    """An fsync refused with EINVAL (squashfs, iso9660) or EROFS: a read-only file system
    holds no dirty data, so there is nothing to flush; any other error is raised."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS):
            raise


def _readable(record: InstanceRecord) -> bool:
    """False for an in-place entry whose file is gone or has another size than indexed."""
    if not external.is_external(record.location):
        return True
    try:
        return external.size(record.location) == record.size
    except PacsError:
        return False


def _head_sop_instance_uid(head: bytes, transfer_syntax: str, offset: int) -> str:
    """The data set's own SOPInstanceUID from the first bytes of a file (it comes early: group
    0008); "" when the head does not reach it or cannot be parsed (the whole file then is)."""
    from pacs.dicom.scan import read_index_attributes

    try:
        attributes = read_index_attributes(head, transfer_syntax, stop_tag=SOP_INSTANCE_UID + 1,
                                           offset=offset)
    except (DicomFormatError, ValueError):
        return ""
    return attributes.get("SOPInstanceUID", "")


def _in_place(item: _Item, fh: IO[bytes], head: bytes, offset: int) -> _Item:
    """Scan and digest a whole Part-10 file for indexing where it lies (``mmap``: never read
    into memory twice); the item carries its finished record."""
    import mmap

    from pacs.dicom.scan import read_index_attributes
    from pacs.ingest import WHOLE

    del head  # the file is mapped whole: the digest covers preamble and file meta too
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            digest = blob_digest.of(view)
            size = len(view)
            try:
                # Walk to the end as the C-STORE path does: a truncated file is refused.
                attributes = read_index_attributes(view, item.transfer_syntax,
                                                   stop_tag=WHOLE, offset=offset)
            except DicomFormatError as exc:
                return _Item(item.name, item.size, "rejected", f"cannot parse data set: {exc}")
        finally:
            view.release()
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not attributes.get(keyword):
            return _Item(item.name, item.size, "rejected", f"data set has no {keyword}")
    item.record = InstanceRecord.from_attributes(
        attributes, item.transfer_syntax, location=external.location_for(item.name),
        source_aet=SOURCE_AET, received_at=time.time())
    item.record.size, item.record.digest = size, digest
    return item


# -- one worker: an event loop over its share of the files -------------------------------------


def _lock_writer(settings: Settings, first: int) -> tuple[str, int]:
    """A free import writer name (``importN``) and the descriptor holding its lock."""
    held = lock_first_free(settings.state_dir, (f"import{(first + step) % MAX_WRITERS}"
                                                for step in range(MAX_WRITERS)))
    if held is not None:
        return held
    raise PacsError(f"every import writer (import0..import{MAX_WRITERS - 1}) is busy")


def recover_stale_writers(settings: Settings, prefix: str = "import",
                          skip: Collection[str] = ()) -> list[str]:
    """Replay the segments of writers named ``<prefix><N>`` (import writers by default) that
    are not running now and were stopped uncleanly (killed), or cleanly after a failed catalog
    checkpoint (a replay-all marker: ``Archive.open`` then replays the whole log and drops it);
    their stored instances get indexed, none stays orphaned. Writers in ``skip`` (exact ids,
    e.g. the ``pacs serve`` supervisor's own ``w0``..``w{n-1}``) are left to their owner. A
    writer whose ``state/<writer>.lock`` is held is running: left alone. The replayed writers.
    """
    from pacs.archive import Archive

    if settings.store_backend != "segments":
        return []
    recovered = []
    for writer in stale_writers(settings.blob_dir, settings.state_dir, prefix, skip):
        fd = lock_writer(settings.state_dir, writer)
        if fd is None:
            continue  # running (another import, or a live process with that writer)
        try:
            Archive.open(settings, writer_id=writer).close()
            recovered.append(writer)
        finally:
            os.close(fd)
    return recovered


async def _import(
    archive: Archive,
    paths: list[str],
    counters: Any,
    slot: int,
    stop: asyncio.Event,
    progress: Callable[[], None] | None = None,
    in_place: bool = False,
) -> WorkerResult:
    loop = asyncio.get_running_loop()
    result = WorkerResult(writer_id=archive.store.writer_id
                          if hasattr(archive.store, "writer_id") else "")
    base = slot * FIELDS
    handoff: queue.Queue[list[_Item] | None] = queue.Queue(maxsize=8)
    stop_reading = threading.Event()
    journal = external.Journal(archive.settings.blob_dir)
    reader = _Reader(archive, archive.settings.spool_memory_limit, in_place,
                     journal.entries() if in_place else None)
    space = reader.space

    def produce() -> None:
        batch: list[_Item] = []
        try:
            for item in reader.items(paths, stop_reading):
                batch.append(item)
                if len(batch) >= BATCH:
                    handoff.put(batch)
                    batch = []
            if batch:
                handoff.put(batch)
        finally:
            handoff.put(None)

    producer = threading.Thread(target=produce, name="pacs-import-read", daemon=True)
    producer.start()
    slots = asyncio.Semaphore(CONCURRENCY)
    tasks: set[asyncio.Task[None]] = set()

    def count(index: int, n: int = 1) -> None:
        counters[base + index] += n

    def reject(name: str, reason: str) -> None:
        result.rejected.append((name, reason))
        count(REJECTED)

    async def store(item: _Item) -> None:
        try:
            stored = await archive.ingest.store(
                item.dataset, transfer_syntax_uid=item.transfer_syntax,
                sop_class_uid=item.sop_class, sop_instance_uid=None, source_aet=SOURCE_AET)
        except IngestError as exc:
            reject(item.name, exc.comment)
        except Exception as exc:  # never abort the run for one file
            log.exception("import of %s failed", item.name)
            reject(item.name, f"internal error: {exc}")
        else:
            count(IMPORTED if stored.outcome != "duplicate_kept" else DUPLICATES)
        finally:
            if isinstance(item.dataset, Path):
                item.dataset.unlink(missing_ok=True)
            count(FILES)
            count(BYTES, item.size)
            slots.release()

    async def evict(uid: str, location: str) -> None:
        """Unindex ``uid`` if still indexed at ``location``, whose file now holds another
        instance (the old data set is gone from there), then unjournal its entry."""

        def unindex() -> None:
            current = archive.catalog.get_instance(uid)
            if current is not None and current.location == location:
                archive.catalog.delete_instance(uid)

        await asyncio.wrap_future(archive.writer.run(unindex))
        await loop.run_in_executor(None, journal.remove, location, uid)
        log.info("%s: instance %s indexed there before is unindexed (file overwritten)",
                 external.path_of(location), uid)

    async def index_in_place(item: _Item) -> None:
        """Commit the index entry of a file already journaled (no blob is written)."""
        record = item.record
        assert record is not None
        uid = record.sop_instance_uid
        modality = record.attributes.get("Modality", "")
        forwards = [r.destination for r in archive.settings.routes
                    if r.matches(SOURCE_AET, modality)]
        indexed = False
        try:
            outcome = await asyncio.wrap_future(archive.writer.submit(
                record, "replace" if item.replaces else "keep", forwards=forwards))
            indexed = outcome.location == record.location
            if outcome.kind != "duplicate_kept":
                count(IMPORTED)
            else:  # the same SOP Instance UID twice in this run: the first file stays indexed
                count(DUPLICATES)
            if outcome.obsolete_location not in (None, record.location):  # the replaced path
                await loop.run_in_executor(None, journal.remove, outcome.obsolete_location, uid)
            for other in item.evicts:
                await evict(other, record.location)
        except PacsError as exc:
            reject(item.name, f"cannot index in place: {exc}")
        except Exception as exc:  # never abort the run for one file
            log.exception("in-place import of %s failed", item.name)
            reject(item.name, f"internal error: {exc}")
        finally:
            if not indexed:  # journaled before: unless forgotten, reindex would index it
                try:
                    await loop.run_in_executor(None, journal.remove, record.location, uid)
                except PacsError as exc:
                    log.warning("%s stays in the in-place journal: %s", item.name, exc)
            count(FILES)
            count(BYTES, item.size)
            slots.release()

    try:
        while True:
            batch = await loop.run_in_executor(None, handoff.get)
            if batch is None:
                break
            if space.below_watermark():  # the rest waits for space; a re-run resumes
                log.error("import stopped: %s (min_free_space %d bytes on %s)", BELOW_WATERMARK,
                          space.min_free, space.path)
                result.interrupted = result.disk_full = True
                for item in batch:
                    if isinstance(item.dataset, Path):
                        item.dataset.unlink(missing_ok=True)
                stop_reading.set()
                break
            placed = [(item.record.location, item.record.sop_instance_uid)
                      for item in batch if item.record is not None]
            if placed and not stop.is_set():
                # Journaled (durable) before indexed: reindex can always rebuild the entries.
                try:
                    await loop.run_in_executor(None, journal.add, placed)
                except PacsError as exc:
                    for item in batch:
                        if item.record is not None:
                            item.outcome, item.reason = "rejected", f"cannot journal: {exc}"
            for item in batch:
                if stop.is_set():
                    break
                if item.outcome:
                    if item.outcome == "rejected":
                        reject(item.name, item.reason)
                    else:
                        count(DUPLICATES if item.outcome == "duplicate" else IGNORED)
                    count(FILES)
                    count(BYTES, item.size)
                    continue
                await slots.acquire()
                if item.record is not None:
                    task = loop.create_task(index_in_place(item))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    continue
                space.note_written(item.size)
                task = loop.create_task(store(item))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if progress is not None:
                progress()
            if stop.is_set():
                result.interrupted = True
                stop_reading.set()
                break
    finally:
        stop_reading.set()
        while producer.is_alive():  # drain so the producer can finish and clean its spool
            try:
                batch = handoff.get(timeout=0.05)
            except queue.Empty:
                continue
            for item in batch or ():
                if isinstance(item.dataset, Path):
                    item.dataset.unlink(missing_ok=True)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    return result


def _runner() -> Callable[[Any], Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def run_worker(
    settings: Settings,
    paths: list[str],
    counters: Any,
    slot: int,
    progress: Callable[[], None] | None = None,
    in_place: bool = False,
) -> WorkerResult:
    """Import ``paths`` in this process with its own archive writer; SIGINT/SIGTERM stop it
    after the stores in flight (the archive is then closed cleanly)."""
    from pacs.archive import Archive

    logging.getLogger("pacs.ingest").setLevel(logging.WARNING)  # duplicates are counted
    writer, lock_fd = _lock_writer(settings, slot)
    try:
        archive = Archive.open(settings, worker_id=slot, writer_id=writer)

        async def main() -> WorkerResult:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                except (NotImplementedError, RuntimeError):
                    pass
            parent = multiprocessing.parent_process()
            if parent is not None:
                loop.add_reader(parent.sentinel, stop.set)
            return await _import(archive, paths, counters, slot, stop, progress, in_place)

        try:
            result: WorkerResult = _runner()(main())
        finally:
            archive.close()
        result.writer_id = writer
        # Read after close: its last checkpoint (the one making the whole run durable) counts.
        result.checkpoint_failures = archive.writer.checkpoint_failures
        return result
    finally:
        os.close(lock_fd)


def _worker_main(settings: Settings, paths: list[str], counters: Any, slot: int,
                 results: Any, in_place: bool = False) -> None:
    from pacs.cli import configure_logging

    configure_logging(settings.log_level, f"import{slot}", settings.log_format)
    try:
        result = run_worker(settings, paths, counters, slot, in_place=in_place)
    except PacsError as exc:
        log.error("import worker %d: %s", slot, exc)
        result = WorkerResult(rejected=[(p, f"not imported: {exc}") for p in paths])
    results.put((slot, result))


# -- the command -------------------------------------------------------------------------------


class Progress:
    """One updating line on a terminal, else a line every ``interval`` seconds."""

    def __init__(self, counters: Any, jobs: int, total: int, stream: IO[str] = sys.stderr,
                 interval: float | None = None) -> None:
        self.counters, self.jobs, self.total, self.stream = counters, jobs, total, stream
        self.tty = stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.started = time.monotonic()
        self._last = self.started

    def sums(self) -> list[int]:
        values = list(self.counters[:])
        return [sum(values[j * FIELDS + f] for j in range(self.jobs)) for f in range(FIELDS)]

    def line(self) -> str:
        s = self.sums()
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return (f"{s[FILES]}/{self.total} files  {s[FILES] / elapsed:,.0f} files/s  "
                f"{s[BYTES] / elapsed / 1e6:,.1f} MB/s  imported {s[IMPORTED]}  "
                f"skipped {s[DUPLICATES]}  rejected {s[REJECTED]}")

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.flush()


def _printable(text: str, stream: IO[str]) -> str:
    """``text`` as ``stream`` can encode it: a path that is not UTF-8 (an undecodable byte is a
    lone surrogate) is shown escaped rather than failing the run after its work is done."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


def _checkpoint_error(writer: str, failures: int) -> str:
    return (f"writer {writer}: {failures} catalog checkpoint(s) failed: the index of this run "
            "may not be durable (an OS crash could lose entries); the next pacs import replays "
            "the writer's whole segment log")


def import_command(settings: Settings, paths: list[Path], report: Path | None = None,
                   jobs: int | None = None, in_place: bool = False) -> int:
    """Import ``paths``; 0 when every file was imported (or already archived), 1 when some
    were rejected (listed in the report), 130 when interrupted, 2 on an error (among them a
    failed catalog checkpoint: the run's index entries are then not known durable).
    ``in_place``: index the files where they lie (``ext:`` locations) instead of copying them
    into the blob store."""
    settings = dataclasses.replace(settings, on_duplicate="keep")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        recover_stale_writers(settings)
    except PacsError as exc:
        print(f"pacs: error: {exc}", file=sys.stderr)
        return 2
    space = watermark(settings)
    if space.below_watermark():
        print(f"pacs: error: {BELOW_WATERMARK}: {space.free_bytes()} bytes free on "
              f"{space.path}, min_free_space is {space.min_free}", file=sys.stderr)
        return 2
    files, missing = collect(paths)
    if jobs is None:
        jobs = settings.worker_count
    jobs = max(1, min(jobs, len(files) // MIN_FILES_PER_PROCESS or 1))
    context = multiprocessing.get_context("spawn")
    counters = context.Array("q", FIELDS * jobs, lock=False)
    progress = Progress(counters, jobs, len(files))
    rejected: list[tuple[str, str]] = list(missing)
    interrupted = disk_full = False
    failed_checkpoints: dict[str, int] = {}  # writer → catalog checkpoints that failed
    if jobs == 1:
        try:
            result = run_worker(settings, files, counters, 0, progress.tick, in_place)
        except PacsError as exc:
            print(f"pacs: error: {exc}", file=sys.stderr)
            return 2
        rejected += result.rejected
        interrupted = result.interrupted
        disk_full = result.disk_full
        if result.checkpoint_failures:
            failed_checkpoints[result.writer_id] = result.checkpoint_failures
    else:
        results = context.Queue()
        shares = [files[i::jobs] for i in range(jobs)]
        processes = [context.Process(target=_worker_main,
                                     args=(settings, shares[i], counters, i, results,
                                           in_place),
                                     name=f"pacs-import{i}") for i in range(jobs)]
        for process in processes:
            process.start()
        got: dict[int, WorkerResult] = {}
        try:
            while len(got) < jobs:
                try:
                    slot, result = results.get(timeout=0.2)
                    got[slot] = result
                except queue.Empty:
                    if not any(p.is_alive() for p in processes) and results.empty():
                        break
                progress.tick()
        except KeyboardInterrupt:  # the workers got SIGINT too: they finish what is in flight
            interrupted = True
            while len(got) < jobs and any(p.is_alive() for p in processes):
                try:
                    slot, result = results.get(timeout=0.2)
                    got[slot] = result
                except (queue.Empty, KeyboardInterrupt):
                    continue
        for process in processes:
            process.join()
        for slot in range(jobs):
            if slot not in got:
                interrupted = True
                log.error("import worker %d exited with %s", slot, processes[slot].exitcode)
                continue
            rejected += got[slot].rejected
            interrupted = interrupted or got[slot].interrupted
            disk_full = disk_full or got[slot].disk_full
            if got[slot].checkpoint_failures:
                failed_checkpoints[got[slot].writer_id] = got[slot].checkpoint_failures
    progress.done()
    totals = progress.sums()
    elapsed = time.monotonic() - started
    summary = (f"imported {totals[IMPORTED]}, skipped {totals[DUPLICATES]} (already archived), "
               f"rejected {len(rejected)}, ignored {totals[IGNORED]} (DICOMDIR) of "
               f"{totals[FILES]} files, {totals[BYTES] / 1e6:.1f} MB in {elapsed:.2f} s "
               f"({totals[FILES] / max(elapsed, 1e-6):,.0f} files/s)")
    report_path = report or Path(f"import-report-{time.strftime('%Y%m%d-%H%M%S')}.txt")
    rejected.sort()
    try:
        # Paths come from os.fsdecode: a name that is not UTF-8 is written as its own bytes.
        with open(report_path, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(f"# pacs import into {settings.data_dir}: {summary}\n")
            if interrupted:
                out.write("# interrupted: run the same command again to resume\n")
            for writer, n in sorted(failed_checkpoints.items()):
                out.write(f"# error: {_checkpoint_error(writer, n)}\n")
            out.write("# rejected files: path<TAB>reason\n")
            for name, reason in rejected:
                out.write(f"{name}\t{reason}\n")
    except OSError as exc:
        print(_printable(f"pacs: cannot write the report {report_path}: {exc.strerror}",
                         sys.stderr), file=sys.stderr)
    shown = 100
    for name, reason in rejected[:shown]:
        print(_printable(f"rejected: {name}: {reason}", sys.stdout))
    if len(rejected) > shown:
        print(f"... and {len(rejected) - shown} more")
    print(summary)
    print(_printable(f"report: {report_path}", sys.stdout))
    # Not a success: the index may lack what this run reported imported until that replay.
    for writer, n in sorted(failed_checkpoints.items()):
        print(f"pacs: error: {_checkpoint_error(writer, n)}", file=sys.stderr)
    if disk_full:
        print(f"pacs: error: stopped: {BELOW_WATERMARK} (min_free_space {settings.min_free_space}"
              " bytes); free space and run the same command again to resume", file=sys.stderr)
        return 2
    if failed_checkpoints:
        return 2
    if interrupted:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if rejected else 0
