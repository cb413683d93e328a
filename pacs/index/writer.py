"""The catalog writer: group commit of many stores per LMDB transaction, in two stages.

LMDB allows one write transaction at a time. Any thread may ``submit`` a record (a coroutine
calls ``submit_async``). Stage one (the *flusher* thread) drains up to ``batch_size`` queued
records, writes the blobs submitted with them and runs ``before_commit`` (the blob store's
fdatasync) for the batch; stage two indexes the flushed batch in one LMDB transaction and only
then resolves the futures, so a C-STORE is acknowledged once its blob is durable and its index
entry committed (with the segment store, LMDB commits are not fsynced: ``pacs.recovery``).

Stage two runs in the *committer* thread, or, for stores of one event loop (``submit_async``),
on that loop itself: the loop would hold the GIL for the commit's Python anyway, and answering
there saves a thread hand-off per batch. Either way the blob fdatasync of batch N+1 overlaps the
commit of batch N. Under load batches grow by themselves; when idle a lone record is committed
at once, so there is no added latency.

Small blobs of an event loop (up to ``LOOP_WRITE_LIMIT``, with the segment store) skip stage
one: the loop appends them itself and a thread that never holds the GIL makes them durable
(:class:`_LoopGroup`, :mod:`pacs.store.syncer`). A Python flush thread traded the GIL with the
loop several times per batch (5 voluntary context switches per small instance); without it,
durable ingest of 9 KiB instances over 4 associations rose ~15% with one worker. Large data
sets in memory go the same way (``submit_direct_async``): the loop lays the record out and the
same thread writes its middle with ``O_DIRECT`` before the fdatasync that covers it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from pacs import metrics
from pacs.errors import CatalogError, StorageError
from pacs.index.catalog import Catalog, OnDuplicate, PreparedStores, StoreOutcome
from pacs.index.records import InstanceRecord
from pacs.store.base import BlobInfo, BlobPart, BlobStore
from pacs.store.syncer import WRITE_BUFFERED, WRITE_TAGS, Syncer

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Store:
    record: InstanceRecord
    on_duplicate: OnDuplicate
    # Resolved in the writer thread (submit), or on its event loop (submit_async).
    future: Future[StoreOutcome] | asyncio.Future[StoreOutcome]
    blob: Sequence[BlobPart] | None = None  # written by the flush stage, then indexed
    forwards: Sequence[str] = ()  # AE titles to queue it for, in the same transaction
    loop: asyncio.AbstractEventLoop | None = None  # the future's loop (submit_async)
    # The blob store's failure count before the blob was written (SegmentStore.failures):
    # if it moved by the time the blob's fdatasync succeeded, the blob may be lost.
    epoch: int | None = None

    def start(self) -> bool:
        """False when the caller cancelled it before the writer took it."""
        if isinstance(self.future, Future):
            return self.future.set_running_or_notify_cancel()
        return not self.future.cancelled()  # a racy read is fine: rechecked on the loop


# (store, outcome or exception, whether it is an exception)
_Settled = list[tuple[_Store, Any, bool]]


def _settle(settled: _Settled) -> None:
    """Resolve futures: those of a loop with one ``call_soon_threadsafe`` per loop (one
    wake-up of the loop per batch instead of one per instance), the others at once."""
    by_loop: dict[asyncio.AbstractEventLoop, _Settled] = {}
    for item in settled:
        store = item[0]
        if store.loop is None:
            future = cast(Future[StoreOutcome], store.future)
            if item[2]:
                future.set_exception(item[1])
            else:
                future.set_result(item[1])
        else:
            by_loop.setdefault(store.loop, []).append(item)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_on_loop, items)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _resolve_on_loop(items: _Settled) -> None:
    for store, value, is_error in items:
        future = store.future
        if future.cancelled():
            continue
        if is_error:
            future.set_exception(value)
        else:
            future.set_result(value)


def _write_failed(store: _Store, exc: Exception) -> tuple[_Store, Any, bool]:
    """The failure to answer a store whose blob could not be written with."""
    error = StorageError(f"cannot write the blob: {exc}")
    error.__cause__ = exc
    return store, error, True


def _not_durable(batch: Sequence[_Store], exc: Exception) -> _Settled:
    """The failures to answer a batch whose blobs could not be made durable with."""
    failed: _Settled = []
    for store in batch:
        error = StorageError(f"blobs not made durable: {exc}")
        error.__cause__ = exc
        failed.append((store, error, True))
    return failed


@dataclass(slots=True)
class _Run:
    fn: Callable[[], Any]
    future: Future[Any]


_STOP = object()


class CatalogWriter:
    """Owns every write to ``catalog`` from one thread; thread-safe ``submit`` and ``run``."""

    def __init__(
        self,
        catalog: Catalog,
        batch_size: int = 256,
        name: str = "catalog-writer",
        before_commit: Callable[[], None] | None = None,
        checkpoint: Callable[[], None] | None = None,
        blob_store: BlobStore | None = None,
        checkpoint_interval: float = 1.0,
        loop_writes: bool = True,
        sync_spin: float = 0.0,
        index_during_sync: bool = False,
        defer_index: bool = False,
    ) -> None:
        """``before_commit`` runs in the writer thread before each batch's transaction: the
        blob store's ``flush`` goes there, so one fdatasync covers the whole batch's blobs and
        no index entry ever points at bytes that are not yet on disk. ``sync_spin``: seconds
        an event loop storing through a :class:`_LoopGroup` keeps polling after its last
        fdatasync answered (0: it sleeps as usual). ``index_during_sync``: such a loop applies
        each batch's index transaction while the batch's fdatasync is in flight and commits
        it when that answers (see :class:`_LoopGroup`). ``defer_index``: such a loop's stores
        leave their new instances' upper levels to a later transaction (``Catalog``, deferred
        upper levels; :meth:`write_deferred`)."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.catalog = catalog
        self.before_commit = before_commit
        self.blob_store = blob_store  # writes the blobs submitted with their record
        # Run by the committer at most every ``checkpoint_interval`` seconds after a commit,
        # and at close: makes non-durable catalog commits durable (see Catalog.checkpoint).
        self.checkpoint = checkpoint
        self.checkpoint_failures = 0  # checkpoints that raised (their sync may have lost commits)
        self.checkpoint_interval = checkpoint_interval
        self._last_checkpoint = time.monotonic()
        self.batch_size = batch_size
        self.batches_committed = 0  # write transactions committed for stores
        self.records_committed = 0
        self.largest_batch = 0
        self.flush_seconds = 0.0  # time in before_commit (the blob fdatasync)
        self.commit_seconds = 0.0  # time in LMDB write transactions for stores
        self.prepared_batches = 0  # of batches_committed: applied during their fdatasync
        self._queue: queue.SimpleQueue[_Store | _Run | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._resumed = threading.Event()  # cleared by pause(): the flush stage waits
        self._resumed.set()
        # Flushed batches (lists), runs and the stop, in submission order, for the committer.
        self._flushed: queue.SimpleQueue[list[_Store] | _Run | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-flush", daemon=True)
        # Batches handed to their event loop for the commit, until it (or close) takes them.
        self._on_loop: dict[int, list[_Store]] = {}
        # Event loops that write their small blobs themselves (segment store): see _LoopGroup.
        self._groups: dict[asyncio.AbstractEventLoop, _LoopGroup] = {}
        self._loop_writes = loop_writes and hasattr(blob_store, "try_put")
        self.sync_spin = sync_spin
        self.index_during_sync = index_during_sync
        self.defer_index = defer_index
        self._committer = threading.Thread(target=self._commit_loop, name=name, daemon=True)
        self._committer.start()
        self._thread.start()

    def submit(
        self,
        record: InstanceRecord,
        on_duplicate: OnDuplicate = "keep",
        blob: Sequence[BlobPart] | None = None,
        forwards: Sequence[str] = (),
        epoch: int | None = None,
    ) -> Future[StoreOutcome]:
        """Queue a record; the future resolves once its transaction is committed.

        With ``blob``, the flush stage first writes it (``blob_store.put``, not durable) and
        fills the record's location, size and digest: small instances are written in batch,
        by the same thread that then makes them durable with one fdatasync.
        """
        if blob is not None and self.blob_store is None:
            raise ValueError("this writer has no blob store to write blobs with")
        future: Future[StoreOutcome] = Future()
        self._put(_Store(record, on_duplicate, future, blob, forwards, epoch=epoch))
        return future

    def submit_async(
        self,
        record: InstanceRecord,
        on_duplicate: OnDuplicate = "keep",
        blob: Sequence[BlobPart] | None = None,
        forwards: Sequence[str] = (),
        epoch: int | None = None,
    ) -> asyncio.Future[StoreOutcome]:
        """``submit`` from a coroutine: an asyncio future of the running loop, resolved with
        the rest of its batch in one loop callback (no thread-safe call per instance).

        ``epoch``: for a record whose blob the caller wrote (no ``blob``), the blob store's
        ``failures`` read before writing it (see ``SegmentStore.failures``)."""
        if blob is not None and self.blob_store is None:
            raise ValueError("this writer has no blob store to write blobs with")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoreOutcome] = loop.create_future()
        store = _Store(record, on_duplicate, future, blob, forwards, loop, epoch)
        if self._loop_writes and (_fits_loop(blob) if blob is not None else epoch is not None):
            # A small blob the loop appends itself, or one the caller wrote (a large copy on
            # an I/O thread): the loop's group makes it durable, without the flush thread.
            group = self._groups.get(loop)
            if group is None:
                group = self._new_group(loop)
            if group is not None and (group.add(store) if blob is not None
                                      else group.add_written(store)):
                return future
        self._put(store)
        return future

    @property
    def direct_possible(self) -> bool:
        """Whether ``submit_direct_async`` may take large data sets (blob store and setting)."""
        return self._loop_writes and getattr(self.blob_store, "direct_min", 0) > 0 and hasattr(
            self.blob_store, "reserve_direct")

    def submit_direct_async(
        self,
        record: InstanceRecord,
        meta: bytes,
        dataset: bytes | bytearray,
        on_duplicate: OnDuplicate = "keep",
        forwards: Sequence[str] = (),
    ) -> asyncio.Future[StoreOutcome] | None:
        """``submit_async`` of a large data set in memory that the event loop lays out and its
        sync thread writes (``SegmentStore.reserve_direct``): no I/O thread, no GIL handed
        back and forth. None (nothing written) when it must go the blocking way: the caller
        then writes the blob itself and submits it with ``epoch``."""
        if not self.direct_possible:
            return None
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = self._new_group(loop)
            if group is None:
                return None
        future: asyncio.Future[StoreOutcome] = loop.create_future()
        store = _Store(record, on_duplicate, future, None, forwards, loop)
        return future if group.add_direct(store, meta, dataset) else None

    def _new_group(self, loop: asyncio.AbstractEventLoop) -> _LoopGroup | None:
        with self._lock:
            if self._closed:
                raise CatalogError("catalog writer is closed")
            # Loops that ended (a process running one after the other) give their sync
            # thread, pipes and segment descriptor back.
            ended = [g for g in self._groups.values() if g.loop.is_closed()]
            for g in ended:
                del self._groups[g.loop]
            group = self._groups[loop] = _LoopGroup(self, loop)
        for g in ended:
            g.close()
        return group

    def run(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` (e.g. ``lambda: catalog.delete_instance(uid)``) in the writer thread."""
        future: Future[T] = Future()
        self._put(_Run(fn, future))
        return future

    def pause(self) -> None:
        """Hold back the next batch: submissions queue up until ``resume`` (or ``close``)
        and are then gathered together, up to ``batch_size`` per batch."""
        self._resumed.clear()

    def resume(self) -> None:
        """Let the writer gather and commit again after ``pause``."""
        self._resumed.set()
        with self._lock:
            groups = list(self._groups.values())
        for group in groups:
            group.kick()

    def _put(self, item: _Store | _Run) -> None:
        with self._lock:
            if self._closed:
                raise CatalogError("catalog writer is closed")
            self._queue.put(item)

    def close(self, timeout: float | None = None) -> None:
        """Commit everything queued so far, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
            groups, self._groups = list(self._groups.values()), {}
        self._resumed.set()
        for group in groups:
            group.close()
        self._thread.join(timeout)
        # Batches still waiting for their loop (e.g. close() runs on that loop) are committed
        # here, before the committer's last checkpoint.
        with self._lock:
            stranded, self._on_loop = list(self._on_loop.values()), {}
        for batch in stranded:
            _settle(self._commit(batch))
        self._flushed.put(_STOP)
        self._committer.join(timeout)
        if self.records_committed:
            log.info(
                "catalog writer: %d instances in %d transactions (%.1f per batch, largest %d; "
                "%d applied during their fdatasync); %.2f s flushing blobs, %.2f s committing",
                self.records_committed, self.batches_committed,
                self.records_committed / max(self.batches_committed, 1), self.largest_batch,
                self.prepared_batches, self.flush_seconds, self.commit_seconds,
            )

    def write_deferred(self) -> None:
        """Write the upper levels this process's stores deferred (an association released:
        its client's stores then read back complete even by a read-only reader). Logged, not
        raised, when it fails: any later write or read writes them."""
        try:
            self.catalog.write_pending()
        except CatalogError as exc:
            log.warning("catalog: cannot write the deferred upper levels (%s)", exc)
        except Exception:  # its caller ends an association: that must go on whatever happens
            log.exception("catalog: writing the deferred upper levels failed")

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        """Stage one: gather a batch, make its blobs durable, hand it to the committer."""
        pending: object = None
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            self._resumed.wait()  # a paused writer gathers everything queued meanwhile at once
            if item is _STOP:
                return  # close() drains what is on its way to a loop, then stops the committer
            if isinstance(item, _Run):
                self._flushed.put(item)
                continue
            assert isinstance(item, _Store)
            batch = [item]
            while len(batch) < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Store):
                    batch.append(nxt)
                else:  # a run or the stop: after this batch, in submission order
                    pending = nxt
                    break
            batch = [s for s in batch if s.start()]
            epoch = self._failures()
            for store in batch:
                if store.epoch is None:
                    store.epoch = epoch
            batch = self._write_blobs(batch)
            batch = self._durable(batch) if batch and self._flush(batch) else []
            if batch:
                loop = batch[0].loop
                if loop is not None and all(s.loop is loop for s in batch):
                    # Stores of one event loop (submit_async): committed on that loop, which
                    # then answers them at once. On 2 cores this took a thread hand-off and
                    # GIL contention off every batch (7 context switches per small instance
                    # instead of 9.5, ingest ~5% faster).
                    with self._lock:
                        self._on_loop[id(batch)] = batch
                    try:
                        loop.call_soon_threadsafe(self._commit_on_loop, id(batch))
                        continue
                    except RuntimeError:  # the loop is closed: the committer does it
                        with self._lock:
                            del self._on_loop[id(batch)]
                self._flushed.put(batch)

    def _failures(self) -> int | None:
        """The blob store's count of failed fdatasyncs, if it keeps one."""
        return cast("int | None", getattr(self.blob_store, "failures", None))

    def _durable(self, batch: list[_Store]) -> list[_Store]:
        """After a successful fdatasync: the stores no failed fdatasync may have lost (one
        counted since their blob was written, e.g. through another descriptor, could have
        taken their pages); the others are answered with a StorageError."""
        now = self._failures()
        lost = [s for s in batch if s.epoch is not None and s.epoch != now]
        if not lost:
            return batch
        log.error("%d stores refused: an fdatasync of their segment failed after they were "
                  "written", len(lost))
        exc = OSError(errno.EIO, "an earlier fdatasync of the segment failed")
        _settle(_not_durable(lost, exc))
        return [s for s in batch if s.epoch is None or s.epoch == now]

    def _write_blobs(self, batch: list[_Store]) -> list[_Store]:
        """Write the blobs submitted with their records; a failed write fails only its own."""
        written = []
        failed: _Settled = []
        for store in batch:
            if store.blob is not None:
                assert self.blob_store is not None
                record = store.record
                try:
                    info = self.blob_store.put(record.sop_instance_uid, store.blob,
                                               durable=False)
                except Exception as exc:
                    failed.append(_write_failed(store, exc))
                    continue
                finally:
                    store.blob = None  # the data set's bytes are not needed any more
                record.location, record.size, record.digest = (
                    info.location, info.size, info.digest)
            written.append(store)
        _settle(failed)
        return written

    def _flush(self, batch: list[_Store]) -> bool:
        if self.before_commit is None:
            return True
        try:
            started = time.perf_counter()
            self.before_commit()
            self.flush_seconds += time.perf_counter() - started
        except Exception as exc:  # the blobs are not durable: nothing may be indexed
            log.error("flush before commit failed (%s): %d stores refused", exc, len(batch))
            _settle(_not_durable(batch, exc))
            return False
        return True

    def _commit_loop(self) -> None:
        """Stage two: merge the flushed batches waiting into one LMDB transaction each."""
        pending: object = None
        while True:
            item = pending if pending is not None else self._flushed.get()
            pending = None
            if item is _STOP:
                self._checkpoint()
                return
            if isinstance(item, _Run):
                self._run(item)
                continue
            assert isinstance(item, list)
            batch: list[_Store] = list(item)
            while len(batch) < self.batch_size:
                try:
                    nxt = self._flushed.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, list) and len(batch) + len(nxt) <= self.batch_size:
                    batch.extend(nxt)
                else:  # a run, the stop, or too many to merge: next, in order
                    pending = nxt
                    break
            _settle(self._commit(batch))
            if time.monotonic() - self._last_checkpoint >= self.checkpoint_interval:
                self._checkpoint()

    def _commit_on_loop(self, key: int) -> None:
        """On the stores' event loop: index the batch and answer its futures directly."""
        with self._lock:
            batch = self._on_loop.pop(key, None)
        if batch is None:
            return  # close() took it
        _resolve_on_loop(self._commit(batch))
        self._checkpoint_soon()

    def _checkpoint_soon(self) -> None:
        """After a commit on a loop: the committer takes the checkpoint when one is due."""
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_interval:
            self._last_checkpoint = time.monotonic()  # not twice: the committer runs it
            self._flushed.put(_Run(self._checkpoint, Future()))

    def _checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        self._last_checkpoint = time.monotonic()
        try:
            self.checkpoint()
        except Exception:  # the next one retries; the log still holds everything
            self.checkpoint_failures += 1
            log.exception("catalog checkpoint failed")

    @staticmethod
    def _run(item: _Run) -> None:
        if not item.future.set_running_or_notify_cancel():
            return
        try:
            item.future.set_result(item.fn())
        except Exception as exc:
            item.future.set_exception(exc)

    def _commit(self, batch: list[_Store], defer: bool = False) -> _Settled:
        """Index ``batch`` in one transaction; (store, outcome or exception, is exception).
        ``defer``: its new instances' upper levels may be left pending (``Catalog``)."""
        try:
            started = time.perf_counter()
            outcomes = self.catalog.store_items([(s.record, s.on_duplicate) for s in batch],
                                                [s.forwards for s in batch], defer)
            elapsed = time.perf_counter() - started
        except Exception as exc:
            if len(batch) > 1:
                # One bad record must not fail its neighbours: retry each in its own transaction.
                log.warning("catalog batch of %d failed (%s): retrying one by one", len(batch), exc)
                return [self._commit_one(store, defer) for store in batch]
            return [self._failure(batch[0], exc)]
        return self._committed(batch, outcomes, elapsed)

    def _commit_all(self, batch: list[_Store], defer: bool = False) -> _Settled:
        """``_commit`` in transactions of at most ``batch_size`` (a loop group has no bound)."""
        settled: _Settled = []
        for i in range(0, len(batch), self.batch_size):
            settled += self._commit(batch[i:i + self.batch_size], defer)
        return settled

    def _commit_one(self, store: _Store, defer: bool = False) -> tuple[_Store, Any, bool]:
        try:
            (outcome,) = self.catalog.store_items([(store.record, store.on_duplicate)],
                                                  [store.forwards], defer)
        except Exception as exc:
            return self._failure(store, exc)
        self._count(1)
        return store, outcome, False

    def _committed(self, batch: list[_Store], outcomes: list[StoreOutcome],
                   seconds: float) -> _Settled:
        """A batch indexed in one transaction of ``seconds``: counted, paired with outcomes."""
        self.commit_seconds += seconds
        metrics.COMMIT_SECONDS.observe(seconds)
        self._count(len(batch))
        return [(store, outcome, False) for store, outcome in zip(batch, outcomes, strict=True)]

    def _count(self, n: int) -> None:
        self.batches_committed += 1
        self.records_committed += n
        self.largest_batch = max(self.largest_batch, n)

    @staticmethod
    def _failure(store: _Store, exc: Exception) -> tuple[_Store, Any, bool]:
        if not isinstance(exc, CatalogError):
            wrapped = CatalogError(f"cannot index {store.record.attributes.get('SOPInstanceUID')}")
            wrapped.__cause__ = exc
            exc = wrapped
        return store, exc, True


LOOP_WRITE_LIMIT = 64 * 1024  # blobs up to this size are appended by their event loop


def _fits_loop(blob: Sequence[BlobPart]) -> bool:
    """Whether the event loop appends ``blob`` itself: in memory, up to LOOP_WRITE_LIMIT."""
    size = 0
    for part in blob:
        if isinstance(part, Path):
            return False  # a spooled file: copied by the flush thread
        size += len(part)
    return size <= LOOP_WRITE_LIMIT


# The most a loop polls while one fdatasync is in flight (a slow disk: it sleeps after that).
SPIN_SYNC_CAP = 0.002


class _LoopGroup:
    """Group commit for the small stores of one event loop, without a Python thread.

    The loop appends each blob to the active segment itself (``try_put``: a few µs for a small
    instance), then, at the end of the loop iteration, asks the :class:`Syncer` for one
    fdatasync covering everything appended so far; stores arriving meanwhile wait for the next
    one. When the answer comes (a reader on the loop), the loop asks for the next fdatasync at
    once and commits the synced batch to LMDB, then answers it: blob durable, index committed,
    response, as before. The only other
    thread involved never takes the GIL, so the loop no longer trades it with a flush thread.

    With ``writer.sync_spin`` the loop polls instead of sleeping while an fdatasync is in
    flight and for that long after the last one answered, handing its core to any other
    runnable thread at each turn (``sched_yield``): on a virtual machine a halted vCPU wakes
    only through the host, tens of µs, paid for the sync thread's answer and for the clients'
    next data sets (measured: +5-10% small durable stores over 4 associations, 1 worker). The
    turn right after a group is answered does not yield: the coroutines answering it, queued
    behind that turn, write their responses first.

    With ``writer.index_during_sync`` the batch's index transaction is applied while its
    fdatasync is in flight (right after the previous batch's answers) and only committed when
    the fdatasync answers, so the order stays blob durable, index committed, response, and a
    lone association no longer waits for the index work after each fdatasync (measured: +10-15%
    small durable stores over 1 association; even over 4). The transaction holds LMDB's writer
    lock meanwhile: the catalog aborts it if this thread begins any other write (the batch is
    then indexed the usual way), and a failed fdatasync or a store refused aborts it too.
    """

    def __init__(self, writer: CatalogWriter, loop: asyncio.AbstractEventLoop) -> None:
        self.writer = writer
        self.loop = loop
        self.store = writer.blob_store
        self.pending: list[_Store] = []  # appended, waiting for the next fdatasync
        self.syncing: list[_Store] | None = None  # covered by the fdatasync in flight
        self._target: tuple[str, int] | None = None  # the segment synced, our descriptor
        self._closed = False
        self._lock = threading.Lock()  # close() may run in another thread
        # It keeps the data sets of the writes it was asked alive (and unresizable) until
        # their answers are read, whatever becomes of the stores.
        self.syncer = Syncer(name="catalog-writer-sync")
        self._sync_soon = False  # _start_sync_soon is scheduled
        self._prepared: PreparedStores | None = None  # the syncing batch, applied (see above)
        self.spinning = False  # _spin is scheduled
        self._answered = False  # a group was answered since the last turn of _spin
        self._sync_asked = 0.0  # perf_counter() of the fdatasync in flight's request
        self._sync_ended = 0.0  # ... of the last answer
        loop.add_reader(self.syncer.done_fd, self._synced)

    def add(self, store: _Store) -> bool:
        """On the loop: append the store's blob; False when the caller must queue it instead."""
        blob = store.blob
        assert blob is not None
        return self._put_on_loop(
            store, lambda: self.store.try_put(  # type: ignore[union-attr]
                store.record.sop_instance_uid, blob, self.syncer))

    def add_direct(self, store: _Store, meta: bytes, dataset: bytes | bytearray) -> bool:
        """On the loop: lay out a large blob and queue its writes to the sync thread, then
        wait for the next fdatasync like the others (asked after the writes, so it covers
        them); False (nothing written) when the segment store says it must go the blocking way."""
        return self._put_on_loop(store, lambda: self.store.reserve_direct(  # type: ignore[union-attr]
            store.record.sop_instance_uid, meta, dataset, self.syncer))

    def _put_on_loop(self, store: _Store, put: Callable[[], BlobInfo | None]) -> bool:
        """Write the store's blob with ``put`` (never waiting) and wait for the next fdatasync;
        False when ``put`` declined (None: the caller takes it the blocking way)."""
        store.epoch = self.store.failures  # type: ignore[union-attr]
        try:
            info = put()
        except Exception as exc:
            _resolve_on_loop([_write_failed(store, exc)])
            return True
        if info is None:
            store.epoch = None  # the blocking way writes it, and reads the count then
            return False  # e.g. a large put holds the segment: the flush thread waits for it
        store.blob = None
        record = store.record
        record.location, record.size, record.digest = info.location, info.size, info.digest
        return self.add_written(store)

    def _written(self, tag: int, answer: int) -> None:
        """A part of a large record was written (or not)."""
        if answer or tag == WRITE_BUFFERED:
            self.store.direct_answered(answer, tag == WRITE_BUFFERED)  # type: ignore[union-attr]

    def add_written(self, store: _Store) -> bool:
        """On the loop: a store whose blob is written (before this call), to make durable with
        the next fdatasync. A roll since the write sealed, and so synced, its segment."""
        with self._lock:
            if self._closed:
                raise CatalogError("catalog writer is closed")
            self.pending.append(store)
        if not self._sync_soon:
            # Asked at the end of this loop iteration, not now: every store the loop takes in
            # this iteration (several associations' data sets often arrive together) shares
            # that fdatasync instead of the first one syncing alone (w2: -13% CPU a store).
            self._sync_soon = True
            self.loop.call_soon(self._start_sync_soon)
        return True

    def _start_spin(self) -> None:
        if self.writer.sync_spin > 0 and not self.spinning:
            self.spinning = True
            self.loop.call_soon(self._spin)

    def _spin(self) -> None:
        """One turn of polling: the loop does not sleep while this stays scheduled."""
        now = time.perf_counter()
        if self.syncing is not None:
            keep = now - self._sync_asked < SPIN_SYNC_CAP
        else:
            keep = now - self._sync_ended < self.writer.sync_spin
        if not keep or self._closed:
            self.spinning = False
            return
        if self._answered:
            # The coroutines answering the group just committed were queued after this turn:
            # they run first, this time, and write their responses before any client takes
            # the core (measured: +5-17% small stores with 2 workers, +1-3% with 1).
            self._answered = False
        else:
            os.sched_yield()  # whatever else is runnable on this core goes first
        self.loop.call_soon(self._spin)

    def _start_sync_soon(self) -> None:
        self._sync_soon = False
        self._start_sync()

    def kick(self) -> None:
        """From any thread (resume): start an fdatasync if stores wait for one."""
        try:
            self.loop.call_soon_threadsafe(self._start_sync)
        except RuntimeError:
            pass

    def _start_sync(self) -> None:
        """On the loop: ask for an fdatasync of what is pending, unless one is in flight or
        the writer is paused."""
        with self._lock:
            if (self.syncing is not None or not self.pending or self._closed
                    or not self.writer._resumed.is_set()):
                return
            batch, self.pending = self.pending, []
            self.syncing = batch
        try:
            fd = self._sync_fd()
            self.syncer.request(fd)
            self._sync_asked = time.perf_counter()
            self._start_spin()
            if (self.writer.index_during_sync and len(batch) <= self.writer.batch_size
                    and threading.current_thread() is threading.main_thread()):
                # After what is ready now, e.g. the tasks answering the batch before. Only a
                # loop on the main thread (a worker's): LMDB's writer lock can only be given
                # back by the thread that took it, and a loop run in another thread may stop,
                # or its thread end, with the transaction open (see Catalog.abort_prepared).
                self.loop.call_soon(self._prepare, batch)
        except Exception as exc:
            with self._lock:
                batch, self.syncing = self.syncing, None
            self._fail(batch or [], exc)

    def _prepare(self, batch: list[_Store]) -> None:
        """Apply the index transaction of ``batch`` while its fdatasync is in flight."""
        if self.syncing is not batch or self._prepared is not None or self._closed:
            return  # answered already, or closing
        self._prepared = self.writer.catalog.prepare_items(
            [(s.record, s.on_duplicate) for s in batch], [s.forwards for s in batch],
            self.writer.defer_index)

    def _abort_prepared(self) -> bool:
        """Abort the batch's prepared transaction, if any; False when it is held by a live
        thread that is not this one (see Catalog.abort_prepared)."""
        prepared = self._prepared
        if prepared is None:
            return True
        if not self.writer.catalog.abort_prepared(prepared):
            return False
        self._prepared = None
        return True

    def _sync_fd(self) -> int:
        assert self.store is not None
        name = self.store.active_segment  # type: ignore[attr-defined]
        if self._target is None or self._target[0] != name:
            # A new segment: the previous one was sealed (synced) when it was left, and no
            # fdatasync of our old descriptor is in flight (one at a time).
            old, self._target = self._target, self.store.sync_target()  # type: ignore[attr-defined]
            if old is not None:
                os.close(old[1])
        return self._target[1]

    def _synced(self) -> None:
        """Reader callback: the fdatasync in flight (or a large record's write) answered."""
        code: int | None = None
        later: list[tuple[int, int]] = []  # writes answered after the fdatasync
        for tag, answer in self.syncer.answers():
            if tag not in WRITE_TAGS:
                code = answer  # one fdatasync in flight at a time: the batch's
            elif code is None:
                self._written(tag, answer)
            else:
                later.append((tag, answer))
        if code is None:
            return
        try:
            self._sync_answered(code)
        finally:
            # In answer order: a write failed after the fdatasync refuses the stores written
            # before it, not the batch that fdatasync already made durable.
            for tag, answer in later:
                self._written(tag, answer)

    def _sync_answered(self, code: int) -> None:
        self._sync_ended = time.perf_counter()
        self._start_spin()  # again, if a slow fdatasync outlasted SPIN_SYNC_CAP
        with self._lock:
            batch, self.syncing = self.syncing, None
            closed = self._closed
        prepared, self._prepared = self._prepared, None
        if prepared is not None and (closed or batch is None or code):
            self.writer.catalog.abort_prepared(prepared)
            prepared = None
        if closed or batch is None:
            return
        if code:
            error = OSError(code, os.strerror(code))
            self.store.note_sync_failure(error)  # type: ignore[union-attr]
            # After a failed fdatasync Linux may mark the lost pages clean, so a later one can
            # succeed without them: whatever was appended until now is refused, not only the
            # batch this fdatasync covered.
            with self._lock:
                batch, self.pending = batch + self.pending, []
            log.error("fdatasync of segment failed (%s): %d stores refused", error, len(batch))
            self._fail(batch, error)
            return
        # A failed seal, or an fdatasync through another descriptor (flush thread, filler),
        # counted since a store was written: that store is refused (pacs.store.segments).
        durable = self.writer._durable(batch)
        outcomes = None
        if prepared is not None:
            if durable is batch:  # nobody refused: the transaction applied is the batch's
                outcomes = self.writer.catalog.commit_prepared(prepared)
            else:
                self.writer.catalog.abort_prepared(prepared)
        self._start_sync()  # the next batch syncs while this one is committed
        if outcomes is not None:
            assert prepared is not None
            self.writer.prepared_batches += 1
            settled = self.writer._committed(batch, outcomes, prepared.seconds)
        else:
            settled = self.writer._commit_all(durable, self.writer.defer_index)
        _resolve_on_loop(settled)
        self._answered = True
        self.writer._checkpoint_soon()

    @staticmethod
    def _fail(batch: list[_Store], exc: Exception) -> None:
        _resolve_on_loop(_not_durable(batch, exc))

    def close(self) -> None:
        """Writer closing (any thread): make what was appended durable, index it, answer it."""
        with self._lock:
            self._closed = True
            batch = (self.syncing or []) + self.pending
            self.syncing, self.pending = None, []
        # The loop stops watching the answer pipe before it is closed (its number could be
        # reused at once); the thread answers the fdatasync in flight before it stops. A loop
        # too busy to confirm within 5 s keeps its descriptors (a leak, not a reuse).
        detached = self._detach()
        for tag, answer in self.syncer.close(close_fds=detached):
            if tag in WRITE_TAGS:  # answered after the loop's last read
                self._written(tag, answer)
        if self._target is not None and detached:
            os.close(self._target[1])
            self._target = None
        if not batch:
            return
        if not self._abort_prepared():
            # Its loop stopped with the batch's transaction open, and that thread lives on:
            # indexing the batch here would wait for LMDB's writer lock forever. Unanswered,
            # the stores are indexed from the segments at the next start (pacs.recovery).
            log.error("%d stores left unindexed: their event loop stopped during their "
                      "fdatasync", len(batch))
            _settle(_not_durable(batch, CatalogError("event loop stopped during the store")))
            return
        try:
            assert self.store is not None
            self.store.flush()
        except Exception as exc:
            _settle(_not_durable(batch, exc))
            return
        _settle(self.writer._commit_all(self.writer._durable(batch)))

    def _detach(self) -> bool:
        """Remove the loop's reader: directly on the loop, else through it (nothing to do
        once it is closed); False when a running loop did not confirm it in time."""
        loop = self.loop
        if loop.is_closed():
            return True
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.remove_reader(self.syncer.done_fd)
            return True
        if not loop.is_running():
            # Between runs (nothing else touches it now): removed from here.
            loop.remove_reader(self.syncer.done_fd)
            return True
        done = threading.Event()

        def remove() -> None:
            loop.remove_reader(self.syncer.done_fd)
            # On the loop's thread, whose LMDB writer lock a prepared transaction holds;
            # close() aborts it itself in the other cases (see _abort_prepared).
            self._abort_prepared()
            done.set()

        try:
            loop.call_soon_threadsafe(remove)
        except RuntimeError:
            return True  # closed meanwhile
        if done.wait(5):
            return True
        log.warning("event loop busy: the sync thread's pipes are left open")
        return False
