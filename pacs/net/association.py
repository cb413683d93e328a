"""A sans-IO DICOM association for both roles (PS3.8 Sections 7 and 9, PS3.7 Annex E).

Bytes go in, events come out, bytes to write are returned; no sockets, clocks or tasks (the
design of python-hyper/h11). The state machine is :mod:`pacs.net.fsm` (PS3.8 Table 9-10).

Input
    ``get_buffer()`` + ``buffer_updated(n)`` (asyncio ``BufferedProtocol``, zero copy) or
    ``receive_data(data)``; ``receive_data(b"")`` means the transport closed (Evt17).
    ``timer_expired()`` when the ARTIM timer fires (Evt18); run that timer while
    :attr:`Association.artim_running` is True.
Output
    ``next_event()`` returns the next :class:`Event` or None. Methods that the user calls
    (``send_associate_rq``, ``accept``, ``send_command``, ...) return the bytes to write.
    Bytes caused by *received* input (an A-ABORT when the peer broke the protocol, an
    A-ASSOCIATE-RJ for an unsupported protocol version) queue in ``data_to_send()``: write them
    after each input. Once :attr:`should_close` is True, close the transport.

Input is parsed lazily: ``next_event()`` parses the next PDU only when no event is queued, so
each event is handled while the state still matches it. After ``buffer_updated(n)``, call
``next_event()`` until it returns None (unparsed PDUs hold buffer space).

Lifetime rule: ``DatasetFragment.data`` is a view into the receive buffer, valid until the next
call of ``get_buffer()``, ``receive_data()`` or ``next_event()``: consume (write or copy) it
before asking for more. Events still queued when new input arrives are copied first.

Peer protocol errors never raise: they become an A-ABORT (service-provider source) in
``data_to_send()``, an :class:`Aborted` event with ``local=True``, and Sta13 (PS3.8 AA-8).
For a received PDU in Sta2, AA-1 is applied with the service-provider source as well.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from enum import Enum

from pacs.errors import LocalProtocolError, RemoteProtocolError
from pacs.net import pdu as P
from pacs.net.dimse import COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT, NO_DATA_SET, Command
from pacs.net.events import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    AssociateRequested,
    CommandReceived,
    ConnectionClosed,
    DatasetFragment,
    Event,
    ReleaseConfirmed,
    ReleaseRequested,
)
from pacs.net.framing import DEFAULT_MAX_PDU_LENGTH, PDUFramer
from pacs.net.fsm import Action, State, StateMachine, artim_running
from pacs.net.fsm import Event as Evt

#: Largest P-DATA-TF we build, whatever the peer announces (0 = unlimited, or 0xFFFFFFFF).
MAX_SEND_PDU_LENGTH = 1024 * 1024
#: Bound on a command set reassembled from its fragments.
MAX_COMMAND_LENGTH = 64 * 1024

_PDV = struct.Struct(">IBB")
_MESSAGE_HEADER = struct.Struct(">BBIIBB")  # P-DATA-TF header + the first PDV item header


__all__ = [
    "MAX_COMMAND_LENGTH", "MAX_SEND_PDU_LENGTH", "Aborted", "AssociateAccepted",
    "AssociateRejected", "AssociateRequested", "Association", "CommandReceived",
    "ConnectionClosed", "DatasetFragment", "Event", "ReleaseConfirmed", "ReleaseRequested", "Role",
    "TRANSPORT_CLOSED",
]  # fmt: skip

TRANSPORT_CLOSED = "transport connection closed"  # the error of an A-ABORT made by AA-4


class Role(Enum):
    REQUESTOR = "association-requestor"
    ACCEPTOR = "association-acceptor"


_PDU_EVENTS = {
    P.A_ASSOCIATE_RQ: Evt.Evt6,
    P.A_ASSOCIATE_AC: Evt.Evt3,
    P.A_ASSOCIATE_RJ: Evt.Evt4,
    P.P_DATA_TF: Evt.Evt10,
    P.A_RELEASE_RQ: Evt.Evt12,
    P.A_RELEASE_RP: Evt.Evt13,
    P.A_ABORT: Evt.Evt16,
}
_CLOSING = frozenset({Action.AE_4, Action.AR_3, Action.AR_5, Action.AA_2, Action.AA_3,
                      Action.AA_4, Action.AA_5})  # fmt: skip


class Association:
    """One association over one transport connection, as requestor or acceptor.

    An acceptor starts in Sta2 (the connection is open, ARTIM runs); a requestor in Sta1 until
    :meth:`send_associate_rq`, which is called once the connection is open.
    ``max_pdu_length`` is the maximum length we announce (and size the receive buffer for).
    """

    def __init__(
        self,
        role: Role,
        *,
        max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
        max_send_pdu_length: int = MAX_SEND_PDU_LENGTH,
    ) -> None:
        if not 0 < max_pdu_length <= 0xFFFFFFFF - 6:
            raise LocalProtocolError(f"max_pdu_length {max_pdu_length} out of range")
        self.role = role
        self.max_pdu_length = max_pdu_length
        self.max_send_pdu_length = max_send_pdu_length
        self._fsm = StateMachine()
        self._framer = PDUFramer(max_pdu_length)
        self._events: deque[Event] = deque()
        self._outbox: list[bytes] = []
        self._pending: deque[bytes] = deque()  # received bytes not yet in the buffer
        self._broken_stream = False
        self._eof = False
        self._closed = False
        # Negotiated values, set when the association is established.
        self.associate_rq: P.AssociateRQ | None = None
        self.associate_ac: P.AssociateAC | None = None
        self.accepted_contexts: dict[int, tuple[str, str]] = {}
        self.peer_max_pdu_length = 0
        # DIMSE receive state: command fragments, the context a data set is due on.
        self._command_buffer = bytearray()
        self._command_context: int | None = None
        self._dataset_context: int | None = None
        self._send_dataset_context: int | None = None
        if role is Role.ACCEPTOR:
            self._fsm.fire(Evt.Evt5)  # AE-5: connection accepted, start ARTIM

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._fsm.state

    @property
    def artim_running(self) -> bool:
        """Run the ARTIM timer while True; call :meth:`timer_expired` when it fires."""
        return artim_running(self._fsm.state)

    @property
    def should_close(self) -> bool:
        """The state machine closed the association: close the transport connection."""
        return self._closed

    is_closed = should_close

    @property
    def is_established(self) -> bool:
        return self._fsm.state is State.Sta6

    @property
    def may_send_p_data(self) -> bool:
        """P-DATA may go out: Sta6, or Sta8 (the peer asked to release; responses to its
        requests still go out before our A-RELEASE-RP, PS3.8 Table 9-10 AR-7)."""
        return self._fsm.state in (State.Sta6, State.Sta8)

    @property
    def sending_dataset(self) -> bool:
        """A message of ours announced a data set whose last fragment has not been sent:
        nothing else may be sent on the association before it."""
        return self._send_dataset_context is not None

    @property
    def mid_message(self) -> bool:
        """Part of a PDU, of a command set or of a data set was received and the rest is due
        (the peer is still sending); False between messages."""
        return bool(self._framer.buffered or self._pending or self._command_context is not None
                    or self._dataset_context is not None)

    @property
    def release_response_due(self) -> bool:
        """A release request awaits our :meth:`release_response` (Sta8, Sta9, Sta12)."""
        return self._fsm.state in (State.Sta8, State.Sta9, State.Sta12)

    @property
    def calling_ae_title(self) -> str | None:
        return self.associate_rq.calling_ae_title if self.associate_rq else None

    @property
    def called_ae_title(self) -> str | None:
        return self.associate_rq.called_ae_title if self.associate_rq else None

    @property
    def peer_ae_title(self) -> str | None:
        """The other side's AE title: the calling AE for an acceptor, the called AE else."""
        if self.role is Role.ACCEPTOR:
            return self.calling_ae_title
        return self.called_ae_title

    def _peer_user_information(self) -> P.UserInformation | None:
        pdu = self.associate_rq if self.role is Role.ACCEPTOR else self.associate_ac
        return pdu.user_information if pdu else None

    @property
    def peer_implementation_class_uid(self) -> str | None:
        user = self._peer_user_information()
        return user.implementation_class_uid if user else None

    @property
    def peer_implementation_version_name(self) -> str | None:
        user = self._peer_user_information()
        return user.implementation_version_name if user else None

    # -- input ---------------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event, or None when more input is needed.

        Input is parsed lazily, one PDU at a time when the queue is empty, so each event is
        handled while the state still matches it (as in h11).
        """
        events = self._events
        while not events:
            if not self._step():
                return None
        return events.popleft()

    def data_to_send(self) -> bytes:
        """Bytes that received input made necessary (A-ABORT, A-ASSOCIATE-RJ); empties the box."""
        if not self._outbox:
            return b""
        data = b"".join(self._outbox)
        self._outbox.clear()
        return data

    def _preserve_queued_views(self) -> None:
        if self._events and any(type(e) is DatasetFragment for e in self._events):
            self._events = deque(
                DatasetFragment(e.context_id, memoryview(bytes(e.data)), e.last)
                if type(e) is DatasetFragment
                else e
                for e in self._events
            )

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable view to receive into (asyncio ``BufferedProtocol.get_buffer``).

        Drain :meth:`next_event` after each :meth:`buffer_updated`: unparsed PDUs hold space.
        """
        if self._pending:
            raise LocalProtocolError("get_buffer() mixed with receive_data()")
        self._preserve_queued_views()
        if self._broken_stream or self._closed:
            self._framer.reset()
        return self._framer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were received into the last :meth:`get_buffer` view."""
        self._framer.buffer_updated(nbytes)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Receive bytes (copied into the receive buffer as room allows; the rest waits);
        ``b""`` means the transport closed (Evt17, handled after the buffered PDUs)."""
        if self._closed or self._eof:
            return
        if not data:
            self._eof = True
            return
        self._preserve_queued_views()
        self._pending.append(data if isinstance(data, bytes) else bytes(data))
        self._refill()

    def _refill(self) -> None:
        pending = self._pending
        while pending:
            chunk = pending[0]
            count = self._framer.feed(chunk)
            if count == len(chunk):
                pending.popleft()
            else:
                pending[0] = chunk[count:]
                return

    def _step(self) -> bool:
        """Process one PDU, more pending bytes, or the end of input; False if nothing to do."""
        if self._closed:
            return False
        if not self._broken_stream:
            try:
                item = self._framer.next_pdu()
            except RemoteProtocolError as exc:  # out of step with the stream: stop reading it
                self._broken_stream = True
                self._pending.clear()
                self._protocol_error(exc)
                return True
            if item is not None:
                try:
                    self._on_pdu(*item)
                except RemoteProtocolError as exc:
                    self._protocol_error(exc)
                return True
            if self._pending:
                self._refill()
                return True
        if self._eof:
            if self._fsm.state is State.Sta1:  # a requestor that never sent its RQ
                self._close()
            else:
                self._fire(Evt.Evt17)
            return True
        return False

    def timer_expired(self) -> None:
        """The ARTIM timer fired (Evt18); only valid while :attr:`artim_running`."""
        self._fire(Evt.Evt18)

    # -- output (local primitives) -----------------------------------------------------------

    def send_associate_rq(self, rq: P.AssociateRQ) -> bytes:
        """A-ASSOCIATE request on an open connection (Evt1 then Evt2: AE-1, AE-2)."""
        if self.role is not Role.REQUESTOR:
            raise LocalProtocolError("only the association-requestor sends A-ASSOCIATE-RQ")
        self._check_announced(rq.user_information)
        self._fsm.fire(Evt.Evt1)
        self._fsm.fire(Evt.Evt2)
        self.associate_rq = rq
        return rq.encode()

    def accept(self, ac: P.AssociateAC) -> bytes:
        """A-ASSOCIATE response (accept): AE-7, Sta6."""
        self._check_announced(ac.user_information)
        self._fsm.fire(Evt.Evt7)
        self._established(ac)
        return ac.encode()

    def reject(self, result: int, source: int, reason: int) -> bytes:
        """A-ASSOCIATE response (reject): AE-8, Sta13 with ARTIM running."""
        self._fsm.fire(Evt.Evt8)
        return P.AssociateRJ(result, source, reason).encode()

    def send_command(self, context_id: int, command: Command, has_dataset: bool) -> bytes:
        """P-DATA request carrying a command set (its CommandDataSetType set from
        ``has_dataset``); the data set follows with :meth:`send_dataset`."""
        if self._send_dataset_context is not None:
            raise LocalProtocolError("the previous message's data set is not complete")
        data_set_type = DATA_SET_PRESENT if has_dataset else NO_DATA_SET
        if command.get(COMMAND_DATA_SET_TYPE) != data_set_type:  # the caller's stays unchanged
            command = Command(command)
            command[COMMAND_DATA_SET_TYPE] = data_set_type
        data = self._p_data(context_id, command.encode(), 0x01, True)
        if has_dataset:
            self._send_dataset_context = context_id
        return data

    def send_message(self, context_id: int, command: bytes, dataset: bytes) -> bytes:
        """A message whose command set is already encoded (its CommandDataSetType announcing a
        data set) with its whole data set: one P-DATA-TF holding both PDVs when they fit in one
        PDU (a C-FIND match: one PDU, one write), else as send_command + send_dataset."""
        if self._send_dataset_context is not None:
            raise LocalProtocolError("the previous message's data set is not complete")
        limit = self.max_send_pdu_length
        if 0 < self.peer_max_pdu_length < limit:
            limit = self.peer_max_pdu_length
        items = len(command) + len(dataset) + 12  # two PDV items: 4 length + 2 header bytes
        if items > limit:
            data = self._p_data(context_id, command, 0x01, True)
            self._send_dataset_context = context_id
            return data + self.send_dataset(context_id, dataset)
        if context_id not in self.accepted_contexts:
            raise LocalProtocolError(f"presentation context {context_id} was not accepted")
        self._fsm.fire(Evt.Evt9)  # DT-1
        return b"".join((
            _MESSAGE_HEADER.pack(P.P_DATA_TF, 0, items, len(command) + 2, context_id, 0x03),
            command, _PDV.pack(len(dataset) + 2, context_id, 0x02), dataset))

    def send_messages(self, context_id: int, command: bytes, datasets: Sequence[bytes]) -> bytes:
        """:meth:`send_message` for several data sets sharing one encoded command (C-FIND
        matches): the checks and the state machine's DT-1 run once for the whole batch."""
        if self._send_dataset_context is not None:
            raise LocalProtocolError("the previous message's data set is not complete")
        if context_id not in self.accepted_contexts:
            raise LocalProtocolError(f"presentation context {context_id} was not accepted")
        limit = self.max_send_pdu_length
        if 0 < self.peer_max_pdu_length < limit:
            limit = self.peer_max_pdu_length
        room = limit - len(command) - 12
        if any(len(data) > room for data in datasets):
            return b"".join([self.send_message(context_id, command, data) for data in datasets])
        if datasets:
            self._fsm.fire(Evt.Evt9)  # DT-1: Sta6 to Sta6, the same for every PDU of the batch
        head = _MESSAGE_HEADER.pack
        pdv = _PDV.pack
        cmd_length, items = len(command) + 2, len(command) + 12
        parts: list[bytes] = []
        for data in datasets:
            parts += (head(P.P_DATA_TF, 0, items + len(data), cmd_length, context_id, 0x03),
                      command, pdv(len(data) + 2, context_id, 0x02), data)
        return b"".join(parts)

    def send_dataset(
        self, context_id: int, data: bytes | bytearray | memoryview, last: bool = True
    ) -> bytes:
        """P-DATA request(s) carrying (part of) a data set, fragmented to the peer's maximum
        length (capped at ``max_send_pdu_length``); ``last`` marks the data set's end."""
        if self._send_dataset_context != context_id:
            raise LocalProtocolError("data set sent without its command on this context")
        out = self._p_data(context_id, data, 0x00, last)
        if last:
            self._send_dataset_context = None
        return out

    def send_dataset_parts(
        self, context_id: int, data: bytes | bytearray | memoryview, last: bool = True
    ) -> list[bytes | memoryview]:
        """Like :meth:`send_dataset` without the copy: PDU headers and views of ``data`` to pass
        to ``transport.writelines()``; ``data`` must stay unchanged until written."""
        if self._send_dataset_context != context_id:
            raise LocalProtocolError("data set sent without its command on this context")
        parts = self._p_data_parts(context_id, data, 0x00, last)
        if last:
            self._send_dataset_context = None
        return parts

    def release_request(self) -> bytes:
        """A-RELEASE request: AR-1, Sta7."""
        self._fsm.fire(Evt.Evt11)
        return P.ReleaseRQ().encode()

    def release_response(self) -> bytes:
        """A-RELEASE response: AR-4 (Sta8/Sta12 to Sta13) or AR-9 (Sta9 to Sta11)."""
        self._fsm.fire(Evt.Evt14)
        return P.ReleaseRP().encode()

    def abort(
        self, source: int = P.ABORT_SOURCE_SERVICE_USER, reason: int = P.ABORT_REASON_NOT_SPECIFIED
    ) -> bytes:
        """A-ABORT request: AA-1 (Sta13, ARTIM running), or AA-2 in Sta4 (nothing to send)."""
        action = self._fsm.fire(Evt.Evt15)
        if action is Action.AA_2:
            self._close()
            return b""
        return P.Abort(source, reason).encode()

    # -- internals -----------------------------------------------------------------------------

    def _check_announced(self, user: P.UserInformation) -> None:
        announced = user.maximum_length
        if announced is None or announced == 0 or announced > self._framer.limit:
            raise LocalProtocolError(
                f"announced maximum length {announced} must be 1..{self._framer.limit}"
            )

    def _close(self) -> None:
        self._closed = True
        self._events.append(ConnectionClosed())

    def _fire(self, event: Evt) -> Action:
        action = self._fsm.fire(event)
        if action in _CLOSING:
            if action is Action.AA_4:
                self._events.append(Aborted(P.ABORT_SOURCE_SERVICE_PROVIDER, 0, False,
                                            TRANSPORT_CLOSED))  # fmt: skip
            self._close()
        return action

    def _established(self, ac: P.AssociateAC) -> None:
        rq = self.associate_rq
        assert rq is not None
        self.associate_ac = ac
        proposed = {pc.context_id: pc.abstract_syntax for pc in rq.presentation_contexts}
        self.accepted_contexts = {
            pc.context_id: (proposed[pc.context_id], pc.transfer_syntax)
            for pc in ac.presentation_contexts
            if pc.result == P.ACCEPTANCE and pc.context_id in proposed
        }
        peer = self._peer_user_information()
        self.peer_max_pdu_length = (peer.maximum_length or 0) if peer else 0

    def _p_data(
        self, context_id: int, data: bytes | bytearray | memoryview, kind: int, last: bool
    ) -> bytes:
        chunk = self._begin_p_data(context_id)
        if len(data) <= chunk and (type(data) is bytes or type(data) is bytearray):
            # One PDU (a command set, a small data set): no views, no list.
            return P.encode_pdv_header(len(data), context_id, kind | (0x02 if last else 0)) + data
        return b"".join(self._pdvs(context_id, data, kind, last, chunk))

    def _p_data_parts(
        self, context_id: int, data: bytes | bytearray | memoryview, kind: int, last: bool
    ) -> list[bytes | memoryview]:
        return self._pdvs(context_id, data, kind, last, self._begin_p_data(context_id))

    def _begin_p_data(self, context_id: int) -> int:
        """Check the context and fire Evt9 (DT-1 keeps Sta6: no table walk there, AR-7 or an
        empty cell's error elsewhere); the most data one PDV may carry."""
        if context_id not in self.accepted_contexts:
            raise LocalProtocolError(f"presentation context {context_id} was not accepted")
        if self._fsm.state is not State.Sta6:
            self._fsm.fire(Evt.Evt9)
        limit = self.max_send_pdu_length
        if 0 < self.peer_max_pdu_length < limit:
            limit = self.peer_max_pdu_length
        return max(limit - 6, 1)  # PDV item length (4) + context ID + control header

    @staticmethod
    def _pdvs(
        context_id: int, data: bytes | bytearray | memoryview, kind: int, last: bool, chunk: int
    ) -> list[bytes | memoryview]:
        view = memoryview(data).cast("B")
        size = len(view)
        parts: list[bytes | memoryview] = []
        offset = 0
        while True:
            piece = view[offset : offset + chunk]
            offset += len(piece)
            final = offset >= size
            control = kind | (0x02 if final and last else 0)
            parts.append(P.encode_pdv_header(len(piece), context_id, control))
            parts.append(piece)
            if final:
                return parts

    def _on_pdu(self, pdu_type: int, body: memoryview) -> None:
        if pdu_type == P.P_DATA_TF:
            if self._fsm.state is State.Sta6:  # DT-2, Sta6 stays Sta6: no table lookup
                self._on_p_data(body)
                return
            action = self._fire(Evt.Evt10)
            if action is Action.DT_2 or action is Action.AR_6:
                self._on_p_data(body)
            elif action is not Action.AA_6:
                self._unexpected(action, "P-DATA-TF")
            return
        event = _PDU_EVENTS[pdu_type]
        pdu = P.decode_pdu(pdu_type, body)
        if event is Evt.Evt6 and isinstance(pdu, P.AssociateRQ):
            self._on_associate_rq(pdu)
            return
        # AR-8 (release collision) goes to Sta9 for the requestor, Sta10 for the acceptor.
        action = self._fsm.fire(event, outcome=int(self.role is Role.ACCEPTOR))
        if action is Action.AE_3 and isinstance(pdu, P.AssociateAC):
            self._established(pdu)
            self._events.append(AssociateAccepted(pdu))
        elif action is Action.AE_4 and isinstance(pdu, P.AssociateRJ):
            self._events.append(AssociateRejected(pdu))
            self._close()
        elif action is Action.AR_2 or action is Action.AR_8:
            self._events.append(ReleaseRequested(collision=action is Action.AR_8))
        elif action is Action.AR_3 or action is Action.AR_10:
            self._events.append(ReleaseConfirmed())
            if action is Action.AR_3:
                self._close()
        elif action is Action.AA_3 and isinstance(pdu, P.Abort):
            self._events.append(Aborted(pdu.source, pdu.reason))
            self._close()
        elif action is Action.AA_2:
            self._close()
        elif action is not Action.AA_6:
            self._unexpected(action, type(pdu).__name__)

    def _on_associate_rq(self, rq: P.AssociateRQ) -> None:
        state = self._fsm.state
        if state is State.Sta2:
            if not rq.protocol_version & 1:  # AE-6, not acceptable: reject, start ARTIM
                self._fsm.fire(Evt.Evt6, outcome=1)
                self._outbox.append(P.AssociateRJ(
                    P.REJECTED_PERMANENT, P.SOURCE_SERVICE_PROVIDER_ACSE,
                    P.RJ_PROTOCOL_VERSION_NOT_SUPPORTED).encode())  # fmt: skip
                return
            self._fsm.fire(Evt.Evt6)
            self.associate_rq = rq
            self._events.append(AssociateRequested(rq))
            return
        self._unexpected(self._fsm.fire(Evt.Evt6), "A-ASSOCIATE-RQ")

    def _unexpected(self, action: Action, what: str) -> None:
        """Perform AA-1/AA-7/AA-8 for an unexpected (valid) PDU; the state already moved."""
        self._abort_actions(action, P.ABORT_UNEXPECTED_PDU, f"unexpected {what}")

    def _abort_actions(self, action: Action, reason: int, message: str) -> None:
        abort = P.Abort(P.ABORT_SOURCE_SERVICE_PROVIDER, reason).encode()
        if action is Action.AA_1:
            # No association yet, but the transport still wants to log why it aborts.
            self._outbox.append(abort)
            self._events.append(Aborted(P.ABORT_SOURCE_SERVICE_PROVIDER, reason, True, message))
        elif action is Action.AA_7:
            self._outbox.append(abort)
        elif action is Action.AA_8:
            self._outbox.append(abort)
            self._events.append(Aborted(P.ABORT_SOURCE_SERVICE_PROVIDER, reason, True, message))
        elif action is not Action.AA_6:  # pragma: no cover - the table allows nothing else
            raise AssertionError(action)

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        """Evt19: an unrecognized or invalid PDU (or P-DATA content) from the peer."""
        if isinstance(exc, P.InvalidPDUError):
            reason = exc.reason
        else:
            reason = P.ABORT_INVALID_PDU_PARAMETER_VALUE
        self._command_buffer.clear()
        self._command_context = self._dataset_context = None
        action = self._fsm.fire(Evt.Evt19)
        self._abort_actions(action, reason, str(exc))

    def _on_p_data(self, body: memoryview) -> None:
        """DT-2 / AR-6: turn each PDV into CommandReceived / DatasetFragment events."""
        offset, end = 0, len(body)
        if not end:
            raise P.InvalidPDUError("P-DATA-TF without a presentation data value item")
        events = self._events
        contexts = self.accepted_contexts
        while offset < end:
            if end - offset < 6:
                raise P.InvalidPDUError("truncated presentation data value item header")
            length, context_id, control = _PDV.unpack_from(body, offset)
            if length < 2 or length > end - offset - 4:
                raise P.InvalidPDUError(f"presentation data value item length {length} is invalid")
            if control & 0xFC:
                raise P.InvalidPDUError(f"message control header 0x{control:02X} reserved bits")
            if context_id not in contexts:
                raise P.InvalidPDUError(f"presentation context {context_id} was not accepted")
            data = body[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if control & 0x01:
                self._on_command_fragment(context_id, data, bool(control & 0x02))
            elif self._dataset_context != context_id:
                raise P.InvalidPDUError(
                    f"data set PDV on context {context_id} without a command announcing it"
                )
            else:
                last = bool(control & 0x02)
                events.append(DatasetFragment(context_id, data, last))
                if last:
                    self._dataset_context = None

    def _on_command_fragment(self, context_id: int, data: memoryview, last: bool) -> None:
        if self._dataset_context is not None:
            raise P.InvalidPDUError("command PDV while a data set is still due")
        if self._command_context is None:
            self._command_context = context_id
        elif self._command_context != context_id:
            raise P.InvalidPDUError("command fragments on two presentation contexts")
        buffer = self._command_buffer
        if len(buffer) + len(data) > MAX_COMMAND_LENGTH:
            raise P.InvalidPDUError(f"command set longer than {MAX_COMMAND_LENGTH} bytes")
        if last and not buffer:  # a command set in one PDV: decoded in place, not copied
            command = Command.decode(data)
        else:
            buffer += data
            if not last:
                return
            command = Command.decode(buffer)
            buffer.clear()
        self._command_context = None
        has_dataset = command.has_dataset
        if has_dataset:
            self._dataset_context = context_id
        self._events.append(CommandReceived(context_id, command, has_dataset))
