"""The one write path: scan a received dataset, write its Part-10 blob, commit its index entry.

Used by C-STORE and (later) STOW-RS and bulk import. Idempotent on SOPInstanceUID: a duplicate
follows the ``on_duplicate`` setting (keep the first, or replace it), and is logged either way.

``store`` returns only when the blob is durable and the index transaction that records it has
committed, so the caller may then acknowledge the instance (C-STORE-RSP success).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs import metrics
from pacs.config import DuplicatePolicy, Route
from pacs.dicom import part10
from pacs.dicom.scan import read_index_attributes
from pacs.errors import DicomFormatError, IngestError, PacsError
from pacs.index.catalog import Catalog, StoreOutcome
from pacs.index.records import InstanceRecord
from pacs.index.writer import LOOP_WRITE_LIMIT, CatalogWriter
from pacs.recovery import InflightSegments
from pacs.store.base import BlobStore

log = logging.getLogger("pacs.ingest")

# PS3.4 Annex B.2.3 C-STORE statuses (and PS3.7 C.4 general ones) used by the write path.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

INLINE_LIMIT = 256 * 1024  # data sets up to this size are scanned on the loop, written in batch

WHOLE = 0x100000000  # scan stop tag past every real tag: walk the whole data set


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """What happened to one instance that was accepted."""

    sop_instance_uid: str
    location: str
    outcome: str  # "stored", "duplicate_kept" or "replaced"
    study_uid: str = ""  # "" for a kept duplicate (not read back from the index)
    patient_id: str = ""


@contextmanager
def _readable(dataset: bytes | bytearray | Path) -> Iterator[bytes | bytearray | mmap.mmap]:
    """The dataset as a buffer: bytes as they are, a spooled file memory-mapped (no read)."""
    if isinstance(dataset, bytes | bytearray):
        yield dataset
        return
    with open(dataset, "rb") as fh:
        if fh.seek(0, 2) == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


def read_attributes(
    dataset: bytes | bytearray | Path, transfer_syntax_uid: str, sop_instance_uid: str | None
) -> dict[str, str]:
    """Decode the index attributes, checking the SOP Instance UID against the command's."""
    try:
        with _readable(dataset) as buffer:
            if len(buffer) == 0:
                raise IngestError(CANNOT_UNDERSTAND, "empty data set")
            # Walk to the end, not just to Pixel Data: a truncated data set or an element
            # running past its end is refused here, never archived (values are not read).
            attributes = read_index_attributes(buffer, transfer_syntax_uid, stop_tag=WHOLE)
    except DicomFormatError as exc:
        raise IngestError(CANNOT_UNDERSTAND, f"cannot parse data set: {exc}") from exc
    # The archive's hierarchy needs the three Type 1 UIDs; without them nothing could find it.
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not attributes.get(keyword):
            raise IngestError(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"data set has no {keyword}")
    uid = attributes["SOPInstanceUID"]
    if sop_instance_uid is not None and uid != sop_instance_uid:
        raise IngestError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            # The comment is cut at 64 characters (LO): the words first, then the UIDs.
            f"SOPInstanceUID differs from the command's: {uid} != {sop_instance_uid}",
        )
    return attributes


class Ingest:
    """Scan → BlobStore.put → CatalogWriter.submit, with blocking work on an executor."""

    def __init__(
        self,
        store: BlobStore,
        catalog: Catalog,
        writer: CatalogWriter,
        executor: Executor,
        on_duplicate: DuplicatePolicy = "keep",
        inflight: InflightSegments | None = None,
        routes: Sequence[Route] = (),
    ) -> None:
        self.blobs = store
        self.catalog = catalog
        self.writer = writer
        self.executor = executor
        self.on_duplicate: DuplicatePolicy = on_duplicate
        self.inflight = inflight
        self.routes = routes

    def _prepare(
        self,
        dataset: bytes | bytearray | Path,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str | None,
        source_aet: str,
    ) -> tuple[InstanceRecord, bytes] | None:
        """Scan and check the data set: its record (no location yet) and its Part-10 header;
        None for a duplicate that the ``keep`` policy keeps out."""
        started = time.perf_counter()
        attributes = read_attributes(dataset, transfer_syntax_uid, sop_instance_uid)
        metrics.SCAN_SECONDS.observe(time.perf_counter() - started)
        uid = attributes["SOPInstanceUID"]
        if self.on_duplicate == "keep" and self.catalog.has_instance(uid):
            log.info("duplicate SOPInstanceUID %s from %s: kept the stored one", uid, source_aet)
            return None
        sop_class = attributes.get("SOPClassUID") or sop_class_uid
        meta = part10.file_meta(sop_class, uid, transfer_syntax_uid, source_aet)
        record = InstanceRecord.from_attributes(
            attributes, transfer_syntax_uid, source_aet=source_aet, received_at=time.time())
        return record, meta

    def _prepare_large(
        self, dataset: bytes | bytearray | Path, *rest: Any
    ) -> tuple[tuple[InstanceRecord, bytes], int | None] | None:
        """Blocking: ``_prepare`` (same arguments) then ``_write_large``: the record with its
        location, the Part-10 header, the failure count; None for a duplicate kept out."""
        prepared = self._prepare(dataset, *rest)
        if prepared is None:
            return None
        record, meta = prepared
        return prepared, self._write_large(record, meta, dataset)

    def _write_large(
        self, record: InstanceRecord, meta: bytes, dataset: bytes | bytearray | Path
    ) -> int | None:
        """Blocking: write a large blob (not durable yet: the writer flushes per batch); the
        store's failed-fdatasync count from before the write (``CatalogWriter.submit``)."""
        epoch = getattr(self.blobs, "failures", None)
        try:
            info = self.blobs.put(record.sop_instance_uid, [meta, dataset], durable=False)
        except PacsError as exc:
            log.error("cannot write blob of %s: %s", record.sop_instance_uid, exc)
            raise IngestError(OUT_OF_RESOURCES, f"cannot write the instance: {exc}") from exc
        record.location, record.size, record.digest = info.location, info.size, info.digest
        return epoch

    async def store(
        self,
        dataset: bytes | bytearray | Path,
        *,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str | None,
        source_aet: str,
    ) -> StoredInstance:
        """Archive one dataset durably; raises IngestError with the status to answer.

        A small data set (bytes up to ``INLINE_LIMIT``) is scanned right here on the event loop
        (a few µs with the compiled scanner) and its blob written by the catalog writer's flush
        stage in the same batch as its neighbours: one thread hop out and one back. A large one
        in memory is scanned and laid out on the loop too, its middle written by the loop's sync
        thread (``CatalogWriter.submit_direct_async``): an executor trip cost the loop more than
        the scan and the digest. A spooled one (a file), or one the segment store cannot take
        without waiting, is written on the executor.
        """
        loop = asyncio.get_running_loop()
        in_memory = dataset if isinstance(dataset, (bytes, bytearray)) else None
        inline = in_memory is not None and len(in_memory) <= INLINE_LIMIT
        # A large one in memory is scanned on the loop too when the loop can lay it out.
        on_loop = inline or (in_memory is not None and self.writer.direct_possible)
        # From before the blob write until its index commit, its segment is "in flight": the
        # catalog's checkpoint must not pass it (pacs.recovery).
        inflight = self.inflight
        segment = inflight.enter() if inflight is not None else None
        try:
            args = (dataset, transfer_syntax_uid, sop_class_uid, sop_instance_uid, source_aet)
            epoch: int | None = None
            if on_loop:
                prepared = self._prepare(*args)
            else:
                # Scanned and written in one trip to the executor: each trip is two thread
                # hand-offs (and GIL handovers) for the event loop.
                written = await loop.run_in_executor(self.executor, self._prepare_large, *args)
                prepared, epoch = (None, None) if written is None else written
            if prepared is None:
                return StoredInstance(sop_instance_uid or "", "", "duplicate_kept")
            record, meta = prepared
            forwards: list[str] = []
            if self.routes:
                modality = record.attributes.get("Modality", "")
                forwards = [r.destination for r in self.routes
                            if r.matches(source_aet, modality)]
            future: asyncio.Future[StoreOutcome] | None = None
            if on_loop and in_memory is not None and len(meta) + len(in_memory) > LOOP_WRITE_LIMIT:
                # Past what the loop appends through the page cache itself: laid out by the
                # loop, its middle written by the loop's sync thread (O_DIRECT); None when it
                # must go the blocking way (a roll due, the lock busy, direct writes off).
                future = self.writer.submit_direct_async(record, meta, in_memory,
                                                         self.on_duplicate, forwards)
            if future is None and inline:
                future = self.writer.submit_async(record, self.on_duplicate,
                                                  blob=[meta, dataset], forwards=forwards)
            elif future is None:
                if on_loop:  # scanned here, not written yet
                    epoch = await loop.run_in_executor(self.executor, self._write_large,
                                                       record, meta, dataset)
                future = self.writer.submit_async(record, self.on_duplicate, forwards=forwards,
                                                  epoch=epoch)
            try:
                outcome = await future
            except PacsError as exc:
                log.error("cannot archive %s: %s", record.sop_instance_uid, exc)
                if record.location:
                    await loop.run_in_executor(self.executor, self._forget_blob,
                                               record.location)
                raise IngestError(OUT_OF_RESOURCES, f"cannot archive the instance: {exc}") from exc
        finally:
            if inflight is not None and segment is not None:
                inflight.leave(segment)
        obsolete = outcome.obsolete_location
        if obsolete:
            # A kept duplicate's new blob, or the replaced instance's old one.
            forgotten = await loop.run_in_executor(self.executor, self._forget_blob, obsolete,
                                                   record.sop_instance_uid)
            if not forgotten and outcome.kind == "replaced":
                # The old blob stays readable: after a power cut that took the (not yet
                # synced) commit, replay would find the old entry readable and keep it. The
                # replacement is made durable in the catalog before it is acknowledged.
                try:
                    await loop.run_in_executor(self.executor, self.catalog.sync)
                except PacsError as exc:
                    log.error("cannot make the replacement of %s durable: %s",
                              record.sop_instance_uid, exc)
                    raise IngestError(OUT_OF_RESOURCES,
                                      f"cannot archive the instance: {exc}") from exc
        if outcome.kind != "stored":
            log.info("duplicate SOPInstanceUID %s from %s: %s",
                     record.sop_instance_uid, source_aet, outcome.kind)
        return StoredInstance(record.sop_instance_uid, record.location, outcome.kind,
                              record.attributes["StudyInstanceUID"],
                              record.attributes.get("PatientID", ""))

    def _forget_blob(self, location: str, uid: str = "") -> bool:
        """Delete a blob nothing points at any more; False (logged) when that failed."""
        try:
            self.blobs.delete(location, uid)
        except PacsError as exc:
            log.warning("cannot delete obsolete blob %s: %s", location, exc)
            return False
        return True
