"""PS3.8 Table 9-10: the whole (state, event) grid, against two independent transcriptions."""

from __future__ import annotations

import itertools

import pytest
from pynetdicom.fsm import TRANSITION_TABLE as PYNETDICOM_TABLE

from pacs.errors import LocalProtocolError, RemoteProtocolError
from pacs.net.fsm import (
    NEXT_STATES,
    RECEIVED_PDU_EVENTS,
    TABLE,
    Action,
    Event,
    State,
    StateMachine,
    artim_running,
    transition,
)

# Table 9-10 as printed in PS3.8: one row per event, columns Sta1 .. Sta13, "-" = empty cell.
STANDARD = """
Evt1   AE-1 -    -    -    -    -    -    -    -    -     -    -    -
Evt2   -    -    -    AE-2 -    -    -    -    -    -     -    -    -
Evt3   -    AA-1 AA-8 -    AE-3 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt4   -    AA-1 AA-8 -    AE-4 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt5   AE-5 -    -    -    -    -    -    -    -    -     -    -    -
Evt6   -    AE-6 AA-8 -    AA-8 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-7
Evt7   -    -    AE-7 -    -    -    -    -    -    -     -    -    -
Evt8   -    -    AE-8 -    -    -    -    -    -    -     -    -    -
Evt9   -    -    -    -    -    DT-1 -    AR-7 -    -     -    -    -
Evt10  -    AA-1 AA-8 -    AA-8 DT-2 AR-6 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt11  -    -    -    -    -    AR-1 -    -    -    -     -    -    -
Evt12  -    AA-1 AA-8 -    AA-8 AR-2 AR-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt13  -    AA-1 AA-8 -    AA-8 AA-8 AR-3 AA-8 AA-8 AR-10 AR-3 AA-8 AA-6
Evt14  -    -    -    -    -    -    -    AR-4 AR-9 -     -    AR-4 -
Evt15  -    -    AA-1 AA-2 AA-1 AA-1 AA-1 AA-1 AA-1 AA-1  AA-1 AA-1 -
Evt16  -    AA-2 AA-3 -    AA-3 AA-3 AA-3 AA-3 AA-3 AA-3  AA-3 AA-3 AA-2
Evt17  -    AA-5 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4  AA-4 AA-4 AR-5
Evt18  -    AA-2 -    -    -    -    -    -    -    -     -    -    AA-2
Evt19  -    AA-1 AA-8 -    AA-8 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-7
"""


def _standard() -> dict[tuple[str, str], str]:
    cells = {}
    for line in STANDARD.strip().splitlines():
        event, *actions = line.split()
        assert len(actions) == 13
        for number, action in enumerate(actions, start=1):
            if action != "-":
                cells[(f"Sta{number}", event)] = action
    return cells


def _ours() -> dict[tuple[str, str], str]:
    return {(s.name, e.name): cell[0].label for (s, e), cell in TABLE.items()}


def test_table_matches_the_standard_transcription():
    assert _ours() == _standard()


def test_table_matches_pynetdicom():
    theirs = {(state, event): action for (event, state), action in PYNETDICOM_TABLE.items()}
    assert _ours() == theirs


def test_grid_has_19_events_and_13_states():
    assert len(State) == 13 and len(Event) == 19
    assert [s.name for s in State] == [f"Sta{i}" for i in range(1, 14)]
    assert [e.name for e in Event] == [f"Evt{i}" for i in range(1, 20)]


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_cell_transitions_or_raises(state, event):
    machine = StateMachine(state)
    if (state, event) in TABLE:
        action, next_states = transition(state, event)
        assert next_states == NEXT_STATES[action]
        assert machine.fire(event) is action
        assert machine.state is next_states[0]
        if len(next_states) == 2:
            other = StateMachine(state)
            other.fire(event, outcome=1)
            assert other.state is next_states[1]
    else:
        expected = RemoteProtocolError if event in RECEIVED_PDU_EVENTS else LocalProtocolError
        with pytest.raises(expected) as info:
            machine.fire(event)
        assert type(info.value) is expected
        assert machine.state is state  # an empty cell leaves the state alone


def test_conditional_actions():
    assert NEXT_STATES[Action.AE_6] == (State.Sta3, State.Sta13)
    assert NEXT_STATES[Action.AR_8] == (State.Sta9, State.Sta10)
    assert all(len(v) == 1 for k, v in NEXT_STATES.items() if k not in (Action.AE_6, Action.AR_8))


def test_artim_runs_in_sta2_and_sta13_only():
    assert {s for s in State if artim_running(s)} == {State.Sta2, State.Sta13}
    # Every action that starts ARTIM (PS3.8 Tables 9-6 to 9-9) leads to one of those states.
    for action in (Action.AE_5, Action.AE_8, Action.AR_4, Action.AA_1, Action.AA_8):
        assert all(artim_running(s) for s in NEXT_STATES[action])
    assert Action.AE_1.label == "AE-1" and Action.AR_10.label == "AR-10"
