"""DIMSE command sets: golden bytes, pydicom as an independent reader, padding, errors."""

from __future__ import annotations

from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_dataset

from pacs.errors import LocalProtocolError, RemoteProtocolError
from pacs.net import dimse as D
from tests.vectors import pdu_vectors as V


def _pydicom(data: bytes):
    return read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)


def test_c_echo_rq_golden_bytes():
    assert D.c_echo_rq(7).encode() == V.C_ECHO_RQ_COMMAND
    command = D.Command.decode(V.C_ECHO_RQ_COMMAND)
    assert command == D.c_echo_rq(7)
    assert command.command_field == D.C_ECHO_RQ and not command.has_dataset


def test_c_store_rq_read_by_pydicom():
    command = D.c_store_rq(
        3, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", D.PRIORITY_HIGH, "MOVESCU", 17
    )
    encoded = command.encode()
    assert len(encoded) % 2 == 0
    ds = _pydicom(encoded)
    assert ds.CommandGroupLength == len(encoded) - 12
    assert ds.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.AffectedSOPInstanceUID == "1.2.3.45"
    assert ds.CommandField == 0x0001 and ds.MessageID == 3 and ds.Priority == 1
    assert ds.CommandDataSetType != 0x0101
    assert ds.MoveOriginatorApplicationEntityTitle == "MOVESCU"
    assert ds.MoveOriginatorMessageID == 17
    assert D.Command.decode(encoded) == command


def test_c_store_rsp_padding_and_error_comment():
    command = D.c_store_rsp(3, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", 0xA700, "Out of resources")
    encoded = command.encode()
    assert b"1.2.3\x00" in encoded  # UI padded with NUL to even length
    ds = _pydicom(encoded)
    assert ds.Status == 0xA700 and ds.ErrorComment == "Out of resources"
    assert ds.MessageIDBeingRespondedTo == 3
    decoded = D.Command.decode(encoded)
    assert decoded.affected_sop_instance_uid == "1.2.3"  # padding stripped
    assert decoded.status == 0xA700 and decoded[D.ERROR_COMMENT] == "Out of resources"
    odd = D.c_store_rsp(1, "1.2", "1.2", 0xC000, "odd").encode()
    assert b"odd " in odd  # text padded with a space
    assert len(D.c_store_rsp(1, "1", "1", 0xC000, "x" * 100)[D.ERROR_COMMENT]) == 64


def test_pydicom_written_command_decodes():
    from pydicom.dataset import Dataset

    from tests.dicomgen import dataset_bytes

    ds = Dataset()
    ds.CommandGroupLength = 0  # value ignored on decode
    ds.AffectedSOPClassUID = "1.2.840.10008.1.1"
    ds.CommandField = 0x8030
    ds.MessageIDBeingRespondedTo = 5
    ds.CommandDataSetType = 0x0101
    ds.Status = 0
    ds.OffendingElement = [0x00100010, 0x00100020]
    command = D.Command.decode(dataset_bytes(ds, implicit=True))
    assert command.command_field == D.C_ECHO_RSP
    assert command[D.OFFENDING_ELEMENT] == (0x00100010, 0x00100020)
    assert command.message_id_being_responded_to == 5 and command.status == 0


def test_command_field_constants():
    assert (D.C_STORE_RQ, D.C_STORE_RSP, D.C_ECHO_RQ, D.C_ECHO_RSP) == (1, 0x8001, 0x30, 0x8030)
    assert (D.C_FIND_RQ, D.C_GET_RQ, D.C_MOVE_RQ, D.C_CANCEL_RQ) == (0x20, 0x10, 0x21, 0x0FFF)
    assert D.N_ACTION_RSP == 0x8130 and D.NO_DATA_SET == 0x0101


def test_unknown_elements_round_trip_raw():
    command = D.c_echo_rq(1)
    command[0x00000999] = b"\x01\x02"
    decoded = D.Command.decode(command.encode())
    assert decoded[0x00000999] == b"\x01\x02"


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("00000001 02000000"),  # CommandField without its value
        bytes.fromhex("00000001 0200 00 30 00"),  # truncated header
        bytes.fromhex("08001000 02000000 3000"),  # element outside group 0000
        bytes.fromhex("00000001 03000000 300000"),  # US of 3 bytes
        bytes.fromhex("00000001 02000000 3000 00000001 02000000 3000"),  # repeated element
        bytes.fromhex("00001001 02000000 0700"),  # no CommandField
        bytes.fromhex("00000200 02000000 fffe 00000001 02000000 3000"),  # non-ASCII UID
    ],
)
def test_malformed_commands_raise_remote_protocol_error(data):
    with pytest.raises(RemoteProtocolError):
        D.Command.decode(data)


def test_bad_values_raise_local_protocol_error():
    with pytest.raises(LocalProtocolError):
        D.Command({D.COMMAND_FIELD: 0x10000}).encode()
    with pytest.raises(LocalProtocolError):
        D.Command({D.COMMAND_FIELD: "x"}).encode()
    with pytest.raises(LocalProtocolError):
        D.Command({0x00080016: "1.2"}).encode()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data):
    try:
        D.Command.decode(data)
    except RemoteProtocolError:
        pass
