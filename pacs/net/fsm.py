"""The DICOM upper layer state machine: PS3.8 Section 9.2, Tables 9-6 to 9-10.

:data:`TABLE` is Table 9-10, one entry per non-empty cell: ``(state, event) -> (action, next
states)``. The next state belongs to the action (Tables 9-6 to 9-9); two actions have two
outcomes, listed in this order:

* AE-6: Sta3 when the A-ASSOCIATE-RQ is acceptable to the service provider, else Sta13;
* AR-8: Sta9 for the association-requestor, Sta10 for the association-acceptor.

Cells the Standard leaves empty are errors: :func:`transition` raises
:class:`~pacs.errors.RemoteProtocolError` for events caused by a received PDU and
:class:`~pacs.errors.LocalProtocolError` for local primitives, transport and timer events. The
machine performs no action itself: :class:`pacs.net.association.Association` does.

The ARTIM timer runs exactly in Sta2 and Sta13 (started by AE-5, AE-6 reject, AE-8, AR-4,
AA-1, AA-8; stopped on leaving those states), see :func:`artim_running`.
"""

from __future__ import annotations

from enum import Enum, unique

from pacs.errors import LocalProtocolError, RemoteProtocolError


class _FastEnum(Enum):
    """Members hash by identity in C: Enum's own __hash__ is Python code, and every PDU looks
    up (state, event) and its action in dicts and sets."""

    __hash__ = object.__hash__


@unique
class State(_FastEnum):
    """States of PS3.8 Table 9-1."""

    Sta1 = "Idle"
    Sta2 = "Transport connection open (awaiting A-ASSOCIATE-RQ PDU)"
    Sta3 = "Awaiting local A-ASSOCIATE response primitive"
    Sta4 = "Awaiting transport connection opening to complete"
    Sta5 = "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU"
    Sta6 = "Association established and ready for data transfer"
    Sta7 = "Awaiting A-RELEASE-RP PDU"
    Sta8 = "Awaiting local A-RELEASE response primitive"
    Sta9 = "Release collision requestor side; awaiting A-RELEASE response primitive"
    Sta10 = "Release collision acceptor side; awaiting A-RELEASE-RP PDU"
    Sta11 = "Release collision requestor side; awaiting A-RELEASE-RP PDU"
    Sta12 = "Release collision acceptor side; awaiting A-RELEASE response primitive"
    Sta13 = "Awaiting transport connection close indication"


@unique
class Event(_FastEnum):
    """Events of PS3.8 Table 9-10."""

    Evt1 = "A-ASSOCIATE request (local user)"
    Evt2 = "Transport connection confirm (local transport service)"
    Evt3 = "A-ASSOCIATE-AC PDU (received on transport connection)"
    Evt4 = "A-ASSOCIATE-RJ PDU (received on transport connection)"
    Evt5 = "Transport connection indication (local transport service)"
    Evt6 = "A-ASSOCIATE-RQ PDU (received on transport connection)"
    Evt7 = "A-ASSOCIATE response primitive (accept)"
    Evt8 = "A-ASSOCIATE response primitive (reject)"
    Evt9 = "P-DATA request primitive"
    Evt10 = "P-DATA-TF PDU"
    Evt11 = "A-RELEASE request primitive"
    Evt12 = "A-RELEASE-RQ PDU (received on open transport connection)"
    Evt13 = "A-RELEASE-RP PDU (received on transport connection)"
    Evt14 = "A-RELEASE response primitive"
    Evt15 = "A-ABORT request primitive"
    Evt16 = "A-ABORT PDU (received on open transport connection)"
    Evt17 = "Transport connection closed indication (local transport service)"
    Evt18 = "ARTIM timer expired (Association reject/release timer)"
    Evt19 = "Unrecognized or invalid PDU received"


@unique
class Action(_FastEnum):
    """Actions of PS3.8 Tables 9-6 to 9-9; the value is the Standard's label, e.g. "AE-1"."""

    AE_1 = "AE-1"
    AE_2 = "AE-2"
    AE_3 = "AE-3"
    AE_4 = "AE-4"
    AE_5 = "AE-5"
    AE_6 = "AE-6"
    AE_7 = "AE-7"
    AE_8 = "AE-8"
    DT_1 = "DT-1"
    DT_2 = "DT-2"
    AR_1 = "AR-1"
    AR_2 = "AR-2"
    AR_3 = "AR-3"
    AR_4 = "AR-4"
    AR_5 = "AR-5"
    AR_6 = "AR-6"
    AR_7 = "AR-7"
    AR_8 = "AR-8"
    AR_9 = "AR-9"
    AR_10 = "AR-10"
    AA_1 = "AA-1"
    AA_2 = "AA-2"
    AA_3 = "AA-3"
    AA_4 = "AA-4"
    AA_5 = "AA-5"
    AA_6 = "AA-6"
    AA_7 = "AA-7"
    AA_8 = "AA-8"

    @property
    def label(self) -> str:
        """The Standard's spelling, e.g. ``"AE-1"``."""
        return self.value

    @property
    def description(self) -> str:
        return ACTION_DESCRIPTIONS[self]


ACTION_DESCRIPTIONS: dict[Action, str] = {
    Action.AE_1: "Issue TRANSPORT CONNECT request primitive to local transport service",
    Action.AE_2: "Send A-ASSOCIATE-RQ PDU",
    Action.AE_3: "Issue A-ASSOCIATE confirmation (accept) primitive",
    Action.AE_4: "Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection",
    Action.AE_5: "Issue transport connection response primitive; start ARTIM timer",
    Action.AE_6: "Stop ARTIM; issue A-ASSOCIATE indication, or send A-ASSOCIATE-RJ and start ARTIM",
    Action.AE_7: "Send A-ASSOCIATE-AC PDU",
    Action.AE_8: "Send A-ASSOCIATE-RJ PDU and start ARTIM timer",
    Action.DT_1: "Send P-DATA-TF PDU",
    Action.DT_2: "Send P-DATA indication primitive",
    Action.AR_1: "Send A-RELEASE-RQ PDU",
    Action.AR_2: "Issue A-RELEASE indication primitive",
    Action.AR_3: "Issue A-RELEASE confirmation primitive, and close transport connection",
    Action.AR_4: "Issue A-RELEASE-RP PDU and start ARTIM timer",
    Action.AR_5: "Stop ARTIM timer",
    Action.AR_6: "Issue P-DATA indication",
    Action.AR_7: "Issue P-DATA-TF PDU",
    Action.AR_8: "Issue A-RELEASE indication (release collision)",
    Action.AR_9: "Send A-RELEASE-RP PDU",
    Action.AR_10: "Issue A-RELEASE confirmation primitive",
    Action.AA_1: "Send A-ABORT PDU and (re)start ARTIM timer",
    Action.AA_2: "Stop ARTIM timer if running. Close transport connection",
    Action.AA_3: "Issue A-ABORT or A-P-ABORT indication and close transport connection",
    Action.AA_4: "Issue A-P-ABORT indication primitive",
    Action.AA_5: "Stop ARTIM timer",
    Action.AA_6: "Ignore PDU",
    Action.AA_7: "Send A-ABORT PDU",
    Action.AA_8: "Send A-ABORT PDU (provider source), issue A-P-ABORT indication, start ARTIM",
}

S = State
E = Event
A = Action

# Next state(s) of each action (PS3.8 Tables 9-6 to 9-9).
NEXT_STATES: dict[Action, tuple[State, ...]] = {
    A.AE_1: (S.Sta4,), A.AE_2: (S.Sta5,), A.AE_3: (S.Sta6,), A.AE_4: (S.Sta1,),
    A.AE_5: (S.Sta2,), A.AE_6: (S.Sta3, S.Sta13), A.AE_7: (S.Sta6,), A.AE_8: (S.Sta13,),
    A.DT_1: (S.Sta6,), A.DT_2: (S.Sta6,),
    A.AR_1: (S.Sta7,), A.AR_2: (S.Sta8,), A.AR_3: (S.Sta1,), A.AR_4: (S.Sta13,),
    A.AR_5: (S.Sta1,), A.AR_6: (S.Sta7,), A.AR_7: (S.Sta8,), A.AR_8: (S.Sta9, S.Sta10),
    A.AR_9: (S.Sta11,), A.AR_10: (S.Sta12,),
    A.AA_1: (S.Sta13,), A.AA_2: (S.Sta1,), A.AA_3: (S.Sta1,), A.AA_4: (S.Sta1,),
    A.AA_5: (S.Sta1,), A.AA_6: (S.Sta13,), A.AA_7: (S.Sta13,), A.AA_8: (S.Sta13,),
}  # fmt: skip


def _row(event: Event, cells: dict[State, Action]) -> dict[tuple[State, Event], Action]:
    return {(state, event): action for state, action in cells.items()}


_STA3_TO_12 = (S.Sta3, S.Sta5, S.Sta6, S.Sta7, S.Sta8, S.Sta9, S.Sta10, S.Sta11, S.Sta12)
_RECEIVED_PDU_DEFAULT = {S.Sta2: A.AA_1, **dict.fromkeys(_STA3_TO_12, A.AA_8), S.Sta13: A.AA_6}

_CELLS: dict[tuple[State, Event], Action] = {
    **_row(E.Evt1, {S.Sta1: A.AE_1}),
    **_row(E.Evt2, {S.Sta4: A.AE_2}),
    **_row(E.Evt3, {**_RECEIVED_PDU_DEFAULT, S.Sta5: A.AE_3}),
    **_row(E.Evt4, {**_RECEIVED_PDU_DEFAULT, S.Sta5: A.AE_4}),
    **_row(E.Evt5, {S.Sta1: A.AE_5}),
    **_row(E.Evt6, {**_RECEIVED_PDU_DEFAULT, S.Sta2: A.AE_6, S.Sta13: A.AA_7}),
    **_row(E.Evt7, {S.Sta3: A.AE_7}),
    **_row(E.Evt8, {S.Sta3: A.AE_8}),
    **_row(E.Evt9, {S.Sta6: A.DT_1, S.Sta8: A.AR_7}),
    **_row(E.Evt10, {**_RECEIVED_PDU_DEFAULT, S.Sta6: A.DT_2, S.Sta7: A.AR_6}),
    **_row(E.Evt11, {S.Sta6: A.AR_1}),
    **_row(E.Evt12, {**_RECEIVED_PDU_DEFAULT, S.Sta6: A.AR_2, S.Sta7: A.AR_8}),
    **_row(
        E.Evt13,
        {**_RECEIVED_PDU_DEFAULT, S.Sta7: A.AR_3, S.Sta10: A.AR_10, S.Sta11: A.AR_3},
    ),
    **_row(E.Evt14, {S.Sta8: A.AR_4, S.Sta9: A.AR_9, S.Sta12: A.AR_4}),
    **_row(E.Evt15, {S.Sta4: A.AA_2, **dict.fromkeys(_STA3_TO_12, A.AA_1)}),
    **_row(E.Evt16, {S.Sta2: A.AA_2, **dict.fromkeys(_STA3_TO_12, A.AA_3), S.Sta13: A.AA_2}),
    **_row(
        E.Evt17,
        {S.Sta2: A.AA_5, S.Sta4: A.AA_4, **dict.fromkeys(_STA3_TO_12, A.AA_4), S.Sta13: A.AR_5},
    ),
    **_row(E.Evt18, {S.Sta2: A.AA_2, S.Sta13: A.AA_2}),
    **_row(E.Evt19, {**_RECEIVED_PDU_DEFAULT, S.Sta13: A.AA_7}),
}

Transition = tuple[Action, tuple[State, ...]]

#: PS3.8 Table 9-10: (state, event) -> (action, possible next states).
TABLE: dict[tuple[State, Event], Transition] = {
    key: (action, NEXT_STATES[action]) for key, action in _CELLS.items()
}

#: Events caused by a PDU arriving from the peer; their empty cells are the peer's fault.
RECEIVED_PDU_EVENTS = frozenset(
    {E.Evt3, E.Evt4, E.Evt6, E.Evt10, E.Evt12, E.Evt13, E.Evt16, E.Evt19}
)


def transition(state: State, event: Event) -> Transition:
    """The cell of Table 9-10 for ``(state, event)``; empty cells raise a protocol error."""
    cell = TABLE.get((state, event))
    if cell is None:
        message = f"{event.name} ({event.value}) is not allowed in {state.name} ({state.value})"
        if event in RECEIVED_PDU_EVENTS:
            raise RemoteProtocolError(message)
        raise LocalProtocolError(message)
    return cell


def artim_running(state: State) -> bool:
    """Whether the ARTIM timer runs in ``state`` (PS3.8 9.1.5)."""
    return state is S.Sta2 or state is S.Sta13


class StateMachine:
    """The current state, moved by :meth:`fire` along :data:`TABLE`."""

    __slots__ = ("state",)

    def __init__(self, state: State = S.Sta1) -> None:
        self.state = state

    def fire(self, event: Event, outcome: int = 0) -> Action:
        """Apply ``event``; ``outcome`` picks the second next state of AE-6/AR-8. Returns the
        action to perform; the state does not change when the cell is empty (error raised)."""
        cell = TABLE.get((self.state, event))
        action, next_states = cell if cell is not None else transition(self.state, event)
        self.state = next_states[outcome if len(next_states) > 1 else 0]
        return action
