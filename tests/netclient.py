"""A small blocking DICOM SCU on our own sans-IO core, for crafting what real clients won't send.

Tests use dcmtk and pynetdicom for the normal paths; this client exists to send truncated data
sets, mismatched UIDs and half-finished stores on purpose, and requests with an A-RELEASE-RQ
right behind them.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import replace

from pacs.dicom import uids
from pacs.net import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    Association,
    CommandReceived,
    ConnectionClosed,
    Event,
    ReleaseConfirmed,
    Role,
    c_echo_rq,
    c_store_rq,
    dimse,
    propose,
)
from pacs.net.dimse import Command

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class Client:
    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        calling: str = "TESTSCU",
        called: str = "PACS",
        contexts: Sequence[tuple[str, Sequence[str]]] = (
            (uids.VERIFICATION, (uids.IMPLICIT_VR_LITTLE_ENDIAN,)),
            (CT_IMAGE_STORAGE, (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)),
        ),
        max_pdu: int = 16384,
        announce_max_pdu: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.assoc = Association(Role.REQUESTOR)
        self.rq = propose(called, calling, contexts, max_pdu_length=max_pdu)
        self.message_id = 0
        self.result: Event | None = None
        self.announce_max_pdu = announce_max_pdu

    def associate(self) -> Event:
        data = self.assoc.send_associate_rq(self.rq)
        if self.announce_max_pdu is not None:
            # Lie about our receive limit (our Association refuses to): the wire sees it.
            user = replace(self.rq.user_information, maximum_length=self.announce_max_pdu)
            data = replace(self.rq, user_information=user).encode()
        self.sock.sendall(data)
        self.result = self.wait_for(AssociateAccepted, AssociateRejected, Aborted)
        return self.result

    def context_for(self, abstract_syntax: str) -> tuple[int, str]:
        for context_id, (abstract, transfer) in self.assoc.accepted_contexts.items():
            if abstract == abstract_syntax:
                return context_id, transfer
        raise AssertionError(f"{abstract_syntax} not accepted")

    def wait_for(self, *kinds: type) -> Event:
        while True:
            event = self.assoc.next_event()
            if event is None:
                try:
                    data = self.sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                self.assoc.receive_data(data)
                if out := self.assoc.data_to_send():
                    self.sock.sendall(out)
                continue
            if isinstance(event, kinds):
                return event
            if isinstance(event, ConnectionClosed | Aborted):
                raise ConnectionError(f"association ended: {event}")

    def echo(self) -> int:
        context_id, _ = self.context_for(uids.VERIFICATION)
        self.message_id += 1
        self.sock.sendall(self.assoc.send_command(context_id, c_echo_rq(self.message_id), False))
        return self._status()

    def send_store(self, dataset: bytes, sop_instance_uid: str,
                   sop_class_uid: str = CT_IMAGE_STORAGE, last: bool = True) -> None:
        context_id, _ = self.context_for(sop_class_uid)
        self.message_id += 1
        rq = c_store_rq(self.message_id, sop_class_uid, sop_instance_uid)
        self.sock.sendall(self.assoc.send_command(context_id, rq, True))
        self.sock.sendall(self.assoc.send_dataset(context_id, dataset, last=last))

    def store(self, dataset: bytes, sop_instance_uid: str,
              sop_class_uid: str = CT_IMAGE_STORAGE) -> Command:
        self.send_store(dataset, sop_instance_uid, sop_class_uid)
        event = self.wait_for(CommandReceived)
        assert isinstance(event, CommandReceived)
        return event.command

    def n_action_rq(self, sop_class_uid: str, sop_instance_uid: str, action_type_id: int,
                    action_information: bytes) -> bytes:
        """An N-ACTION-RQ (PS3.7 10.3.4.1) with its Action Information, encoded, not sent."""
        context_id, _ = self.context_for(sop_class_uid)
        self.message_id += 1
        rq = Command({
            dimse.REQUESTED_SOP_CLASS_UID: sop_class_uid, dimse.COMMAND_FIELD: dimse.N_ACTION_RQ,
            dimse.MESSAGE_ID: self.message_id,
            dimse.COMMAND_DATA_SET_TYPE: dimse.DATA_SET_PRESENT,
            dimse.REQUESTED_SOP_INSTANCE_UID: sop_instance_uid,
            dimse.ACTION_TYPE_ID: action_type_id,
        })  # fmt: skip
        return (self.assoc.send_command(context_id, rq, True)
                + self.assoc.send_dataset(context_id, action_information, last=True))

    def release_after(self, requests: bytes) -> list[CommandReceived]:
        """Send ``requests`` (encoded messages) and an A-RELEASE-RQ in one write, not waiting
        for any response in between (PS3.8 leaves the release's timing to the requester;
        pynetdicom and dcmtk wait). What came back before the A-RELEASE-RP, in order; the
        connection is closed on return."""
        self.sock.sendall(requests + self.assoc.release_request())
        received: list[CommandReceived] = []
        while True:
            event = self.wait_for(CommandReceived, ReleaseConfirmed)
            if isinstance(event, ReleaseConfirmed):
                self.close()
                return received
            assert isinstance(event, CommandReceived)
            received.append(event)

    def _status(self) -> int:
        event = self.wait_for(CommandReceived)
        assert isinstance(event, CommandReceived)
        status = event.command.status
        assert status is not None
        return status

    def release(self) -> None:
        self.sock.sendall(self.assoc.release_request())
        self.wait_for(ReleaseConfirmed)
        self.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
