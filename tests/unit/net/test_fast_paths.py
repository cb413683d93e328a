"""The C-STORE fast paths agree with the general code they shortcut.

Command.decode of the usual C-STORE-RQ layout, Command.encode of a C-STORE-RSP, a P-DATA-TF of
one PDU, and a command set decoded straight from the receive buffer: each is compared with the
general path (``Command._decode``, ``Command._encode``, ``_p_data_parts``) on many inputs,
including inputs the fast path must hand back to the general one.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacs.errors import LocalProtocolError, RemoteProtocolError
from pacs.net import CommandReceived, DatasetFragment
from pacs.net import dimse as D
from pacs.net.pdu import encode_pdv_header
from tests.unit.net.helpers import associate, drain

uids = st.text("0123456789.", max_size=64)
padded = st.text("0123456789. \0", max_size=64)  # padding within and at the end of a value
us = st.integers(0, 0xFFFF)
CT = "1.2.840.10008.5.1.4.1.1.2"


def _outcome(call, data):
    """What decoding ``data`` gives: the command with its key order, or the error's type."""
    try:
        command = call(data)
    except (RemoteProtocolError, LocalProtocolError) as exc:
        return type(exc)
    return command, list(command)


# -- C-STORE-RQ decode -------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(us, padded, padded, us, us)
def test_store_rq_fast_decode_equals_general(message_id, sop_class, instance, priority, kind):
    command = D.c_store_rq(message_id, sop_class, instance, priority)
    command[D.COMMAND_DATA_SET_TYPE] = kind
    encoded = command.encode()
    assert D._decode_store_rq(encoded) is not None  # the fast path took it
    general = _outcome(D.Command._decode, encoded)
    if sop_class == sop_class.rstrip("\0 ") and instance == instance.rstrip("\0 "):
        assert general == (command, list(command))
    for data in (encoded, bytearray(encoded), memoryview(encoded)):
        assert _outcome(D.Command.decode, data) == general


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_store_rq_damaged_decodes_as_general(data):
    """Any byte changed, or the end cut or extended: the same command or the same error."""
    encoded = bytearray(D.c_store_rq(7, CT, data.draw(uids), 0).encode())
    change = data.draw(st.sampled_from(("byte", "cut", "extend")))
    if change == "byte":
        encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
    elif change == "cut":
        del encoded[data.draw(st.integers(0, len(encoded) - 1)):]
    else:
        encoded += data.draw(st.binary(min_size=1, max_size=20))
    raw = bytes(encoded)
    assert _outcome(D.Command.decode, raw) == _outcome(D.Command._decode, raw)


def test_store_rq_fast_decode_declines_other_layouts():
    with_originator = D.c_store_rq(1, CT, "1.2.3", 0, "MOVESCU", 9).encode()
    non_ascii = D.c_store_rq(1, CT, "1.2.3", 0).encode().replace(b"1.2.3", b"1.\xff.3")
    for encoded in (with_originator, D.c_echo_rq(3).encode(), non_ascii):
        assert D._decode_store_rq(encoded) is None
    assert D.Command.decode(with_originator)[D.MOVE_ORIGINATOR_MESSAGE_ID] == 9
    with pytest.raises(RemoteProtocolError, match="not ASCII"):
        D.Command.decode(non_ascii)


# -- C-STORE-RSP encode ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(us, uids, uids, us)
def test_store_rsp_fast_encode_equals_general(message_id, sop_class, instance, status):
    command = D.c_store_rsp(message_id, sop_class, instance, status)
    assert D._encode_store_rsp(command) is not None  # the fast path took it
    assert command.encode() == command._encode()
    assert D.Command.decode(command.encode()) == command


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        (D.MESSAGE_ID_BEING_RESPONDED_TO, 0x10000),
        (D.MESSAGE_ID_BEING_RESPONDED_TO, -1),
        (D.STATUS, "0"),
        (D.AFFECTED_SOP_INSTANCE_UID, "1.2.\u00e9"),
        (D.AFFECTED_SOP_CLASS_UID, "1.\u00e9"),
        (D.COMMAND_FIELD, 32769.0),
    ],
)
def test_store_rsp_bad_values_raise_as_general(tag, value):
    command = D.c_store_rsp(1, CT, "1.2.3", 0)
    command[tag] = value
    assert D._encode_store_rsp(command) is None
    with pytest.raises(LocalProtocolError):
        command._encode()
    with pytest.raises(LocalProtocolError):
        command.encode()


@pytest.mark.parametrize(
    "change",
    [
        {D.MESSAGE_ID_BEING_RESPONDED_TO: True},  # a bool is encoded as the general path does
        {D.AFFECTED_SOP_INSTANCE_UID: b"1.2.3\x00"},  # raw bytes
        {D.ERROR_COMMENT: "seven elements"},
    ],
)
def test_store_rsp_unusual_values_encode_as_general(change):
    command = D.c_store_rsp(1, CT, "1.2.3", 0)
    command.update(change)
    assert command.encode() == command._encode()


def test_store_rsp_prefix_cache_is_per_sop_class():
    first = D.c_store_rsp(1, CT, "1.2.3", 0).encode()
    other = D.c_store_rsp(1, "1.2.840.10008.5.1.4.1.1.4", "1.2.3", 0).encode()
    assert first != other
    assert D.Command.decode(other)[D.AFFECTED_SOP_CLASS_UID] == "1.2.840.10008.5.1.4.1.1.4"
    assert D.c_store_rsp(1, CT, "1.2.3", 0).encode() == first


# -- P-DATA-TF of one PDU ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(1, 220), st.booleans(), st.sampled_from((0, 1)),
       st.sampled_from((bytes, bytearray)))
def test_single_pdu_equals_parts(size, peer_max, last, kind, container):
    _, acc = associate()
    acc.peer_max_pdu_length = peer_max
    data = container(bytes(range(256))[:size])
    fast = acc._p_data(3, data, kind, last)
    general = b"".join(bytes(part) for part in acc._p_data_parts(3, data, kind, last))
    assert fast == general
    assert acc.is_established


def test_single_pdu_checks_the_context():
    _, acc = associate()
    with pytest.raises(LocalProtocolError, match="not accepted"):
        acc._p_data(9, b"\x00\x00", 1, True)


def test_send_command_does_not_change_the_callers_command():
    _, acc = associate()
    request = D.c_echo_rq(4)
    del request[D.COMMAND_DATA_SET_TYPE]
    encoded = acc.send_command(1, request, False)
    assert D.COMMAND_DATA_SET_TYPE not in request  # copied before the type was set
    assert encoded[12:] == D.Command({**request, D.COMMAND_DATA_SET_TYPE: D.NO_DATA_SET}).encode()


# -- a command set decoded from the receive buffer ----------------------------------------------


def _feed(assoc, data):
    view = assoc.get_buffer()
    view[: len(data)] = data
    assoc.buffer_updated(len(data))


def test_command_in_one_pdv_outlives_the_receive_buffer():
    _, acc = associate(acceptor_max=4096)
    command = D.c_store_rq(5, CT, "1.2.3.4", 0)
    encoded = command.encode()
    _feed(acc, encode_pdv_header(len(encoded), 3, 0x03) + encoded
          + encode_pdv_header(4, 3, 0x02) + b"abcd")
    received, fragment = drain(acc)
    assert isinstance(received, CommandReceived) and isinstance(fragment, DatasetFragment)
    _feed(acc, b"\x04" * 64)  # overwrites the buffer the command was decoded from
    assert received.command == command


@pytest.mark.parametrize("cut", [1, 8, 60, 100])
def test_command_in_fragments_equals_one_pdv(cut):
    _, acc = associate(acceptor_max=4096)
    encoded = D.c_store_rq(5, CT, "1.2.3.4", 0).encode()
    _feed(acc, encode_pdv_header(cut, 3, 0x01) + encoded[:cut])
    assert drain(acc) == []
    assert acc.mid_message
    _feed(acc, encode_pdv_header(len(encoded) - cut, 3, 0x03) + encoded[cut:])
    (received,) = drain(acc)
    assert received.command == D.Command._decode(encoded)


def test_mid_message():
    _, acc = associate(acceptor_max=4096)
    assert not acc.mid_message
    encoded = D.c_store_rq(5, CT, "1.2.3.4", 0).encode()
    pdu = encode_pdv_header(len(encoded), 3, 0x03) + encoded
    _feed(acc, pdu[:10])  # part of a PDU
    assert drain(acc) == [] and acc.mid_message
    _feed(acc, pdu[10:])  # the command: its data set is due
    assert len(drain(acc)) == 1 and acc.mid_message
    _feed(acc, encode_pdv_header(4, 3, 0x00) + b"abcd")  # not the last fragment
    assert len(drain(acc)) == 1 and acc.mid_message
    _feed(acc, encode_pdv_header(2, 3, 0x02) + b"ef")
    assert len(drain(acc)) == 1 and not acc.mid_message
