"""Requests that overlap a C-GET's sub-operation, back-pressure during a C-GET, and a C-CANCEL
that carries a data set: each answered whole, nothing left behind (found by a helper's hunt
with the project's own client, which sends what dcmtk and pynetdicom never do)."""

from __future__ import annotations

import os
import time

import pytest
from pydicom.dataset import Dataset

from pacs.dicom import uids
from pacs.net import (
    AssociateAccepted,
    CommandReceived,
    DatasetFragment,
    c_echo_rq,
    c_store_rq,
    dimse,
)
from pacs.net.dimse import Command
from tests.dicomgen import dataset_bytes, make_ct
from tests.integration.test_get_failures import get_client, store_study
from tests.integration.test_release import (
    CONTEXTS,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    get_requester,
    query,
    study_identifier,
)
from tests.netclient import CT_IMAGE_STORAGE, Client

pytestmark = pytest.mark.integration


def answer_store(client: Client, event: CommandReceived) -> None:
    command = event.command
    rsp = dimse.c_store_rsp(command.message_id or 0, str(command[dimse.AFFECTED_SOP_CLASS_UID]),
                            str(command[dimse.AFFECTED_SOP_INSTANCE_UID]), dimse.SUCCESS)
    client.sock.sendall(client.assoc.send_command(event.context_id, rsp, False))


def finish_dataset(client: Client) -> None:
    while True:
        fragment = client.wait_for(DatasetFragment)
        assert isinstance(fragment, DatasetFragment)
        if fragment.last:
            return


def messages_until_get_ends(client: Client) -> list[tuple[int, int | None, int | None]]:
    """(command field, message ID responded to, status) of each message, answering every
    C-STORE-RQ, until the C-GET's final response."""
    got = []
    while True:
        event = client.wait_for(CommandReceived)
        assert isinstance(event, CommandReceived)
        command = event.command
        field = command.get(dimse.COMMAND_FIELD)
        assert isinstance(field, int)
        got.append((field, command.message_id_being_responded_to, command.status))
        if event.has_dataset:
            finish_dataset(client)
        if field == dimse.C_STORE_RQ:
            answer_store(client, event)
        elif field == dimse.C_GET_RSP and command.status != dimse.PENDING:
            return got


def overlap(archive, second) -> tuple[Client, list[tuple[int, int | None, int | None]]]:
    """A C-GET of two 8 MiB instances; see ``overlap_on``."""
    study, _ = store_study(archive.port, 2, 2048)
    return overlap_on(archive, study, second)


def overlap_on(archive, study: str,
               second) -> tuple[Client, list[tuple[int, int | None, int | None]]]:
    """A C-GET of ``study`` to a peer that stops reading after the first C-STORE-RQ command;
    ``second(client)`` (encoded requests) is sent then, while that data set is half out; then
    the peer reads everything and answers the C-STORE-RQs."""
    client, first = get_client(archive.port, study, 1)  # sends the C-GET, pauses after 1 s
    client.sock.sendall(second(client))
    time.sleep(0.5)
    finish_dataset(client)
    answer_store(client, first)
    return client, messages_until_get_ends(client)


def test_echo_during_a_sub_operation_is_answered_after_it(archive) -> None:
    client, got = overlap(archive, lambda c: c.assoc.send_command(
        c.context_for(uids.VERIFICATION)[0], c_echo_rq(2), False))
    client.close()
    assert (dimse.C_ECHO_RSP, 2, dimse.SUCCESS) in got, got
    assert got[-1] == (dimse.C_GET_RSP, 1, dimse.SUCCESS), got
    assert "Traceback" not in archive.log() and "request failed" not in archive.log()


def test_find_during_a_sub_operation_is_answered_after_it(archive) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    client, got = overlap(archive, lambda c: query(
        c, STUDY_ROOT_FIND, dimse.C_FIND_RQ, 2, identifier))
    client.close()
    finds = [entry for entry in got if entry[0] == dimse.C_FIND_RSP]
    assert finds[-1] == (dimse.C_FIND_RSP, 2, dimse.SUCCESS), got
    assert [entry for entry in finds if entry[2] == dimse.PENDING], got
    assert "Traceback" not in archive.log() and "request failed" not in archive.log()


def test_refused_store_during_a_sub_operation_is_answered_after_it(archive_factory) -> None:
    """The refusal (max_dataset_size) is written from the read callback: it must wait for the
    half-sent data set too (it raised there and the connection dropped without an A-ABORT)."""
    archive = archive_factory("--acse-timeout", "2", "--idle-timeout", "10")
    study, _ = store_study(archive.port, 2, 2048)  # 8 MiB each, then a 1 MiB limit:
    archive.stop()
    archive.env["PACS_MAX_DATASET_SIZE"] = str(1 << 20)
    archive.start()

    def refused_store(client: Client) -> bytes:
        context_id, _ = client.context_for(CT_IMAGE_STORAGE)
        big = make_ct(rows=1024, columns=1024)  # 2 MiB
        return (client.assoc.send_command(
                    context_id, c_store_rq(2, CT_IMAGE_STORAGE, big.SOPInstanceUID), True)
                + client.assoc.send_dataset(context_id, dataset_bytes(big), last=True))

    client, got = overlap_on(archive, study, refused_store)
    client.close()
    assert (dimse.C_STORE_RSP, 2, 0xA700) in got, got
    assert got[-1] == (dimse.C_GET_RSP, 1, dimse.SUCCESS), got
    assert "Traceback" not in archive.log() and "Fatal error" not in archive.log()


def test_get_while_back_pressure_stops_reading(archive_factory) -> None:
    """With one request allowed in flight, the C-GET itself fills the worker's queue: the
    archive must still read the C-STORE-RSP it waits for (it waited 60 s for each)."""
    archive = archive_factory("--acse-timeout", "2", "--idle-timeout", "10",
                              env={"PACS_MAX_PENDING_STORES": "1", "PACS_WORKERS": "1"})
    study, _ = store_study(archive.port, 2, 64)
    with get_requester(archive.port) as client:
        client.sock.sendall(query(client, STUDY_ROOT_GET, dimse.C_GET_RQ, 7,
                                  study_identifier(study)))
        got = messages_until_get_ends(client)  # the client's 10 s timeout fails it otherwise
        client.release()
    assert got[-1][0] == dimse.C_GET_RSP and got[-1][2] == dimse.SUCCESS, got
    assert [entry[0] for entry in got].count(dimse.C_STORE_RQ) == 2


def test_cancel_carrying_a_data_set_leaves_no_spool_file(archive_factory) -> None:
    archive = archive_factory("--acse-timeout", "2", "--idle-timeout", "10",
                              env={"PACS_SPOOL_MEMORY_LIMIT": "0", "PACS_WORKERS": "1"})

    def open_files() -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in archive.pids())

    before = open_files()
    with Client(archive.port, contexts=CONTEXTS) as client:
        assert isinstance(client.associate(), AssociateAccepted)
        context_id, _ = client.context_for(STUDY_ROOT_FIND)
        for i in range(5):
            rq = Command({dimse.COMMAND_FIELD: dimse.C_CANCEL_RQ,
                          dimse.MESSAGE_ID_BEING_RESPONDED_TO: 100 + i})
            client.sock.sendall(client.assoc.send_command(context_id, rq, True)
                                + client.assoc.send_dataset(context_id, b"\0" * 4096,
                                                            last=True))
        assert client.echo() == dimse.SUCCESS
        client.release()
    assert not list(archive.data_dir.rglob("spool-*")), archive.log()[-2000:]
    assert open_files() <= before + 1  # a descriptor or so may come and go
