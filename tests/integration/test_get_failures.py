"""C-GET when something breaks mid-send: a peer that stops reading and then drops the
connection, and a blob cut short while it is being sent. The C-GET ends, says so in the log,
and the archive goes on serving."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from pacs.net import AssociateAccepted, CommandReceived, dimse
from tests.dicomgen import dataset_bytes, make_ct
from tests.integration.archive_check import stored_instance
from tests.integration.test_release import (
    CONTEXTS,
    STUDY_ROOT_GET,
    get_requester,
    query,
    study_identifier,
)
from tests.netclient import Client

pytestmark = pytest.mark.integration


def store_study(port: int, count: int, rows: int) -> tuple[str, list[str]]:
    study = make_ct().StudyInstanceUID
    sop_uids = []
    with Client(port, contexts=CONTEXTS) as client:
        assert isinstance(client.associate(), AssociateAccepted)
        for i in range(count):
            ds = make_ct(patient_id="GETFAIL", study_uid=study, instance_number=i, rows=rows,
                         columns=rows)
            assert client.store(dataset_bytes(ds), ds.SOPInstanceUID).status == dimse.SUCCESS
            sop_uids.append(ds.SOPInstanceUID)
        client.release()
    return study, sop_uids


def wait_for_log(archive, text: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while text not in archive.log():
        assert time.monotonic() < deadline, archive.log()[-3000:]
        time.sleep(0.05)


def still_serving(archive) -> None:
    with Client(archive.port) as client:
        assert isinstance(client.associate(), AssociateAccepted)
        assert client.echo() == dimse.SUCCESS
        client.release()


def get_client(port: int, identifier_study: str,
               message_id: int) -> tuple[Client, CommandReceived]:
    """A C-GET requester that reads nothing until told: its small receive buffer and the
    archive's socket buffer fill up and the archive's C-GET pauses."""
    client = get_requester(port, receive_buffer=65536)
    client.sock.sendall(query(client, STUDY_ROOT_GET, dimse.C_GET_RQ, message_id,
                              study_identifier(identifier_study)))
    event = client.wait_for(CommandReceived)  # the first sub-operation's C-STORE-RQ
    assert isinstance(event, CommandReceived)
    assert event.command.get(dimse.COMMAND_FIELD) == dimse.C_STORE_RQ
    time.sleep(1.0)  # unread: the archive's transport fills up and pauses the C-GET
    return client, event


def test_peer_that_stops_reading_then_leaves(archive) -> None:
    """Three 8 MiB instances fill the socket buffers of a peer that reads nothing: the C-GET
    waits for it to read; when it resets the connection the C-GET ends (it waited forever)."""
    study, _ = store_study(archive.port, 3, 2048)
    client, _ = get_client(archive.port, study, 3)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset
    wait_for_log(archive, "C-GET stopped, 3 sub-operations not completed")
    still_serving(archive)


def test_peer_that_stops_reading_and_stays(archive) -> None:
    """Nothing read for `idle_timeout` (3 s here) while the C-GET waits to send: the
    association is aborted and the C-GET ends, instead of holding its slot forever."""
    study, _ = store_study(archive.port, 3, 2048)
    client, _ = get_client(archive.port, study, 5)
    try:
        wait_for_log(archive, "the peer read nothing for", seconds=20)
        wait_for_log(archive, "C-GET stopped, 3 sub-operations not completed")
    finally:
        client.close()
    still_serving(archive)


def test_blob_cut_short_while_being_sent_aborts(archive) -> None:
    """The blob is cut (its segment truncated) while its C-STORE-RQ waits for the peer to
    read: the part already sent can be neither completed nor followed, so the association is
    aborted, instead of a data set sent short or a protocol error on the way out."""
    study, (sop_uid,) = store_study(archive.port, 1, 4096)  # 32 MiB
    found = stored_instance(archive.data_dir, sop_uid)
    assert found is not None
    name, offset, _length = found[0].location.rsplit(":", 2)
    client, _ = get_client(archive.port, study, 4)
    with open(archive.data_dir / "blobs" / name, "r+b") as fh:
        fh.truncate(int(offset) + (16 << 20))  # half the blob left
    with pytest.raises(ConnectionError, match="Aborted"):
        while True:  # read on: the archive sends the first 16 MiB, then aborts
            client.wait_for(CommandReceived)
    client.close()
    wait_for_log(archive, "C-STORE sub-operation cut short")
    assert "C-GET stopped, 1 sub-operations not completed" in archive.log()
    assert "request failed" not in archive.log()  # no LocalProtocolError on the way out
    still_serving(archive)
