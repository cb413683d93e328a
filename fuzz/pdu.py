"""PDU framer and acceptor association target (pacs.net).

The input's first byte picks how the rest reaches an acceptor :class:`Association`: in chunks
of 1 to 128 bytes or whole, through ``receive_data`` or ``get_buffer``/``buffer_updated`` (as
the server's BufferedProtocol does), then optionally the end of the connection and an ARTIM
timeout; and whether a valid A-ASSOCIATE-RQ goes first. The harness acts like the server: it
accepts an A-ASSOCIATE-RQ (every proposed context it can) or rejects it, answers commands and
release requests while it may, and copies data set fragments. pacs.net's contract (its
docstrings): peer protocol errors never raise, they become an A-ABORT and an ``Aborted``
event; so any exception is a crash. The bytes written must be well-formed PDUs, and once the
association is closed nothing more happens.
"""

from __future__ import annotations

from pacs.net import dimse
from pacs.net import pdu as P
from pacs.net.association import Association, Role
from pacs.net.events import (
    Aborted,
    AssociateRequested,
    CommandReceived,
    ConnectionClosed,
    DatasetFragment,
    ReleaseConfirmed,
    ReleaseRequested,
)
from pacs.net.negotiation import negotiate, propose

MAX_PDU = 16384
CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


class _Peer:
    """Collects what the acceptor writes, and checks it frames into whole PDUs."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def check(self) -> None:
        data, offset = bytes(self.written), 0
        while offset < len(data):
            if len(data) - offset < 6:
                raise AssertionError("a truncated PDU header was written")
            pdu_type, length = data[offset], int.from_bytes(data[offset + 2:offset + 6], "big")
            if pdu_type not in P.PDU_TYPES or offset + 6 + length > len(data):
                raise AssertionError(f"a malformed PDU was written at {offset}")
            if pdu_type != P.P_DATA_TF:
                P.decode(data[offset:offset + 6 + length])  # our own PDUs must decode
            offset += 6 + length


_EVENTS = (Aborted, AssociateRequested, CommandReceived, ConnectionClosed, DatasetFragment,
           ReleaseConfirmed, ReleaseRequested)


def _drain(assoc: Association, peer: _Peer, reject: bool) -> None:
    while True:
        event = assoc.next_event()
        if event is None:
            break
        if not isinstance(event, _EVENTS):
            raise AssertionError(f"unknown event {event!r}")
        if isinstance(event, AssociateRequested):
            if reject:
                peer.write(assoc.reject(P.REJECTED_PERMANENT, P.SOURCE_SERVICE_USER,
                                        P.RJ_NO_REASON_GIVEN))
            else:
                rq = event.pdu
                supported = {pc.abstract_syntax: pc.transfer_syntaxes
                             for pc in rq.presentation_contexts}
                peer.write(assoc.accept(negotiate(rq, supported, accept_scp_role=True,
                                                  max_pdu_length=MAX_PDU)))
        elif isinstance(event, CommandReceived):
            if assoc.is_established and not event.has_dataset:
                response = dimse.c_echo_rsp(event.command.message_id or 0)
                peer.write(assoc.send_command(event.context_id, response, False))
        elif isinstance(event, DatasetFragment):
            bytes(event.data)  # the view must be readable now
            if event.last and assoc.is_established:
                response = dimse.c_echo_rsp(1)
                peer.write(assoc.send_command(event.context_id, response, False))
        elif isinstance(event, ReleaseRequested) and assoc.release_response_due:
            peer.write(assoc.release_response())
    peer.write(assoc.data_to_send())


def check(data: bytes) -> None:
    """Feed ``data`` (after its mode byte) to an acceptor association; raises on a crash."""
    if not data:
        return
    mode, body = data[0], data[1:]
    step = (0, 1, 2, 3, 7, 16, 64, 128)[mode & 0x07]  # 0: the whole input at once
    zero_copy, end, timeout, reject = (bool(mode & bit) for bit in (0x08, 0x10, 0x20, 0x40))
    if mode & 0x80:  # after a valid A-ASSOCIATE-RQ: the mutations go to what follows it
        body = _RQ + body
    assoc = Association(Role.ACCEPTOR, max_pdu_length=MAX_PDU)
    peer = _Peer()
    pieces = [body[i:i + step] for i in range(0, len(body), step)] if step else [body]
    for piece in pieces:
        if not piece:
            continue
        if zero_copy:
            view = memoryview(piece)
            while view:
                if assoc.should_close:
                    view = view[len(view):]  # the server closes: nothing more is read
                    break
                free = assoc.get_buffer(len(view))
                count = min(len(free), len(view))
                free[:count] = view[:count]
                view = view[count:]
                assoc.buffer_updated(count)
                _drain(assoc, peer, reject)
        else:
            assoc.receive_data(piece)
            _drain(assoc, peer, reject)
    if end:
        assoc.receive_data(b"")
        _drain(assoc, peer, reject)
    if timeout and assoc.artim_running:
        assoc.timer_expired()
        _drain(assoc, peer, reject)
    peer.check()
    if assoc.should_close:
        closed_state = assoc.state
        assoc.receive_data(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        if assoc.next_event() is not None or assoc.state is not closed_state:
            raise AssertionError("a closed association reacted to input")


def _rq(roles: bool = False) -> bytes:
    roles_ = (P.RoleSelection(CT, True, True),) if roles else ()
    return propose("PACS", "FUZZ", [(VERIFICATION, SYNTAXES), (CT, SYNTAXES)],
                   roles=roles_, max_pdu_length=MAX_PDU).encode()


_RQ = _rq(True)


def _p_data(context_id: int, control: int, data: bytes) -> bytes:
    return P.encode_pdv_header(len(data), context_id, control) + data


def seeds() -> list[bytes]:
    """Mode byte + valid exchanges: echo, a store in fragments, release, abort."""
    echo = _p_data(1, 0x03, dimse.c_echo_rq(1).encode())
    store_cmd = dimse.Command(dimse.c_store_rq(2, CT, "1.2.3.4"))
    store_cmd[dimse.COMMAND_DATA_SET_TYPE] = dimse.DATA_SET_PRESENT
    dataset = b"\x08\x00\x18\x00\x08\x00\x00\x001.2.3.4\x00" * 4
    store = (_p_data(3, 0x01, store_cmd.encode()[:20]) + _p_data(3, 0x03, store_cmd.encode()[20:])
             + _p_data(3, 0x00, dataset[:24]) + _p_data(3, 0x02, dataset[24:]))
    release, abort = P.ReleaseRQ().encode(), P.Abort(0, 0).encode()
    streams = [
        _rq(),
        _rq() + echo + release,
        _rq(True) + store + echo + release,
        _rq() + abort,
        _rq() + release + echo,
        echo,
        P.AssociateRJ(1, 1, 1).encode(),
    ]
    out = [bytes([mode]) + s for s in streams for mode in (0x00, 0x13, 0x0C, 0x40)]
    return [*out, b"\x80" + echo + store + release, b"\x9b" + store + abort]
