"""The single catalog writer thread: group commit of many stores per LMDB transaction.

LMDB allows one write transaction at a time, and each commit costs an fsync (~1 ms or more).
Any thread may ``submit`` a record; the writer drains up to ``batch_size`` queued records into one
transaction and resolves their futures only after the commit returned, i.e. once the records are
durable, so a C-STORE is acknowledged after its index entry is on disk. Under load batches grow
by themselves (while one commit runs, the next batch queues up); when idle a lone record is
committed at once, so there is no added latency.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from pacs.errors import CatalogError, StorageError
from pacs.index.catalog import Catalog, OnDuplicate, StoreOutcome
from pacs.index.records import InstanceRecord

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Store:
    record: InstanceRecord
    on_duplicate: OnDuplicate
    future: Future[StoreOutcome]


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
    ) -> None:
        """``before_commit`` runs in the writer thread before each batch's transaction: the
        blob store's ``flush`` goes there, so one fdatasync covers the whole batch's blobs and
        no index entry ever points at bytes that are not yet on disk."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.catalog = catalog
        self.before_commit = before_commit
        self.batch_size = batch_size
        self.batches_committed = 0  # write transactions committed for stores
        self.records_committed = 0
        self.largest_batch = 0
        self._queue: queue.SimpleQueue[_Store | _Run | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(
        self, record: InstanceRecord, on_duplicate: OnDuplicate = "keep"
    ) -> Future[StoreOutcome]:
        """Queue a record; the future resolves once its transaction is committed."""
        future: Future[StoreOutcome] = Future()
        self._put(_Store(record, on_duplicate, future))
        return future

    def run(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` (e.g. ``lambda: catalog.delete_instance(uid)``) in the writer thread."""
        future: Future[T] = Future()
        self._put(_Run(fn, future))
        return future

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
        self._thread.join(timeout)

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        pending: object = None
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is _STOP:
                return
            if isinstance(item, _Run):
                self._run(item)
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
            self._commit(batch)

    @staticmethod
    def _run(item: _Run) -> None:
        if not item.future.set_running_or_notify_cancel():
            return
        try:
            item.future.set_result(item.fn())
        except Exception as exc:
            item.future.set_exception(exc)

    def _commit(self, batch: list[_Store]) -> None:
        batch = [s for s in batch if s.future.set_running_or_notify_cancel()]
        if not batch:
            return
        if self.before_commit is not None:
            try:
                self.before_commit()
            except Exception as exc:  # the blobs are not durable: nothing may be indexed
                log.error("flush before commit failed (%s): %d stores refused", exc, len(batch))
                for store in batch:
                    error = StorageError(f"blobs not made durable: {exc}")
                    error.__cause__ = exc
                    store.future.set_exception(error)
                return
        try:
            outcomes = self.catalog.store_items([(s.record, s.on_duplicate) for s in batch])
        except Exception as exc:
            if len(batch) > 1:
                # One bad record must not fail its neighbours: retry each in its own transaction.
                log.warning("catalog batch of %d failed (%s): retrying one by one", len(batch), exc)
                for store in batch:
                    self._commit_one(store)
                return
            self._fail(batch[0], exc)
            return
        self._count(len(batch))
        for store, outcome in zip(batch, outcomes, strict=True):
            store.future.set_result(outcome)

    def _commit_one(self, store: _Store) -> None:
        try:
            (outcome,) = self.catalog.store_items([(store.record, store.on_duplicate)])
        except Exception as exc:
            self._fail(store, exc)
            return
        self._count(1)
        store.future.set_result(outcome)

    def _count(self, n: int) -> None:
        self.batches_committed += 1
        self.records_committed += n
        self.largest_batch = max(self.largest_batch, n)

    @staticmethod
    def _fail(store: _Store, exc: Exception) -> None:
        if not isinstance(exc, CatalogError):
            wrapped = CatalogError(f"cannot index {store.record.attributes.get('SOPInstanceUID')}")
            wrapped.__cause__ = exc
            exc = wrapped
        store.future.set_exception(exc)
