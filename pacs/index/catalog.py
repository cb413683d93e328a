"""The catalog: patients, studies, series and instances in one LMDB environment.

Named databases (all keys UTF-8, see :func:`pacs.index.codec.key`)::

    instances         SOPInstanceUID    -> positional JSON InstanceRecord (codec.encode_instance)
    series            SeriesInstanceUID -> {series keywords, StudyInstanceUID, counts}
    studies           StudyInstanceUID  -> {study keywords, patient_key, counts}
    patients          patient key       -> {patient keywords, IssuerOfPatientID, patient_key,
                                            counts}
    patient_studies   patient key + NUL + StudyInstanceUID   -> b''   (listing = prefix scan)
    study_series      StudyInstanceUID + NUL + SeriesInstanceUID -> b''
    series_instances  SeriesInstanceUID + NUL + SOPInstanceUID   -> b''
    meta              b'total_size' -> ASCII integer (bytes of all indexed blobs)
    sx, sx_counts, sx_log  secondary indexes for queries (pacs.index.secondary), updated by
                      _Txn.flush in the same write transaction as the records
    pending           write id (8 bytes big endian) -> JSON [format, [SOPInstanceUID, size,
                      upper attributes...], ...]: instances indexed by a deferring store whose
                      upper levels are not written yet

The patient key is ``PatientID + NUL + IssuerOfPatientID``; when PatientID is empty (anonymised
data) it is ``NUL + StudyInstanceUID``, so that unrelated anonymous studies are not merged into one
patient. NUL never occurs in the values (it is removed), so prefix scans cannot run into another
parent's children.

Upper-level records take their attributes from the instances: the first instance creates them and
every later instance overwrites them (*the latest wins*), including the hierarchy: an instance
whose series is known under another study moves that series, with its counts, to the new study
(and likewise a study to a new patient); emptied parents are removed. Counts (the DICOM
``NumberOf...Related...`` keywords) are kept in the same write transaction as the records.

Reads open their own short read transaction and never wait for the writer, but for a read of
upper levels that finds some pending (below). Writes happen in one transaction per call; LMDB
allows one writer at a time, which :class:`pacs.index.writer.CatalogWriter` serialises into group
commits.

*Deferred upper levels* (``store_items(..., defer=True)``, the ingest writer's): a new instance's
transaction writes its record and series link and lists it in ``pending``; the patient, study and
series records, counts, secondary indexes and total size it changes are written later, for many
instances at once, by the first transaction that does not defer (every ``DEFER_LIMIT`` deferred
instances of this process, any other write, a replacement) or by a read of any process that finds
``pending`` not empty before it reads upper levels (it writes them first, then reads; a read
within another read or within a write of its thread does not, nor a read-only catalog, nor the
reads of instance records, outboxes and checkpoints, which pollers of idle workers make: their
writes would count as another process writing, see ``prepare_items``): reads see what every
acknowledged store changed, as without deferral. A group of one or two stores (2 workers)
rewrote its series, study and patient records and their indexes in every transaction:
measured, deferring them made small stores over 4 associations 2-12% faster with 2 workers,
0-2% with 1 (README, session 19).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import lmdb
import orjson

from pacs.errors import CatalogError
from pacs.index import outbox, secondary
from pacs.index.codec import (
    child_key,
    child_prefix,
    decode_dict,
    decode_instance,
    encode_dict,
    encode_instance,
    key,
)
from pacs.index.records import (
    PATIENT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    InstanceRecord,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
OnDuplicate = Literal["keep", "replace"]
OutcomeKind = Literal["stored", "duplicate_kept", "replaced"]

DEFAULT_MAP_SIZE = 64 << 30  # address space only: the file grows with the data
# The first map (and file, reserved on disk) of a writable map; it doubles when full. Small:
# every archive reserves it, and a test suite opens hundreds of archives.
WRITEMAP_START = 8 << 20
_MAX_GROWTHS = 8

SERIES_INSTANCES = "NumberOfSeriesRelatedInstances"
STUDY_SERIES = "NumberOfStudyRelatedSeries"
STUDY_INSTANCES = "NumberOfStudyRelatedInstances"
PATIENT_STUDIES = "NumberOfPatientRelatedStudies"
PATIENT_SERIES = "NumberOfPatientRelatedSeries"
PATIENT_INSTANCES = "NumberOfPatientRelatedInstances"
PATIENT_KEY = "patient_key"
_PATIENT_ATTRS = (*PATIENT_KEYWORDS, "IssuerOfPatientID")
# map(attrs.get, keywords, _BLANKS) is attrs.get(k, "") per keyword, without a Python frame.
_BLANKS = ("",) * max(len(_PATIENT_ATTRS), len(STUDY_KEYWORDS), len(SERIES_KEYWORDS))

PENDING = "pending"
PENDING_FORMAT = 1  # of an entry's items: [uid, size, *_UPPER_KEYS values]; others are decoded
# Deferred instances of this process before a store transaction writes every pending upper level
# first (bounds how much a read that finds them has to write).
DEFER_LIMIT = 64
_OPTIONAL_DBS = (outbox.DB_NAME, "worklist", "hl7_outbox", "mpps",  # added after the first release
                 "commitment_outbox", PENDING)
_DB_NAMES = (
    "instances",
    "series",
    "studies",
    "patients",
    "patient_studies",
    "study_series",
    "series_instances",
    "meta",
    *secondary.DB_NAMES,  # secondary indexes for queries, kept in the same transactions
    outbox.DB_NAME,  # instances waiting to be forwarded (pacs.index.outbox)
    "worklist",  # scheduled procedure steps from HL7 orders (pacs.worklist.store)
    "hl7_outbox",  # HL7 messages waiting for the RIS (pacs.worklist.outbound)
    "mpps",  # Modality Performed Procedure Steps (pacs.server.mpps)
    "commitment_outbox",  # storage commitment reports not yet delivered (server.commitment)
    PENDING,  # instances whose upper levels are not written yet (deferred, see above)
)
_TOTAL_SIZE = b"total_size"


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    # Transactions here are opened with buffers=False: values are always bytes (no copy here).
    return cast(bytes | None, value)


def patient_key(attributes: dict[str, str]) -> str:
    """The stable key of the patient an instance belongs to (see the module docstring)."""
    pid = attributes.get("PatientID", "").replace("\0", "")
    if pid:
        return pid + "\0" + attributes.get("IssuerOfPatientID", "").replace("\0", "")
    return "\0" + attributes["StudyInstanceUID"].replace("\0", "")


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """What ``store_batch`` did with one record.

    ``obsolete_location`` is the blob the caller should now delete: the new blob for
    ``duplicate_kept``, the previous blob for ``replaced`` (None when it is the same location).
    """

    sop_instance_uid: str
    kind: OutcomeKind
    location: str  # the blob the catalog now points to
    obsolete_location: str | None = None


@dataclass(slots=True)
class PreparedStores:
    """A write transaction with a batch of stores applied and not committed yet: see
    :meth:`Catalog.prepare_items`. ``txn`` is None once it was committed or aborted."""

    txn: lmdb.Transaction | None
    outcomes: list[StoreOutcome]
    thread: int  # the thread that began it: LMDB's writer lock is that thread's
    seconds: float  # spent applying (for the commit metrics)
    deferred: int = 0  # instances whose upper levels it left pending
    wrote_pending: bool = False  # it writes every pending upper level (once committed)


# prepare_items declines while another process writes too: two of its writes (seen at ours)
# within this many seconds, the last one within this of now. Two workers storing at once
# would stall each other's event loop for whole fdatasyncs (measured: 0.95 of the throughput
# with 2 workers and 4 associations); a lone write (a start-up, a background task) does not.
FOREIGN_WRITE_QUIET = 1.0


class _Gate:
    """Shared/exclusive gate: growing the map needs every transaction of this process closed.

    ``enter``/``leave`` are the hot path (every read and write transaction): one C lock each
    way while nobody waits to grow the map (the generator-based context manager with a
    Python ``Condition`` cost ~2 us per transaction, more than the LMDB lookup it guarded).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._exclusive = False
        # The thread holding a prepared write transaction (Catalog.prepare_items) across its
        # event loop's turns: it may enter while a grower waits, which it would otherwise
        # wait for forever (the grower waits for that transaction to end).
        self.pinned: int | None = None

    def pin(self, thread: int | None) -> None:
        """Let ``thread`` (None: nobody) enter while a grower waits (see ``pinned``)."""
        with self._lock:
            self.pinned = thread

    def enter(self) -> None:
        with self._lock:
            while self._exclusive and self.pinned != threading.get_ident():
                self._cond.wait()
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if not self._active and self._exclusive:
                self._cond.notify_all()  # the grower waits for the last transaction

    @contextmanager
    def shared(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _Txn:
    """One write transaction with a cache of the upper-level records it touches.

    A batch of instances of one series reads and rewrites its series, study and patient once per
    batch instead of once per instance; ``flush`` writes the dirty records before the commit.
    """

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, Any], defer: bool = False) -> None:
        self.txn = txn
        self.dbs = dbs
        # New instances whose upper levels this transaction leaves to a later one (flush lists
        # them in the pending database); defer goes False once they were written after all.
        self.defer = defer
        self.deferred: list[InstanceRecord] = []
        self.wrote_pending = False  # _write_pending ran in it: once committed, none is left
        self._cache: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._dirty: set[tuple[str, str]] = set()
        self.size_delta = 0
        # For pacs.index.secondary: records as read before this transaction changed them, and
        # (SeriesInstanceUID, SOPClassUID, +1/-1) per instance added or removed.
        self._orig: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.instance_deltas: list[tuple[str, str, int]] = []

    def get(self, level: str, uid: str) -> dict[str, Any] | None:
        k = (level, uid)
        if k not in self._cache:
            raw = _bytes(self.txn.get(key(uid), db=self.dbs[level]))
            # The record as read is kept for the secondary indexes; callers change a copy
            # (records are flat: a shallow copy is enough).
            self._orig[k] = original = None if raw is None else decode_dict(raw)
            self._cache[k] = None if original is None else dict(original)
        return self._cache[k]

    def need(self, level: str, uid: str) -> dict[str, Any]:
        record = self.get(level, uid)
        if record is None:
            raise CatalogError(f"catalog inconsistent: no {level} record {uid!r}")
        return record

    def put(self, level: str, uid: str, record: dict[str, Any]) -> None:
        self._cache[(level, uid)] = record
        self._dirty.add((level, uid))

    def remove(self, level: str, uid: str) -> None:
        self._cache[(level, uid)] = None
        self._dirty.add((level, uid))

    def link(self, index: str, parent: str, child: str) -> None:
        # The value holds the child UID only when its key had to be hashed (see codec.key).
        raw = child.encode()
        value = b"" if key(child) == raw else raw
        self.txn.put(child_key(parent, child), value, db=self.dbs[index])

    def unlink(self, index: str, parent: str, child: str) -> None:
        self.txn.delete(child_key(parent, child), db=self.dbs[index])

    def flush(self) -> None:
        if self.defer:
            # Still deferring: nothing above instances changed (that would have written
            # pending first), so no secondary index either. Not even a first build of them
            # from the records: it would count pending instances their writing counts again.
            if self.deferred:
                entry = [PENDING_FORMAT, *map(_pending_item, self.deferred)]
                self.txn.put(self.txn.id().to_bytes(8, "big"), orjson.dumps(entry),
                             db=self.dbs[PENDING])
                self.deferred = []
            return
        changes = []
        for level, uid in self._dirty:
            record = self._cache[(level, uid)]
            if (level, uid) in self._orig:
                old = self._orig[(level, uid)]
            else:
                raw = _bytes(self.txn.get(key(uid), db=self.dbs[level]))
                old = None if raw is None else decode_dict(raw)
            changes.append((level, uid, old, record))
            if record is None:
                self.txn.delete(key(uid), db=self.dbs[level])
                self._orig[(level, uid)] = None
            else:
                self.txn.put(key(uid), encode_dict(record), db=self.dbs[level])
                self._orig[(level, uid)] = dict(record)
        secondary.on_flush(self.txn, self.dbs, changes, self.instance_deltas)
        self.instance_deltas = []
        if self.size_delta:
            meta = self.dbs["meta"]
            total = int(self.txn.get(_TOTAL_SIZE, b"0", db=meta)) + self.size_delta
            self.txn.put(_TOTAL_SIZE, str(total).encode(), db=meta)
        self._dirty.clear()
        self.size_delta = 0


# What of an instance's attributes its upper levels take (its patient key too).
_UPPER_KEYS = (*_PATIENT_ATTRS, *STUDY_KEYWORDS, *SERIES_KEYWORDS, "SOPClassUID")
_UPPER_BLANKS = ("",) * len(_UPPER_KEYS)


def _pending_item(record: InstanceRecord) -> list[Any]:
    """A deferred instance in the pending database: UID, size and upper attributes."""
    return [record.sop_instance_uid, record.size,
            *map(record.attributes.get, _UPPER_KEYS, _UPPER_BLANKS)]


def _well_formed(item: Any) -> bool:
    """Whether a pending item is what ``_pending_item`` makes."""
    return (isinstance(item, list) and len(item) == 2 + len(_UPPER_KEYS)
            and isinstance(item[0], str) and isinstance(item[1], int)
            and all(isinstance(v, str) for v in item[2:]))


def _nothing(t: _Txn) -> None:
    """A write transaction's work when it only writes what is pending (``Catalog._write``)."""


def _check(record: InstanceRecord) -> None:
    attrs = record.attributes
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not attrs.get(keyword):
            raise CatalogError(f"instance record without {keyword}: {attrs.get('SOPInstanceUID')}")


class Catalog:
    """Patients, studies, series and instances in one LMDB environment at ``path`` (a folder)."""

    def __init__(
        self,
        path: Path,
        map_size: int = DEFAULT_MAP_SIZE,
        readonly: bool = False,
        durable_commits: bool = True,
    ) -> None:
        """``durable_commits=False`` skips LMDB's fsyncs at commit (a commit is still visible
        at once): for a caller whose own log makes the writes durable and who calls
        ``checkpoint`` now and then, replaying its log from there after a crash."""
        self.path = Path(path)
        self.durable_commits = durable_commits
        self.readonly = readonly
        self._gate = _Gate()
        self._prepared: PreparedStores | None = None  # see prepare_items
        self._prepare_lock = threading.Lock()  # claims the one prepared transaction
        self._preparing = False  # claimed, being begun
        self._last_write_id = -1  # LMDB id of this process's last write transaction
        self._deferred = 0  # instances this process deferred since it last wrote pending ones
        self._writing = 0  # ident of the thread inside _write_once (its reads must not write)
        self._reading = threading.local()  # .depth: this thread's open _read transactions
        # monotonic() of the last two writes of other processes seen at one of ours
        self._foreign_writes = (-2 * FOREIGN_WRITE_QUIET, -FOREIGN_WRITE_QUIET)
        # A writer without durable commits (the segment store's workers) maps the file
        # writable: a commit then stores its pages in the map instead of one pwrite per dirty
        # page (~20 per small transaction; -11 us per small C-STORE, ~10% of the event loop's
        # CPU). LMDB then sizes the file to the map, so the map starts small and is reserved on
        # disk (``_reserve``): a full disk fails a growth, it cannot fault a write to a hole.
        self._writemap = not readonly and not durable_commits
        try:
            if not readonly:
                self.path.mkdir(parents=True, exist_ok=True)
            if self._writemap:
                self._env = self._open(self._writemap_size(map_size), True)
                try:
                    self._reserve(self.map_size)
                except OSError as exc:
                    log.warning("catalog %s: cannot reserve its %d MiB map on disk (%s): "
                                "commits write their pages instead", self.path,
                                self.map_size >> 20, exc)
                    self._env.close()
                    self._writemap = False
            if not self._writemap:
                self._env = self._open(map_size, False)
            self._dbs = {}
            for n in _DB_NAMES:
                try:
                    self._dbs[n] = self._env.open_db(n.encode(), create=not readonly)
                except lmdb.NotFoundError:
                    # Absent from an older catalog opened read-only: readers cope without it.
                    if n not in secondary.DB_NAMES and n not in _OPTIONAL_DBS:
                        raise
        except lmdb.Error as exc:
            raise CatalogError(f"cannot open catalog at {self.path}: {exc}") from exc

    def _open(self, map_size: int, writemap: bool) -> lmdb.Environment:
        return lmdb.open(
            str(self.path),
            map_size=map_size,
            max_dbs=len(_DB_NAMES),
            readonly=self.readonly,
            # Durable commits: a commit is on disk when it returns. Without them a process
            # crash loses nothing (the page cache keeps every commit) and the segment log
            # replays what an OS crash or power cut lost since the last checkpoint; but
            # LMDB's documentation says the database itself may then be corrupted (writeback
            # may write a meta page before the pages it points to, and with a writable map
            # pages freed after the checkpoint are reused in place): `pacs reindex` rebuilds
            # it from the segments; a start after an OS crash walks the index first
            # (pacs.index.integrity). Known limitation (README, "Not yet").
            sync=self.durable_commits,
            metasync=self.durable_commits,
            writemap=writemap,
            max_readers=512,
        )

    def _writemap_size(self, requested: int) -> int:
        """The first map of a writable map: the file as it is (a map reserved earlier, or the
        data of a catalog written without one), at least ``requested`` up to WRITEMAP_START."""
        try:
            existing = (self.path / "data.mdb").stat().st_size
        except FileNotFoundError:
            existing = 0
        return max(existing, min(requested, WRITEMAP_START))

    def _reserve(self, size: int) -> None:
        """Allocate the file's blocks up to ``size`` (OSError when the disk is full)."""
        fd = os.open(self.path / "data.mdb", os.O_RDWR | os.O_CLOEXEC)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)

    def _adopt_map_size(self) -> None:
        """Another process grew the map: follow it (no transaction of ours may be open)."""
        with self._exclusive():
            if not self._writemap:
                self._env.set_mapsize(0)
                return
            # Not the size the other process recorded (a writer without a writable map may
            # record a huge one): the next doubling of ours that holds its data, reserved first.
            info = self._env.info()
            needed = (info["last_pgno"] + 1) * self._env.stat()["psize"]
            size = info["map_size"]
            while size < needed:
                size *= 2
            if size > info["map_size"]:
                self._grow_to(size)

    def _grow_to(self, size: int) -> None:
        if self._writemap:
            try:
                self._reserve(size)
            except OSError as exc:
                raise CatalogError(f"catalog at {self.path} cannot grow to {size >> 20} MiB: "
                                   f"{exc}") from exc
        self._env.set_mapsize(size)

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def _read(self, upper: bool = True) -> Iterator[lmdb.Transaction]:
        """A read transaction; ``upper``: the read may look at upper levels, so pending ones
        are written first (module docstring)."""
        caught_up = not upper
        for _ in range(3):
            pending = False
            with self._gate.shared():
                try:
                    txn = self._env.begin(buffers=False)
                except lmdb.MapResizedError:
                    txn = None
                if txn is not None and not caught_up and self._pending_to_write(txn):
                    txn.abort()
                    pending = True
                elif txn is not None:
                    reading = self._reading
                    reading.depth = getattr(reading, "depth", 0) + 1
                    try:
                        yield txn
                    except lmdb.Error as exc:
                        raise CatalogError(f"catalog read failed: {exc}") from exc
                    finally:
                        reading.depth -= 1
                        txn.abort()
                    return
            if pending:
                caught_up = True
                self._catch_up()
            else:
                self._adopt_map_size()
        raise CatalogError("catalog map keeps being resized")

    def _pending_to_write(self, txn: lmdb.Transaction) -> bool:
        """Whether a read must first write the pending upper levels (module docstring): not
        read-only, not within this thread's own write transaction (it would wait for itself),
        nor within another read of its thread (which wrote them when it began; a map growth
        would wait for that read to end)."""
        db = self._dbs.get(PENDING)
        nested: int = getattr(self._reading, "depth", 0)
        if db is None or self.readonly or self._writing == threading.get_ident() or nested:
            return False
        return bool(txn.stat(db)["entries"])

    def _catch_up(self) -> None:
        """Write the pending upper levels; a failure leaves the read to see them as they are."""
        try:
            self._write(_nothing)
        except CatalogError as exc:
            log.warning("catalog: cannot write the pending upper levels before a read (%s)", exc)

    def _exclusive(self) -> AbstractContextManager[None]:
        """The gate, exclusively; a prepared transaction of this thread is aborted first
        (waiting for it would wait for ourselves)."""
        self._end_prepared_here()
        return self._gate.exclusive()

    def _write(self, fn: Callable[[_Txn], T], defer: bool = False) -> T:
        """Run ``fn`` in one write transaction, growing the map when it is full; unless it
        ``defer``s, the upper levels pending (module docstring) are written in it first."""
        if self.readonly:
            raise CatalogError("catalog opened read-only")
        # LMDB's writer lock is not recursive: a prepared transaction of this thread would
        # make this one wait for itself. Aborted, its owner indexes its stores the usual way.
        self._end_prepared_here()
        for _ in range(_MAX_GROWTHS):
            try:
                return self._write_once(fn, defer)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.MapResizedError:
                self._adopt_map_size()
            except lmdb.Error as exc:
                raise CatalogError(f"catalog write failed: {exc}") from exc
        raise CatalogError(f"catalog map still full after {_MAX_GROWTHS} growths")

    def _write_once(self, fn: Callable[[_Txn], T], defer: bool = False) -> T:
        gate = self._gate
        gate.enter()
        try:
            txn = self._env.begin(write=True)
            self._writing = threading.get_ident()
            try:
                write_id = txn.id()
                self._note_other_writers(write_id)
                t = _Txn(txn, self._dbs, defer)
                if not defer:
                    self._write_pending(t)
                result = fn(t)
                deferred = len(t.deferred)
                t.flush()
            except BaseException:
                self._writing = 0
                txn.abort()
                raise
            # Noted while LMDB's writer lock is still ours: a thread of this process waiting
            # for it must not take this commit for another process's (see prepare_items).
            previous, self._last_write_id = self._last_write_id, write_id
            self._writing = 0
            try:
                txn.commit()
            except BaseException:
                self._last_write_id = previous
                raise
            self._count_deferred(t.wrote_pending, deferred)
            return result
        finally:
            gate.leave()

    def write_pending(self) -> None:
        """Write the pending upper levels now if this process deferred any since it last
        wrote them (module docstring)."""
        if self._deferred and not self.readonly:
            self._write(_nothing)

    def _pending_items(self, t: _Txn, value: bytes) -> list[list[Any]]:
        """The items of one pending entry; one of another format (another version wrote it)
        is rebuilt from its instances' records, which every format lists first."""
        try:
            entry = orjson.loads(value)
        except orjson.JSONDecodeError:
            entry = None
        if not isinstance(entry, list) or not entry:
            log.error("catalog: an unreadable pending entry dropped: `pacs reindex` rebuilds "
                      "the upper levels of its instances")
            return []
        ours = entry[0] == PENDING_FORMAT
        items = []
        for item in entry[1:]:
            if ours and _well_formed(item):
                items.append(item)
                continue
            # Another version's, or damaged: the instance's own record says the same.
            uid = item[0] if isinstance(item, list) and item else item
            raw = None
            if isinstance(uid, str):
                raw = _bytes(t.txn.get(key(uid), db=self._dbs["instances"]))
            if raw is not None:
                items.append(_pending_item(decode_instance(raw)))
            else:
                log.error("catalog: a pending item without its instance dropped: %.80r", item)
        return items

    def _count_deferred(self, wrote_pending: bool, deferred: int) -> None:
        """After a commit: ``deferred`` instances more pending, none of this process left
        pending before them if the transaction wrote them."""
        self._deferred = (0 if wrote_pending else self._deferred) + deferred

    def _write_pending(self, t: _Txn) -> None:
        """Write the upper levels of every pending instance (and of those ``t`` deferred so
        far) in ``t``, which defers no more.

        Instances with the same upper attributes (``_UPPER_KEYS``: most of a series) change
        the upper levels as one of them does, with all their counts and sizes: each such
        group is applied once, the groups in the order of their last instance, so the latest
        instance's attributes win at every level as when applied one by one (the property
        tests compare both ways)."""
        items: list[list[Any]] = []  # [SOPInstanceUID, size, *upper values], as indexed
        db = self._dbs.get(PENDING)
        if db is not None:
            for k, value in list(t.txn.cursor(db=db)):  # by write id: in commit order
                items += self._pending_items(t, bytes(value))
                t.txn.delete(k, db=db)
        items += map(_pending_item, t.deferred)
        t.deferred = []
        t.defer = False
        t.wrote_pending = True
        groups: dict[tuple[Any, ...], list[int]] = {}  # upper values -> [count, size, last]
        seen: set[str] = set()  # an instance is pending once; a damaged entry may repeat it
        for i, item in enumerate(items):
            if item[0] in seen:
                continue
            seen.add(item[0])
            upper = tuple(item[2:])
            group = groups.get(upper)
            if group is None:
                groups[upper] = [1, item[1], i]
            else:
                group[0] += 1
                group[1] += item[1]
                group[2] = i
        for upper, (count, size, _) in sorted(groups.items(), key=lambda g: g[1][2]):
            self._add_upper(t, dict(zip(_UPPER_KEYS, upper, strict=True)), count, size)

    def _grow(self) -> None:
        with self._exclusive():
            new_size = self._env.info()["map_size"] * 2
            # A writable map starts small and grows as a matter of course.
            log.log(logging.INFO if self._writemap else logging.WARNING,
                    "catalog map full: growing it to %d MiB", new_size >> 20)
            self._grow_to(new_size)

    def checkpoint(self, name: str, value: str) -> None:
        """Record ``name = value`` and make every commit so far durable (one env sync)."""
        meta_key = b"checkpoint/" + name.encode()

        def apply(t: _Txn) -> None:
            t.txn.put(meta_key, value.encode(), db=self._dbs["meta"])

        self._write(apply)
        self.sync()

    def sync(self) -> None:
        """Make every commit so far durable (without ``durable_commits`` a commit is not)."""
        try:
            with self._gate.shared():  # not while this process remaps a growing map
                self._env.sync(True)
        except lmdb.Error as exc:
            raise CatalogError(f"catalog sync failed: {exc}") from exc

    def check_integrity(self) -> int:
        """Walk every database of the catalog (every entry, in key order); how many entries.

        CatalogError when a page cannot be read or keys come out of order: what an OS crash or
        power cut can leave of an LMDB file written without fsyncs (a meta page on disk before
        the pages it points to, or a page reused in place). A best-effort check: a stale page
        that is still well-formed and in order passes."""
        entries = 0
        try:
            with self._read(upper=False) as txn:
                for name, db in self._dbs.items():
                    previous: bytes | None = None
                    for raw in txn.cursor(db=db).iternext(keys=True, values=False):
                        k = bytes(raw)
                        if previous is not None and k <= previous:
                            raise CatalogError(f"catalog database {name!r}: keys out of order "
                                               f"after entry {entries}")
                        previous = k
                        entries += 1
        except lmdb.Error as exc:
            raise CatalogError(f"catalog damaged: {exc}") from exc
        return entries

    def get_checkpoint(self, name: str) -> str | None:
        """The value of the last durable ``checkpoint(name, ...)``, None when never set."""
        with self._read(upper=False) as txn:
            raw = _bytes(txn.get(b"checkpoint/" + name.encode(), db=self._dbs["meta"]))
        return None if raw is None else raw.decode()

    @property
    def map_size(self) -> int:
        """Current size of the memory map in bytes."""
        return int(self._env.info()["map_size"])

    # -- writing -------------------------------------------------------------------------------

    def store_batch(
        self, records: Sequence[InstanceRecord], on_duplicate: OnDuplicate = "keep"
    ) -> list[StoreOutcome]:
        """Index records in ONE write transaction, durable when this returns."""
        return self.store_items([(r, on_duplicate) for r in records])

    def store_items(
        self,
        items: Sequence[tuple[InstanceRecord, OnDuplicate]],
        forwards: Sequence[Sequence[str]] | None = None,
        defer: bool = False,
    ) -> list[StoreOutcome]:
        """Like ``store_batch`` with a duplicate policy per record (used by the writer).

        ``forwards`` (one list of AE titles per item) queues each newly stored or replaced
        instance for forwarding, in the same transaction (``pacs.index.outbox``). ``defer``:
        new instances leave their upper levels to a later transaction (module docstring).
        """
        return self._write(lambda t: self._apply_items(t, items, forwards),
                           defer=self._may_defer(defer))

    def _may_defer(self, defer: bool) -> bool:
        return defer and self._deferred < DEFER_LIMIT and PENDING in self._dbs

    def _apply_items(
        self,
        t: _Txn,
        items: Sequence[tuple[InstanceRecord, OnDuplicate]],
        forwards: Sequence[Sequence[str]] | None,
    ) -> list[StoreOutcome]:
        for record, on_duplicate in items:  # all checked before anything is written
            _check(record)
            if on_duplicate not in ("keep", "replace"):
                raise CatalogError(f"unknown duplicate policy {on_duplicate!r}")
        outcomes = [self._store_one(t, record, dup) for record, dup in items]
        for outcome, destinations in zip(outcomes, forwards or (), strict=False):
            if destinations and outcome.kind != "duplicate_kept":
                outbox.enqueue(t.txn, self._dbs[outbox.DB_NAME], outcome.sop_instance_uid,
                               list(destinations))
        return outcomes

    def prepare_items(
        self,
        items: Sequence[tuple[InstanceRecord, OnDuplicate]],
        forwards: Sequence[Sequence[str]] | None = None,
        defer: bool = False,
    ) -> PreparedStores | None:
        """``store_items`` up to, not including, the commit: the write transaction stays open
        (LMDB's writer lock held, by this thread) until :meth:`commit_prepared` or
        :meth:`abort_prepared`, on this thread; at most one at a time. For an event loop
        that applies a batch while the fdatasync of its blobs is in flight and commits it
        when that answers. None, with nothing left open, when it cannot (another prepared
        transaction, a map to grow or follow, a bad record, any error) or should not (another
        process keeps writing: two of its commits within ``FOREIGN_WRITE_QUIET`` seconds,
        another worker storing at the same time, whose event loop would wait for the whole
        fdatasync): the caller then indexes the batch with ``store_items``, which reports
        what went wrong.

        Any write transaction or map growth later begun by this thread aborts it first
        (it would wait for itself); ``commit_prepared`` then returns None.
        """
        if self.readonly or self._other_writer_busy():
            return None
        with self._prepare_lock:  # one at a time, whichever threads ask
            if self._prepared is not None or self._preparing:
                return None
            self._preparing = True
        try:
            return self._prepare(items, forwards, self._may_defer(defer))
        finally:
            self._preparing = False

    def _prepare(
        self,
        items: Sequence[tuple[InstanceRecord, OnDuplicate]],
        forwards: Sequence[Sequence[str]] | None,
        defer: bool,
    ) -> PreparedStores | None:
        started = time.perf_counter()
        gate = self._gate
        gate.enter()
        try:
            txn = self._env.begin(write=True)
        except lmdb.Error:  # e.g. the map resized by another process: store_items follows it
            gate.leave()
            return None
        self._note_other_writers(txn.id())
        if self._other_writer_busy():
            # Another worker storing too: held open, this transaction would stall its event
            # loop for a whole fdatasync.
            txn.abort()
            gate.leave()
            return None
        try:
            t = _Txn(txn, self._dbs, defer)
            if not defer:
                self._write_pending(t)
            outcomes = self._apply_items(t, items, forwards)
            deferred = len(t.deferred)
            t.flush()
        except BaseException as exc:
            txn.abort()
            gate.leave()
            if not isinstance(exc, Exception):
                raise
            log.debug("prepared index transaction abandoned (%s): committing the usual way", exc)
            return None
        prepared = PreparedStores(txn, outcomes, threading.get_ident(),
                                  time.perf_counter() - started, deferred, t.wrote_pending)
        self._prepared = prepared
        gate.pin(prepared.thread)
        return prepared

    def _note_other_writers(self, write_id: int) -> None:
        """Under LMDB's writer lock: whether another process committed since our last write
        (its id is not the next one; a lone one, its start-up or a background task, alone is
        no reason to decline, see ``_other_writer_busy``)."""
        if write_id != self._last_write_id + 1 and self._last_write_id >= 0:
            self._foreign_writes = (self._foreign_writes[1], time.monotonic())

    def _other_writer_busy(self) -> bool:
        """Whether another process is writing too: two of its writes seen within
        ``FOREIGN_WRITE_QUIET`` of each other, the last one within that of now."""
        previous, last = self._foreign_writes
        quiet = FOREIGN_WRITE_QUIET
        return last - previous < quiet and time.monotonic() - last < quiet

    def commit_prepared(self, prepared: PreparedStores) -> list[StoreOutcome] | None:
        """Commit what :meth:`prepare_items` applied: its outcomes; None when it was aborted
        meanwhile or the commit failed (logged; nothing of it is in the index)."""
        txn = prepared.txn
        if txn is None or self._prepared is not prepared:
            return None
        started = time.perf_counter()
        previous, self._last_write_id = self._last_write_id, txn.id()  # see _write_once
        try:
            txn.commit()  # on failure LMDB has aborted it
        except lmdb.Error as exc:
            self._last_write_id = previous
            # A writable map starts small and fills up as a matter of course: the usual way
            # grows it and indexes the batch. Anything else deserves a warning.
            level = logging.INFO if isinstance(exc, lmdb.MapFullError) else logging.WARNING
            log.log(level, "prepared index commit failed (%s): committing the usual way", exc)
            return None
        finally:
            self._release(prepared)
        self._count_deferred(prepared.wrote_pending, prepared.deferred)
        prepared.seconds += time.perf_counter() - started
        return prepared.outcomes

    def abort_prepared(self, prepared: PreparedStores) -> bool:
        """Abort a prepared transaction (nothing of it reaches the index); idempotent. False
        when it cannot: asked from another thread while the one that began it lives."""
        txn = prepared.txn
        if txn is None:
            return True
        if prepared.thread != threading.get_ident():
            # LMDB's writer lock belongs to the thread that took it: from another thread
            # the unlock fails while that thread lives (every writer then waits forever), and
            # if that thread ends with the transaction open the environment is unusable. Once
            # it has ended, an abort from here clears the transaction and the next writer
            # recovers the lock.
            if any(t.ident == prepared.thread and t.is_alive() for t in threading.enumerate()):
                log.error("a prepared index transaction is held by a live thread that cannot "
                          "end it (its event loop stopped): left to that thread")
                return False
            log.warning("aborting the prepared index transaction of a thread that ended")
        try:
            txn.abort()
        finally:
            self._release(prepared)
        return True

    def _release(self, prepared: PreparedStores) -> None:
        prepared.txn = None
        gate = self._gate
        if self._prepared is prepared:
            self._prepared = None
            gate.pin(None)
        gate.leave()  # the entry prepare_items took for it

    def _end_prepared_here(self) -> None:
        prepared = self._prepared
        if prepared is not None and prepared.thread == threading.get_ident():
            log.debug("a write on the thread of a prepared index transaction aborts it")
            self.abort_prepared(prepared)

    def forwards_due(self, now: float, limit: int = 500) -> list[outbox.Forward]:
        """Queued forwards due at ``now`` (pacs.index.outbox)."""
        if outbox.DB_NAME not in self._dbs:
            return []
        with self._read(upper=False) as txn:
            return outbox.due(txn, self._dbs[outbox.DB_NAME], now, limit)

    def forward_queue(self) -> list[outbox.Forward]:
        """Every queued forward, by due time."""
        if outbox.DB_NAME not in self._dbs:
            return []
        with self._read(upper=False) as txn:
            return list(outbox.entries(txn, self._dbs[outbox.DB_NAME]))

    def settle_forwards(
        self, sent: Sequence[outbox.Forward], failed: Sequence[tuple[outbox.Forward, str]],
        now: float, retry_base: float,
    ) -> None:
        """Drop the delivered entries, postpone the failed ones (one transaction)."""
        db = self._dbs[outbox.DB_NAME]

        def apply(t: _Txn) -> None:
            for entry in sent:
                outbox.done(t.txn, db, entry)
            for entry, error in failed:
                outbox.retry_later(t.txn, db, entry, error, now, retry_base)

        self._write(apply)

    def _store_one(
        self, t: _Txn, record: InstanceRecord, on_duplicate: OnDuplicate
    ) -> StoreOutcome:
        uid = record.sop_instance_uid
        raw = _bytes(t.txn.get(key(uid), db=self._dbs["instances"]))
        if raw is None:
            if t.defer:
                self._add_instance(t, record)
                t.deferred.append(record)
            else:
                self._add(t, record)
            return StoreOutcome(uid, "stored", record.location)
        old = decode_instance(raw)
        if on_duplicate == "keep":
            obsolete = None if record.location == old.location else record.location
            return StoreOutcome(uid, "duplicate_kept", old.location, obsolete)
        if t.defer:
            self._write_pending(t)  # the old instance's counts must be in before they drop
        self._remove(t, old)
        self._add(t, record)
        obsolete = None if record.location == old.location else old.location
        return StoreOutcome(uid, "replaced", record.location, obsolete)

    def _add(self, t: _Txn, record: InstanceRecord) -> None:
        self._add_upper(t, record.attributes, 1, record.size)
        self._add_instance(t, record)

    def _add_instance(self, t: _Txn, record: InstanceRecord) -> None:
        """The instance's own record and its series link."""
        t.txn.put(key(record.sop_instance_uid), encode_instance(record), db=self._dbs["instances"])
        t.link("series_instances", record.attributes["SeriesInstanceUID"],
               record.sop_instance_uid)

    def _add_upper(self, t: _Txn, attrs: dict[str, str], count: int, size: int) -> None:
        """What ``count`` instances with these upper attributes (``_UPPER_KEYS``), ``size``
        bytes in all, change above themselves, one after the other: their patient, study and
        series records and counts, the SOP class counts and the total size."""
        pk = patient_key(attrs)
        study_uid = attrs["StudyInstanceUID"]
        series_uid = attrs["SeriesInstanceUID"]

        patient = t.get("patients", pk)
        if patient is None:
            patient = {PATIENT_KEY: pk, PATIENT_STUDIES: 0, PATIENT_SERIES: 0, PATIENT_INSTANCES: 0}
        patient.update(zip(_PATIENT_ATTRS, map(attrs.get, _PATIENT_ATTRS, _BLANKS), strict=True))
        t.put("patients", pk, patient)

        study = t.get("studies", study_uid)
        if study is None:
            study = {PATIENT_KEY: pk, STUDY_SERIES: 0, STUDY_INSTANCES: 0}
            patient[PATIENT_STUDIES] += 1
            t.link("patient_studies", pk, study_uid)
        elif study[PATIENT_KEY] != pk:
            self._move_study(t, study_uid, study, pk)
        study.update(zip(STUDY_KEYWORDS, map(attrs.get, STUDY_KEYWORDS, _BLANKS), strict=True))
        t.put("studies", study_uid, study)

        series = t.get("series", series_uid)
        if series is None:
            series = {"StudyInstanceUID": study_uid, SERIES_INSTANCES: 0}
            study[STUDY_SERIES] += 1
            patient[PATIENT_SERIES] += 1
            t.link("study_series", study_uid, series_uid)
        elif series["StudyInstanceUID"] != study_uid:
            self._move_series(t, series_uid, series, study_uid)
        series.update(zip(SERIES_KEYWORDS, map(attrs.get, SERIES_KEYWORDS, _BLANKS), strict=True))
        t.put("series", series_uid, series)

        series[SERIES_INSTANCES] += count
        study[STUDY_INSTANCES] += count
        patient[PATIENT_INSTANCES] += count
        t.instance_deltas.append((series_uid, attrs.get("SOPClassUID", ""), count))
        t.size_delta += size

    def _move_study(self, t: _Txn, study_uid: str, study: dict[str, Any], new_pk: str) -> None:
        """Re-parent a study (with its counts) under another, already stored, patient."""
        old_pk = study[PATIENT_KEY]
        log.info("study %s moves from patient %r to %r", study_uid, old_pk, new_pk)
        old = t.need("patients", old_pk)
        new = t.need("patients", new_pk)
        for patient, sign in ((old, -1), (new, 1)):
            patient[PATIENT_STUDIES] += sign
            patient[PATIENT_SERIES] += sign * study[STUDY_SERIES]
            patient[PATIENT_INSTANCES] += sign * study[STUDY_INSTANCES]
        t.unlink("patient_studies", old_pk, study_uid)
        t.link("patient_studies", new_pk, study_uid)
        study[PATIENT_KEY] = new_pk
        if old[PATIENT_STUDIES] <= 0:
            t.remove("patients", old_pk)
        else:
            t.put("patients", old_pk, old)

    def _move_series(self, t: _Txn, series_uid: str, series: dict[str, Any], new_st: str) -> None:
        """Re-parent a series (with its counts) under another, already stored, study."""
        old_st = series["StudyInstanceUID"]
        log.info("series %s moves from study %s to %s", series_uid, old_st, new_st)
        n = series[SERIES_INSTANCES]
        old_study = t.need("studies", old_st)
        old_patient = t.need("patients", old_study[PATIENT_KEY])
        new_study = t.need("studies", new_st)
        new_patient = t.need("patients", new_study[PATIENT_KEY])
        for record, sign in ((old_study, -1), (new_study, 1)):
            record[STUDY_SERIES] += sign
            record[STUDY_INSTANCES] += sign * n
        for record, sign in ((old_patient, -1), (new_patient, 1)):
            record[PATIENT_SERIES] += sign
            record[PATIENT_INSTANCES] += sign * n
        t.unlink("study_series", old_st, series_uid)
        t.link("study_series", new_st, series_uid)
        series["StudyInstanceUID"] = new_st
        self._drop_if_empty(t, old_st, old_study, old_patient)

    def _drop_if_empty(
        self, t: _Txn, study_uid: str, study: dict[str, Any], patient: dict[str, Any]
    ) -> None:
        """Remove a study left without series, and its patient if left without studies."""
        pk = study[PATIENT_KEY]
        if study[STUDY_SERIES] <= 0:
            t.remove("studies", study_uid)
            t.unlink("patient_studies", pk, study_uid)
            patient[PATIENT_STUDIES] -= 1
        else:
            t.put("studies", study_uid, study)
        if patient[PATIENT_STUDIES] <= 0:
            t.remove("patients", pk)
        else:
            t.put("patients", pk, patient)

    def _remove(self, t: _Txn, record: InstanceRecord) -> None:
        """Unindex an instance, updating counts up its chain and dropping emptied parents."""
        uid = record.sop_instance_uid
        series_uid = record.attributes["SeriesInstanceUID"]
        t.txn.delete(key(uid), db=self._dbs["instances"])
        t.unlink("series_instances", series_uid, uid)
        t.instance_deltas.append((series_uid, record.attributes.get("SOPClassUID", ""), -1))
        t.size_delta -= record.size
        series = t.need("series", series_uid)
        study_uid = series["StudyInstanceUID"]
        study = t.need("studies", study_uid)
        patient = t.need("patients", study[PATIENT_KEY])
        series[SERIES_INSTANCES] -= 1
        study[STUDY_INSTANCES] -= 1
        patient[PATIENT_INSTANCES] -= 1
        if series[SERIES_INSTANCES] <= 0:
            t.remove("series", series_uid)
            t.unlink("study_series", study_uid, series_uid)
            study[STUDY_SERIES] -= 1
            patient[PATIENT_SERIES] -= 1
        else:
            t.put("series", series_uid, series)
        self._drop_if_empty(t, study_uid, study, patient)

    def delete_instance(self, uid: str) -> InstanceRecord | None:
        """Unindex one instance; its record (whose blob the caller deletes), None if unknown."""

        def apply(t: _Txn) -> InstanceRecord | None:
            raw = _bytes(t.txn.get(key(uid), db=self._dbs["instances"]))
            if raw is None:
                return None
            record = decode_instance(raw)
            self._remove(t, record)
            return record

        return self._write(apply)

    def relocate(self, moves: dict[str, tuple[str, str]]) -> list[str]:
        """Point instances at new blob locations (after compaction), in one transaction.

        ``moves`` maps SOP Instance UID -> (old location, new location). An instance whose
        location is no longer ``old`` (deleted or re-sent meanwhile) is left alone; the UIDs of
        those are returned so the caller knows their new copies are garbage.
        """

        def apply(t: _Txn) -> list[str]:
            stale: list[str] = []
            db = self._dbs["instances"]
            for uid, (old, new) in moves.items():
                raw = _bytes(t.txn.get(key(uid), db=db))
                record = None if raw is None else decode_instance(raw)
                if record is None or record.location != old:
                    stale.append(uid)
                    continue
                record.location = new
                t.txn.put(key(uid), encode_instance(record), db=db)
            return stale

        return self._write(apply)

    def clear(self) -> None:
        """Empty every database (before a reindex) but the worklist, which blobs cannot rebuild."""

        def apply(t: _Txn) -> None:
            for name, db in self._dbs.items():
                if name not in ("worklist", "mpps", "hl7_outbox", "commitment_outbox"):
                    t.txn.drop(db, delete=False)

        # "Deferring": pending is dropped with the rest, not written first (a reindex must get
        # past an entry that cannot be written, e.g. in a damaged catalog).
        self._write(apply, defer=True)
        self._deferred = 0

    # -- reading -------------------------------------------------------------------------------

    def reader(self, upper: bool = True) -> AbstractContextManager[lmdb.Transaction]:
        """A short read transaction (for pacs.index.query): close it before yielding rows.
        ``upper=False`` for a read of no patient, study or series level, record, link, count
        or query index (an outbox, the worklist): it never writes pending upper levels."""
        return self._read(upper)

    def database(self, name: str) -> Any:
        """The handle of one named database (see the module docstring)."""
        return self._dbs[name]

    def has_instance(self, uid: str) -> bool:
        """Whether an instance is indexed (no record decoded: the duplicate check of ingest,
        once per C-STORE, hence without the context managers of ``_read``)."""
        gate = self._gate
        gate.enter()
        try:
            txn = self._env.begin(buffers=False)
        except lmdb.MapResizedError:
            txn = None
        except lmdb.Error as exc:
            gate.leave()
            raise CatalogError(f"catalog read failed: {exc}") from exc
        if txn is None:
            gate.leave()
            with self._read(upper=False) as fresh:  # adopts the new map size first
                return fresh.get(key(uid), db=self._dbs["instances"]) is not None
        try:
            return txn.get(key(uid), db=self._dbs["instances"]) is not None
        except lmdb.Error as exc:
            raise CatalogError(f"catalog read failed: {exc}") from exc
        finally:
            txn.abort()
            gate.leave()

    def get_instance(self, uid: str) -> InstanceRecord | None:
        """The record of one instance, None when not indexed."""
        with self._read(upper=False) as txn:
            raw = _bytes(txn.get(key(uid), db=self._dbs["instances"]))
        return None if raw is None else decode_instance(raw)

    def _get_dict(self, level: str, uid: str) -> dict[str, Any] | None:
        with self._read() as txn:
            raw = _bytes(txn.get(key(uid), db=self._dbs[level]))
        return None if raw is None else decode_dict(raw)

    def get_series(self, uid: str) -> dict[str, Any] | None:
        """Series keywords, StudyInstanceUID and NumberOfSeriesRelatedInstances."""
        return self._get_dict("series", uid)

    def get_study(self, uid: str) -> dict[str, Any] | None:
        """Study keywords, patient_key and the NumberOfStudyRelated... counts."""
        return self._get_dict("studies", uid)

    def get_patient(self, patient_key: str) -> dict[str, Any] | None:
        """Patient keywords, patient_key and the NumberOfPatientRelated... counts."""
        return self._get_dict("patients", patient_key)

    def _children(self, index: str, parent: str) -> list[str]:
        prefix = child_prefix(parent)
        out: list[str] = []
        with self._read() as txn:
            cursor = txn.cursor(db=self._dbs[index])
            if cursor.set_range(prefix):
                for k, v in cast(Iterator[tuple[bytes, bytes]], cursor):
                    if not k.startswith(prefix):
                        break
                    out.append(v.decode() if v else k[len(prefix) :].decode())
        return out

    def instances_in_series(self, series_uids: Iterable[str]) -> list[InstanceRecord]:
        """The records of every instance of these series, series by series, read in one
        transaction (C-MOVE/C-GET resolution, WADO-RS, the REST API)."""
        out: list[InstanceRecord] = []
        index, instances = self._dbs["series_instances"], self._dbs["instances"]
        with self._read(upper=False) as txn:
            cursor = txn.cursor(db=index)
            for series_uid in series_uids:
                prefix = child_prefix(series_uid)
                if not cursor.set_range(prefix):
                    continue
                for k, v in cast(Iterator[tuple[bytes, bytes]], cursor):
                    if not k.startswith(prefix):
                        break
                    uid = v.decode() if v else k[len(prefix) :].decode()
                    raw = _bytes(txn.get(key(uid), db=instances))
                    if raw is not None:
                        out.append(decode_instance(raw))
        return out

    def series_of_study(self, uid: str) -> list[str]:
        """SeriesInstanceUIDs of a study, in key order."""
        return self._children("study_series", uid)

    def instances_of_series(self, uid: str) -> list[str]:
        """SOPInstanceUIDs of a series, in key order."""
        return self._children("series_instances", uid)

    def studies_of_patient(self, patient_key: str) -> list[str]:
        """StudyInstanceUIDs of a patient, in key order."""
        return self._children("patient_studies", patient_key)

    def iter_instances(self, chunk: int = 1000) -> Iterator[InstanceRecord]:
        """Every instance record in key order.

        Reads ``chunk`` records per read transaction so that a slow consumer never pins an old
        snapshot (which would stop LMDB from reusing pages) nor blocks a map growth.
        """
        after: bytes | None = None
        last = b""
        while True:
            rows: list[bytes] = []
            with self._read(upper=False) as txn:
                cursor = txn.cursor(db=self._dbs["instances"])
                found = cursor.set_range(after) if after is not None else cursor.first()
                while found and len(rows) < chunk:
                    k = cast(bytes, cursor.key())
                    if k != after:
                        rows.append(cast(bytes, cursor.value()))
                        last = k
                    found = cursor.next()
            if not rows:
                return
            after = last
            yield from (decode_instance(raw) for raw in rows)

    def statistics(self) -> dict[str, int]:
        """Counts of patients, studies, series and instances, and the total size of the blobs."""
        with self._read() as txn:
            stats = {
                level: int(txn.stat(self._dbs[level])["entries"])
                for level in ("patients", "studies", "series", "instances")
            }
            stats["total_size"] = int(txn.get(_TOTAL_SIZE, b"0", db=self._dbs["meta"]))
        return stats

    def close(self) -> None:
        """Close the environment (no transaction may be running)."""
        with self._exclusive():
            self._env.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
