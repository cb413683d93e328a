"""``pacs reindex`` and ``pacs verify``: the index is rebuildable from the blobs, and checkable."""

from __future__ import annotations

import logging
from pathlib import Path

from pacs.config import Settings
from pacs.dicom import part10
from pacs.dicom.scan import read_index_attributes
from pacs.errors import DicomFormatError, PacsError
from pacs.index.maintenance import reindex, verify
from pacs.index.records import ALL_KEYWORDS, InstanceRecord
from pacs.store.base import BlobStore

log = logging.getLogger("pacs.maintenance")

HEADER_READ = 1 << 20  # most headers end well before this; larger ones are read whole


def read_record(store: BlobStore, location: str) -> InstanceRecord:
    """Index record of a stored Part-10 blob, from its header only when that suffices."""
    head = store.get(location, 0, HEADER_READ)
    try:
        meta, offset = part10.read_file_meta(head)
        attributes = read_index_attributes(memoryview(head)[offset:], meta["TransferSyntaxUID"])
    except DicomFormatError:
        if len(head) < HEADER_READ:
            raise
        whole = store.get(location)
        meta, offset = part10.read_file_meta(whole)
        attributes = read_index_attributes(memoryview(whole)[offset:], meta["TransferSyntaxUID"])
    if not attributes.get("SOPInstanceUID"):
        raise DicomFormatError("no SOPInstanceUID in the data set")
    charset = attributes.pop("SpecificCharacterSet", "")
    return InstanceRecord(
        attributes={k: attributes.get(k, "") for k in ALL_KEYWORDS},
        transfer_syntax_uid=meta["TransferSyntaxUID"],
        location=location,
        size=0,
        digest="",
        source_aet=meta.get("SourceApplicationEntityTitle", ""),
        specific_character_set=charset,
    )


def reindex_command(settings: Settings) -> int:
    from pacs.archive import open_catalog, open_store

    try:
        store, catalog = open_store(settings, worker_id=-1), open_catalog(settings)
    except PacsError as exc:
        log.error("cannot open the archive at %s: %s", settings.data_dir, exc)
        return 2
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
    from pacs.archive import open_catalog, open_store

    try:
        store, catalog = open_store(settings, worker_id=-1), open_catalog(settings)
    except PacsError as exc:
        log.error("cannot open the archive at %s: %s", settings.data_dir, exc)
        return 2
    try:
        report = verify(catalog, store)
    finally:
        catalog.close()
        store.close()
    for kind in ("missing", "size_mismatch", "digest_mismatch", "unreadable", "orphans"):
        for item in getattr(report, kind):
            print(f"{kind}: {item}")
    print(f"checked {report.checked} instances: {'OK' if report.ok else 'PROBLEMS FOUND'}")
    return 0 if report.ok else 1


def export_command(settings: Settings, out_dir: Path, selection: dict[str, str]) -> int:
    """Write the selected instances as ordinary Part-10 files: DIR/study/series/sop.dcm.

    ``selection`` maps index keywords (PatientID, StudyInstanceUID, SeriesInstanceUID,
    SOPInstanceUID) to required values; empty selects everything.
    """
    from pacs.archive import open_catalog, open_store

    try:
        store, catalog = open_store(settings, worker_id=-1), open_catalog(settings)
    except PacsError as exc:
        log.error("cannot open the archive at %s: %s", settings.data_dir, exc)
        return 2
    written = failed = 0
    try:
        for record in catalog.iter_instances():
            attrs = record.attributes
            if any(attrs.get(k) != v for k, v in selection.items()):
                continue
            folder = out_dir / _safe(attrs["StudyInstanceUID"]) / _safe(attrs["SeriesInstanceUID"])
            target = folder / f"{_safe(record.sop_instance_uid)}.dcm"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".part")
                with open(partial, "wb") as fh:
                    for chunk in store.iter_chunks(record.location):
                        fh.write(chunk)
                partial.replace(target)
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
