"""Association-time access control: the decisions of pacs.server.access, without a network."""

from __future__ import annotations

from pacs.config import RemoteAE, Settings
from pacs.dicom import uids
from pacs.net import negotiate, propose
from pacs.net.pdu import RoleSelection
from pacs.server.access import (
    ALL_PERMISSIONS,
    ContextPolicy,
    association_cap,
    check_association,
    permission_of,
    permissions_of,
    resolve,
)
from pacs.server.find import STUDY_ROOT_FIND
from pacs.server.get import STUDY_ROOT_GET
from pacs.server.move import STUDY_ROOT_MOVE
from pacs.server.services import supported_contexts
from pacs.server.worklist_find import MODALITY_WORKLIST_FIND

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
COMMITMENT = "1.2.840.10008.1.20.1"
TS = (uids.IMPLICIT_VR_LITTLE_ENDIAN,)


def settings(**kwargs: object) -> Settings:
    remotes = {
        "MODALITY": RemoteAE("MODALITY", "127.0.0.1", 0),
        "ECHOER": RemoteAE("ECHOER", "127.0.0.1", 0, permissions=frozenset({"echo"})),
        "FIXED": RemoteAE("FIXED", "10.1.2.3", 0, check_host=True),
        "NAMED": RemoteAE("NAMED", "localhost", 0, check_host=True),
        "CAPPED": RemoteAE("CAPPED", "127.0.0.1", 0, max_associations=2),
    }
    return Settings(remotes=remotes, **kwargs)  # type: ignore[arg-type]


def triple(rejection: object) -> tuple[int, int, int]:
    assert rejection is not None
    return rejection.result, rejection.source, rejection.reason  # type: ignore[attr-defined]


def test_called_ae_title_checked_only_when_asked() -> None:
    assert check_association(settings(), "MODALITY", "OTHER", "127.0.0.1") is None
    strict = settings(check_called_aet=True)
    # PS3.8 9.3.4: rejected-permanent, service-user, called-AE-title-not-recognized.
    rejection = check_association(strict, "MODALITY", "OTHER", "127.0.0.1")
    assert triple(rejection) == (1, 1, 7)
    assert "'OTHER'" in rejection.why  # type: ignore[union-attr]
    assert check_association(strict, "MODALITY", "PACS  ", "127.0.0.1") is None


def test_unknown_calling_ae_rejected_when_not_allowed() -> None:
    assert check_association(settings(), "STRANGER", "PACS", "127.0.0.1") is None
    closed = settings(allow_unknown_aets=False)
    rejection = check_association(closed, "STRANGER", "PACS", "127.0.0.1")
    assert triple(rejection) == (1, 1, 3)  # calling-AE-title-not-recognized
    assert "allow_unknown_aets" in rejection.why  # type: ignore[union-attr]
    assert check_association(closed, "MODALITY ", "PACS", "127.0.0.1") is None


def test_host_check_compares_addresses() -> None:
    s = settings()
    assert check_association(s, "FIXED", "PACS", "10.1.2.3") is None
    assert check_association(s, "FIXED", "PACS", "::ffff:10.1.2.3") is None  # IPv4-mapped
    assert triple(check_association(s, "FIXED", "PACS", "10.1.2.4")) == (1, 1, 3)
    # Names are resolved at check time (the resolver is the only I/O).
    assert check_association(s, "NAMED", "PACS", "192.0.2.7",
                             resolver=lambda host: {"192.0.2.7"}) is None
    refused = check_association(s, "NAMED", "PACS", "192.0.2.8", resolver=lambda host: set())
    assert triple(refused) == (1, 1, 3)
    assert "unresolvable" in refused.why  # type: ignore[union-attr]
    # No check_host: any address.
    assert check_association(s, "MODALITY", "PACS", "203.0.113.9") is None


def test_resolve_literals_and_names() -> None:
    assert resolve("127.0.0.1") == {"127.0.0.1"}
    assert "127.0.0.1" in resolve("localhost") or "::1" in resolve("localhost")
    assert resolve("no-such-host.invalid") == set()


def test_permissions_and_caps() -> None:
    s = settings(max_associations_per_ae=5)
    assert permissions_of(s, "STRANGER") == ALL_PERMISSIONS
    assert permissions_of(s, "ECHOER") == {"echo"}
    assert association_cap(s, "STRANGER") == 5
    assert association_cap(s, "MODALITY") == 5
    assert association_cap(s, "CAPPED") == 2  # the AE's own cap overrides
    assert association_cap(settings(), "STRANGER") == 0


def test_every_supported_abstract_syntax_needs_a_permission() -> None:
    expected = {uids.VERIFICATION: "echo", CT: "store", STUDY_ROOT_FIND: "find",
                MODALITY_WORKLIST_FIND: "worklist", STUDY_ROOT_GET: "get",
                STUDY_ROOT_MOVE: "move", COMMITMENT: "commitment"}
    for abstract, permission in expected.items():
        assert permission_of(abstract) == permission
    assert all(permission_of(a) is not None for a in supported_contexts())
    assert permission_of("1.2.3.4") is None


def results(ac: object) -> list[int]:
    return [pc.result for pc in ac.presentation_contexts]  # type: ignore[attr-defined]


def test_forbidden_contexts_are_user_rejections() -> None:
    policy = ContextPolicy(supported_contexts())
    rq = propose("PACS", "ECHOER", [(uids.VERIFICATION, TS), (CT, TS), (STUDY_ROOT_FIND, TS),
                                    ("1.2.3.4", TS)])
    ac = policy.negotiate(rq, frozenset({"echo"}), 65536)
    # Allowed, forbidden (1 user-rejection), forbidden, not ours (3 abstract syntax).
    assert results(ac) == [0, 1, 1, 3]
    ac = policy.negotiate(rq, frozenset({"store", "find"}), 65536)
    assert results(ac) == [1, 0, 0, 3]
    assert ac.user_information.maximum_length == 65536


def test_full_permissions_negotiate_as_before() -> None:
    supported = supported_contexts()
    rq = propose("PACS", "X", [(uids.VERIFICATION, TS), (CT, TS), (STUDY_ROOT_GET, TS)],
                 roles=[RoleSelection(CT, False, True)])
    ours = ContextPolicy(supported).negotiate(rq, ALL_PERMISSIONS, 32768)
    assert ours == negotiate(rq, supported, max_pdu_length=32768, accept_scp_role=True)


def test_get_without_store_accepts_storage_only_for_the_scp_role() -> None:
    policy = ContextPolicy(supported_contexts())
    rq = propose("PACS", "VIEWER", [(STUDY_ROOT_GET, TS), (CT, TS), (MR, TS)],
                 roles=[RoleSelection(CT, True, True)])
    ac = policy.negotiate(rq, frozenset({"get"}), 65536)
    # CT proposed with the SCP role carries C-GET sub-operations; MR (plain SCU) is refused.
    assert results(ac) == [0, 0, 1]
    # The peer may receive on CT, not send: its SCU role is refused.
    assert ac.user_information.role_selections == (RoleSelection(CT, False, True),)
    # Store without get: the SCP role is not granted.
    ac = policy.negotiate(rq, frozenset({"store"}), 65536)
    assert results(ac) == [1, 0, 0]
    assert ac.user_information.role_selections == (RoleSelection(CT, True, False),)


def test_allowed_tables_are_cached_per_permission_set() -> None:
    policy = ContextPolicy(supported_contexts())
    first = policy.allowed(frozenset({"echo", "find"}))
    assert policy.allowed(frozenset({"find", "echo"})) is first
    assert set(first) == {uids.VERIFICATION, STUDY_ROOT_FIND, "1.2.840.10008.5.1.4.1.2.1.1"}
