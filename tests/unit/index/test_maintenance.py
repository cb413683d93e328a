"""reindex rebuilds the catalog from a FileStore of real Part-10 blobs; verify finds damage."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacs.index.catalog import Catalog
from pacs.index.maintenance import blob_digest, reindex, verify
from pacs.index.records import ALL_KEYWORDS, InstanceRecord
from pacs.store.base import BlobStore
from pacs.store.files import FileStore
from pacs.store.segments import SegmentStore
from tests.unit.index._records import check_consistent, make_record

CT = UID("1.2.840.10008.5.1.4.1.1.2")


def part10(patient: str, study: str, series: str, sop: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = sop
    ds.PatientID = patient
    ds.PatientName = f"Doe^{patient}"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.InstanceNumber = 1
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def read_record(store: BlobStore, location: str) -> InstanceRecord:
    """Test twin of the tag scanner: pydicom on the blob's bytes."""
    ds = dcmread(BytesIO(store.get(location)), stop_before_pixels=True)
    attrs = {k: str(ds.get(k, "")) for k in ALL_KEYWORDS}
    return InstanceRecord(
        attrs, str(ds.file_meta.TransferSyntaxUID), location="", size=0, digest=""
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileStore]:
    s = FileStore(tmp_path / "blobs")
    yield s
    s.close()


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    c = Catalog(tmp_path / "db", map_size=1 << 24)
    yield c
    c.close()


def fill(store: FileStore, n: int = 12) -> dict[str, str]:
    """n instances over 2 patients / 4 studies; SOPInstanceUID -> location."""
    out = {}
    for i in range(n):
        p, st, se = i % 2, i % 4, i % 4
        sop = f"1.9.{i}"
        out[sop] = store.put(sop, [part10(f"P{p}", f"1.{st}", f"1.{st}.{se}", sop)]).location
    return out


def test_reindex_rebuilds(store: FileStore, catalog: Catalog) -> None:
    locations = fill(store)
    store.put("junk", [b"not DICOM at all"])
    duplicate = store.put("1.9.0", [part10("P0", "1.0", "1.0.0", "1.9.0")]).location
    catalog.store_batch([make_record("X", "8", "8.8", "stale")])  # cleared by reindex

    report = reindex(catalog, store, read_record, batch_size=5)

    assert report.indexed == 12
    assert [loc for loc, _ in report.failed] == [
        loc for loc in store.locations() if loc.endswith("junk.dcm")
    ]
    assert len(report.duplicates) == 1 and duplicate in report.duplicates[0]
    assert catalog.get_instance("stale") is None
    stats = catalog.statistics()
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (
        2,
        4,
        4,
        12,
    )
    for sop in locations:
        record = catalog.get_instance(sop)
        assert record is not None
        assert record.location in (locations[sop], duplicate)
        assert (record.size, record.digest) == blob_digest(store, record.location)
        assert record.attributes["Modality"] == "CT"
    check_consistent(catalog)
    assert verify(catalog, store).orphans == sorted([report.failed[0][0], report.duplicates[0][0]])


def test_verify_clean(store: FileStore, catalog: Catalog) -> None:
    fill(store)
    reindex(catalog, store, read_record)
    report = verify(catalog, store)
    assert report.ok and report.checked == 12


def test_verify_finds_damage(store: FileStore, catalog: Catalog, tmp_path: Path) -> None:
    locations = fill(store)
    reindex(catalog, store, read_record)
    store.delete(locations["1.9.0"])
    corrupt = tmp_path / "blobs" / locations["1.9.1"]
    data = bytearray(corrupt.read_bytes())
    data[200] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    truncated = tmp_path / "blobs" / locations["1.9.2"]
    truncated.write_bytes(truncated.read_bytes()[:-10])
    orphan = store.put("1.9.99", [b"orphan"]).location

    report = verify(catalog, store)

    assert not report.ok and report.checked == 12
    assert report.missing == [("1.9.0", locations["1.9.0"])]
    assert report.digest_mismatch == [("1.9.1", locations["1.9.1"])]
    assert [(u, loc) for u, loc, _, _ in report.size_mismatch] == [("1.9.2", locations["1.9.2"])]
    assert report.orphans == [orphan]
    # Without digests, only the size check sees damage.
    quick = verify(catalog, store, check_digest=False)
    assert quick.digest_mismatch == [] and len(quick.size_mismatch) == 1


def test_verify_checks_digests_of_earlier_versions(store: FileStore, catalog: Catalog) -> None:
    """Blobs indexed with BLAKE3, SHA-256 or BLAKE2b-128 (earlier versions) are verified with
    their own algorithm: right ones pass, wrong ones are reported; new digests are XXH3-128."""
    import hashlib

    import blake3
    import xxhash

    locations = fill(store)
    reindex(catalog, store, read_record)
    records = {r.sop_instance_uid: r for r in catalog.iter_instances()}
    old, older = records["1.9.0"], records["1.9.2"]
    blob, blob2 = store.get(locations["1.9.0"]), store.get(locations["1.9.2"])
    assert old.digest == "x3:" + xxhash.xxh3_128(blob).hexdigest()
    assert all(r.digest.startswith("x3:") and len(r.digest) == 35 for r in records.values())
    old.digest = hashlib.sha256(blob).hexdigest()
    older.digest = hashlib.blake2b(blob2, digest_size=16).hexdigest()
    wrong = records["1.9.1"]
    wrong.digest = hashlib.blake2b(b"something else", digest_size=16).hexdigest()
    catalog.store_batch([old, older, wrong], on_duplicate="replace")
    assert blob_digest(store, locations["1.9.0"], like=old.digest) == (len(blob), old.digest)
    assert blob_digest(store, locations["1.9.2"], like=older.digest) == (len(blob2),
                                                                          older.digest)
    report = verify(catalog, store)
    assert report.digest_mismatch == [("1.9.1", locations["1.9.1"])]
    # BLAKE3 (new blobs' digest from session 6 until XXH3-128): the right one passes, a BLAKE3
    # of other bytes is reported.
    old.digest = "b3:" + blake3.blake3(blob).hexdigest()
    older.digest = "b3:" + blake3.blake3(b"other bytes").hexdigest()
    wrong.digest = "x3:" + xxhash.xxh3_128(store.get(locations["1.9.1"])).hexdigest()
    catalog.store_batch([old, older, wrong], on_duplicate="replace")
    assert blob_digest(store, locations["1.9.0"], like=old.digest) == (len(blob), old.digest)
    report = verify(catalog, store)
    assert report.digest_mismatch == [("1.9.2", locations["1.9.2"])]


def test_reindex_leaves_out_a_torn_segment_record(tmp_path: Path, catalog: Catalog) -> None:
    """A record a failed (or never done) write tore may stay listed in its segment's seal: its
    bytes do not match its CRC-32, so reindex reports it instead of indexing damaged pixels."""
    import os

    from pacs.store.segments import SegmentStore

    segments = SegmentStore(tmp_path / "segments", prefill=0, direct_min=0)
    good = segments.put("1.9.1", [part10("P1", "1.1", "1.1.1", "1.9.1")]).location
    blob = part10("P1", "1.1", "1.1.1", "1.9.2")
    torn = segments.put("1.9.2", [blob]).location
    name, offset, _ = torn.split(":")
    fd = os.open(tmp_path / "segments" / name, os.O_WRONLY)
    try:  # still a readable data set, but not the bytes that were written
        os.pwrite(fd, b"Doe^X1", int(offset) + blob.index(b"Doe^P1"))
    finally:
        os.close(fd)
    try:
        report = reindex(catalog, segments, read_record)
    finally:
        segments.close()
    assert report.indexed == 1
    assert [loc for loc, _ in report.failed] == [torn]
    assert "checksum" in report.failed[0][1]
    assert catalog.get_instance("1.9.1") is not None and catalog.get_instance("1.9.2") is None
    assert good != torn


def test_verify_tells_stale_copies_from_orphans(tmp_path: Path, catalog: Catalog) -> None:
    """In a segment store a record names its instance: one nobody points to whose instance is
    indexed at another location (a compaction or replacement cut short) is a stale copy, not
    a problem; one of an instance the index does not know is an orphan."""
    from pacs.store.segments import SegmentStore

    segments = SegmentStore(tmp_path / "segments", prefill=0, direct_min=0)
    try:
        blob = part10("P1", "1.1", "1.1.1", "1.9.1")
        copy = segments.put("1.9.1", [blob]).location
        indexed = segments.put("1.9.1", [blob]).location
        lost = segments.put("1.9.2", [part10("P1", "1.1", "1.1.1", "1.9.2")]).location
        size, digest = blob_digest(segments, indexed)
        record = read_record(segments, indexed)
        catalog.store_batch([InstanceRecord(record.attributes, record.transfer_syntax_uid,
                                            location=indexed, size=size, digest=digest)])
        report = verify(catalog, segments)
    finally:
        segments.close()
    assert report.checked == 1
    assert report.stale_copies == [copy]
    assert report.orphans == [lost]
    assert not report.ok  # the orphan


def compactable(root: Path, catalog: Catalog) -> tuple[SegmentStore, list[str]]:
    """A server's segment store of 20 indexed instances whose first segment a compaction
    rewrites (most of it deleted), and the SOP Instance UIDs of the instances left in it."""
    from pacs.deletion import delete_instances
    from pacs.recovery import checkpoint_name

    server = SegmentStore(root, segment_size=4096, prefill=0, direct_min=0)
    locations = {}
    for i in range(20):
        sop = f"1.9.{i}"
        location = server.put(sop, [part10("P1", "1.1", "1.1.1", sop)]).location
        size, digest = blob_digest(server, location)
        record = read_record(server, location)
        catalog.store_batch([InstanceRecord(record.attributes, record.transfer_syntax_uid,
                                            location=location, size=size, digest=digest)])
        locations[sop] = location
    catalog.checkpoint(checkpoint_name("w0"), server.active_segment)
    first = sorted(sop for sop, loc in locations.items()
                   if loc.startswith(server.segments()[0] + ":"))
    assert len(first) > 2
    delete_instances(catalog, server, first[1:])
    return server, first[:1]


def test_verify_follows_an_instance_a_compaction_moves_meanwhile(
        tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's compaction may move instances (and unlink their old segment) after
    verify listed them: they are read where they went, not reported missing."""
    from pacs.maintenance import compact_segments

    server, moved = compactable(tmp_path / "segments", catalog)
    tool = SegmentStore(tmp_path / "segments", writer_id="tool", prefill=0, direct_min=0)
    listing = catalog.iter_instances
    indexed = sum(1 for _ in listing())

    def compact_after_the_first_chunk(chunk: int = 1000) -> Iterator[InstanceRecord]:
        records = listing(chunk)
        first = next(records)
        assert compact_segments(catalog, server, 0.5).moved == 1
        yield first
        yield from records

    monkeypatch.setattr(catalog, "iter_instances", compact_after_the_first_chunk)
    try:
        old = catalog.get_instance(moved[0])
        report = verify(catalog, tool)
        new = catalog.get_instance(moved[0])
    finally:
        tool.close()
        server.close()
    assert old is not None and new is not None and new.location.startswith("compact-")
    assert (report.checked, report.missing, report.orphans) == (indexed, [], [])
    assert report.stale_copies == [] and report.ok


def test_verify_rechecks_a_copy_a_compaction_made_after_the_instances_were_read(
        tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record not indexed when the instances were read may be by the time the segments are
    listed (a compaction moved the instance there): neither an orphan nor a stale copy."""
    from pacs.maintenance import compact_segments

    server, _ = compactable(tmp_path / "segments", catalog)
    tool = SegmentStore(tmp_path / "segments", writer_id="tool", prefill=0, direct_min=0)
    listing = catalog.iter_instances
    indexed = sum(1 for _ in listing())

    def compact_after_the_last_chunk(chunk: int = 1000) -> Iterator[InstanceRecord]:
        yield from listing(chunk)
        assert compact_segments(catalog, server, 0.5).moved == 1

    monkeypatch.setattr(catalog, "iter_instances", compact_after_the_last_chunk)
    try:
        report = verify(catalog, tool)
    finally:
        tool.close()
        server.close()
    assert (report.checked, report.missing, report.orphans) == (indexed, [], [])
    assert report.stale_copies == [] and report.ok


@pytest.mark.parametrize("action", ["delete", "replace"])
@pytest.mark.parametrize("step", ["renamed", "relocated"])
def test_reindex_after_an_interrupted_compaction(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, step: str, action: str
) -> None:
    """A compaction killed after its rename leaves each moved record twice (the catalog points
    at the old copy before relocating, at the new one after); a later delete or replacement
    tombstones the catalog's copy only. Reindex must bring back neither the deleted instance
    nor the replaced version from the other copy."""
    from pacs.deletion import delete_instances
    from pacs.maintenance import compact_segments
    from pacs.recovery import checkpoint_name
    from pacs.store import compaction
    from pacs.store.segments import SegmentStore

    segments = SegmentStore(tmp_path / "segments", segment_size=8192, prefill=0)

    def ingest(sop: str, patient: str = "P1") -> str:
        location = segments.put(sop, [part10(patient, "1.1", "1.1.1", sop)]).location
        size, digest = blob_digest(segments, location)
        record = read_record(segments, location)
        catalog.store_batch([InstanceRecord(record.attributes, record.transfer_syntax_uid,
                                            location=location, size=size, digest=digest)],
                            on_duplicate="replace")
        return location

    locations = {sop: ingest(sop) for sop in (f"1.9.{i}" for i in range(20))}
    catalog.checkpoint(checkpoint_name("w0"), segments.active_segment)
    first = locations["1.9.0"].split(":")[0]
    in_first = [sop for sop, loc in locations.items() if loc.startswith(first + ":")]
    delete_instances(catalog, segments, in_first[1:])  # the first segment is mostly dead
    moved = in_first[0]

    def crash(name: str) -> None:
        if name == step:
            raise RuntimeError(f"killed at {name}")

    monkeypatch.setattr(compaction, "crash_hook", crash)
    with pytest.raises(RuntimeError, match="killed"):
        compact_segments(catalog, segments, 0.5)
    monkeypatch.setattr(compaction, "crash_hook", None)
    copies = [loc for loc, sop in segments.iter_records() if sop == moved]
    assert len(copies) == 2  # the old copy and the new one, identical
    if action == "delete":
        assert delete_instances(catalog, segments, [moved])[0] == 1
    else:  # re-sent with other attributes: the catalog's copy is tombstoned
        replaced = catalog.get_instance(moved)
        assert replaced is not None
        newest = ingest(moved, patient="P2")
        segments.delete(replaced.location)
    segments.close()

    segments = SegmentStore(tmp_path / "segments", writer_id="tool", segment_size=8192)
    try:
        reindex(catalog, segments, read_record)
        back = catalog.get_instance(moved)
        if action == "delete":
            assert back is None
        else:
            assert back is not None and back.location == newest
            assert back.attributes["PatientID"] == "P2"
        for sop in set(locations) - set(in_first):
            assert catalog.get_instance(sop) is not None
        # A later compaction finishes the job; the instance stays as it should.
        compact_segments(catalog, segments, 0.01)
        assert [sop for _loc, sop in segments.iter_records()].count(moved) == (
            action == "replace")
    finally:
        segments.close()


def test_the_copy_of_a_missing_instance_is_no_stale_copy(tmp_path: Path,
                                                         catalog: Catalog) -> None:
    """When the indexed copy of an instance is gone, another copy of it may be the last one:
    an orphan (a problem, for `pacs reindex`), never a stale copy a compaction may reclaim."""
    import os

    from pacs.store.segments import SegmentStore

    segments = SegmentStore(tmp_path / "segments", segment_size=4096, prefill=0, direct_min=0)
    try:
        blob = part10("P1", "1.1", "1.1.1", "1.9.1") + b"\0" * 3000  # one record a segment
        survivor = segments.put("1.9.1", [blob]).location
        indexed = segments.put("1.9.1", [blob]).location
        assert survivor.split(":")[0] != indexed.split(":")[0]
        size, digest = blob_digest(segments, indexed)
        record = read_record(segments, indexed)
        catalog.store_batch([InstanceRecord(record.attributes, record.transfer_syntax_uid,
                                            location=indexed, size=size, digest=digest)])
        segments.close()
        os.unlink(tmp_path / "segments" / indexed.split(":")[0])
        segments = SegmentStore(tmp_path / "segments", segment_size=4096, prefill=0,
                                direct_min=0)
        report = verify(catalog, segments)
    finally:
        segments.close()
    assert report.missing == [("1.9.1", indexed)]
    assert report.orphans == [survivor] and report.stale_copies == []
