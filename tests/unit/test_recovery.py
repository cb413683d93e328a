"""Recovery: the catalog catches up from the segment log; checkpoints never pass a blob that
is written but not yet indexed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from pacs.archive import Archive
from pacs.config import Route, Settings
from pacs.dicom import part10
from pacs.errors import CatalogError, StorageError
from pacs.index import integrity
from pacs.index.catalog import Catalog
from pacs.index.maintenance import blob_digest
from pacs.maintenance import read_record
from pacs.recovery import InflightSegments, ReplayIncomplete, checkpoint_name, replay
from pacs.store.segments import SegmentStore
from pacs.writers import leave_clean_marker, take_clean_marker
from tests.dicomgen import make_ct


def blob(ds) -> list[bytes]:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    meta = part10.file_meta(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "MOD")
    return [meta, buffer.getvalue()]


def indexed(store: SegmentStore, location: str):
    record = read_record(store, location)
    record.size, record.digest = blob_digest(store, location)
    return record


def test_replay_indexes_what_the_catalog_lost(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path / "blobs", writer_id="w0")
    catalog = Catalog(tmp_path / "index", map_size=1 << 26, durable_commits=False)
    datasets = [make_ct(instance_number=i) for i in range(5)]
    locations = [store.put(ds.SOPInstanceUID, blob(ds)).location for ds in datasets]
    store.flush()
    # The first two were indexed before the "crash"; the other three commits were lost.
    catalog.store_batch([indexed(store, loc) for loc in locations[:2]])
    assert replay(catalog, store) == 3
    for ds, location in zip(datasets, locations, strict=True):
        record = catalog.get_instance(ds.SOPInstanceUID)
        assert record is not None and record.location == location
        assert record.size == store.size(location) and len(record.digest) == 35  # x3: + 32
        assert record.attributes["PatientName"] == "Doe^Jane"
    assert replay(catalog, store) == 0  # idempotent
    catalog.close()
    store.close()


def test_replay_starts_at_the_checkpoint(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path / "blobs", writer_id="w0", segment_size=64 * 1024)
    catalog = Catalog(tmp_path / "index", map_size=1 << 26, durable_commits=False)
    first = [make_ct(instance_number=i) for i in range(8)]  # ~9 KiB each: rolls segments
    for ds in first:
        store.put(ds.SOPInstanceUID, blob(ds))
    catalog.checkpoint(checkpoint_name("w0"), store.active_segment)
    later = make_ct()
    store.put(later.SOPInstanceUID, blob(later))
    assert replay(catalog, store) >= 1
    assert catalog.get_instance(later.SOPInstanceUID) is not None
    # Records in segments before the checkpoint are the checkpoint's promise: not re-read.
    assert catalog.get_instance(first[0].SOPInstanceUID) is None
    catalog.close()
    store.close()


def test_checkpoint_waits_for_in_flight_blobs(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path / "blobs", writer_id="w0", segment_size=16 * 1024)
    inflight = InflightSegments(store)
    start = store.active_segment
    noted = inflight.enter()
    ds = make_ct()
    store.put(ds.SOPInstanceUID, blob(ds))
    for _ in range(3):  # other writes roll the segment on
        other = make_ct()
        store.put(other.SOPInstanceUID, blob(other))
    assert store.active_segment != start
    assert inflight.checkpoint_position() == start
    inflight.leave(noted)
    assert inflight.checkpoint_position() == store.active_segment
    store.close()


def test_clean_marker(tmp_path: Path) -> None:
    assert take_clean_marker(tmp_path, "w0") is False
    leave_clean_marker(tmp_path, "w0")
    assert take_clean_marker(tmp_path, "w0") is True
    assert take_clean_marker(tmp_path, "w0") is False


def test_replay_skips_a_torn_record_in_a_sealed_segment(tmp_path: Path) -> None:
    """A power cut may leave a seal on disk without one of the pages before it (a record that
    was never acknowledged): the seal does not say so, the record's CRC-32 does. Replay indexes
    the intact records and not the torn one."""
    store = SegmentStore(tmp_path / "blobs", writer_id="w0", segment_size=64 * 1024)
    catalog = Catalog(tmp_path / "index", map_size=1 << 26, durable_commits=False)
    datasets = [make_ct(instance_number=i) for i in range(3)]
    first = store.active_segment
    locations = [store.put(ds.SOPInstanceUID, blob(ds), durable=False).location
                 for ds in datasets]
    while store.active_segment == first:  # roll: the first segment gets its seal
        ds = make_ct()
        store.put(ds.SOPInstanceUID, blob(ds))
    store.close()
    segment, offset, size = locations[1].rsplit(":", 2)
    with open(tmp_path / "blobs" / segment, "r+b") as fh:  # a page of the middle record lost
        fh.seek(int(offset) + int(size) // 2)
        fh.write(bytes(512))
    store = SegmentStore(tmp_path / "blobs", writer_id="w0", segment_size=64 * 1024)
    assert store.get(locations[1]) != b"".join(blob(datasets[1]))  # served as it is on disk
    replay(catalog, store)
    assert catalog.get_instance(datasets[0].SOPInstanceUID) is not None
    assert catalog.get_instance(datasets[1].SOPInstanceUID) is None
    assert catalog.get_instance(datasets[2].SOPInstanceUID) is not None
    catalog.close()
    store.close()


def test_a_roll_makes_the_records_durable_before_writing_the_seal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery trusts a sealed segment's records unread: the seal goes to disk only after an
    fdatasync of the records before it."""
    import pacs.store.segments as segments_module

    store = SegmentStore(tmp_path, writer_id="w0", segment_size=64 * 1024, prefill=0)
    ds = make_ct()
    store.put(ds.SOPInstanceUID, blob(ds), durable=False)
    first = store.active_segment
    events: list[tuple[str, int]] = []
    real_fdatasync, real_pwritev = os.fdatasync, os.pwritev

    def fdatasync(fd: int) -> None:
        events.append(("fdatasync", os.fstat(fd).st_ino))
        real_fdatasync(fd)

    def pwritev(fd: int, buffers: Any, offset: int, *args: Any) -> int:
        events.append(("write", os.fstat(fd).st_ino))
        return real_pwritev(fd, buffers, offset, *args)

    with monkeypatch.context() as patch:
        patch.setattr(segments_module.os, "fdatasync", fdatasync)
        patch.setattr(segments_module.os, "pwritev", pwritev)
        big = make_ct(rows=200, columns=200)  # does not fit: rolls
        store.put(big.SOPInstanceUID, blob(big), durable=False)
    old = (tmp_path / first).stat().st_ino
    on_old = [kind for kind, inode in events if inode == old]
    assert on_old[:3] == ["fdatasync", "write", "fdatasync"], events  # sync, seal, sync
    store.close()


def test_replay_indexes_what_it_can_and_says_what_it_could_not_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error is not a torn record: the instance may have been acknowledged, so replay
    indexes everything else, then raises instead of letting the checkpoint pass it."""
    store = SegmentStore(tmp_path / "blobs", writer_id="w0")
    catalog = Catalog(tmp_path / "index", map_size=1 << 26, durable_commits=False)
    datasets = [make_ct(instance_number=i) for i in range(3)]
    locations = [store.put(ds.SOPInstanceUID, blob(ds)).location for ds in datasets]
    real_chunks = store.iter_chunks

    def failing_chunks(location: str, *args: Any) -> Any:
        if location == locations[1]:
            raise StorageError(f"cannot read {location}: [Errno 5] Input/output error")
        return real_chunks(location, *args)

    monkeypatch.setattr(store, "iter_chunks", failing_chunks)
    with pytest.raises(ReplayIncomplete, match="1 records could not be read"):
        replay(catalog, store)
    assert catalog.get_instance(datasets[0].SOPInstanceUID) is not None
    assert catalog.get_instance(datasets[1].SOPInstanceUID) is None
    assert catalog.get_instance(datasets[2].SOPInstanceUID) is not None
    monkeypatch.undo()
    assert replay(catalog, store) == 1  # readable again: indexed
    catalog.close()
    store.close()


def test_a_failed_checkpoint_makes_the_next_start_replay_the_whole_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint's LMDB sync that failed may have lost commits that a later, successful sync
    does not report, while the checkpoint moves on past their segments: the next start, even
    after a clean stop, replays the writer's whole log (once)."""
    settings = Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28)
    archive = Archive.open(settings)
    store, catalog = archive.store, archive.catalog
    assert isinstance(store, SegmentStore)
    ds = make_ct()
    location = store.put(ds.SOPInstanceUID, blob(ds)).location
    catalog.store_batch([indexed(store, location)])

    def failing_sync(name: str, value: str) -> None:
        raise CatalogError("catalog sync failed: [Errno 5] Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(catalog, "checkpoint", failing_sync)
        with pytest.raises(CatalogError):
            archive.writer.checkpoint()  # type: ignore[misc]
    # What the failed sync may have lost, with the checkpoint already past its segment.
    catalog.delete_instance(ds.SOPInstanceUID)
    later = make_ct()
    store.put(later.SOPInstanceUID, blob(later), durable=True)
    catalog.checkpoint(checkpoint_name(store.writer_id), "w0-99999999.seg")
    archive.close()  # a clean stop
    assert (settings.state_dir / "w0.replay-all").exists()
    archive = Archive.open(settings)
    try:
        record = archive.catalog.get_instance(ds.SOPInstanceUID)
        assert record is not None and record.location == location
        assert archive.catalog.get_instance(later.SOPInstanceUID) is not None
        assert not (settings.state_dir / "w0.replay-all").exists()  # done: once
    finally:
        archive.close()


def test_replayed_instances_are_queued_for_forwarding_again(tmp_path: Path) -> None:
    """The forward queue entry is written in the instance's commit: when a power cut took the
    commit, replay queues the instance again by the routes, as its C-STORE did."""
    store = SegmentStore(tmp_path / "blobs", writer_id="w0")
    catalog = Catalog(tmp_path / "index", map_size=1 << 26, durable_commits=False)
    ct, mr = make_ct(), make_ct(modality="MR")
    indexed_ct = make_ct()
    for ds in (ct, mr, indexed_ct):
        store.put(ds.SOPInstanceUID, blob(ds))
    catalog.store_batch([indexed(store, loc) for loc, key in store.iter_records()
                         if key == indexed_ct.SOPInstanceUID])
    routes = [Route("STORESCP", modality="CT"), Route("ARCHIVE2", calling_aet="OTHER")]
    assert replay(catalog, store, routes=routes) == 2
    queued = {(f.sop_instance_uid, f.destination) for f in catalog.forward_queue()}
    assert queued == {(ct.SOPInstanceUID, "STORESCP")}  # MOD sent them; MR not routed
    catalog.close()
    store.close()


def test_a_restart_with_fewer_workers_replays_the_others_logs(tmp_path: Path) -> None:
    """Two workers, a power cut, a restart with one: worker w1's acknowledged stores since its
    checkpoint must be indexed by the new run, though no w1 runs any more."""
    from pacs.server.app import _recover_other_writers
    from pacs.writers import stale_writers

    settings = Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28, workers=1)
    w1 = SegmentStore(settings.blob_dir, writer_id="w1")
    lost = make_ct()  # durable in w1's log, its commit lost with the power cut
    location = w1.put(lost.SOPInstanceUID, blob(lost)).location
    w1.close()  # no clean marker: w1 stopped uncleanly
    assert stale_writers(settings.blob_dir, settings.state_dir, "w", {"w0"}) == ["w1"]
    _recover_other_writers(settings)
    # The next start: nothing to load for it.
    assert stale_writers(settings.blob_dir, settings.state_dir, "w", {"w0"}) == []
    archive = Archive.open(settings)
    try:
        record = archive.catalog.get_instance(lost.SOPInstanceUID)
        assert record is not None and record.location == location
    finally:
        archive.close()
    assert (settings.state_dir / "w1.clean").exists()  # replayed once, not at every start


def _damage_page_holding(index_dir: Path, needle: bytes) -> None:
    data = index_dir / "data.mdb"
    content = data.read_bytes()
    at = content.rfind(needle)
    assert at > 2 * 4096, "the key should sit in a data page, past the two meta pages"
    with open(data, "r+b") as fh:
        fh.seek(at // 4096 * 4096)
        fh.write(bytes(4096))


def test_check_integrity_walks_every_database(tmp_path: Path) -> None:
    from tests.unit.index._records import make_record

    catalog = Catalog(tmp_path / "index", map_size=1 << 26, durable_commits=False)
    catalog.store_batch([make_record("P1", "1.2.9", "1.2.9.1", f"1.2.9.1.{i:06d}")
                         for i in range(2000)])
    assert catalog.check_integrity() >= 4000  # instances and their series links at least
    catalog.sync()
    catalog.close()
    assert integrity.check(tmp_path / "index") >= 4000
    _damage_page_holding(tmp_path / "index", b"1.2.9.1.001999")
    # In a child: LMDB aborts the process on some damage (a non-leaf page where a leaf is due).
    with pytest.raises(CatalogError, match=r"the walk (died|failed)"):
        integrity.check(tmp_path / "index")


def test_the_start_after_an_os_crash_checks_the_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an unclean stop in an earlier boot (the machine went down, not only the process),
    the catalog's unsynced pages may have reached the disk out of order: the start walks the
    index, and refuses to serve a damaged one, saying how to rebuild it."""
    settings = Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28)
    Archive.open(settings).close()
    boot_file = settings.state_dir / "w0.boot"
    assert boot_file.read_text() == Path("/proc/sys/kernel/random/boot_id").read_text()
    checks: list[int] = []
    real_check = integrity.check

    def check(index_dir: Path) -> int:
        checks.append(1)
        return real_check(index_dir)

    monkeypatch.setattr(integrity, "check", check)
    (settings.state_dir / "w0.clean").unlink()  # a process crash: same boot, no check
    Archive.open(settings).close()
    assert checks == []
    (settings.state_dir / "w0.clean").unlink()  # an OS crash: another boot
    boot_file.write_text("00000000-0000-0000-0000-000000000000\n")
    archive = Archive.open(settings)
    assert checks == [1]
    ds = make_ct()
    location = archive.store.put(ds.SOPInstanceUID, blob(ds)).location
    archive.catalog.store_batch([indexed(archive.store, location)])  # type: ignore[arg-type]
    archive.catalog.sync()
    archive.store.close()  # the machine goes down again, the index damaged this time
    archive.catalog.close()
    _damage_page_holding(settings.index_dir, ds.SOPInstanceUID.encode())
    boot_file.write_text("00000000-0000-0000-0000-000000000001\n")
    with pytest.raises(CatalogError, match="pacs reindex"):
        Archive.open(settings)
