"""The segment log is the durable truth; the catalog catches up from it after a crash.

With the segment store, an instance is acknowledged once its blob is fdatasync'd and its index
entry *committed* (visible to queries) but not yet fsync'd: LMDB commits run without their two
fsyncs, which halves the disk syncs per batch. Every ``checkpoint_interval`` the catalog writer
records a checkpoint (the oldest segment that may still hold instances not durably indexed) and
syncs LMDB. After an unclean stop, each worker replays its own segments from its checkpoint:
every live record the catalog does not know is indexed again (``replay``).

A clean stop leaves a marker per worker; its absence at start means "replay". A checkpoint
whose LMDB sync failed (Linux may then mark the lost pages clean, and the next sync succeed
without them) or a record replay could not read leaves a "replay all" marker: the next start
replays the writer's whole log, whatever the checkpoint says, and removes it once that worked.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence

from pacs.config import Route
from pacs.errors import BlobNotFound, DicomFormatError, PacsError
from pacs.index.catalog import Catalog
from pacs.index.maintenance import DamagedRecord, checked_digest
from pacs.index.records import InstanceRecord
from pacs.store.segment_format import parse_segment_name
from pacs.store.segments import SegmentStore

log = logging.getLogger("pacs.recovery")


def _order(segment: str) -> tuple[str, int]:
    return parse_segment_name(segment) or ("", 0)


class InflightSegments:
    """Segments that may hold instances written but not yet committed to the catalog."""

    def __init__(self, store: SegmentStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def enter(self) -> str:
        """Before put → commit of one instance: its segment noted (for ``leave`` after the
        commit). The segment is noted *before* the put: segments only grow, so the note is
        never later than where the blob lands."""
        segment = self._store.active_segment
        with self._lock:
            self._counts[segment] += 1
        return segment

    def leave(self, segment: str) -> None:
        with self._lock:
            n = self._counts[segment] - 1
            if n:
                self._counts[segment] = n
            else:
                del self._counts[segment]

    def checkpoint_position(self) -> str:
        """Every record in segments before this one is committed to the catalog."""
        with self._lock:
            candidates = [self._store.active_segment, *self._counts]
        return min(candidates, key=_order)


def checkpoint_name(writer_id: str) -> str:
    return f"segments/{writer_id}"


class ReplayIncomplete(PacsError):
    """Records replay could not read (I/O errors): they may be acknowledged instances."""


def replay(catalog: Catalog, store: SegmentStore, batch_size: int = 256,
           everything: bool = False, routes: Sequence[Route] = ()) -> int:
    """Index this writer's records from its checkpoint on (``everything``: from its first
    segment) that the catalog lacks; how many.

    A record whose key the catalog holds at another, readable location is left alone; one whose
    indexed blob is gone (replaced, then tombstoned) is indexed again in its place. A torn or
    unparsable record is logged and skipped (never acknowledged: its fdatasync never returned);
    one that could not be read is skipped too, and ``ReplayIncomplete`` raised at the end,
    after everything readable is indexed. A replayed instance is queued for forwarding by
    ``routes`` as at its C-STORE (its queue entry went with the lost commit).
    """
    from pacs.maintenance import read_record

    start = None if everything else catalog.get_checkpoint(checkpoint_name(store.writer_id))
    batch: list[InstanceRecord] = []
    replayed = 0
    unreadable: list[str] = []
    for location, key in store.iter_own_records(start):
        existing = catalog.get_instance(key)
        if existing is not None:
            if existing.location == location:
                continue
            try:  # indexed elsewhere and readable there: that one stands
                store.size(existing.location)
                continue
            except BlobNotFound:
                pass
        try:
            record = read_record(store, location)
            record.size, record.digest = checked_digest(store, location)
        except (DicomFormatError, DamagedRecord, BlobNotFound) as exc:
            log.error("replay: skipped %s (%s): %s", location, key, exc)
            continue
        except PacsError as exc:
            log.error("replay: cannot read %s (%s): %s", location, key, exc)
            unreadable.append(location)
            continue
        batch.append(record)
        if len(batch) >= batch_size:
            _index(catalog, batch, routes)
            replayed += len(batch)
            batch = []
    if batch:
        _index(catalog, batch, routes)
        replayed += len(batch)
    if unreadable:
        raise ReplayIncomplete(f"{len(unreadable)} records could not be read (first: "
                               f"{unreadable[0]}); {replayed} others were indexed")
    return replayed


def _index(catalog: Catalog, batch: list[InstanceRecord], routes: Sequence[Route]) -> None:
    forwards = [[r.destination for r in routes
                 if r.matches(record.source_aet, record.attributes.get("Modality", ""))]
                for record in batch]
    catalog.store_items([(record, "replace") for record in batch], forwards)


