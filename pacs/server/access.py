"""Access control at association time (sans-IO): who may associate, and for which services.

:func:`check_association` decides on an A-ASSOCIATE-RQ's facts (calling AE, called AE, peer
address) and answers ``None`` (go on) or the :class:`Rejection` to send (PS3.8 9.3.4).
:class:`ContextPolicy` negotiates presentation contexts within a calling AE's permissions: a
context the AE may not use is answered with result 1 (user rejection), so the peer sees no
acceptable presentation context for that service.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from pacs.config import PERMISSIONS, Settings
from pacs.dicom import uids
from pacs.net import negotiate
from pacs.net.pdu import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTANCE,
    REJECTED_PERMANENT,
    REJECTED_TRANSIENT,
    RJ_CALLED_AE_TITLE_NOT_RECOGNIZED,
    RJ_CALLING_AE_TITLE_NOT_RECOGNIZED,
    RJ_LOCAL_LIMIT_EXCEEDED,
    SOURCE_SERVICE_PROVIDER_PRESENTATION,
    SOURCE_SERVICE_USER,
    USER_REJECTION,
    AssociateAC,
    AssociateRQ,
    PresentationContextAC,
)
from pacs.server.commitment import STORAGE_COMMITMENT_PUSH_MODEL
from pacs.server.find import FIND_MODELS
from pacs.server.get import GET_MODELS
from pacs.server.move import MOVE_MODELS
from pacs.server.mpps import MPPS_SOP_CLASS
from pacs.server.worklist_find import MODALITY_WORKLIST_FIND

ALL_PERMISSIONS = frozenset(PERMISSIONS)
_STORAGE = frozenset(uids.STORAGE_SOP_CLASSES)

Resolver = Callable[[str], Collection[str]]


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send (result, source, reason of PS3.8 9.3.4) and why, for the log."""

    result: int
    source: int
    reason: int
    why: str


def calling_ae_rejected(why: str) -> Rejection:
    return Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER, RJ_CALLING_AE_TITLE_NOT_RECOGNIZED,
                     why)


def limit_exceeded(why: str) -> Rejection:
    """Transient, service-provider (presentation), local limit exceeded: retry later."""
    return Rejection(REJECTED_TRANSIENT, SOURCE_SERVICE_PROVIDER_PRESENTATION,
                     RJ_LOCAL_LIMIT_EXCEEDED, why)


def resolve(host: str) -> set[str]:
    """Addresses of ``host`` (a literal is returned as is, without a lookup)."""
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {_normal(str(info[4][0])) for info in infos}


def _normal(address: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 (``::ffff:a.b.c.d``) as plain IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def check_association(
    settings: Settings,
    calling_aet: str,
    called_aet: str,
    peer_host: str,
    resolver: Resolver = resolve,
) -> Rejection | None:
    """None when the association may go on to negotiation, else the rejection to send.

    AE titles are compared without their space padding. ``peer_host`` is the peer's address.
    """
    calling, called = calling_aet.strip(), called_aet.strip()
    if settings.check_called_aet and called != settings.aet:
        return Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER,
                         RJ_CALLED_AE_TITLE_NOT_RECOGNIZED,
                         f"called AE title {called!r} is not ours ({settings.aet!r})")
    remote = settings.remotes.get(calling)
    if remote is None:
        if not settings.allow_unknown_aets:
            return calling_ae_rejected(f"calling AE title {calling!r} is not a known remote AE "
                                       "(allow_unknown_aets = false)")
        return None
    if remote.check_host:
        allowed = resolver(remote.host)
        if _normal(peer_host) not in allowed:
            return calling_ae_rejected(
                f"calling AE title {calling!r} must connect from {remote.host} "
                f"({', '.join(sorted(allowed)) or 'unresolvable'}), not {peer_host}")
    return None


def permissions_of(settings: Settings, calling_aet: str) -> frozenset[str]:
    """What the calling AE may do: its ``permissions``; every one when it is not configured."""
    remote = settings.remotes.get(calling_aet.strip())
    return remote.permissions if remote is not None else ALL_PERMISSIONS


def association_cap(settings: Settings, calling_aet: str) -> int:
    """Open associations allowed to this calling AE (0: no own cap)."""
    remote = settings.remotes.get(calling_aet.strip())
    if remote is not None and remote.max_associations:
        return remote.max_associations
    return settings.max_associations_per_ae


def permission_of(abstract_syntax: str) -> str | None:
    """The permission a presentation context of ``abstract_syntax`` needs (None: not ours)."""
    return _PERMISSION_OF.get(abstract_syntax)


_PERMISSION_OF: dict[str, str] = {
    uids.VERIFICATION: "echo",
    **dict.fromkeys(_STORAGE, "store"),
    **dict.fromkeys(FIND_MODELS, "find"),
    MODALITY_WORKLIST_FIND: "worklist",
    **dict.fromkeys(GET_MODELS, "get"),
    **dict.fromkeys(MOVE_MODELS, "move"),
    STORAGE_COMMITMENT_PUSH_MODEL: "commitment",
    MPPS_SOP_CLASS: "mpps",
}


class ContextPolicy:
    """Negotiation within permissions; the filtered tables are cached per permission set."""

    def __init__(self, supported: Mapping[str, Sequence[str]]) -> None:
        self.supported = supported
        self._allowed: dict[frozenset[str], dict[str, Sequence[str]]] = {}

    def allowed(self, permissions: frozenset[str]) -> Mapping[str, Sequence[str]]:
        """The supported contexts this permission set may use (storage ones also for 'get':
        they carry C-GET's sub-operations; see :meth:`negotiate`)."""
        table = self._allowed.get(permissions)
        if table is None:
            table = self._allowed[permissions] = {
                abstract: syntaxes for abstract, syntaxes in self.supported.items()
                if permission_of(abstract) in permissions
                or (abstract in _STORAGE and "get" in permissions)
            }
        return table

    def negotiate(
        self, rq: AssociateRQ, permissions: frozenset[str], max_pdu_length: int
    ) -> AssociateAC:
        """The A-ASSOCIATE-AC for ``rq`` within ``permissions``.

        The peer's SCP role (C-GET sub-operations) is granted only with 'get'. Without
        'store', a storage context is accepted only when the peer proposed the SCP role for
        its SOP class, and the peer's SCU role is then refused: it may receive, not send.
        """
        if permissions >= ALL_PERMISSIONS:  # the common case: no filtering at all
            return negotiate(rq, self.supported, max_pdu_length=max_pdu_length,
                             accept_scp_role=True)
        may_get = "get" in permissions
        may_store = "store" in permissions
        ac = negotiate(rq, self.allowed(permissions), max_pdu_length=max_pdu_length,
                       accept_scp_role=may_get)
        scp_proposed = {r.sop_class_uid for r in rq.user_information.role_selections
                        if r.scp_role}
        proposed = {pc.context_id: pc.abstract_syntax for pc in rq.presentation_contexts}
        contexts: list[PresentationContextAC] = []
        accepted: set[str] = set()
        for reply in ac.presentation_contexts:
            abstract = proposed.get(reply.context_id, "")
            forbidden = reply.result == ABSTRACT_SYNTAX_NOT_SUPPORTED and abstract in self.supported
            get_only = (reply.result == ACCEPTANCE and not may_store and abstract in _STORAGE
                        and abstract not in scp_proposed)
            if forbidden or get_only:
                reply = PresentationContextAC(reply.context_id, USER_REJECTION, "")
            if reply.result == ACCEPTANCE:
                accepted.add(abstract)
            contexts.append(reply)
        roles = tuple(
            dataclasses.replace(role, scu_role=role.scu_role
                                and (may_store or role.sop_class_uid not in _STORAGE))
            for role in ac.user_information.role_selections if role.sop_class_uid in accepted
        )
        user = dataclasses.replace(ac.user_information, role_selections=roles)
        return dataclasses.replace(ac, presentation_contexts=tuple(contexts),
                                   user_information=user)
