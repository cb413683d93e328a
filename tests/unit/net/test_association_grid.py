"""Every reachable state of a real Association, fed every kind of received PDU: the state it
lands in and the bytes it emits follow PS3.8 Table 9-10."""

from __future__ import annotations

import pytest

from pacs.net import Association, Role, State
from pacs.net import pdu as P
from pacs.net.fsm import TABLE, Action, Event
from tests.unit.net.helpers import associate, drain, make_rq
from tests.vectors import pdu_vectors as V


def _sta2():
    return Association(Role.ACCEPTOR)


def _sta3():
    acc = Association(Role.ACCEPTOR)
    acc.receive_data(make_rq().encode())
    drain(acc)
    return acc


def _sta5():
    req = Association(Role.REQUESTOR)
    req.send_associate_rq(make_rq())
    return req


def _established(role):
    req, acc = associate()
    return req if role is Role.REQUESTOR else acc


def _sta7(role):
    assoc = _established(role)
    assoc.release_request()
    return assoc


def _sta8():
    req, acc = associate()
    acc.receive_data(req.release_request())
    drain(acc)
    return acc


def _collision():
    req, acc = associate()
    to_acc, to_req = req.release_request(), acc.release_request()
    req.receive_data(to_req)
    acc.receive_data(to_acc)
    drain(req), drain(acc)
    return req, acc  # Sta9, Sta10


def _sta11():
    req, _ = _collision()
    req.release_response()
    return req


def _sta12():
    req, acc = _collision()
    acc.receive_data(req.release_response())
    drain(acc)
    return acc


def _sta13():
    acc = _sta3()
    acc.reject(1, 1, 1)
    return acc


REACH = {
    "Sta2 acceptor": (State.Sta2, _sta2),
    "Sta3 acceptor": (State.Sta3, _sta3),
    "Sta5 requestor": (State.Sta5, _sta5),
    "Sta6 requestor": (State.Sta6, lambda: _established(Role.REQUESTOR)),
    "Sta6 acceptor": (State.Sta6, lambda: _established(Role.ACCEPTOR)),
    "Sta7 requestor": (State.Sta7, lambda: _sta7(Role.REQUESTOR)),
    "Sta7 acceptor": (State.Sta7, lambda: _sta7(Role.ACCEPTOR)),
    "Sta8 acceptor": (State.Sta8, _sta8),
    "Sta9 requestor": (State.Sta9, lambda: _collision()[0]),
    "Sta10 acceptor": (State.Sta10, lambda: _collision()[1]),
    "Sta11 requestor": (State.Sta11, _sta11),
    "Sta12 acceptor": (State.Sta12, _sta12),
    "Sta13 acceptor": (State.Sta13, _sta13),
}

RECEIVED = {
    Event.Evt3: V.A_ASSOCIATE_AC,
    Event.Evt4: V.A_ASSOCIATE_RJ,
    Event.Evt6: V.A_ASSOCIATE_RQ,
    Event.Evt10: V.P_DATA_TF_COMMAND,
    Event.Evt12: V.A_RELEASE_RQ,
    Event.Evt13: V.A_RELEASE_RP,
    Event.Evt16: V.A_ABORT,
    Event.Evt19: bytes.fromhex("0700 00000003 000000"),  # A-ABORT of the wrong length
}


@pytest.mark.parametrize("where", list(REACH))
@pytest.mark.parametrize("event", list(RECEIVED), ids=lambda e: e.name)
def test_received_pdu_in_every_reachable_state(where, event):
    state, reach = REACH[where]
    assoc = reach()
    assoc.data_to_send()
    assert assoc.state is state
    action, next_states = TABLE[(state, event)]
    assoc.receive_data(RECEIVED[event])
    events = drain(assoc)
    # AR-8 (release collision) has two outcomes: Sta9 requestor, Sta10 acceptor.
    outcome = int(action is Action.AR_8 and assoc.role is Role.ACCEPTOR)
    expected = next_states[outcome]
    assert assoc.state is expected
    sent = assoc.data_to_send()
    if action in (Action.AA_1, Action.AA_7, Action.AA_8):
        assert isinstance(P.decode(sent), P.Abort)
    else:
        assert sent == b""
    if action is Action.AA_6:
        assert events == []
    assert assoc.should_close == (expected is State.Sta1)
    assert assoc.artim_running == (expected in (State.Sta2, State.Sta13))
