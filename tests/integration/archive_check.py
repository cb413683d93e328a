"""Look inside an archive's data directory the way a test should: through its own index."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileDataset

from pacs.index.catalog import Catalog
from pacs.index.records import InstanceRecord
from pacs.store.base import BlobStore
from pacs.store.files import FileStore
from pacs.store.segments import SegmentStore


def stored_instance(data_dir: Path, sop_instance_uid: str) -> tuple[InstanceRecord, bytes] | None:
    """The index record and blob bytes of one instance, or None when it is not indexed."""
    catalog = Catalog(data_dir / "index", readonly=True)
    try:
        record = catalog.get_instance(sop_instance_uid)
    finally:
        catalog.close()
    if record is None:
        return None
    store = open_blob_store(data_dir)
    try:
        return record, store.get(record.location)
    finally:
        store.close()


def open_blob_store(data_dir: Path) -> BlobStore:
    """The store an archive wrote (segments by default, files when configured so)."""
    blobs = data_dir / "blobs"
    if any(blobs.glob("*.seg")):
        return SegmentStore(blobs, writer_id="test")
    return FileStore(blobs)


def flip_last_byte(data_dir: Path, location: str) -> None:
    """Corrupt one stored blob in place, whatever the store (a bit rot stand-in)."""
    blobs = data_dir / "blobs"
    if ".seg:" in location:
        name, offset, length = location.rsplit(":", 2)
        path, at = blobs / name, int(offset) + int(length) - 1
    else:
        path = blobs / location
        at = path.stat().st_size - 1
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0xFF]))


def statistics(data_dir: Path) -> dict[str, int]:
    catalog = Catalog(data_dir / "index", readonly=True)
    try:
        return catalog.statistics()
    finally:
        catalog.close()


def read_blob(blob: bytes) -> FileDataset:
    return pydicom.dcmread(io.BytesIO(blob))


def same_dataset(a: Dataset, b: Dataset) -> bool:
    """Element-by-element equality of two datasets (file meta excluded).

    Group lengths (gggg,0000) and Data Set Trailing Padding (FFFC,FFFC) are left out: senders
    such as storescu recalculate the one and drop the other.
    """
    a_tags = [e.tag for e in a if e.tag.element != 0 and e.tag != 0xFFFCFFFC]
    b_tags = [e.tag for e in b if e.tag.element != 0 and e.tag != 0xFFFCFFFC]
    if a_tags != b_tags:
        return False
    return all(a[tag].value == b[tag].value for tag in a_tags)
