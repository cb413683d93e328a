"""The seven upper layer PDUs and their items (PS3.8 Section 9.3, PS3.7 Annex D.3.3).

Every PDU is a frozen dataclass with ``encode() -> bytes``; :func:`decode_pdu` builds one from
the PDU type and its variable field (the bytes after the 6-byte PDU header), :func:`decode`
from a whole PDU. Decoding reads only inside the given field and raises
:class:`InvalidPDUError` (a :class:`~pacs.errors.RemoteProtocolError`) on malformed content;
unknown user information sub-items are kept as :class:`UnknownSubItem`.

UIDs inside items are written unpadded (PS3.8 Annex F); decoding strips trailing NUL and space.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from pacs.dicom.uids import APPLICATION_CONTEXT
from pacs.errors import LocalProtocolError, RemoteProtocolError

# PDU types (PS3.8 Table 9-1 ... 9-26).
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_TYPES = frozenset(range(A_ASSOCIATE_RQ, A_ABORT + 1))

# Item and sub-item types (PS3.8 9.3.2, 9.3.3; PS3.7 D.3.3).
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_RQ_ITEM = 0x20
PRESENTATION_CONTEXT_AC_ITEM = 0x21
ABSTRACT_SYNTAX_SUB_ITEM = 0x30
TRANSFER_SYNTAX_SUB_ITEM = 0x40
USER_INFORMATION_ITEM = 0x50
MAXIMUM_LENGTH_SUB_ITEM = 0x51
IMPLEMENTATION_CLASS_UID_SUB_ITEM = 0x52
ASYNCHRONOUS_OPERATIONS_WINDOW_SUB_ITEM = 0x53
SCP_SCU_ROLE_SELECTION_SUB_ITEM = 0x54
IMPLEMENTATION_VERSION_NAME_SUB_ITEM = 0x55

# Presentation context results (PS3.8 Table 9-18).
ACCEPTANCE = 0
USER_REJECTION = 1
NO_REASON = 2
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ASSOCIATE-RJ fields (PS3.8 Table 9-21).
REJECTED_PERMANENT = 1
REJECTED_TRANSIENT = 2
SOURCE_SERVICE_USER = 1
SOURCE_SERVICE_PROVIDER_ACSE = 2
SOURCE_SERVICE_PROVIDER_PRESENTATION = 3
RJ_NO_REASON_GIVEN = 1
RJ_APPLICATION_CONTEXT_NAME_NOT_SUPPORTED = 2
RJ_CALLING_AE_TITLE_NOT_RECOGNIZED = 3
RJ_CALLED_AE_TITLE_NOT_RECOGNIZED = 7
RJ_PROTOCOL_VERSION_NOT_SUPPORTED = 2  # with source 2 (ACSE provider)
RJ_TEMPORARY_CONGESTION = 1  # with source 3 (presentation provider)
RJ_LOCAL_LIMIT_EXCEEDED = 2  # with source 3

# A-ABORT fields (PS3.8 Table 9-26).
ABORT_SOURCE_SERVICE_USER = 0
ABORT_SOURCE_SERVICE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PDU_PARAMETER = 4
ABORT_UNEXPECTED_PDU_PARAMETER = 5
ABORT_INVALID_PDU_PARAMETER_VALUE = 6

_HEADER = struct.Struct(">BBI")  # PDU type, reserved, PDU length
_ITEM_HEADER = struct.Struct(">BBH")  # item type, reserved, item length
_ASSOCIATE_FIXED = struct.Struct(">HH16s16s32s")  # version, reserved, called, calling, reserved
_PDV_HEADER = struct.Struct(">IBB")  # item length, context ID, message control header
_FOUR_BYTES = struct.Struct(">BBBB")


class InvalidPDUError(RemoteProtocolError):
    """Malformed PDU content; ``reason`` is the A-ABORT reason to answer with (Table 9-26)."""

    def __init__(self, message: str, reason: int = ABORT_INVALID_PDU_PARAMETER_VALUE) -> None:
        self.reason = reason
        super().__init__(message)


def _text(value: bytes | memoryview, what: str) -> str:
    try:
        return bytes(value).decode("ascii")
    except UnicodeDecodeError:
        raise InvalidPDUError(f"{what} is not ASCII") from None


def _uid(value: bytes | memoryview, what: str) -> str:
    uid = _text(value, what).rstrip("\0 ")
    if len(uid) > 64:
        raise InvalidPDUError(f"{what} is longer than 64 characters")
    return uid


def _ascii(value: str, what: str) -> bytes:
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"{what} {value!r} is not ASCII") from None


def _item(item_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise LocalProtocolError(f"item 0x{item_type:02X} is longer than 65535 bytes")
    return _ITEM_HEADER.pack(item_type, 0, len(value)) + value


def _iter_items(data: memoryview, what: str) -> Iterator[tuple[int, memoryview]]:
    """Yield (type, value) of the items with 2-byte lengths in ``data`` (PS3.8 9.3.2)."""
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 4:
            raise InvalidPDUError(f"truncated item header in {what}")
        item_type, _, length = _ITEM_HEADER.unpack_from(data, offset)
        offset += 4
        if length > end - offset:
            raise InvalidPDUError(
                f"item 0x{item_type:02X} in {what} claims {length} bytes, {end - offset} left"
            )
        yield item_type, data[offset : offset + length]
        offset += length


def _ae_title(value: bytes | memoryview, what: str) -> str:
    return _text(value, what).strip(" \0")


def _encode_ae_title(title: str, what: str) -> bytes:
    raw = _ascii(title, what)
    if len(raw) > 16:
        raise LocalProtocolError(f"{what} {title!r} is longer than 16 characters")
    return raw.ljust(16, b" ")


@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    """Presentation context item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]

    def encode(self) -> bytes:
        value = bytes((self.context_id, 0, 0, 0))
        value += _item(ABSTRACT_SYNTAX_SUB_ITEM, _ascii(self.abstract_syntax, "abstract syntax"))
        for uid in self.transfer_syntaxes:
            value += _item(TRANSFER_SYNTAX_SUB_ITEM, _ascii(uid, "transfer syntax"))
        return _item(PRESENTATION_CONTEXT_RQ_ITEM, value)

    @classmethod
    def decode(cls, value: memoryview) -> PresentationContextRQ:
        if len(value) < 4:
            raise InvalidPDUError("presentation context item shorter than 4 bytes")
        abstract: str | None = None
        transfer: list[str] = []
        for sub_type, sub in _iter_items(value[4:], "presentation context item"):
            if sub_type == ABSTRACT_SYNTAX_SUB_ITEM:
                if abstract is not None:
                    raise InvalidPDUError("two abstract syntax sub-items in a presentation context")
                abstract = _uid(sub, "abstract syntax")
            elif sub_type == TRANSFER_SYNTAX_SUB_ITEM:
                transfer.append(_uid(sub, "transfer syntax"))
            else:
                raise InvalidPDUError(
                    f"unexpected sub-item 0x{sub_type:02X} in presentation context",
                    ABORT_UNEXPECTED_PDU_PARAMETER,
                )
        if abstract is None or not transfer:
            raise InvalidPDUError("presentation context lacks abstract or transfer syntax")
        return cls(value[0], abstract, tuple(transfer))


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    """Presentation context item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2); result 0 = acceptance."""

    context_id: int
    result: int
    transfer_syntax: str

    def encode(self) -> bytes:
        value = bytes((self.context_id, 0, self.result, 0))
        value += _item(TRANSFER_SYNTAX_SUB_ITEM, _ascii(self.transfer_syntax, "transfer syntax"))
        return _item(PRESENTATION_CONTEXT_AC_ITEM, value)

    @classmethod
    def decode(cls, value: memoryview) -> PresentationContextAC:
        if len(value) < 4:
            raise InvalidPDUError("presentation context item shorter than 4 bytes")
        transfer: str | None = None
        for sub_type, sub in _iter_items(value[4:], "presentation context item"):
            if sub_type != TRANSFER_SYNTAX_SUB_ITEM or transfer is not None:
                raise InvalidPDUError(
                    f"unexpected sub-item 0x{sub_type:02X} in accepted presentation context",
                    ABORT_UNEXPECTED_PDU_PARAMETER,
                )
            transfer = _uid(sub, "transfer syntax")
        if transfer is None and value[2] == ACCEPTANCE:
            raise InvalidPDUError("accepted presentation context lacks a transfer syntax")
        return cls(value[0], value[2], transfer or "")


@dataclass(frozen=True, slots=True)
class AsynchronousOperationsWindow:
    """Asynchronous operations window sub-item (PS3.7 D.3.3.3); 0 means unlimited."""

    max_operations_invoked: int = 1
    max_operations_performed: int = 1


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """SCP/SCU role selection sub-item (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool

    def encode(self) -> bytes:
        uid = _ascii(self.sop_class_uid, "SOP class UID")
        value = struct.pack(">H", len(uid)) + uid + bytes((self.scu_role, self.scp_role))
        return _item(SCP_SCU_ROLE_SELECTION_SUB_ITEM, value)

    @classmethod
    def decode(cls, value: memoryview) -> RoleSelection:
        if len(value) < 4:
            raise InvalidPDUError("SCP/SCU role selection sub-item shorter than 4 bytes")
        (uid_length,) = struct.unpack_from(">H", value, 0)
        if uid_length + 4 != len(value):
            raise InvalidPDUError("SCP/SCU role selection UID length does not match item length")
        scu, scp = value[2 + uid_length], value[3 + uid_length]
        if scu > 1 or scp > 1:
            raise InvalidPDUError("SCP/SCU role selection value is neither 0 nor 1")
        return cls(_uid(value[2 : 2 + uid_length], "SOP class UID"), bool(scu), bool(scp))


@dataclass(frozen=True, slots=True)
class UnknownSubItem:
    """A user information sub-item this implementation does not interpret, kept verbatim."""

    item_type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class UserInformation:
    """User information item (PS3.8 9.3.2.3, PS3.7 D.3.3); None means the sub-item is absent.

    Encoded in ascending sub-item type order, unknown sub-items last.
    """

    maximum_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    asynchronous_operations_window: AsynchronousOperationsWindow | None = None
    role_selections: tuple[RoleSelection, ...] = ()
    other_items: tuple[UnknownSubItem, ...] = ()

    def encode(self) -> bytes:
        value = b""
        if self.maximum_length is not None:
            value += _item(MAXIMUM_LENGTH_SUB_ITEM, struct.pack(">I", self.maximum_length))
        if self.implementation_class_uid is not None:
            uid = _ascii(self.implementation_class_uid, "implementation class UID")
            value += _item(IMPLEMENTATION_CLASS_UID_SUB_ITEM, uid)
        window = self.asynchronous_operations_window
        if window is not None:
            ops = struct.pack(">HH", window.max_operations_invoked, window.max_operations_performed)
            value += _item(ASYNCHRONOUS_OPERATIONS_WINDOW_SUB_ITEM, ops)
        value += b"".join(role.encode() for role in self.role_selections)
        if self.implementation_version_name is not None:
            name = _ascii(self.implementation_version_name, "implementation version name")
            value += _item(IMPLEMENTATION_VERSION_NAME_SUB_ITEM, name)
        value += b"".join(_item(o.item_type, o.value) for o in self.other_items)
        return _item(USER_INFORMATION_ITEM, value)

    @classmethod
    def decode(cls, value: memoryview) -> UserInformation:
        maximum_length: int | None = None
        class_uid: str | None = None
        version_name: str | None = None
        window: AsynchronousOperationsWindow | None = None
        roles: list[RoleSelection] = []
        others: list[UnknownSubItem] = []
        for sub_type, sub in _iter_items(value, "user information item"):
            if sub_type == MAXIMUM_LENGTH_SUB_ITEM:
                if len(sub) != 4:
                    raise InvalidPDUError("maximum length sub-item is not 4 bytes long")
                (maximum_length,) = struct.unpack_from(">I", sub, 0)
            elif sub_type == IMPLEMENTATION_CLASS_UID_SUB_ITEM:
                class_uid = _uid(sub, "implementation class UID")
            elif sub_type == IMPLEMENTATION_VERSION_NAME_SUB_ITEM:
                version_name = _text(sub, "implementation version name").rstrip("\0 ")
            elif sub_type == ASYNCHRONOUS_OPERATIONS_WINDOW_SUB_ITEM:
                if len(sub) != 4:
                    raise InvalidPDUError("asynchronous operations window sub-item is not 4 bytes")
                window = AsynchronousOperationsWindow(*struct.unpack_from(">HH", sub, 0))
            elif sub_type == SCP_SCU_ROLE_SELECTION_SUB_ITEM:
                roles.append(RoleSelection.decode(sub))
            else:
                others.append(UnknownSubItem(sub_type, bytes(sub)))
        return cls(maximum_length, class_uid, version_name, window, tuple(roles), tuple(others))


def _encode_associate(
    pdu_type: int,
    called: str,
    calling: str,
    version: int,
    application_context_name: str,
    contexts: bytes,
    user_information: UserInformation,
) -> bytes:
    body = _ASSOCIATE_FIXED.pack(
        version,
        0,
        _encode_ae_title(called, "called AE title"),
        _encode_ae_title(calling, "calling AE title"),
        b"",
    )
    body += _item(APPLICATION_CONTEXT_ITEM, _ascii(application_context_name, "context name"))
    body += contexts + user_information.encode()
    return _HEADER.pack(pdu_type, 0, len(body)) + body


def _decode_associate(
    body: memoryview, context_type: int, what: str
) -> tuple[int, str, str, str, list[memoryview], UserInformation]:
    if len(body) < _ASSOCIATE_FIXED.size:
        raise InvalidPDUError(f"{what} shorter than its fixed fields")
    version, _, called, calling, _ = _ASSOCIATE_FIXED.unpack_from(body, 0)
    app_context: str | None = None
    contexts: list[memoryview] = []
    user_info: UserInformation | None = None
    for item_type, value in _iter_items(body[_ASSOCIATE_FIXED.size :], what):
        if item_type == APPLICATION_CONTEXT_ITEM and app_context is None:
            app_context = _uid(value, "application context name")
        elif item_type == context_type:
            contexts.append(value)
        elif item_type == USER_INFORMATION_ITEM and user_info is None:
            user_info = UserInformation.decode(value)
        else:
            raise InvalidPDUError(
                f"unexpected item 0x{item_type:02X} in {what}", ABORT_UNEXPECTED_PDU_PARAMETER
            )
    if app_context is None:
        raise InvalidPDUError(f"{what} lacks the application context item")
    return (
        version,
        _ae_title(called, "called AE title"),
        _ae_title(calling, "calling AE title"),
        app_context,
        contexts,
        user_info or UserInformation(),
    )


@dataclass(frozen=True, slots=True)
class AssociateRQ:
    """A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_information: UserInformation
    application_context_name: str = APPLICATION_CONTEXT
    protocol_version: int = 1
    pdu_type: ClassVar[int] = A_ASSOCIATE_RQ

    def encode(self) -> bytes:
        contexts = b"".join(pc.encode() for pc in self.presentation_contexts)
        return _encode_associate(
            A_ASSOCIATE_RQ, self.called_ae_title, self.calling_ae_title, self.protocol_version,
            self.application_context_name, contexts, self.user_information,
        )  # fmt: skip

    @classmethod
    def decode(cls, body: memoryview) -> AssociateRQ:
        version, called, calling, app, items, user = _decode_associate(
            body, PRESENTATION_CONTEXT_RQ_ITEM, "A-ASSOCIATE-RQ"
        )
        contexts = tuple(PresentationContextRQ.decode(item) for item in items)
        return cls(called, calling, contexts, user, app, version)


@dataclass(frozen=True, slots=True)
class AssociateAC:
    """A-ASSOCIATE-AC PDU (PS3.8 9.3.3); the AE titles echo those of the request."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_information: UserInformation
    application_context_name: str = APPLICATION_CONTEXT
    protocol_version: int = 1
    pdu_type: ClassVar[int] = A_ASSOCIATE_AC

    def encode(self) -> bytes:
        contexts = b"".join(pc.encode() for pc in self.presentation_contexts)
        return _encode_associate(
            A_ASSOCIATE_AC, self.called_ae_title, self.calling_ae_title, self.protocol_version,
            self.application_context_name, contexts, self.user_information,
        )  # fmt: skip

    @classmethod
    def decode(cls, body: memoryview) -> AssociateAC:
        version, called, calling, app, items, user = _decode_associate(
            body, PRESENTATION_CONTEXT_AC_ITEM, "A-ASSOCIATE-AC"
        )
        contexts = tuple(PresentationContextAC.decode(item) for item in items)
        return cls(called, calling, contexts, user, app, version)


def _four_bytes(body: memoryview, what: str) -> tuple[int, int, int, int]:
    if len(body) != 4:
        raise InvalidPDUError(f"{what} PDU length is {len(body)}, not 4")
    fields: tuple[int, int, int, int] = _FOUR_BYTES.unpack_from(body, 0)
    return fields


@dataclass(frozen=True, slots=True)
class AssociateRJ:
    """A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): result, source and reason/diagnostic."""

    result: int
    source: int
    reason: int
    pdu_type: ClassVar[int] = A_ASSOCIATE_RJ

    def encode(self) -> bytes:
        return _HEADER.pack(A_ASSOCIATE_RJ, 0, 4) + bytes(
            (0, self.result, self.source, self.reason)
        )

    @classmethod
    def decode(cls, body: memoryview) -> AssociateRJ:
        _, result, source, reason = _four_bytes(body, "A-ASSOCIATE-RJ")
        return cls(result, source, reason)


@dataclass(frozen=True, slots=True)
class PDV:
    """Presentation data value item (PS3.8 9.3.5.1, E.2): bit 0 command, bit 1 last fragment."""

    context_id: int
    message_control_header: int
    data: bytes

    @property
    def is_command(self) -> bool:
        return bool(self.message_control_header & 1)

    @property
    def is_last(self) -> bool:
        return bool(self.message_control_header & 2)


def encode_pdv_header(pdv_length: int, context_id: int, message_control_header: int) -> bytes:
    """The 12 bytes before a one-PDV P-DATA-TF's data; ``pdv_length`` counts the data only."""
    return struct.pack(
        ">BBIIBB", P_DATA_TF, 0, pdv_length + 6, pdv_length + 2, context_id, message_control_header
    )


@dataclass(frozen=True, slots=True)
class PDataTF:
    """P-DATA-TF PDU (PS3.8 9.3.5) holding one or more PDV items (copied, for tests and tools;
    the association parses P-DATA in place)."""

    pdvs: tuple[PDV, ...]
    pdu_type: ClassVar[int] = P_DATA_TF

    def encode(self) -> bytes:
        body = b"".join(
            _PDV_HEADER.pack(len(p.data) + 2, p.context_id, p.message_control_header) + p.data
            for p in self.pdvs
        )
        return _HEADER.pack(P_DATA_TF, 0, len(body)) + body

    @classmethod
    def decode(cls, body: memoryview) -> PDataTF:
        return cls(tuple(PDV(c, m, bytes(d)) for c, m, d in iter_pdvs(body)))


def iter_pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """Yield (context ID, message control header, data view) of each PDV of a P-DATA-TF."""
    offset, end = 0, len(body)
    if end == 0:
        raise InvalidPDUError("P-DATA-TF without a presentation data value item")
    while offset < end:
        if end - offset < 6:
            raise InvalidPDUError("truncated presentation data value item header")
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or length > end - offset - 4:
            raise InvalidPDUError(f"presentation data value item length {length} is invalid")
        if control & 0xFC:
            raise InvalidPDUError(f"message control header 0x{control:02X} has reserved bits set")
        yield context_id, control, body[offset + 6 : offset + 4 + length]
        offset += 4 + length


@dataclass(frozen=True, slots=True)
class ReleaseRQ:
    """A-RELEASE-RQ PDU (PS3.8 9.3.6)."""

    pdu_type: ClassVar[int] = A_RELEASE_RQ

    def encode(self) -> bytes:
        return _HEADER.pack(A_RELEASE_RQ, 0, 4) + bytes(4)

    @classmethod
    def decode(cls, body: memoryview) -> ReleaseRQ:
        _four_bytes(body, "A-RELEASE-RQ")
        return cls()


@dataclass(frozen=True, slots=True)
class ReleaseRP:
    """A-RELEASE-RP PDU (PS3.8 9.3.7)."""

    pdu_type: ClassVar[int] = A_RELEASE_RP

    def encode(self) -> bytes:
        return _HEADER.pack(A_RELEASE_RP, 0, 4) + bytes(4)

    @classmethod
    def decode(cls, body: memoryview) -> ReleaseRP:
        _four_bytes(body, "A-RELEASE-RP")
        return cls()


@dataclass(frozen=True, slots=True)
class Abort:
    """A-ABORT PDU (PS3.8 9.3.8): source 0 service user, 2 service provider; reason 0-6."""

    source: int = ABORT_SOURCE_SERVICE_USER
    reason: int = ABORT_REASON_NOT_SPECIFIED
    pdu_type: ClassVar[int] = A_ABORT

    def encode(self) -> bytes:
        return _HEADER.pack(A_ABORT, 0, 4) + bytes((0, 0, self.source, self.reason))

    @classmethod
    def decode(cls, body: memoryview) -> Abort:
        _, _, source, reason = _four_bytes(body, "A-ABORT")
        return cls(source, reason)


PDU = AssociateRQ | AssociateAC | AssociateRJ | PDataTF | ReleaseRQ | ReleaseRP | Abort

_DECODERS: dict[int, Callable[[memoryview], PDU]] = {
    A_ASSOCIATE_RQ: AssociateRQ.decode,
    A_ASSOCIATE_AC: AssociateAC.decode,
    A_ASSOCIATE_RJ: AssociateRJ.decode,
    P_DATA_TF: PDataTF.decode,
    A_RELEASE_RQ: ReleaseRQ.decode,
    A_RELEASE_RP: ReleaseRP.decode,
    A_ABORT: Abort.decode,
}


def decode_pdu(pdu_type: int, body: bytes | memoryview) -> PDU:
    """Decode the variable field ``body`` of a PDU of type ``pdu_type``."""
    decoder = _DECODERS.get(pdu_type)
    if decoder is None:
        raise InvalidPDUError(f"unknown PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)
    return decoder(memoryview(body))


def decode(data: bytes | memoryview) -> PDU:
    """Decode one whole PDU, header included; its length field must match ``len(data)``."""
    view = memoryview(data)
    if len(view) < 6:
        raise InvalidPDUError("PDU shorter than its 6-byte header")
    pdu_type, _, length = _HEADER.unpack_from(view, 0)
    if length != len(view) - 6:
        raise InvalidPDUError(f"PDU length {length} does not match the {len(view) - 6} bytes given")
    return decode_pdu(pdu_type, view[6:])
