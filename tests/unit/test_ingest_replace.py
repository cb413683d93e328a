"""The replace policy when the replaced instance's blob cannot be deleted: the replacement is
made durable in the catalog before it is acknowledged (else, after a power cut, replay would
find the old entry's blob readable and keep it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.archive import Archive
from pacs.config import Settings
from pacs.errors import CatalogError, IngestError, StorageError
from pacs.ingest import OUT_OF_RESOURCES, StoredInstance
from tests.dicomgen import dataset_bytes, make_ct

EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = Archive.open(Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28,
                                   on_duplicate="replace"))
    yield opened
    opened.close()


def store(archive: Archive, ds) -> StoredInstance:
    async def run() -> StoredInstance:
        return await archive.ingest.store(
            dataset_bytes(ds), transfer_syntax_uid=EXPLICIT_LE, sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID, source_aet="MOD")

    return asyncio.run(run())


def test_an_undeletable_replaced_blob_makes_the_catalog_durable_first(
        archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_ct(patient_name="Before^Replace")
    old = store(archive, first)
    second = make_ct(sop_uid=first.SOPInstanceUID, patient_name="After^Replace")
    syncs: list[str] = []
    real_sync = archive.catalog.sync

    def sync() -> None:
        syncs.append("sync")
        real_sync()

    def no_delete(location: str, uid: str = "") -> None:
        raise StorageError(f"cannot write a tombstone for {location}: [Errno 28] No space")

    monkeypatch.setattr(archive.catalog, "sync", sync)
    with monkeypatch.context() as patch:
        patch.setattr(archive.store, "delete", no_delete)
        new = store(archive, second)
    assert new.outcome == "replaced" and syncs == ["sync"]
    record = archive.catalog.get_instance(first.SOPInstanceUID)
    assert record is not None and record.location == new.location != old.location
    assert record.attributes["PatientName"] == "After^Replace"
    # A replacement whose old blob goes as it should needs no catalog sync.
    third = make_ct(sop_uid=first.SOPInstanceUID, patient_name="Again^Replace")
    assert store(archive, third).outcome == "replaced" and syncs == ["sync"]


def test_a_replacement_that_cannot_be_made_durable_is_refused(
        archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_ct()
    store(archive, first)

    def no_delete(location: str, uid: str = "") -> None:
        raise StorageError("[Errno 5] Input/output error")

    def no_sync() -> None:
        raise CatalogError("catalog sync failed: [Errno 5] Input/output error")

    monkeypatch.setattr(archive.store, "delete", no_delete)
    monkeypatch.setattr(archive.catalog, "sync", no_sync)
    with pytest.raises(IngestError) as caught:
        store(archive, make_ct(sop_uid=first.SOPInstanceUID))
    assert caught.value.status == OUT_OF_RESOURCES
