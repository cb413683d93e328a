"""Offline catalog maintenance behind ``pacs reindex`` and ``pacs verify``.

Blobs are the truth (DESIGN.md, principle 5): ``reindex`` rebuilds the catalog from the store,
``verify`` checks the store against the catalog. Both stream blobs, never holding one whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from pacs.errors import BlobNotFound, PacsError, StorageError
from pacs.index.catalog import Catalog
from pacs.index.records import InstanceRecord
from pacs.store import digest as digests
from pacs.store.base import BlobStore
from pacs.store.crc import crc32
from pacs.store.external import is_external
from pacs.store.segments import SegmentStore

log = logging.getLogger(__name__)

T = TypeVar("T")

MOVES = 3  # how many times one read follows its instance to a new location

# How to turn a stored blob into a record: given the store and a location, read what it needs
# (e.g. a ranged get of the header, then the tag scanner). location, size and digest of the
# returned record are filled in by reindex when left empty.
ReadRecord = Callable[[BlobStore, str], InstanceRecord]


@dataclass(slots=True)
class ReindexReport:
    """What ``reindex`` did."""

    indexed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (location, reason)
    # Blobs holding an already indexed SOPInstanceUID (the first one found is kept):
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (location, kept location)


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` found; ``ok`` when nothing."""

    checked: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (SOPInstanceUID, location)
    # (uid, location, indexed size, actual size)
    size_mismatch: list[tuple[str, str, int, int]] = field(default_factory=list)
    digest_mismatch: list[tuple[str, str]] = field(default_factory=list)  # (uid, location)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # uid, location, reason
    orphans: list[str] = field(default_factory=list)  # blobs no instance points to
    # In-place entries (``ext:``) the in-place journal does not list: `pacs reindex` would
    # drop them. (SOPInstanceUID, location)
    unjournaled: list[tuple[str, str]] = field(default_factory=list)
    # Blobs of instances indexed at another location: copies a compaction or a replacement
    # cut short left behind (nothing lost; the next compaction reclaims them), not problems.
    stale_copies: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.size_mismatch
            or self.digest_mismatch
            or self.unreadable
            or self.orphans
            or self.unjournaled
        )


def blob_digest(store: BlobStore, location: str, like: str = "",
                also: Callable[[bytes], None] | None = None) -> tuple[int, str]:
    """Size and hex digest of a stored blob, streamed: with the algorithm of ``like`` (a
    recorded digest), else the one new blobs get (``pacs.store.digest``); ``also`` sees every
    chunk too (e.g. a checksum over the same single read)."""
    digest = digests.like(like) if like else digests.new()
    size = 0
    for chunk in store.iter_chunks(location):
        digest.update(chunk)
        if also is not None:
            also(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


class DamagedRecord(StorageError):
    """A record whose bytes do not match its CRC-32."""


def checked_digest(store: BlobStore, location: str) -> tuple[int, str]:
    """Size and digest of a blob read whole, checked against its record's CRC-32 where the
    store keeps one (``data_crc``: the segment store): a record a power cut or a failed write
    tore (never acknowledged) is not indexed, even in a segment whose seal lists it."""
    data_crc = getattr(store, "data_crc", None)
    expected: int | None = data_crc(location) if data_crc is not None else None
    crc = 0

    def add(chunk: bytes) -> None:
        nonlocal crc
        crc = crc32(chunk, crc)

    size, digest = blob_digest(store, location, also=add if expected is not None else None)
    if expected is not None and crc != expected:
        raise DamagedRecord(f"{location}: its bytes do not match their checksum (torn or damaged)")
    return size, digest


def reindex(
    catalog: Catalog,
    store: BlobStore,
    read_record: ReadRecord,
    batch_size: int = 256,
    compute_digest: bool = True,
) -> ReindexReport:
    """Clear the catalog and rebuild it from every blob in ``store``, in batches.

    No writer thread may be running on ``catalog`` meanwhile (this writes directly).
    """
    report = ReindexReport()
    catalog.clear()
    batch: list[InstanceRecord] = []

    def flush() -> None:
        for outcome in catalog.store_batch(batch, on_duplicate="keep"):
            if outcome.kind == "stored":
                report.indexed += 1
            elif outcome.obsolete_location is not None:
                report.duplicates.append((outcome.obsolete_location, outcome.location))
        batch.clear()

    for location in store.locations():
        try:
            record = read_record(store, location)
            record = replace(record, location=location)
            if not record.size:
                record.size = store.size(location)
            if compute_digest and not record.digest:
                record.size, record.digest = checked_digest(store, location)
            if not record.attributes.get("SOPInstanceUID"):
                raise ValueError("no SOPInstanceUID")
        except Exception as exc:  # the caller's reader may raise anything: one bad blob is noted
            log.warning("cannot reindex %s: %s", location, exc)
            report.failed.append((location, f"{type(exc).__name__}: {exc}"))
            continue
        batch.append(record)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return report


def follow_moves(catalog: Catalog, record: InstanceRecord,
                 read: Callable[[InstanceRecord], T]) -> tuple[InstanceRecord, T] | None:
    """``read(record)``; where its blob is gone, the instance looked up again and read where
    the catalog names now: a compaction (the server's, periodic) may have moved it and unlinked
    the old segment since ``record`` was listed. (the record read, what ``read`` returned);
    None when the instance was deleted meanwhile; BlobNotFound when the catalog still names
    a location without a blob."""
    moves = 0
    while True:
        try:
            return record, read(record)
        except BlobNotFound:
            fresh = catalog.get_instance(record.sop_instance_uid)
            if fresh is None:
                return None
            if fresh.location == record.location or moves == MOVES:
                raise
            record, moves = fresh, moves + 1


def verify(catalog: Catalog, store: BlobStore, check_digest: bool = True) -> VerifyReport:
    """Check that every indexed blob exists with its size and digest; list orphan blobs.

    Holds the set of indexed locations in memory (~100 bytes each) to find the orphans. A
    server may run meanwhile: an instance moved or deleted since it was listed is looked up
    again before anything is reported of it (see ``follow_moves``).
    """
    report = VerifyReport()
    indexed: set[str] = set()
    uids: set[str] = set()
    placed: list[tuple[str, str]] = []  # indexed in place: (uid, location)

    def measure(record: InstanceRecord) -> tuple[int, str]:
        if check_digest:
            return blob_digest(store, record.location, like=record.digest)
        return store.size(record.location), record.digest

    for listed in catalog.iter_instances():
        uid = listed.sop_instance_uid
        uids.add(uid)
        try:
            found = follow_moves(catalog, listed, measure)
        except BlobNotFound:
            report.checked += 1
            indexed.add(listed.location)
            report.missing.append((uid, listed.location))
            continue
        except PacsError as exc:
            report.checked += 1
            indexed.add(listed.location)
            report.unreadable.append((uid, listed.location, str(exc)))
            continue
        if found is None:
            continue  # deleted meanwhile
        report.checked += 1
        record, (size, digest) = found
        indexed.add(record.location)
        if is_external(record.location):
            placed.append((uid, record.location))
        if size != record.size:
            report.size_mismatch.append((uid, record.location, record.size, size))
        elif digest != record.digest:
            report.digest_mismatch.append((uid, record.location))
    # A segment names each record's key (SOP Instance UID): a record nobody points to whose
    # instance is indexed elsewhere is a stale copy; without the key it can only be an orphan.
    # Listed with their keys in one go: a compaction may have moved records since the
    # instances were read, and a fresh lookup of the key tells which copy is indexed now.
    listing: list[tuple[str, str | None]]
    if isinstance(store, SegmentStore):  # one scan of the segments, then the journal
        listing = list(store.iter_records())
        listing += [(loc, None) for loc in store.in_place_locations()]
    else:
        listing = [(loc, None) for loc in store.locations()]
    # A copy is stale (harmless) only while the indexed copy of its instance is whole: the
    # copy of an instance found missing or damaged may be the last good one, which a
    # compaction would reclaim, so it counts as an orphan (a problem: `pacs reindex`).
    damaged = {entry[0] for entry in (*report.missing, *report.unreadable,
                                      *report.size_mismatch, *report.digest_mismatch)}
    for location, key in listing:
        if location in indexed:
            continue
        current = catalog.get_instance(key) if key is not None else None
        if current is not None and current.location == location:
            continue  # indexed here since the instances were read (moved by a compaction)
        # Not listed: indexed since (stored meanwhile), or not at all.
        stale = key not in damaged if key in uids else current is not None
        (report.stale_copies if stale else report.orphans).append(location)
    # The journal is read after the instances, and a file is journaled before it is indexed:
    # an entry it lacks lost its line (unless deleted or moved since: looked up again).
    journaled = {location for location, _key in listing if is_external(location)}
    for uid, location in placed:
        if location not in journaled:
            current = catalog.get_instance(uid)
            if current is not None and current.location == location:
                report.unjournaled.append((uid, location))
    return report
