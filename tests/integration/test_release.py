"""An A-RELEASE-RQ right behind requests, in the same write (PS3.8 Sta8): every response,
pending ones included, goes out before the A-RELEASE-RP, and what was stored stays stored."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from pacs.dicom import uids
from pacs.net import AssociateAccepted, c_echo_rq, c_store_rq, dimse
from pacs.net.dimse import Command
from tests.dicomgen import dataset_bytes, make_ct
from tests.integration.archive_check import stored_instance
from tests.netclient import CT_IMAGE_STORAGE, Client

pytestmark = pytest.mark.integration

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CONTEXTS = (
    (uids.VERIFICATION, (uids.IMPLICIT_VR_LITTLE_ENDIAN,)),
    (CT_IMAGE_STORAGE, (uids.EXPLICIT_VR_LITTLE_ENDIAN,)),
    (STUDY_ROOT_FIND, (uids.EXPLICIT_VR_LITTLE_ENDIAN,)),
)


def fields_and_statuses(responses) -> list[tuple[int, int | None]]:
    return [(r.command.get(dimse.COMMAND_FIELD), r.command.status) for r in responses]


def test_stores_and_echo_answered_before_the_release(archive) -> None:
    datasets = [make_ct(instance_number=i) for i in range(3)]
    with Client(archive.port, contexts=CONTEXTS) as client:
        assert isinstance(client.associate(), AssociateAccepted)
        store_context, _ = client.context_for(CT_IMAGE_STORAGE)
        echo_context, _ = client.context_for(uids.VERIFICATION)
        requests = b""
        for message_id, ds in enumerate(datasets, start=1):
            requests += client.assoc.send_command(
                store_context, c_store_rq(message_id, CT_IMAGE_STORAGE, ds.SOPInstanceUID), True)
            requests += client.assoc.send_dataset(store_context, dataset_bytes(ds), last=True)
        requests += client.assoc.send_command(echo_context, c_echo_rq(4), False)
        responses = client.release_after(requests)
    assert sorted(fields_and_statuses(responses)) == sorted(
        [(dimse.C_STORE_RSP, dimse.SUCCESS)] * 3 + [(dimse.C_ECHO_RSP, dimse.SUCCESS)])
    assert sorted(r.command.message_id_being_responded_to for r in responses) == [1, 2, 3, 4]
    for ds in datasets:
        assert stored_instance(archive.data_dir, ds.SOPInstanceUID) is not None, archive.log()
    assert "association gone before the response" not in archive.log()


def test_find_matches_answered_before_the_release(archive) -> None:
    with Client(archive.port, contexts=CONTEXTS) as client:
        assert isinstance(client.associate(), AssociateAccepted)
        for i in range(3):
            ds = make_ct(patient_id=f"REL{i}")
            assert client.store(dataset_bytes(ds), ds.SOPInstanceUID).status == dimse.SUCCESS
        find_context, _ = client.context_for(STUDY_ROOT_FIND)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        identifier.PatientID = "REL*"
        rq = Command({
            dimse.AFFECTED_SOP_CLASS_UID: STUDY_ROOT_FIND, dimse.COMMAND_FIELD: dimse.C_FIND_RQ,
            dimse.MESSAGE_ID: 9, dimse.PRIORITY: dimse.PRIORITY_MEDIUM,
        })  # fmt: skip
        requests = (client.assoc.send_command(find_context, rq, True)
                    + client.assoc.send_dataset(find_context, dataset_bytes(identifier),
                                                last=True))
        responses = client.release_after(requests)
    assert fields_and_statuses(responses) == (
        [(dimse.C_FIND_RSP, dimse.PENDING)] * 3 + [(dimse.C_FIND_RSP, dimse.SUCCESS)])
    assert {r.command.message_id_being_responded_to for r in responses} == {9}
