"""Events of a sans-IO association: the upper layer's indication and confirmation primitives
(PS3.8 Section 7) plus DIMSE message parts (PS3.7 Section 9.3), as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from pacs.net.dimse import Command
from pacs.net.pdu import AssociateAC, AssociateRJ, AssociateRQ


@dataclass(frozen=True, slots=True)
class AssociateRequested:
    """A-ASSOCIATE indication: answer with ``accept(negotiate(pdu, ...))`` or ``reject()``."""

    pdu: AssociateRQ


@dataclass(frozen=True, slots=True)
class AssociateAccepted:
    """A-ASSOCIATE confirmation (accept); the negotiated values are set."""

    pdu: AssociateAC


@dataclass(frozen=True, slots=True)
class AssociateRejected:
    """A-ASSOCIATE confirmation (reject); the connection is to be closed."""

    pdu: AssociateRJ


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A whole DIMSE command set; ``has_dataset``: DatasetFragments follow on ``context_id``."""

    context_id: int
    command: Command
    has_dataset: bool


@dataclass(frozen=True, slots=True)
class DatasetFragment:
    """One data set PDV as received (not reassembled); ``data`` is a receive-buffer view."""

    context_id: int
    data: memoryview
    last: bool


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """A-RELEASE indication; ``collision`` when we had requested release too (AR-8)."""

    collision: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseConfirmed:
    """A-RELEASE confirmation."""


@dataclass(frozen=True, slots=True)
class Aborted:
    """A-ABORT / A-P-ABORT indication. ``local``: we aborted because the peer broke the
    protocol (``error`` says how; the A-ABORT is in ``data_to_send()``)."""

    source: int
    reason: int
    local: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The state machine is back in Sta1: the last event of an association."""


Event = (
    AssociateRequested | AssociateAccepted | AssociateRejected | CommandReceived
    | DatasetFragment | ReleaseRequested | ReleaseConfirmed | Aborted | ConnectionClosed
)  # fmt: skip
