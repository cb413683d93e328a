"""PS3.8 upper layer and PS3.7 DIMSE, sans-IO: no sockets, clocks, tasks or threads here.

``Association`` turns received bytes into events and local requests into bytes to write
(:mod:`pacs.net.association`); ``fsm`` is PS3.8 Table 9-10; ``pdu`` the PDUs and items;
``framing`` the in-place PDU framer; ``dimse`` command sets; ``negotiation`` the acceptor's
presentation context and role selection answers.
"""

from pacs.net.association import (
    MAX_COMMAND_LENGTH,
    MAX_SEND_PDU_LENGTH,
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    AssociateRequested,
    Association,
    CommandReceived,
    ConnectionClosed,
    DatasetFragment,
    Event,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
)
from pacs.net.dimse import Command, c_echo_rq, c_echo_rsp, c_store_rq, c_store_rsp
from pacs.net.framing import DEFAULT_MAX_PDU_LENGTH, PDUFramer
from pacs.net.fsm import State
from pacs.net.negotiation import negotiate, negotiate_contexts, negotiate_roles, propose
from pacs.net.pdu import (
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    InvalidPDUError,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    ReleaseRP,
    ReleaseRQ,
    RoleSelection,
    UserInformation,
)

__all__ = [
    "DEFAULT_MAX_PDU_LENGTH",
    "MAX_COMMAND_LENGTH",
    "MAX_SEND_PDU_LENGTH",
    "Abort",
    "Aborted",
    "AssociateAC",
    "AssociateAccepted",
    "AssociateRJ",
    "AssociateRQ",
    "AssociateRejected",
    "AssociateRequested",
    "Association",
    "Command",
    "CommandReceived",
    "ConnectionClosed",
    "DatasetFragment",
    "Event",
    "InvalidPDUError",
    "PDUFramer",
    "PDataTF",
    "PresentationContextAC",
    "PresentationContextRQ",
    "ReleaseConfirmed",
    "ReleaseRP",
    "ReleaseRQ",
    "ReleaseRequested",
    "Role",
    "RoleSelection",
    "State",
    "UserInformation",
    "c_echo_rq",
    "c_echo_rsp",
    "c_store_rq",
    "c_store_rsp",
    "negotiate",
    "negotiate_contexts",
    "negotiate_roles",
    "propose",
]
