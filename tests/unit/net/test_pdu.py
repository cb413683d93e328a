"""PDUs: golden vectors, round trips, pynetdicom as an independent codec, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom import pdu as pn
from pynetdicom.pdu_items import (
    AsynchronousOperationsWindowSubItem,
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    SCP_SCU_RoleSelectionSubItem,
    UserIdentitySubItemRQ,
)
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from pacs.errors import RemoteProtocolError
from pacs.net import pdu as P
from tests.vectors import pdu_vectors as V


@pytest.mark.parametrize("name", list(V.ALL))
def test_golden_vectors_round_trip(name):
    data = V.ALL[name]
    decoded = P.decode(data)
    assert decoded.encode() == data
    assert P.decode_pdu(data[0], data[6:]) == decoded


def test_associate_rq_fields():
    rq = P.decode(V.A_ASSOCIATE_RQ)
    assert isinstance(rq, P.AssociateRQ)
    assert (rq.called_ae_title, rq.calling_ae_title) == ("ANY-SCP", "ECHOSCU")
    assert rq.protocol_version == 1
    assert rq.application_context_name == "1.2.840.10008.3.1.1.1"
    assert rq.presentation_contexts == (
        P.PresentationContextRQ(1, V.VERIFICATION, (V.IMPLICIT_VR_LE, V.EXPLICIT_VR_LE)),
        P.PresentationContextRQ(3, V.CT_IMAGE_STORAGE, (V.EXPLICIT_VR_LE,)),
    )
    user = rq.user_information
    assert user.maximum_length == 16382
    assert user.implementation_class_uid == V.PYNETDICOM_CLASS_UID
    assert user.implementation_version_name == "PYNETDICOM_202"
    assert user.asynchronous_operations_window == P.AsynchronousOperationsWindow(5, 5)
    assert user.role_selections == (P.RoleSelection(V.CT_IMAGE_STORAGE, True, True),)
    assert user.other_items == (P.UnknownSubItem(0x58, bytes.fromhex("010000026162") + b"\0\0"),)


def test_associate_ac_rj_abort_fields():
    ac = P.decode(V.A_ASSOCIATE_AC)
    assert ac.presentation_contexts == (
        P.PresentationContextAC(1, P.ACCEPTANCE, V.IMPLICIT_VR_LE),
        P.PresentationContextAC(3, P.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""),
    )
    assert ac.user_information.maximum_length == 262144
    assert ac.user_information.role_selections == (
        P.RoleSelection(V.CT_IMAGE_STORAGE, True, False),
    )
    assert P.decode(V.A_ASSOCIATE_RJ) == P.AssociateRJ(1, 1, 3)
    assert P.decode(V.A_ABORT) == P.Abort(2, 6)
    assert P.decode(V.A_RELEASE_RQ) == P.ReleaseRQ()
    assert P.decode(V.A_RELEASE_RP) == P.ReleaseRP()
    data = P.decode(V.P_DATA_TF_DATASET)
    assert data == P.PDataTF((P.PDV(3, 0, b"ABCD"), P.PDV(3, 2, b"EF")))
    assert [p.is_last for p in data.pdvs] == [False, True]
    (command,) = P.decode(V.P_DATA_TF_COMMAND).pdvs
    assert command.is_command and command.is_last and command.data == V.C_ECHO_RQ_COMMAND


# -- pynetdicom as an independent implementation ---------------------------------------------


def _pynetdicom_decode(cls, data):
    pdu = cls()
    pdu.decode(data)
    return pdu


def test_pynetdicom_decodes_our_rq():
    ours = P.decode(V.A_ASSOCIATE_RQ)
    theirs = _pynetdicom_decode(pn.A_ASSOCIATE_RQ, ours.encode())
    assert theirs.called_ae_title == "ANY-SCP" and theirs.calling_ae_title == "ECHOSCU"
    assert theirs.application_context_name == ours.application_context_name
    assert [
        (c.context_id, c.abstract_syntax, list(c.transfer_syntax))
        for c in theirs.presentation_context
    ] == [(1, V.VERIFICATION, [V.IMPLICIT_VR_LE, V.EXPLICIT_VR_LE]),
          (3, V.CT_IMAGE_STORAGE, [V.EXPLICIT_VR_LE])]  # fmt: skip
    items = {type(i): i for i in theirs.user_information.user_data}
    assert items[MaximumLengthSubItem].maximum_length_received == 16382
    assert items[ImplementationClassUIDSubItem].implementation_class_uid == V.PYNETDICOM_CLASS_UID
    assert items[ImplementationVersionNameSubItem].implementation_version_name == "PYNETDICOM_202"
    window = items[AsynchronousOperationsWindowSubItem]
    assert window.maximum_number_operations_invoked == 5
    assert window.maximum_number_operations_performed == 5
    role = items[SCP_SCU_RoleSelectionSubItem]
    assert (role.uid, role.scu_role, role.scp_role) == (V.CT_IMAGE_STORAGE, True, True)
    assert items[UserIdentitySubItemRQ].primary_field == b"ab"
    assert theirs.encode() == V.A_ASSOCIATE_RQ  # same bytes both ways


def test_we_decode_pynetdicom_rq():
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "STORESCU"
    primitive.called_ae_title = "ARCHIVE"
    contexts = []
    for context_id, abstract, syntaxes in [
        (1, V.VERIFICATION, [V.IMPLICIT_VR_LE]),
        (3, V.CT_IMAGE_STORAGE, [V.EXPLICIT_VR_LE, V.IMPLICIT_VR_LE]),
    ]:
        context = PresentationContext()
        context.context_id, context.abstract_syntax = context_id, abstract
        context.transfer_syntax = syntaxes
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 0
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = "1.2.3.4.5"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "THEIRS_1"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = V.CT_IMAGE_STORAGE, False, True
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 0
    window.maximum_number_operations_performed = 1
    primitive.user_information = [maximum, class_uid, version, role, window]
    ours = P.decode(pn.A_ASSOCIATE_RQ(primitive).encode())
    assert ours == P.AssociateRQ(
        "ARCHIVE",
        "STORESCU",
        (
            P.PresentationContextRQ(1, V.VERIFICATION, (V.IMPLICIT_VR_LE,)),
            P.PresentationContextRQ(3, V.CT_IMAGE_STORAGE, (V.EXPLICIT_VR_LE, V.IMPLICIT_VR_LE)),
        ),
        P.UserInformation(
            maximum_length=0,
            implementation_class_uid="1.2.3.4.5",
            implementation_version_name="THEIRS_1",
            asynchronous_operations_window=P.AsynchronousOperationsWindow(0, 1),
            role_selections=(P.RoleSelection(V.CT_IMAGE_STORAGE, False, True),),
        ),
    )


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        # (not the AC: pynetdicom cannot encode the empty transfer syntax of a refused context)
        ("A-ASSOCIATE-RJ", pn.A_ASSOCIATE_RJ),
        ("P-DATA-TF command", pn.P_DATA_TF),
        ("P-DATA-TF data set", pn.P_DATA_TF),
        ("A-RELEASE-RQ", pn.A_RELEASE_RQ),
        ("A-RELEASE-RP", pn.A_RELEASE_RP),
        ("A-ABORT", pn.A_ABORT_RQ),
    ],
)
def test_pynetdicom_reencodes_the_same_bytes(name, cls):
    """pynetdicom decodes each vector and encodes it back to identical bytes."""
    assert _pynetdicom_decode(cls, V.ALL[name]).encode() == V.ALL[name]


def test_pynetdicom_reads_our_ac_and_abort_fields():
    ac = _pynetdicom_decode(pn.A_ASSOCIATE_AC, V.A_ASSOCIATE_AC)
    first = ac.presentation_context[0]
    assert (first.context_id, first.result, first.transfer_syntax) == (1, 0, V.IMPLICIT_VR_LE)
    assert ac.presentation_context[1].result == 4
    abort = _pynetdicom_decode(pn.A_ABORT_RQ, V.A_ABORT)
    assert (abort.source, abort.reason_diagnostic) == (2, 6)
    rj = _pynetdicom_decode(pn.A_ASSOCIATE_RJ, V.A_ASSOCIATE_RJ)
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 3)
    pdata = _pynetdicom_decode(pn.P_DATA_TF, V.P_DATA_TF_DATASET)
    assert pdata.presentation_data_value_items[0].presentation_context_id == 3


# -- malformed input ----------------------------------------------------------------------------


def _rq_with_user_items(user_items: bytes) -> bytes:
    rq = P.decode(V.A_ASSOCIATE_RQ)
    body = bytearray(rq.encode()[6:])
    cut = body.index(bytes((0x50, 0)))
    body = body[:cut] + bytes((0x50, 0)) + len(user_items).to_bytes(2, "big") + user_items
    return bytes((1, 0)) + len(body).to_bytes(4, "big") + bytes(body)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x00\x00\x00",
        V.A_ASSOCIATE_RQ[:-1],  # length field no longer matches
        bytes.fromhex("0100 00000010") + bytes(16),  # RQ shorter than its fixed fields
        _rq_with_user_items(bytes.fromhex("51000003 000040")),  # maximum length of 3 bytes
        _rq_with_user_items(bytes.fromhex("51000008 0000400000004000")),
        _rq_with_user_items(bytes.fromhex("510000")),  # truncated sub-item header
        _rq_with_user_items(bytes.fromhex("51000010 00004000")),  # sub-item beyond its item
        _rq_with_user_items(bytes.fromhex("540000 05 0009 31 01 01")),  # role UID length wrong
        _rq_with_user_items(bytes.fromhex("54000005 0001 31 02 01")),  # role value 2
        _rq_with_user_items(bytes.fromhex("53000002 0001")),
        _rq_with_user_items(b"\x52\x00\x00\x02\xff\xfe"),  # non-ASCII UID
        bytes.fromhex("0300 00000005 0001010300"),  # RJ of 5 bytes
        bytes.fromhex("0700 00000003 000002"),
        bytes.fromhex("0400 00000007 00000004 0103 00"),  # PDV item longer than the PDU
        bytes.fromhex("0400 00000006 00000002 01fc"),  # reserved control bits
        bytes.fromhex("0900 00000000"),  # unknown PDU type
    ],
)
def test_malformed_pdus_raise_remote_protocol_error(data):
    with pytest.raises(RemoteProtocolError):
        P.decode(data)


def test_unknown_user_sub_item_is_kept():
    rq = P.decode(_rq_with_user_items(bytes.fromhex("51000004 00004000 5f000002 abcd")))
    assert rq.user_information.maximum_length == 0x4000
    assert rq.user_information.other_items == (P.UnknownSubItem(0x5F, b"\xab\xcd"),)


def test_missing_application_context_is_an_error():
    rq = P.decode(V.A_ASSOCIATE_RQ)
    body = bytearray(rq.encode()[6:])
    del body[68 : 68 + 25]  # the application context item
    with pytest.raises(RemoteProtocolError, match="application context"):
        P.decode_pdu(1, bytes(body))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_vectors_raise_only_remote_protocol_error(data):
    name = data.draw(st.sampled_from(list(V.ALL)))
    vector = bytearray(V.ALL[name])
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(vector) - 1))
        vector[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(vector)))
    for candidate in (bytes(vector), bytes(vector[:cut])):
        try:
            P.decode(candidate)
        except RemoteProtocolError:
            pass
        try:
            P.decode_pdu(candidate[0] if candidate else 1, candidate[6:])
        except RemoteProtocolError:
            pass
