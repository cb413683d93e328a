"""Deletion unindexes, syncs the catalog, then removes the blobs: a power cut can never bring
back an index entry whose blob is gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.archive import Archive, open_store
from pacs.config import Settings
from pacs.deletion import delete_instances
from pacs.errors import CatalogError
from pacs.store.segments import SegmentStore
from tests.dicomgen import make_ct
from tests.unit.test_ingest_replace import store


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = Archive.open(Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28))
    yield opened
    opened.close()


def test_the_catalog_is_synced_before_any_blob_goes(
        archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = [store(archive, make_ct(instance_number=i)) for i in range(3)]
    events: list[str] = []
    real_sync, real_delete = archive.catalog.sync, archive.store.delete

    def sync() -> None:
        events.append("sync")
        real_sync()

    def delete(location: str, uid: str = "") -> None:
        events.append("delete")
        real_delete(location, uid)

    monkeypatch.setattr(archive.catalog, "sync", sync)
    monkeypatch.setattr(archive.store, "delete", delete)
    deleted, size = delete_instances(archive.catalog, archive.store,
                                     [s.sop_instance_uid for s in stored])
    assert deleted == 3 and size > 0
    assert events == ["sync", "delete", "delete", "delete"]
    assert all(archive.catalog.get_instance(s.sop_instance_uid) is None for s in stored)


def test_a_failed_sync_leaves_the_blobs(archive: Archive,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    stored = store(archive, make_ct())

    def no_sync() -> None:
        raise CatalogError("catalog sync failed: [Errno 5] Input/output error")

    monkeypatch.setattr(archive.catalog, "sync", no_sync)
    with pytest.raises(CatalogError):
        delete_instances(archive.catalog, archive.store, [stored.sop_instance_uid])
    assert archive.catalog.get_instance(stored.sop_instance_uid) is None  # unindexed
    assert archive.store.get(stored.location)  # an orphan blob, not a dangling entry


def _tool_store(settings: Settings) -> SegmentStore:
    store = open_store(settings, worker_id=-1)
    assert isinstance(store, SegmentStore)
    return store


def test_two_tools_at_once_keep_both_tombstones(tmp_path: Path) -> None:
    # E.g. `pacs retention` and `pacs compact` from cron: each deletes through a writer of its
    # own, so neither tombstone overwrites the other's.
    settings = Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28)
    worker = open_store(settings, worker_id=0)
    a = worker.put("1.2.3.A", [b"A" * 1000]).location
    b = worker.put("1.2.3.B", [b"B" * 1000]).location
    worker.close()
    first, second = _tool_store(settings), _tool_store(settings)
    assert first.writer_id != second.writer_id
    first.delete(a)
    second.delete(b)
    first.close()
    second.close()
    again = _tool_store(settings)
    try:
        assert again.writer_id == first.writer_id  # its lock went with the close
        assert {a, b} <= again.scan_all()[1]
        assert list(again.iter_records()) == []  # a reindex brings neither back
    finally:
        again.close()


def test_a_tool_opening_leaves_another_tools_tail_alone(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28)
    running = _tool_store(settings)
    segment = running.root / running.active_segment
    with open(segment, "ab") as fh:  # a record the running tool is still writing
        fh.write(b"\x01" * 100)
    size = segment.stat().st_size
    other = _tool_store(settings)
    try:
        assert segment.stat().st_size == size  # not cut as a torn tail
    finally:
        other.close()
        running.close()
