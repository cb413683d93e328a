"""Deletion unindexes, syncs the catalog, then removes the blobs: a power cut can never bring
back an index entry whose blob is gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.archive import Archive
from pacs.config import Settings
from pacs.deletion import delete_instances
from pacs.errors import CatalogError
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

    def delete(location: str) -> None:
        events.append("delete")
        real_delete(location)

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
