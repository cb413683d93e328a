"""An A-RELEASE-RQ right behind requests, in the same write (PS3.8 Sta8): every response,
pending ones included, goes out before the A-RELEASE-RP, and what was stored stays stored; a
C-GET, whose sub-operations the releasing peer can no longer answer, ends with them failed."""

from __future__ import annotations

import socket

import pytest
from pydicom.dataset import Dataset

from pacs.dicom import uids
from pacs.net import (
    AssociateAccepted,
    CommandReceived,
    RoleSelection,
    c_echo_rq,
    c_store_rq,
    dimse,
)
from pacs.net.dimse import Command
from pacs.net.negotiation import propose
from tests.dicomgen import dataset_bytes, make_ct
from tests.integration.archive_check import stored_instance
from tests.netclient import CT_IMAGE_STORAGE, Client

pytestmark = pytest.mark.integration

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CONTEXTS = (
    (uids.VERIFICATION, (uids.IMPLICIT_VR_LITTLE_ENDIAN,)),
    (CT_IMAGE_STORAGE, (uids.EXPLICIT_VR_LITTLE_ENDIAN,)),
    (STUDY_ROOT_FIND, (uids.EXPLICIT_VR_LITTLE_ENDIAN,)),
    (STUDY_ROOT_GET, (uids.EXPLICIT_VR_LITTLE_ENDIAN,)),
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


def query(client: Client, sop_class_uid: str, command_field: int, message_id: int,
          identifier: Dataset) -> bytes:
    """A C-FIND-RQ or C-GET-RQ with its identifier, encoded, not sent."""
    context_id, _ = client.context_for(sop_class_uid)
    rq = Command({
        dimse.AFFECTED_SOP_CLASS_UID: sop_class_uid, dimse.COMMAND_FIELD: command_field,
        dimse.MESSAGE_ID: message_id, dimse.PRIORITY: dimse.PRIORITY_MEDIUM,
    })  # fmt: skip
    return (client.assoc.send_command(context_id, rq, True)
            + client.assoc.send_dataset(context_id, dataset_bytes(identifier), last=True))


def test_find_matches_answered_before_the_release(archive) -> None:
    with Client(archive.port, contexts=CONTEXTS) as client:
        assert isinstance(client.associate(), AssociateAccepted)
        for i in range(3):
            ds = make_ct(patient_id=f"REL{i}")
            assert client.store(dataset_bytes(ds), ds.SOPInstanceUID).status == dimse.SUCCESS
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        identifier.PatientID = "REL*"
        responses = client.release_after(
            query(client, STUDY_ROOT_FIND, dimse.C_FIND_RQ, 9, identifier))
    assert fields_and_statuses(responses) == (
        [(dimse.C_FIND_RSP, dimse.PENDING)] * 3 + [(dimse.C_FIND_RSP, dimse.SUCCESS)])
    assert {r.command.message_id_being_responded_to for r in responses} == {9}


def stored_study(port: int, count: int) -> str:
    study = make_ct().StudyInstanceUID
    with Client(port, contexts=CONTEXTS) as client:
        assert isinstance(client.associate(), AssociateAccepted)
        for i in range(count):
            ds = make_ct(patient_id="GETREL", study_uid=study, instance_number=i)
            assert client.store(dataset_bytes(ds), ds.SOPInstanceUID).status == dimse.SUCCESS
        client.release()
    return study


def get_requester(port: int, receive_buffer: int | None = None) -> Client:
    """An associated client for C-GET: our SCP role for CT storage (PS3.4 C.4.3.1);
    ``receive_buffer`` sets its socket's SO_RCVBUF (small: the archive's sends pause)."""
    client = Client(port, contexts=CONTEXTS)
    client.rq = propose("PACS", "TESTSCU", CONTEXTS,
                        roles=[RoleSelection(CT_IMAGE_STORAGE, False, True)])
    if receive_buffer is not None:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    assert isinstance(client.associate(), AssociateAccepted)
    return client


def study_identifier(study: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    return identifier


def assert_get_failed(responses, archive, count: int) -> None:
    # Our C-STORE-RQs, if any went out before the release arrived, are not responses.
    responses = [r for r in responses if r.command.get(dimse.COMMAND_FIELD) != dimse.C_STORE_RQ]
    assert fields_and_statuses(responses) == [(dimse.C_GET_RSP, 0xA702)]
    assert responses[0].has_dataset  # the Failed SOP Instance UID List
    final = responses[0].command
    assert final.get(dimse.NUMBER_OF_FAILED_SUBOPERATIONS) == count
    assert final.get(dimse.NUMBER_OF_COMPLETED_SUBOPERATIONS) == 0
    assert f"C-GET stopped, {count} sub-operations not completed" in archive.log()


def test_get_ends_with_its_sub_operations_failed(archive) -> None:
    study = stored_study(archive.port, 2)
    with get_requester(archive.port) as client:
        responses = client.release_after(
            query(client, STUDY_ROOT_GET, dimse.C_GET_RQ, 5, study_identifier(study)))
    # The release arrives with the C-GET (one read, in practice): no sub-operation can start.
    assert_get_failed(responses, archive, 2)


def test_release_during_a_sub_operation_ends_the_get(archive) -> None:
    """The release comes while our C-STORE-RQ awaits its response, which a requester that
    asked to release cannot send: the C-GET ends at once, not after the sub-operation's
    timeout (60 s; the client here waits 10 s at most)."""
    study = stored_study(archive.port, 2)
    with get_requester(archive.port) as client:
        client.sock.sendall(
            query(client, STUDY_ROOT_GET, dimse.C_GET_RQ, 5, study_identifier(study)))
        sub_store = client.wait_for(CommandReceived)
        assert isinstance(sub_store, CommandReceived)
        assert sub_store.command.get(dimse.COMMAND_FIELD) == dimse.C_STORE_RQ
        responses = client.release_after(b"")
    assert_get_failed(responses, archive, 2)
