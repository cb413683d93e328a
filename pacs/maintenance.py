"""``pacs reindex`` and ``pacs verify``: the index is rebuildable from the blobs, and checkable."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from pacs.config import Settings
from pacs.dicom import part10
from pacs.dicom.scan import read_index_attributes
from pacs.errors import DicomFormatError, PacsError
from pacs.index.catalog import Catalog
from pacs.index.maintenance import follow_moves, reindex, verify
from pacs.index.records import InstanceRecord
from pacs.recovery import checkpoint_name
from pacs.store.base import BlobStore
from pacs.store.compaction import CompactReport
from pacs.store.export import export
from pacs.store.segment_format import COMPACT_OWNER, parse_segment_name
from pacs.store.segments import SegmentStore
from pacs.writers import must_replay_all

log = logging.getLogger("pacs.maintenance")

HEADER_READ = 1 << 20  # most headers end well before this; larger ones are read whole


def _scan_blob(blob: bytes) -> tuple[str, dict[str, str], dict[str, str]]:
    """(transfer syntax, index attributes, file meta) of a Part-10 blob (or its start)."""
    meta, offset = part10.read_file_meta(blob)
    syntax = meta["TransferSyntaxUID"]
    return syntax, read_index_attributes(memoryview(blob)[offset:], syntax), meta


def read_record(store: BlobStore, location: str) -> InstanceRecord:
    """Index record of a stored Part-10 blob, from its header only when that suffices."""
    head = store.get(location, 0, HEADER_READ)
    try:
        syntax, attributes, meta = _scan_blob(head)
    except DicomFormatError:
        if len(head) < HEADER_READ:
            raise
        syntax, attributes, meta = _scan_blob(store.get(location))  # a header past 1 MiB
    if not attributes.get("SOPInstanceUID"):
        raise DicomFormatError("no SOPInstanceUID in the data set")
    return InstanceRecord.from_attributes(
        attributes, syntax, location=location,
        source_aet=meta.get("SourceApplicationEntityTitle", ""))


def _open(settings: Settings) -> tuple[BlobStore, Catalog] | None:
    """The archive's blob store and catalog for a maintenance tool; None (logged) if not."""
    from pacs.archive import open_catalog, open_store

    try:
        return open_store(settings, worker_id=-1), open_catalog(settings)
    except PacsError as exc:
        log.error("cannot open the archive at %s: %s", settings.data_dir, exc)
        return None


def reindex_command(settings: Settings) -> int:
    opened = _open(settings)
    if opened is None:
        return 2
    store, catalog = opened
    try:
        report = reindex(catalog, store, read_record)
    finally:
        catalog.close()
        store.close()
    for location, reason in report.failed:
        log.warning("not indexed: %s: %s", location, reason)
    for location, kept in report.duplicates:
        log.warning("duplicate SOP Instance UID: %s (kept %s)", location, kept)
    print(f"indexed {report.indexed} instances, {len(report.failed)} failed, "
          f"{len(report.duplicates)} duplicates")
    return 0 if not report.failed else 1


def verify_command(settings: Settings) -> int:
    opened = _open(settings)
    if opened is None:
        return 2
    store, catalog = opened
    try:
        report = verify(catalog, store)
    finally:
        catalog.close()
        store.close()
    for kind in ("missing", "size_mismatch", "digest_mismatch", "unreadable", "orphans",
                 "unjournaled"):
        for item in getattr(report, kind):
            print(f"{kind}: {item}")
    if report.stale_copies:
        print(f"{len(report.stale_copies)} stale copies of indexed instances (left by an "
              "interrupted compaction or replacement; `pacs compact` reclaims them)")
    print(f"checked {report.checked} instances: {'OK' if report.ok else 'PROBLEMS FOUND'}")
    return 0 if report.ok else 1


def export_command(settings: Settings, out_dir: Path, selection: dict[str, str]) -> int:
    """Write the selected instances as ordinary Part-10 files: DIR/study/series/sop.dcm.

    ``selection`` maps index keywords (PatientID, StudyInstanceUID, SeriesInstanceUID,
    SOPInstanceUID) to required values; empty selects everything.
    """
    opened = _open(settings)
    if opened is None:
        return 2
    store, catalog = opened
    written = failed = 0
    try:
        for record in catalog.iter_instances():
            attrs = record.attributes
            if any(attrs.get(k) != v for k, v in selection.items()):
                continue
            folder = out_dir / _safe(attrs["StudyInstanceUID"]) / _safe(attrs["SeriesInstanceUID"])
            name = f"{_safe(record.sop_instance_uid)}.dcm"

            def copy(current: InstanceRecord, folder: Path = folder, name: str = name) -> None:
                # Written aside and renamed; a failed copy leaves no partial file behind.
                export(store, [(current.location, name)], folder)

            try:
                # A compaction (the server's) may move the blob while the export runs.
                if follow_moves(catalog, record, copy) is None:
                    continue  # deleted meanwhile
                written += 1
            except (OSError, PacsError) as exc:
                log.error("cannot export %s: %s", record.sop_instance_uid, exc)
                failed += 1
    finally:
        catalog.close()
        store.close()
    print(f"exported {written} instances to {out_dir}, {failed} failed")
    return 0 if not failed else 1


def _safe(uid: str) -> str:
    """A UID as a file name: UIDs are digits and dots, but the index may hold anything."""
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in uid) or "_"


def compact_segments(
    catalog: Catalog,
    store: SegmentStore,
    min_dead_fraction: float,
    run_write: Callable[[Callable[[], list[str]]], list[str]] | None = None,
    state_dir: Path | None = None,
) -> CompactReport:
    """Rewrite sealed segments whose dead fraction reached ``min_dead_fraction``.

    Live means: the catalog still points at that very location. A record it does not point at
    may be a store in flight in another worker (written, not yet committed): it is dead only
    once its writer's checkpoint has passed its segment (that writer committed, or gave up,
    everything before it); until then its segment is left alone. A ``compact-*`` segment is
    no writer's log: its records were indexed when copied, so one the catalog does not point
    at is dead. The relocation, and what made the old records dead, is synced to disk before
    any old segment is unlinked (the server's LMDB commits are not durable by themselves, and
    replay never walks ``compact-*`` segments). ``run_write`` runs the catalog's relocation
    transaction (in the server: on the catalog writer's thread). A writer whose next start
    replays its whole log (a ``replay-all`` marker under ``state_dir``: its checkpoint may have
    passed commits a failed sync lost) has no checkpoint to trust here.
    """
    # Before any instance lookup: a commit the checkpoint covers is then seen by the lookup.
    passed = _checkpoints(catalog, store)
    if state_dir is not None:
        passed = {w: seq for w, seq in passed.items() if not must_replay_all(state_dir, w)}
    keys = dict(store.iter_records())  # location -> SOP Instance UID

    def is_live(location: str) -> bool | None:
        key = keys.get(location)
        if key is None:
            return None  # written since the listing above: may be in flight
        record = catalog.get_instance(key)
        if record is not None and record.location == location:
            return True
        owner, seq = parse_segment_name(location.split(":", 1)[0]) or ("", 0)
        if owner == COMPACT_OWNER:
            return False
        checkpoint = passed.get(owner)
        return False if checkpoint is not None and seq < checkpoint else None

    def relocate(moves: dict[str, str]) -> None:
        targets = {keys[old]: (old, new) for old, new in moves.items() if old in keys}

        def apply() -> list[str]:
            return catalog.relocate(targets)

        stale: list[str] = []
        if targets:
            stale = run_write(apply) if run_write is not None else apply()
        catalog.sync()  # raises: compaction stops before unlinking anything
        for uid in stale:
            # Deleted or re-sent while being copied: the new copy is garbage, tombstone it.
            try:
                store.delete(targets[uid][1])
            except PacsError as exc:
                log.warning("compaction: cannot drop the stale copy of %s: %s", uid, exc)
        if stale:
            log.info("compaction: %d instances changed meanwhile; dropped their copies",
                     len(stale))

    return store.compact(is_live, relocate, min_dead_fraction)


def _checkpoints(catalog: Catalog, store: SegmentStore) -> dict[str, int]:
    """Writer id -> sequence number of its checkpoint segment, for every writer that has
    segments under ``store`` and a checkpoint (``pacs.recovery``)."""
    out: dict[str, int] = {}
    seen: set[str] = set()
    for name in store.segments():
        owner = (parse_segment_name(name) or ("", 0))[0]
        if owner in seen or owner == COMPACT_OWNER:
            continue
        seen.add(owner)
        value = catalog.get_checkpoint(checkpoint_name(owner))
        parsed = parse_segment_name(value) if value is not None else None
        if parsed is not None and parsed[0] == owner:
            out[owner] = parsed[1]
    return out


def compact_command(settings: Settings, min_dead_fraction: float) -> int:
    opened = _open(settings)
    if opened is None:
        return 2
    store, catalog = opened
    try:
        if not isinstance(store, SegmentStore):
            print("the file store needs no compaction")
            return 0
        report = compact_segments(catalog, store, min_dead_fraction,
                                  state_dir=settings.state_dir)
    finally:
        catalog.close()
        store.close()
    print(f"compacted {len(report.removed)} of {report.examined} sealed segments: moved "
          f"{report.moved} instances, reclaimed {report.reclaimed / 1e6:.1f} MB")
    return 0


def jobs_command(settings: Settings) -> int:
    """List the forwarding queue: what waits for which destination, and the last error."""
    from pacs.archive import open_catalog

    try:
        catalog = open_catalog(settings)
    except PacsError as exc:
        log.error("cannot open the archive at %s: %s", settings.data_dir, exc)
        return 2
    try:
        queue = catalog.forward_queue()
    finally:
        catalog.close()
    now = time.time()
    for entry in queue:
        wait = max(0.0, entry.due - now)
        print(f"{entry.destination:16s} {entry.sop_instance_uid}  attempts {entry.attempts}  "
              f"next in {wait:.0f} s  {entry.last_error}")
    print(f"{len(queue)} forwards queued")
    return 0
