"""Open the embedded archive's parts from settings: blob store, catalog, writer, ingest."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pacs.audit import AuditTrail
from pacs.config import Settings
from pacs.errors import CatalogError, ConfigError, StorageError
from pacs.index import integrity
from pacs.index.catalog import Catalog
from pacs.index.query import QueryEngine
from pacs.index.writer import CatalogWriter
from pacs.ingest import Ingest
from pacs.recovery import InflightSegments, ReplayIncomplete, checkpoint_name, replay
from pacs.store.base import BlobStore
from pacs.store.files import FileStore
from pacs.store.segments import SegmentStore
from pacs.writers import (
    drop_replay_all_marker,
    leave_clean_marker,
    leave_replay_all_marker,
    lock_first_free,
    must_replay_all,
    swap_boot_id,
    take_clean_marker,
)

log = logging.getLogger("pacs.archive")

TOOL_WRITERS = 64  # maintenance tools running at once on one archive (tool, tool1, ...)


class ToolSegmentStore(SegmentStore):
    """A maintenance tool's segment store: holds its writer's lock until closed."""

    lock_fd = -1

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.lock_fd >= 0:
                os.close(self.lock_fd)
                self.lock_fd = -1


def tool_writer_id(n: int) -> str:
    """The ``n``-th maintenance tool writer: ``tool``, ``tool1``, ``tool2``..."""
    return f"tool{n}" if n else "tool"


def _open_tool_store(settings: Settings) -> ToolSegmentStore:
    """A segment store for a maintenance tool, as the first tool writer no process holds.

    Two tools on one writer would append to one segment from tails of their own (overwriting
    each other's tombstones) and cut each other's unsynced records as torn tails at open; the
    lock (``state/<writer>.lock``) is taken before the open recovers the writer's segments.
    """
    held = lock_first_free(settings.state_dir, map(tool_writer_id, range(TOOL_WRITERS)))
    if held is None:
        raise StorageError(f"every maintenance tool writer of {settings.data_dir} (tool.."
                           f"{tool_writer_id(TOOL_WRITERS - 1)}) is in use")
    writer, fd = held
    try:
        store = ToolSegmentStore(settings.blob_dir, writer_id=writer,
                                 segment_size=settings.segment_size,
                                 prefill=settings.segment_prefill,
                                 direct_min=settings.segment_direct_min)
    except BaseException:
        os.close(fd)
        raise
    store.lock_fd = fd
    return store


def open_store(settings: Settings, worker_id: int = 0, writer_id: str | None = None) -> BlobStore:
    """The configured blob store; ``worker_id`` -1 is a maintenance tool (it never ingests):
    it writes (tombstones) as a tool writer of its own, locked while the store is open.

    ``writer_id`` names the segment writer instead of ``w{worker_id}`` (bulk import: ``import0``).
    """
    if settings.store_backend == "segments":
        if writer_id is None and worker_id < 0:
            return _open_tool_store(settings)
        writer = writer_id or f"w{worker_id}"
        return SegmentStore(settings.blob_dir, writer_id=writer,
                            segment_size=settings.segment_size,
                            prefill=settings.segment_prefill,
                            direct_min=settings.segment_direct_min)
    if settings.store_backend == "files":
        return FileStore(settings.blob_dir)
    raise ConfigError(f"store_backend: unknown backend {settings.store_backend!r}")


def open_catalog(settings: Settings, durable_commits: bool = True) -> Catalog:
    return Catalog(settings.index_dir, map_size=settings.lmdb_map_size,
                   durable_commits=durable_commits)


@dataclass
class Archive:
    """Everything one process needs to store and find instances."""

    settings: Settings
    store: BlobStore
    catalog: Catalog
    writer: CatalogWriter
    executor: ThreadPoolExecutor
    ingest: Ingest
    spool_dir: Path
    worker_id: int = 0
    audit: AuditTrail | None = None  # set by open(); None only for hand-built archives
    _queries: QueryEngine | None = None

    @property
    def queries(self) -> QueryEngine:
        """The query engine (built on first use: it may build the secondary indexes)."""
        if self._queries is None:
            self._queries = QueryEngine(self.catalog)
        return self._queries

    @classmethod
    def open(cls, settings: Settings, worker_id: int = 0, writer_id: str | None = None) -> Archive:
        """Open everything one worker process needs (each worker has its own spool folder).

        ``writer_id`` overrides the segment writer's name (and spool folder), ``w{worker_id}``
        by default: a bulk import uses its own (``import0``, ...), never a server worker's.
        """
        spool_dir = settings.spool_dir / (writer_id or f"w{worker_id}")
        spool_dir.mkdir(parents=True, exist_ok=True)
        # Spooled data sets left by a crash were never acknowledged: drop them.
        for leftover in spool_dir.glob("spool-*"):
            log.warning("removing unfinished spool file %s", leftover)
            leftover.unlink(missing_ok=True)
        store = open_store(settings, worker_id, writer_id)
        if not isinstance(store, SegmentStore):
            catalog = open_catalog(settings)
            writer = CatalogWriter(catalog, batch_size=settings.commit_batch,
                                   before_commit=store.flush, blob_store=store)
            inflight = None
        else:
            # The segment log makes stores durable; the catalog catches up from it (recovery).
            catalog = open_catalog(settings, durable_commits=False)
            _recover(settings, catalog, store)
            inflight = InflightSegments(store)
            writer = CatalogWriter(
                catalog, batch_size=settings.commit_batch, before_commit=store.flush,
                checkpoint=_checkpointer(settings, catalog, store, inflight),
                blob_store=store, sync_spin=settings.sync_spin,
                index_during_sync=settings.index_during_sync,
                defer_index=settings.defer_index,
            )
        executor = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="pacs-io")
        ingest = Ingest(store, catalog, writer, executor, settings.on_duplicate, inflight,
                        settings.routes)
        audit = AuditTrail(settings.audit_dir, settings.audit)
        return cls(settings, store, catalog, writer, executor, ingest, spool_dir, worker_id,
                   audit)

    def close(self) -> None:
        """Finish queued index commits, then release everything (order matters)."""
        self.executor.shutdown(wait=True)
        self.writer.close()  # commits what is queued and takes a last checkpoint
        self.catalog.close()
        self.store.close()
        if self.audit is not None:
            self.audit.close()
        if isinstance(self.store, SegmentStore):
            leave_clean_marker(self.settings.state_dir, self.store.writer_id)


def _checkpointer(
    settings: Settings, catalog: Catalog, store: SegmentStore, inflight: InflightSegments
) -> Callable[[], None]:
    """The catalog writer's checkpoint: a failed one (its LMDB sync may have lost commits the
    next sync would not report) makes the next start replay this writer's whole log."""
    name = checkpoint_name(store.writer_id)

    def checkpoint() -> None:
        try:
            catalog.checkpoint(name, inflight.checkpoint_position())
        except CatalogError as exc:
            leave_replay_all_marker(settings.state_dir, store.writer_id,
                                    f"a catalog checkpoint failed ({exc})")
            raise

    return checkpoint


def _recover(settings: Settings, catalog: Catalog, store: SegmentStore) -> None:
    """After an unclean stop, index what this writer's segments hold beyond the checkpoint
    (all of them after a failed checkpoint or an incomplete replay)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    wid = store.writer_id
    everything = must_replay_all(settings.state_dir, wid)
    previous_boot, boot = swap_boot_id(settings.state_dir, wid)
    clean = take_clean_marker(settings.state_dir, wid)
    if not clean and previous_boot and previous_boot != boot:
        # The machine went down with this writer running: LMDB's pages written since the
        # last checkpoint may have reached the disk out of order (no fsyncs, writable map).
        log.warning("writer %s: the machine stopped (an OS crash or power cut?) while it ran: "
                    "checking the index", wid)
        try:
            entries = integrity.check(settings.index_dir)
        except CatalogError as exc:
            raise CatalogError(
                f"the index at {settings.index_dir} is damaged ({exc}); the segments hold every "
                "instance: stop the archive, move that folder aside and run `pacs reindex` "
                "(orders, MPPS steps and queued forwards live only in the index)") from exc
        log.info("writer %s: index checked, %d entries", wid, entries)
    if clean and not everything:
        return
    started = time.monotonic()
    try:
        replayed = replay(catalog, store, everything=everything, routes=settings.routes)
    except ReplayIncomplete as exc:
        # Serving goes on (what was readable is indexed); the next start tries again.
        leave_replay_all_marker(settings.state_dir, wid, f"replay incomplete: {exc}")
        return
    catalog.checkpoint(checkpoint_name(wid), store.active_segment)
    if everything:
        drop_replay_all_marker(settings.state_dir, wid)
    log.info("writer %s: replayed %d instances from %s segment log in %.2f s", wid, replayed,
             "its whole" if everything else "the", time.monotonic() - started)
