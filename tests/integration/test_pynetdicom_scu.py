"""pynetdicom as the SCU: echo, stores in every native syntax, refusals with their statuses."""

from __future__ import annotations

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.dicomgen import make_ct
from tests.integration.archive_check import (
    open_blob_store,
    read_blob,
    same_dataset,
    stored_instance,
)

pytestmark = pytest.mark.integration

SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian]


@pytest.fixture
def scu_ae() -> AE:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    for syntax in SYNTAXES:  # one context per syntax, so each can be chosen
        ae.add_requested_context(CTImageStorage, [syntax])
    return ae


def with_syntax(ds, syntax: str):
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    return ds


def test_echo_and_store_every_native_syntax(archive, scu_ae: AE) -> None:
    assoc = scu_ae.associate("127.0.0.1", archive.port, ae_title="PACS")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts
                    if cx.abstract_syntax == CTImageStorage}
        assert accepted == set(SYNTAXES)
        for syntax in SYNTAXES:
            ds = with_syntax(make_ct(), syntax)
            rsp = assoc.send_c_store(ds)
            assert rsp.Status == 0, syntax
            found = stored_instance(archive.data_dir, ds.SOPInstanceUID)
            assert found is not None
            record, blob = found
            assert record.transfer_syntax_uid == syntax
            assert record.source_aet == "PYNETDICOM"
            stored = read_blob(blob)
            assert stored.file_meta.TransferSyntaxUID == syntax
            assert same_dataset(stored, make_ct(sop_uid=ds.SOPInstanceUID,
                                                study_uid=ds.StudyInstanceUID,
                                                series_uid=ds.SeriesInstanceUID))
    finally:
        assoc.release()


def test_replace_policy_keeps_the_latest(archive_factory, scu_ae: AE) -> None:
    archive = archive_factory("--on-duplicate", "replace")
    assoc = scu_ae.associate("127.0.0.1", archive.port, ae_title="PACS")
    try:
        first = with_syntax(make_ct(), ExplicitVRLittleEndian)
        assert assoc.send_c_store(first).Status == 0
        second = with_syntax(make_ct(sop_uid=first.SOPInstanceUID, patient_name="New^Name"),
                             ExplicitVRLittleEndian)
        assert assoc.send_c_store(second).Status == 0
    finally:
        assoc.release()
    record, _ = stored_instance(archive.data_dir, first.SOPInstanceUID)
    assert record.attributes["PatientName"] == "New^Name"
    store = open_blob_store(archive.data_dir)
    try:
        assert list(store.locations()) == [record.location]  # the replaced blob was deleted
    finally:
        store.close()
