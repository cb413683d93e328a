"""Back-to-back requestor and acceptor: association, DIMSE, release, abort, errors."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacs.errors import LocalProtocolError, RemoteProtocolError
from pacs.net import (
    MAX_SEND_PDU_LENGTH,
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    AssociateRequested,
    Association,
    CommandReceived,
    ConnectionClosed,
    DatasetFragment,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
    State,
    c_echo_rq,
    c_echo_rsp,
    c_store_rq,
    c_store_rsp,
    negotiate,
)
from pacs.net import pdu as P
from pacs.net.dimse import SUCCESS
from tests.unit.net.helpers import CT_IMAGE_STORAGE, SUPPORTED, associate, drain, make_rq
from tests.vectors import pdu_vectors as V


def test_associate_sets_negotiated_values():
    req = Association(Role.REQUESTOR)
    acc = Association(Role.ACCEPTOR, max_pdu_length=4096)
    assert acc.state is State.Sta2 and acc.artim_running
    assert req.state is State.Sta1 and not req.artim_running
    acc.receive_data(req.send_associate_rq(make_rq(16384)))
    assert req.state is State.Sta5
    (requested,) = drain(acc)
    assert isinstance(requested, AssociateRequested)
    assert acc.state is State.Sta3 and not acc.artim_running
    ac = negotiate(requested.pdu, SUPPORTED, max_pdu_length=4096)
    req.receive_data(acc.accept(ac))
    (accepted,) = drain(req)
    assert isinstance(accepted, AssociateAccepted)
    for assoc in (req, acc):
        assert assoc.state is State.Sta6 and assoc.is_established
        assert assoc.accepted_contexts == {
            1: ("1.2.840.10008.1.1", "1.2.840.10008.1.2"),
            3: (CT_IMAGE_STORAGE, "1.2.840.10008.1.2"),  # the requestor's first choice
        }
        assert (assoc.calling_ae_title, assoc.called_ae_title) == ("MODALITY", "ARCHIVE")
    assert acc.peer_max_pdu_length == 16384 and req.peer_max_pdu_length == 4096
    assert acc.peer_ae_title == "MODALITY" and req.peer_ae_title == "ARCHIVE"
    assert acc.peer_implementation_class_uid == "1.2.3.4"
    assert req.peer_implementation_version_name == "PACS_ARCHIVE_01"


def test_echo_then_release():
    req, acc = associate()
    acc.receive_data(req.send_command(1, c_echo_rq(7), has_dataset=False))
    (received,) = drain(acc)
    assert isinstance(received, CommandReceived)
    assert received.context_id == 1 and not received.has_dataset
    assert received.command.message_id == 7
    req.receive_data(acc.send_command(1, c_echo_rsp(7), has_dataset=False))
    (response,) = drain(req)
    assert response.command.status == SUCCESS
    assert response.command.message_id_being_responded_to == 7

    acc.receive_data(req.release_request())
    assert req.state is State.Sta7
    assert drain(acc) == [ReleaseRequested(collision=False)]
    assert acc.release_response_due
    req.receive_data(acc.release_response())
    assert acc.state is State.Sta13 and acc.artim_running and not acc.should_close
    assert drain(req) == [ReleaseConfirmed(), ConnectionClosed()]
    assert req.should_close and req.state is State.Sta1
    acc.receive_data(b"")  # the requestor closed the connection: AR-5
    assert drain(acc) == [ConnectionClosed()]
    assert acc.is_closed and not acc.artim_running
    acc.receive_data(b"")  # connection_lost after close is harmless
    assert drain(acc) == []


def test_response_after_the_peer_asked_to_release():
    """Sta8 (AR-7): a response still goes out after the A-RELEASE-RQ, before the RP."""
    req, acc = associate()
    assert acc.may_send_p_data and req.may_send_p_data
    acc.receive_data(req.send_command(1, c_echo_rq(7), has_dataset=False)
                     + req.release_request())
    assert [type(event) for event in drain(acc)] == [CommandReceived, ReleaseRequested]
    assert acc.state is State.Sta8 and not acc.is_established and acc.may_send_p_data
    assert not req.may_send_p_data  # Sta7: the requester only receives
    req.receive_data(acc.send_command(1, c_echo_rsp(7), has_dataset=False))
    (response,) = drain(req)
    assert response.command.message_id_being_responded_to == 7
    req.receive_data(acc.release_response())
    assert not acc.may_send_p_data
    assert drain(req) == [ReleaseConfirmed(), ConnectionClosed()]


def _store(req: Association, acc: Association, dataset: bytes) -> list:
    wire = req.send_command(3, c_store_rq(9, CT_IMAGE_STORAGE, "1.2.3.9"), has_dataset=True)
    wire += req.send_dataset(3, dataset[:1000], last=False)
    wire += req.send_dataset(3, memoryview(dataset)[1000:], last=True)
    acc.receive_data(wire)
    return wire, drain(acc)


def test_store_dataset_fragmented_to_peer_max_pdu():
    req, acc = associate(acceptor_max=1024)
    dataset = bytes(range(256)) * 40  # 10240 bytes
    wire, events = _store(req, acc, dataset)
    command, *fragments = events
    assert isinstance(command, CommandReceived) and command.has_dataset
    assert command.command.affected_sop_instance_uid == "1.2.3.9"
    assert all(isinstance(f, DatasetFragment) and f.context_id == 3 for f in fragments)
    assert len(fragments) >= 11
    assert [f.last for f in fragments] == [False] * (len(fragments) - 1) + [True]
    assert b"".join(bytes(f.data) for f in fragments) == dataset
    # Every P-DATA-TF respects the acceptor's maximum length (PDU length field <= 1024).
    assert max(_pdu_lengths(wire)) == 1024
    rsp = acc.send_command(3, c_store_rsp(9, CT_IMAGE_STORAGE, "1.2.3.9", SUCCESS), False)
    req.receive_data(rsp)
    assert drain(req)[0].command.status == SUCCESS


def test_buffered_protocol_path_streams_views_without_copy():
    req, acc = associate(acceptor_max=1024)
    wire = req.send_command(3, c_store_rq(1, CT_IMAGE_STORAGE, "1.2"), has_dataset=True)
    wire += req.send_dataset(3, b"\x55" * 5000)
    received, chunks = [], []
    for start in range(0, len(wire), 700):
        piece = wire[start : start + 700]
        buffer = acc.get_buffer(-1)
        buffer[: len(piece)] = piece
        acc.buffer_updated(len(piece))
        for event in drain(acc):
            received.append(event)
            if isinstance(event, DatasetFragment):
                assert isinstance(event.data, memoryview)
                chunks.append(bytes(event.data))  # consumed before the next get_buffer
    assert b"".join(chunks) == b"\x55" * 5000
    assert received[-1].last


def test_large_receive_data_is_parsed_lazily():
    req, acc = associate(acceptor_max=1024)
    dataset = bytes(range(251)) * 1000  # 251000 bytes: several receive buffers full
    wire = req.send_command(3, c_store_rq(1, CT_IMAGE_STORAGE, "1.2"), has_dataset=True)
    wire += req.send_dataset(3, dataset)
    assert len(wire) > 3 * (64 * 1024)
    acc.receive_data(wire)
    chunks = []
    while (event := acc.next_event()) is not None:
        if isinstance(event, DatasetFragment):
            chunks.append(bytes(event.data))  # consumed before the next next_event()
    assert b"".join(chunks) == dataset


def test_queued_fragments_survive_more_input():
    req, acc = associate(acceptor_max=1024)
    acc.receive_data(req.send_command(3, c_store_rq(1, CT_IMAGE_STORAGE, "1.2"), True))
    assert isinstance(acc.next_event(), CommandReceived)
    acc.receive_data(V.P_DATA_TF_DATASET)  # two PDVs in one PDU: 'ABCD', 'EF'
    first = acc.next_event()
    acc.receive_data(b"\xff" * 100)  # overwrites the buffer; the queued 'EF' was copied
    second = acc.next_event()
    assert bytes(second.data) == b"EF" and second.last
    assert first.context_id == 3


def _pdu_lengths(wire: bytes) -> list[int]:
    lengths, offset = [], 0
    while offset < len(wire):
        _, _, length = struct.unpack_from(">BBI", wire, offset)
        lengths.append(length)
        offset += 6 + length
    return lengths


@pytest.mark.parametrize("announced", [0, 0xFFFFFFFF])
def test_peer_max_length_zero_and_huge_are_capped(announced):
    _, acc = associate()
    acc.peer_max_pdu_length = announced
    acc.send_command(3, c_store_rq(1, CT_IMAGE_STORAGE, "1.2"), True)
    lengths = _pdu_lengths(acc.send_dataset(3, bytes(3 * MAX_SEND_PDU_LENGTH)))
    assert max(lengths) == MAX_SEND_PDU_LENGTH and len(lengths) == 4


def test_announced_max_length_of_0xffffffff_is_capped_when_sending():
    req = Association(Role.REQUESTOR)
    acc = Association(Role.ACCEPTOR)
    rq = make_rq(max_length=16384)
    wire = bytearray(req.send_associate_rq(rq))
    # Patch the requestor's maximum length sub-item to 0xFFFFFFFF on the wire.
    index = wire.index(bytes.fromhex("5100000400004000"))
    wire[index + 4 : index + 8] = b"\xff\xff\xff\xff"
    acc.receive_data(bytes(wire))
    (requested,) = drain(acc)
    acc.accept(negotiate(requested.pdu, SUPPORTED))
    assert acc.peer_max_pdu_length == 0xFFFFFFFF
    acc.send_command(3, c_store_rq(1, CT_IMAGE_STORAGE, "1.2"), True)
    out = acc.send_dataset(3, bytes(MAX_SEND_PDU_LENGTH + 10))
    (first_length,) = struct.unpack_from(">I", out, 2)
    assert first_length == MAX_SEND_PDU_LENGTH


def test_reject():
    req = Association(Role.REQUESTOR)
    acc = Association(Role.ACCEPTOR)
    acc.receive_data(req.send_associate_rq(make_rq()))
    drain(acc)
    rj = acc.reject(
        P.REJECTED_PERMANENT, P.SOURCE_SERVICE_USER, P.RJ_CALLED_AE_TITLE_NOT_RECOGNIZED
    )
    assert acc.state is State.Sta13 and acc.artim_running
    req.receive_data(rj)
    rejected, closed = drain(req)
    assert isinstance(rejected, AssociateRejected) and rejected.pdu.reason == 7
    assert isinstance(closed, ConnectionClosed) and req.should_close
    acc.timer_expired()  # the requestor did not close in time: AA-2
    assert drain(acc) == [ConnectionClosed()] and acc.should_close


def test_unsupported_protocol_version_is_rejected_by_the_provider():
    acc = Association(Role.ACCEPTOR)
    rq = make_rq()
    wire = bytearray(rq.encode())
    wire[6:8] = b"\x00\x02"  # protocol version without bit 0
    acc.receive_data(bytes(wire))
    assert drain(acc) == []
    assert acc.state is State.Sta13
    assert acc.data_to_send() == P.AssociateRJ(1, 2, 2).encode()


def test_abort_by_user_and_indication_to_peer():
    req, acc = associate()
    data = req.abort()
    assert req.state is State.Sta13 and req.artim_running
    acc.receive_data(data)
    assert drain(acc) == [Aborted(0, 0), ConnectionClosed()]
    assert acc.should_close
    req.receive_data(b"")
    assert drain(req) == [ConnectionClosed()]


def test_release_collision():
    req, acc = associate()
    rq_from_requestor = req.release_request()
    rq_from_acceptor = acc.release_request()
    req.receive_data(rq_from_acceptor)
    acc.receive_data(rq_from_requestor)
    assert drain(req) == [ReleaseRequested(collision=True)]
    assert drain(acc) == [ReleaseRequested(collision=True)]
    assert req.state is State.Sta9 and acc.state is State.Sta10
    assert req.release_response_due and not acc.release_response_due
    with pytest.raises(LocalProtocolError):
        acc.release_response()  # the acceptor must wait for the A-RELEASE-RP (Sta10)
    acc.receive_data(req.release_response())  # AR-9 then AR-10
    assert drain(acc) == [ReleaseConfirmed()]
    assert req.state is State.Sta11 and acc.state is State.Sta12
    assert acc.release_response_due
    req.receive_data(acc.release_response())  # AR-4 then AR-3
    assert drain(req) == [ReleaseConfirmed(), ConnectionClosed()]
    assert acc.state is State.Sta13
    acc.receive_data(b"")
    assert drain(acc) == [ConnectionClosed()]


def test_artim_expiry_while_awaiting_associate_rq():
    acc = Association(Role.ACCEPTOR)
    acc.timer_expired()
    assert drain(acc) == [ConnectionClosed()] and acc.should_close
    with pytest.raises(LocalProtocolError):
        acc.timer_expired()


def test_timer_expired_outside_artim_states_is_a_local_error():
    req, _ = associate()
    with pytest.raises(LocalProtocolError):
        req.timer_expired()
    assert req.state is State.Sta6


def test_transport_closed_during_association_is_a_provider_abort():
    _req, acc = associate()
    acc.receive_data(b"")
    events = drain(acc)
    assert isinstance(events[0], Aborted) and events[0].source == 2
    assert events[-1] == ConnectionClosed()


def test_local_misuse_raises_local_protocol_error():
    req, acc = associate()
    with pytest.raises(LocalProtocolError):
        req.send_command(7, c_echo_rq(1), False)  # context never proposed
    with pytest.raises(LocalProtocolError):
        req.send_dataset(3, b"x")  # no command announced a data set
    with pytest.raises(LocalProtocolError):
        acc.accept(negotiate(make_rq(), SUPPORTED))  # not in Sta3
    with pytest.raises(LocalProtocolError):
        req.release_response()
    with pytest.raises(LocalProtocolError):
        Association(Role.ACCEPTOR).send_associate_rq(make_rq())
    with pytest.raises(LocalProtocolError):
        Association(Role.REQUESTOR, max_pdu_length=1000).send_associate_rq(make_rq(10**6))


def _assert_provider_abort(acc: Association, events: list) -> Aborted:
    aborted = [e for e in events if isinstance(e, Aborted)]
    assert len(aborted) == 1 and aborted[0].local and aborted[0].source == 2
    assert acc.state is State.Sta13 and acc.artim_running
    sent = acc.data_to_send()
    assert P.decode(sent) == P.Abort(2, aborted[0].reason)
    return aborted[0]


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return P.PDataTF((P.PDV(context_id, control, data),)).encode()


@pytest.mark.parametrize(
    ("name", "wire", "reason"),
    [
        ("unknown PDU type", b"\x09\x00\x00\x00\x00\x04abcd", P.ABORT_UNRECOGNIZED_PDU),
        ("4 GB length", b"\x04\x00\xff\xff\xff\xff", P.ABORT_INVALID_PDU_PARAMETER_VALUE),
        ("release RP in Sta6", V.A_RELEASE_RP, P.ABORT_UNEXPECTED_PDU),
        ("second RQ", V.A_ASSOCIATE_RQ, P.ABORT_UNEXPECTED_PDU),
        ("unaccepted context", _pdv(5, 3, bytes(10)), P.ABORT_INVALID_PDU_PARAMETER_VALUE),
        ("dataset before command", _pdv(3, 2, b"xx"), P.ABORT_INVALID_PDU_PARAMETER_VALUE),
        ("reserved control bits", _pdv(1, 0x13, bytes(8)), P.ABORT_INVALID_PDU_PARAMETER_VALUE),
        ("malformed command", _pdv(1, 3, b"\x00\x00\x00\x01" + bytes(4)), 6),
        ("PDV longer than PDU", bytes.fromhex("0400 0000000a 00000010 0103 00000000"), 6),
        ("PDV length < 2", bytes.fromhex("0400 0000000a 00000001 0103 00000000"), 6),
        ("empty P-DATA", bytes.fromhex("0400 00000000"), 6),
        ("release RQ with 5 bytes", bytes.fromhex("0500 00000005 0000000000"), 6),
    ],
)
def test_bad_input_in_sta6_aborts(name, wire, reason):
    _, acc = associate()
    acc.receive_data(wire)
    aborted = _assert_provider_abort(acc, drain(acc))
    assert aborted.reason == reason, name


def test_command_fragment_bound():
    _, acc = associate(acceptor_max=200_000)
    acc.receive_data(_pdv(1, 1, bytes(70_000)))
    _assert_provider_abort(acc, drain(acc))


def test_command_while_dataset_due_aborts():
    req, acc = associate()
    wire = req.send_command(3, c_store_rq(1, CT_IMAGE_STORAGE, "1.2"), True)
    acc.receive_data(wire + _pdv(1, 3, c_echo_rq(2).encode()))
    events = drain(acc)
    assert isinstance(events[0], CommandReceived)
    _assert_provider_abort(acc, events)


def test_garbage_before_association_gets_abort_and_close_on_timer():
    acc = Association(Role.ACCEPTOR)
    acc.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    # AA-1 in Sta2: A-ABORT sent; the local Aborted event lets the transport log why.
    assert drain(acc) == [Aborted(2, 1, True, "unknown PDU type 0x47")]
    assert P.decode(acc.data_to_send()).source == 2
    assert acc.state is State.Sta13 and acc.artim_running
    acc.receive_data(b"more garbage")  # ignored: the stream is out of step
    acc.timer_expired()
    assert drain(acc) == [ConnectionClosed()]


def test_peer_abort_while_in_sta13_closes():
    _, acc = associate()
    acc.receive_data(V.A_RELEASE_RP)  # AA-8
    drain(acc)
    acc.receive_data(V.A_ABORT)  # Evt16 in Sta13: AA-2
    assert drain(acc) == [ConnectionClosed()]
    assert acc.should_close


def test_received_pdu_in_sta1_requestor_is_a_remote_error():
    req = Association(Role.REQUESTOR)
    req.receive_data(V.A_ASSOCIATE_AC)
    with pytest.raises(RemoteProtocolError):
        req.next_event()  # Table 9-10 has no cell for a PDU in Sta1


_VALID_RQ = make_rq().encode()


def _serve(acc: Association) -> None:
    """A minimal acceptor loop: handle each event as it comes."""
    while (event := acc.next_event()) is not None:
        if isinstance(event, AssociateRequested):
            acc.accept(negotiate(event.pdu, SUPPORTED))
        elif isinstance(event, CommandReceived) and not event.has_dataset:
            # One PDU can hold a command and then an invalid PDV: the abort that follows is
            # already done, so a real SCP (like pacs.server) answers only while established.
            if acc.is_established:
                acc.send_command(event.context_id, c_echo_rsp(1), False)
        elif isinstance(event, ReleaseRequested) and acc.release_response_due:
            acc.release_response()
        elif isinstance(event, Aborted):
            assert event.source in (0, 1, 2)
    acc.data_to_send()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from([b"", _VALID_RQ]),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 400), max_size=5),
)
def test_fuzz_acceptor_only_yields_events(prefix, data, cuts):
    """Arbitrary bytes, whole or split, never raise: they give events or a provider abort."""
    acc = Association(Role.ACCEPTOR)
    stream = prefix + data
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for start, stop in itertools.pairwise(bounds):
        acc.receive_data(stream[start:stop])
        _serve(acc)
    acc.receive_data(b"")
    _serve(acc)
    assert acc.should_close and acc.state is State.Sta1


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_stream(data):
    """Mutations of a valid RQ + store stream: only events, never another exception."""
    req, _ = associate()
    wire = bytearray(
        _VALID_RQ
        + req.send_command(3, c_store_rq(1, CT_IMAGE_STORAGE, "1.2"), True)
        + req.send_dataset(3, bytes(range(200)))
        + V.A_RELEASE_RQ
    )
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(wire) - 1))
        wire[index] = data.draw(st.integers(0, 255))
    acc = Association(Role.ACCEPTOR)
    step = data.draw(st.integers(1, 200))
    for start in range(0, len(wire), step):
        acc.receive_data(bytes(wire[start : start + step]))
        _serve(acc)


def test_send_dataset_parts_are_views_for_writelines():
    req, acc = associate(acceptor_max=1024)
    dataset = bytes(range(256)) * 10
    wire = req.send_command(3, c_store_rq(1, CT_IMAGE_STORAGE, "1.2"), True)
    parts = req.send_dataset_parts(3, dataset)
    assert any(isinstance(p, memoryview) and p.obj is dataset for p in parts)
    acc.receive_data(wire + b"".join(parts))
    chunks = [bytes(e.data) for e in drain_consuming(acc) if isinstance(e, DatasetFragment)]
    assert b"".join(chunks) == dataset


def drain_consuming(acc):
    events = []
    while (event := acc.next_event()) is not None:
        if isinstance(event, DatasetFragment):
            event = DatasetFragment(event.context_id, memoryview(bytes(event.data)), event.last)
        events.append(event)
    return events


def test_command_then_invalid_pdv_in_one_pdu_leaves_no_association():
    """Found by the fuzz test: one P-DATA-TF with a whole command PDV and then a PDV whose length
    overruns the PDU yields CommandReceived and then the abort; answering the command after
    that is a local error, so an SCP must check ``is_established`` first."""
    req, acc = associate()
    command = req.send_command(1, c_echo_rq(5), False)
    # Reuse the PDV of the encoded command and append a PDV claiming 1000 bytes it lacks.
    pdv = command[6:]
    bad = struct.pack(">IB", 1000, 1) + b"\x03" + b"x" * 4
    body = pdv + bad
    acc.receive_data(struct.pack(">BBI", 0x04, 0, len(body)) + body)
    events = drain(acc)
    assert isinstance(events[0], CommandReceived)
    assert any(isinstance(e, Aborted) and e.local for e in events)
    assert not acc.is_established
    with pytest.raises(LocalProtocolError):
        acc.send_command(1, c_echo_rsp(5), False)


@pytest.mark.parametrize(("size", "pdus"), [(200, 1), (910, 1), (911, 2), (5000, 6)])
def test_send_message_packs_command_and_data_set_in_one_pdu_when_they_fit(size, pdus):
    req, acc = associate(acceptor_max=1024)
    command = c_store_rq(9, CT_IMAGE_STORAGE, "1.2.3.9")
    encoded = command.encode()
    assert len(encoded) == 102  # 910 bytes of data set fill the PDU to the byte, 911 do not
    dataset = bytes(range(256)) * (size // 256) + bytes(size % 256)
    wire = req.send_message(3, encoded, dataset)
    assert len(_pdu_lengths(wire)) == pdus and max(_pdu_lengths(wire)) <= 1024
    acc.receive_data(wire)
    received, *fragments = drain(acc)
    assert isinstance(received, CommandReceived) and received.has_dataset
    assert received.command.affected_sop_instance_uid == "1.2.3.9"
    assert fragments[-1].last and b"".join(bytes(f.data) for f in fragments) == dataset
    # The association is ready for the next message at once.
    assert drain(acc) == [] and req.send_command(1, c_echo_rq(10), False)


def test_send_messages_batch_equals_messages_one_by_one():
    req_a, acc = associate(acceptor_max=1024)
    req_b, _ = associate(acceptor_max=1024)
    encoded = c_store_rq(9, CT_IMAGE_STORAGE, "1.2.3.9").encode()
    small = [bytes([n]) * (10 + n) for n in range(5)]
    assert req_a.send_messages(3, encoded, small) == b"".join(
        req_b.send_message(3, encoded, data) for data in small)
    acc.receive_data(req_a.send_messages(3, encoded, [b"x" * 2000, b"yy"]))  # too big: split
    events = drain(acc)
    commands = [e for e in events if isinstance(e, CommandReceived)]
    data = b"".join(bytes(e.data) for e in events if isinstance(e, DatasetFragment))
    assert len(commands) == 2 and data == b"x" * 2000 + b"yy"
    assert req_a.send_messages(3, encoded, []) == b""
