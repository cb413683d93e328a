"""Acceptor-side presentation context and role negotiation."""

from __future__ import annotations

import pytest

from pacs.errors import LocalProtocolError
from pacs.net import pdu as P
from pacs.net.negotiation import negotiate, negotiate_contexts, negotiate_roles, propose

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT, EXPLICIT, JPEG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"
SUPPORTED = {VERIFICATION: (IMPLICIT,), CT: (EXPLICIT, IMPLICIT)}


def test_requestor_order_wins_and_results():
    replies = negotiate_contexts(
        [
            P.PresentationContextRQ(1, CT, (JPEG, IMPLICIT, EXPLICIT)),
            P.PresentationContextRQ(3, CT, (JPEG,)),
            P.PresentationContextRQ(5, "1.2.3", (IMPLICIT,)),
            P.PresentationContextRQ(7, VERIFICATION, (EXPLICIT, IMPLICIT)),
        ],
        SUPPORTED,
    )
    assert replies == (
        P.PresentationContextAC(1, P.ACCEPTANCE, IMPLICIT),  # the requestor's first we support
        P.PresentationContextAC(3, P.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""),
        P.PresentationContextAC(5, P.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
        P.PresentationContextAC(7, P.ACCEPTANCE, IMPLICIT),
    )


def test_roles():
    proposed = [
        P.RoleSelection(CT, True, True),
        P.RoleSelection(VERIFICATION, False, True),
        P.RoleSelection("1.2.3", True, True),  # not an accepted abstract syntax: no reply
    ]
    accepted = {CT, VERIFICATION}
    assert negotiate_roles(proposed, accepted) == (
        P.RoleSelection(CT, True, False),
        P.RoleSelection(VERIFICATION, False, False),
    )
    assert negotiate_roles(proposed, accepted, accept_scp_role=True) == (
        P.RoleSelection(CT, True, True),
        P.RoleSelection(VERIFICATION, False, True),
    )
    assert negotiate_roles(proposed, accepted, accept_scp_role={CT}) == (
        P.RoleSelection(CT, True, True),
        P.RoleSelection(VERIFICATION, False, False),
    )


def test_negotiate_builds_the_ac():
    rq = P.AssociateRQ(
        "ARCHIVE",
        "CT01",
        (
            P.PresentationContextRQ(1, CT, (EXPLICIT,)),
            P.PresentationContextRQ(3, "9.9", (IMPLICIT,)),
        ),
        P.UserInformation(maximum_length=0, role_selections=(P.RoleSelection(CT, False, True),)),
    )
    ac = negotiate(rq, SUPPORTED, accept_scp_role=True, max_pdu_length=131072)
    assert (ac.called_ae_title, ac.calling_ae_title) == ("ARCHIVE", "CT01")
    assert ac.user_information.maximum_length == 131072
    assert ac.user_information.implementation_class_uid
    assert ac.user_information.role_selections == (P.RoleSelection(CT, False, True),)
    assert [c.result for c in ac.presentation_contexts] == [0, 3]
    assert negotiate(rq, SUPPORTED).user_information.maximum_length == 256 * 1024
    assert P.decode(ac.encode()) == ac


def test_propose_numbers_contexts_odd_and_round_trips():
    rq = propose("ARCHIVE", "MOVESCU", [(CT, (EXPLICIT, IMPLICIT)), (VERIFICATION, (IMPLICIT,))],
                 roles=(P.RoleSelection(CT, False, True),), max_pdu_length=65536)  # fmt: skip
    assert [c.context_id for c in rq.presentation_contexts] == [1, 3]
    assert rq.presentation_contexts[0].transfer_syntaxes == (EXPLICIT, IMPLICIT)
    assert rq.user_information.maximum_length == 65536
    assert P.decode(rq.encode()) == rq
    ac = negotiate(rq, SUPPORTED, accept_scp_role=True)
    assert [c.transfer_syntax for c in ac.presentation_contexts] == [EXPLICIT, IMPLICIT]
    with pytest.raises(LocalProtocolError):
        propose("A", "B", [])
