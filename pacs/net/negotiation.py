"""Association negotiation (PS3.8 9.3.2.2 and 9.3.3.2, PS3.7 D.3.3).

:func:`propose` builds a requestor's A-ASSOCIATE-RQ. :func:`negotiate` answers an
A-ASSOCIATE-RQ with the A-ASSOCIATE-AC to send: one presentation context reply per proposed
context, the SCP/SCU role selection replies, our maximum length and implementation identity.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from pacs.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacs.errors import LocalProtocolError
from pacs.net.framing import DEFAULT_MAX_PDU_LENGTH
from pacs.net.pdu import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTANCE,
    TRANSFER_SYNTAXES_NOT_SUPPORTED,
    AssociateAC,
    AssociateRQ,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    UserInformation,
)


def negotiate_contexts(
    proposed: Sequence[PresentationContextRQ], supported: Mapping[str, Sequence[str]]
) -> tuple[PresentationContextAC, ...]:
    """Reply to each proposed context: acceptance with the first transfer syntax *in the
    requestor's order* that ``supported[abstract_syntax]`` contains, else result 3
    (abstract syntax not supported) or 4 (transfer syntaxes not supported)."""
    replies = []
    for context in proposed:
        ours = supported.get(context.abstract_syntax)
        if ours is None:
            replies.append(
                PresentationContextAC(context.context_id, ABSTRACT_SYNTAX_NOT_SUPPORTED, "")
            )
            continue
        chosen = next((ts for ts in context.transfer_syntaxes if ts in ours), None)
        if chosen is None:
            replies.append(
                PresentationContextAC(context.context_id, TRANSFER_SYNTAXES_NOT_SUPPORTED, "")
            )
        else:
            replies.append(PresentationContextAC(context.context_id, ACCEPTANCE, chosen))
    return tuple(replies)


def negotiate_roles(
    proposed: Sequence[RoleSelection],
    accepted_abstract_syntaxes: Collection[str],
    accept_scp_role: bool | Collection[str] = False,
) -> tuple[RoleSelection, ...]:
    """Role selection replies (PS3.7 D.3.3.4) for SOP classes of accepted contexts.

    The requestor's SCU role is granted as proposed; its SCP role (e.g. to receive C-GET
    C-STOREs) only when ``accept_scp_role`` is True or contains the SOP class UID.
    """
    replies = []
    for role in proposed:
        uid = role.sop_class_uid
        if uid not in accepted_abstract_syntaxes:
            continue
        grant = accept_scp_role if isinstance(accept_scp_role, bool) else uid in accept_scp_role
        replies.append(RoleSelection(uid, role.scu_role, role.scp_role and grant))
    return tuple(replies)


def negotiate(
    rq: AssociateRQ,
    supported: Mapping[str, Sequence[str]],
    *,
    accept_scp_role: bool | Collection[str] = False,
    max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
    implementation_version_name: str | None = IMPLEMENTATION_VERSION_NAME,
) -> AssociateAC:
    """The A-ASSOCIATE-AC answering ``rq``; ``supported`` maps abstract syntax UID to the
    transfer syntax UIDs we accept for it. Announce the ``max_pdu_length`` the acceptor's
    :class:`~pacs.net.association.Association` was built with."""
    contexts = negotiate_contexts(rq.presentation_contexts, supported)
    accepted_ids = {c.context_id for c in contexts if c.result == ACCEPTANCE}
    accepted_syntaxes = {
        c.abstract_syntax for c in rq.presentation_contexts if c.context_id in accepted_ids
    }
    roles = negotiate_roles(rq.user_information.role_selections, accepted_syntaxes, accept_scp_role)
    user = UserInformation(
        maximum_length=max_pdu_length,
        implementation_class_uid=implementation_class_uid,
        implementation_version_name=implementation_version_name,
        role_selections=roles,
    )
    return AssociateAC(
        rq.called_ae_title,
        rq.calling_ae_title,
        contexts,
        user,
        rq.application_context_name,
    )


def propose(
    called_ae_title: str,
    calling_ae_title: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    roles: Sequence[RoleSelection] = (),
    max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
    implementation_version_name: str | None = IMPLEMENTATION_VERSION_NAME,
) -> AssociateRQ:
    """An A-ASSOCIATE-RQ proposing ``(abstract syntax, transfer syntaxes)`` pairs under the
    odd context IDs 1, 3, 5, ... (PS3.8 9.3.2.2: at most 128 contexts)."""
    if not 0 < len(contexts) <= 128:
        raise LocalProtocolError(f"{len(contexts)} presentation contexts: 1 to 128 allowed")
    items = tuple(
        PresentationContextRQ(2 * index + 1, abstract, tuple(syntaxes))
        for index, (abstract, syntaxes) in enumerate(contexts)
    )
    user = UserInformation(
        maximum_length=max_pdu_length,
        implementation_class_uid=implementation_class_uid,
        implementation_version_name=implementation_version_name,
        role_selections=tuple(roles),
    )
    return AssociateRQ(called_ae_title, calling_ae_title, items, user)
