"""Limits: the association cap answers with A-ASSOCIATE-RJ; large data sets spool to disk."""

from __future__ import annotations

import pytest

from pacs.net import AssociateAccepted, AssociateRejected
from tests.dicomgen import dataset_bytes, make_ct
from tests.integration.archive_check import read_blob, same_dataset, stored_instance
from tests.netclient import Client

pytestmark = pytest.mark.integration


def test_association_cap_rejects_transiently(archive_factory) -> None:
    archive = archive_factory("--max-associations", "2")
    first, second = Client(archive.port), Client(archive.port)
    try:
        assert isinstance(first.associate(), AssociateAccepted)
        assert isinstance(second.associate(), AssociateAccepted)
        with Client(archive.port) as third:
            result = third.associate()
            assert isinstance(result, AssociateRejected)
            # PS3.8 9.3.4: rejected-transient, service-provider (presentation), local limit.
            assert (result.pdu.result, result.pdu.source, result.pdu.reason) == (2, 3, 2)
        first.release()
        # A slot is free again.
        with Client(archive.port) as fourth:
            assert isinstance(fourth.associate(), AssociateAccepted)
            assert fourth.echo() == 0
            fourth.release()
    finally:
        first.close()
        second.close()
    assert "rejected, 2 associations already open" in archive.log()


def test_large_data_set_spools_to_disk_and_is_stored_whole(archive_factory) -> None:
    archive = archive_factory(env={"PACS_SPOOL_MEMORY_LIMIT": "65536",
                                            "PACS_LOG_LEVEL": "DEBUG"})
    ds = make_ct(rows=1024, columns=1024)  # 2 MiB of pixels, 32 spool-limits' worth
    with Client(archive.port, max_pdu=32768) as client:
        client.associate()
        assert client.store(dataset_bytes(ds), ds.SOPInstanceUID).status == 0
        client.release()
    found = stored_instance(archive.data_dir, ds.SOPInstanceUID)
    assert found is not None
    record, blob = found
    assert record.size == len(blob) > 2 * 1024 * 1024
    assert same_dataset(read_blob(blob), ds)
    assert "data set over 65536 bytes: spooling to" in archive.log()
    assert not [p for p in (archive.data_dir / "spool").rglob("*") if p.is_file()]
