"""DIMSE command sets: PS3.7 Section 9.3 / 10.3 and Annex E (command dictionary).

A command set is group 0000 only and always Implicit VR Little Endian (PS3.7 6.3.1).
:class:`Command` is a ``dict`` keyed by tag: US/UL values are ``int``, UI/AE/LO/ST/... values
``str`` (padding stripped on decode, added on encode: NUL for UI, space for text), AT values a
``tuple`` of tags, and elements this module does not know keep their raw ``bytes``.
CommandGroupLength (0000,0000) is computed by :meth:`Command.encode` and dropped by
:meth:`Command.decode`. Malformed command sets raise
:class:`~pacs.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pacs.dicom.status import delivered as delivered  # re-exported
from pacs.dicom.status import is_warning as is_warning  # re-exported
from pacs.dicom.uids import VERIFICATION
from pacs.errors import LocalProtocolError, RemoteProtocolError

CommandValue = int | str | tuple[int, ...] | bytes

# Command elements (PS3.7 Annex E, Table E.1-1), retired ones of Table E.2-1 included.
COMMAND_GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS_UID = 0x00000002
REQUESTED_SOP_CLASS_UID = 0x00000003
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
MOVE_DESTINATION = 0x00000600
PRIORITY = 0x00000700
COMMAND_DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
OFFENDING_ELEMENT = 0x00000901
ERROR_COMMENT = 0x00000902
ERROR_ID = 0x00000903
AFFECTED_SOP_INSTANCE_UID = 0x00001000
REQUESTED_SOP_INSTANCE_UID = 0x00001001
EVENT_TYPE_ID = 0x00001002
ATTRIBUTE_IDENTIFIER_LIST = 0x00001005
ACTION_TYPE_ID = 0x00001008
NUMBER_OF_REMAINING_SUBOPERATIONS = 0x00001020
NUMBER_OF_COMPLETED_SUBOPERATIONS = 0x00001021
NUMBER_OF_FAILED_SUBOPERATIONS = 0x00001022
NUMBER_OF_WARNING_SUBOPERATIONS = 0x00001023
MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE = 0x00001030
MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031

#: Value representation of every command element.
COMMAND_VR: dict[int, str] = {
    COMMAND_GROUP_LENGTH: "UL",
    0x00000001: "UL",  # CommandLengthToEnd (retired)
    AFFECTED_SOP_CLASS_UID: "UI",
    REQUESTED_SOP_CLASS_UID: "UI",
    0x00000010: "SH",  # CommandRecognitionCode (retired)
    COMMAND_FIELD: "US",
    MESSAGE_ID: "US",
    MESSAGE_ID_BEING_RESPONDED_TO: "US",
    0x00000200: "AE",  # Initiator (retired)
    0x00000300: "AE",  # Receiver (retired)
    0x00000400: "AE",  # FindLocation (retired)
    MOVE_DESTINATION: "AE",
    PRIORITY: "US",
    COMMAND_DATA_SET_TYPE: "US",
    0x00000850: "US",  # NumberOfMatches (retired)
    0x00000860: "US",  # ResponseSequenceNumber (retired)
    STATUS: "US",
    OFFENDING_ELEMENT: "AT",
    ERROR_COMMENT: "LO",
    ERROR_ID: "US",
    AFFECTED_SOP_INSTANCE_UID: "UI",
    REQUESTED_SOP_INSTANCE_UID: "UI",
    EVENT_TYPE_ID: "US",
    ATTRIBUTE_IDENTIFIER_LIST: "AT",
    ACTION_TYPE_ID: "US",
    NUMBER_OF_REMAINING_SUBOPERATIONS: "US",
    NUMBER_OF_COMPLETED_SUBOPERATIONS: "US",
    NUMBER_OF_FAILED_SUBOPERATIONS: "US",
    NUMBER_OF_WARNING_SUBOPERATIONS: "US",
    MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE: "AE",
    MOVE_ORIGINATOR_MESSAGE_ID: "US",
    0x00004000: "LT",  # DialogReceiver (retired)
    0x00004010: "LT",  # TerminalType (retired)
    0x00005010: "SH",  # MessageSetID (retired)
    0x00005020: "SH",  # EndMessageID (retired)
    0x00005110: "LT",  # DisplayFormat (retired)
    0x00005120: "LT",  # PagePositionID (retired)
    0x00005130: "CS",  # TextFormatID (retired)
    0x00005140: "CS",  # NormalReverse (retired)
    0x00005150: "CS",  # AddGrayScale (retired)
    0x00005160: "CS",  # Borders (retired)
    0x00005170: "IS",  # Copies (retired)
    0x00005180: "CS",  # CommandMagnificationType (retired)
    0x00005190: "CS",  # Erase (retired)
    0x000051A0: "CS",  # Print (retired)
    0x000051B0: "US",  # Overlays (retired)
}

# CommandField values (PS3.7 Annex E).
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
N_GET_RQ, N_GET_RSP = 0x0110, 0x8110
N_SET_RQ, N_SET_RSP = 0x0120, 0x8120
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
N_CREATE_RQ, N_CREATE_RSP = 0x0140, 0x8140
N_DELETE_RQ, N_DELETE_RSP = 0x0150, 0x8150
C_CANCEL_RQ = 0x0FFF

# CommandDataSetType: any value but 0101H means a data set follows (PS3.7 E.1).
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0001

# Priority (PS3.7 9.3.1.1).
PRIORITY_MEDIUM, PRIORITY_HIGH, PRIORITY_LOW = 0x0000, 0x0001, 0x0002

# Common statuses (PS3.7 Annex C).
SUCCESS = 0x0000
CANCEL = 0xFE00
PENDING = 0xFF00

_ELEMENT_HEADER = struct.Struct("<HHI")
_TEXT_VRS = frozenset({"AE", "LO", "SH", "ST", "LT", "CS", "IS"})


def _decode_us(tag: int, raw: bytes) -> int:
    if len(raw) != 2:
        raise RemoteProtocolError(f"US element ({tag >> 16:04X},{tag & 0xFFFF:04X}) not 2 bytes")
    return int.from_bytes(raw, "little")


def _decode_ul(tag: int, raw: bytes) -> int:
    if len(raw) != 4:
        raise RemoteProtocolError(f"UL element ({tag >> 16:04X},{tag & 0xFFFF:04X}) not 4 bytes")
    return int.from_bytes(raw, "little")


def _decode_vr(vr: str) -> Callable[[int, bytes], CommandValue]:
    if vr == "US":
        return _decode_us
    if vr == "UL":
        return _decode_ul
    return lambda tag, raw: _decode_value(tag, vr, raw)


def _decode_value(tag: int, vr: str, raw: bytes) -> CommandValue:
    if vr == "US":
        if len(raw) != 2:
            raise RemoteProtocolError(
                f"US element ({tag >> 16:04X},{tag & 0xFFFF:04X}) not 2 bytes"
            )
        return int.from_bytes(raw, "little")
    if vr == "UL":
        if len(raw) != 4:
            raise RemoteProtocolError(
                f"UL element ({tag >> 16:04X},{tag & 0xFFFF:04X}) not 4 bytes"
            )
        return int.from_bytes(raw, "little")
    if vr == "AT":
        if len(raw) % 4:
            raise RemoteProtocolError(f"AT element ({tag >> 16:04X},{tag & 0xFFFF:04X}) length")
        return tuple((group << 16) | element for group, element in struct.iter_unpack("<HH", raw))
    if vr == "UI":
        try:
            return raw.decode("ascii").rstrip("\0 ")
        except UnicodeDecodeError:
            raise RemoteProtocolError(
                f"UID in ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not ASCII"
            ) from None
    text = raw.decode("ascii", errors="replace").rstrip("\0 ")
    return text.lstrip(" ") if vr == "AE" else text


# Per tag, the decoder of its VR (US and UL directly: they are most of a command set).
_DECODERS = {tag: _decode_vr(vr) for tag, vr in COMMAND_VR.items()}


def _encode_value(tag: int, vr: str, value: CommandValue) -> bytes:
    try:
        if isinstance(value, bytes):
            raw = value
        elif vr == "US" and isinstance(value, int):
            raw = value.to_bytes(2, "little")
        elif vr == "UL" and isinstance(value, int):
            raw = value.to_bytes(4, "little")
        elif vr == "AT" and isinstance(value, tuple):
            raw = b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in value)
        elif isinstance(value, str) and (vr == "UI" or vr in _TEXT_VRS):
            raw = value.encode("ascii")
            if len(raw) % 2:
                raw += b"\0" if vr == "UI" else b" "
        else:
            raise TypeError(vr)
    except (TypeError, ValueError, OverflowError, struct.error):
        raise LocalProtocolError(
            f"value {value!r} does not fit VR {vr} of ({tag >> 16:04X},{tag & 0xFFFF:04X})"
        ) from None
    return _ELEMENT_HEADER.pack(0, tag & 0xFFFF, len(raw)) + raw


class Command(dict[int, CommandValue]):
    """A DIMSE command set keyed by tag (group 0000), e.g. ``cmd[MESSAGE_ID]``."""

    __slots__ = ()

    @property
    def command_field(self) -> int:
        value = self.get(COMMAND_FIELD)
        if not isinstance(value, int):
            raise RemoteProtocolError("command set lacks a CommandField")
        return value

    @property
    def has_dataset(self) -> bool:
        """CommandDataSetType is present and not 0101H (PS3.7 E.1)."""
        value = self.get(COMMAND_DATA_SET_TYPE, NO_DATA_SET)
        return value != NO_DATA_SET

    def _int(self, tag: int) -> int | None:
        value = self.get(tag)
        return value if isinstance(value, int) else None

    def _str(self, tag: int) -> str | None:
        value = self.get(tag)
        return value if isinstance(value, str) else None

    @property
    def message_id(self) -> int | None:
        return self._int(MESSAGE_ID)

    @property
    def message_id_being_responded_to(self) -> int | None:
        return self._int(MESSAGE_ID_BEING_RESPONDED_TO)

    @property
    def status(self) -> int | None:
        return self._int(STATUS)

    @property
    def affected_sop_class_uid(self) -> str | None:
        return self._str(AFFECTED_SOP_CLASS_UID)

    @property
    def affected_sop_instance_uid(self) -> str | None:
        return self._str(AFFECTED_SOP_INSTANCE_UID)

    def encode(self) -> bytes:
        """Implicit VR Little Endian bytes, CommandGroupLength first, elements in tag order."""
        if len(self) == 6 and self.get(COMMAND_FIELD) == C_STORE_RSP:
            encoded = _encode_store_rsp(self)
            if encoded is not None:
                return encoded
        return self._encode()

    def _encode(self) -> bytes:
        """:meth:`encode` for any command set (the C-STORE-RSP fast path's reference)."""
        elements = []
        for tag in sorted(self):
            if tag == COMMAND_GROUP_LENGTH:
                continue
            if tag >> 16 or tag < 0:
                raise LocalProtocolError(f"tag {tag:08X} is not in the command group 0000")
            elements.append(_encode_value(tag, COMMAND_VR.get(tag, "UN"), self[tag]))
        body = b"".join(elements)
        return _ELEMENT_HEADER.pack(0, 0, 4) + len(body).to_bytes(4, "little") + body

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Command:
        """Parse a command set; every element must lie in group 0000 and inside ``data``."""
        command = _decode_store_rq(data)
        if command is not None:
            return command
        return cls._decode(data)

    @classmethod
    def _decode(cls, data: bytes | bytearray | memoryview) -> Command:
        """:meth:`decode` for any command set (the C-STORE-RQ fast path's reference)."""
        raw = bytes(data)
        cached = _PENDING_RESPONSES.get(raw)
        if cached is not None:
            return cls(cached)
        command = cls()
        offset, end, previous = 0, len(raw), -1
        while offset < end:
            if end - offset < 8:
                raise RemoteProtocolError(f"truncated command element header at offset {offset}")
            group, element, length = _ELEMENT_HEADER.unpack_from(raw, offset)
            tag = (group << 16) | element
            offset += 8
            if group != 0:
                raise RemoteProtocolError(f"element ({group:04X},{element:04X}) in a command set")
            if length > end - offset:
                raise RemoteProtocolError(
                    f"command element (0000,{element:04X}) length {length} exceeds the command set"
                )
            if tag in command or tag == previous:
                raise RemoteProtocolError(f"command element (0000,{element:04X}) repeated")
            previous = tag
            value = raw[offset : offset + length]
            offset += length
            if tag != COMMAND_GROUP_LENGTH:
                decoder = _DECODERS.get(tag)
                command[tag] = value if decoder is None else decoder(tag, value)
        if COMMAND_FIELD not in command:
            raise RemoteProtocolError("command set lacks a CommandField (0000,0100)")
        if command.get(STATUS) == PENDING:
            # An SCU reads thousands of identical pending C-FIND responses: decode them once.
            if len(_PENDING_RESPONSES) >= 64:
                _PENDING_RESPONSES.clear()
            _PENDING_RESPONSES[raw] = Command(command)
        return command


_PENDING_RESPONSES: dict[bytes, Command] = {}


def _header(tag: int, length: int) -> int:
    """An element header (tag, length) of group 0000 read as one little-endian 64-bit int."""
    return int.from_bytes(_ELEMENT_HEADER.pack(0, tag & 0xFFFF, length), "little")


# The C-STORE-RQ every SCU we know sends (dcmtk, pynetdicom, ours): CommandGroupLength, Affected
# SOP Class UID, then CommandField, MessageID, Priority, CommandDataSetType (US each) and
# Affected SOP Instance UID, last. The headers of the fixed middle part are compared as ints.
_STORE_RQ_HEAD = struct.Struct("<QIQ")  # (0000,0000) header, its value, (0000,0002) header
_STORE_RQ_MIDDLE = struct.Struct("<QHQHQHQHQ")  # four US elements, (0000,1000) header
_GROUP_LENGTH_HEADER = _header(COMMAND_GROUP_LENGTH, 4)
_SOP_CLASS_TAG = _header(AFFECTED_SOP_CLASS_UID, 0)
_STORE_RQ_US = (_header(COMMAND_FIELD, 2), _header(MESSAGE_ID, 2), _header(PRIORITY, 2),
                _header(COMMAND_DATA_SET_TYPE, 2))
_INSTANCE_TAG = _header(AFFECTED_SOP_INSTANCE_UID, 0)
_LOW32 = 0xFFFFFFFF


def _decode_store_rq(data: bytes | bytearray | memoryview) -> Command | None:
    """:meth:`Command.decode` of a command set laid out as a usual C-STORE-RQ (whatever its
    values); None for any other layout or a value the general path must judge (it raises)."""
    end = len(data)
    if end < 68:
        return None
    group_header, _, class_header = _STORE_RQ_HEAD.unpack_from(data, 0)
    if group_header != _GROUP_LENGTH_HEADER or class_header & _LOW32 != _SOP_CLASS_TAG:
        return None
    class_end = 20 + (class_header >> 32)
    if class_end + 48 > end:
        return None
    (field_header, field, id_header, message_id, priority_header, priority, type_header,
     data_set_type, instance_header) = _STORE_RQ_MIDDLE.unpack_from(data, class_end)
    if ((field_header, id_header, priority_header, type_header) != _STORE_RQ_US
            or instance_header & _LOW32 != _INSTANCE_TAG
            or class_end + 48 + (instance_header >> 32) != end):
        return None
    try:
        sop_class = str(data[20:class_end], "ascii").rstrip("\0 ")
        sop_instance = str(data[class_end + 48 : end], "ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        return None
    return Command({
        AFFECTED_SOP_CLASS_UID: sop_class, COMMAND_FIELD: field, MESSAGE_ID: message_id,
        PRIORITY: priority, COMMAND_DATA_SET_TYPE: data_set_type,
        AFFECTED_SOP_INSTANCE_UID: sop_instance,
    })  # fmt: skip


# C-STORE-RSP: per Affected SOP Class UID, the encoded elements before MessageIDBeingRespondedTo's
# value; then that value, CommandDataSetType and Status, then Affected SOP Instance UID.
_STORE_RSP_PREFIXES: dict[str, bytes] = {}
_STORE_RSP_MIDDLE = struct.Struct("<HQHQH")
_DATA_SET_TYPE_US = _header(COMMAND_DATA_SET_TYPE, 2)
_STATUS_US = _header(STATUS, 2)
_GROUP_LENGTH = _ELEMENT_HEADER.pack(0, 0, 4)


def _encode_store_rsp(command: Command) -> bytes | None:
    """:meth:`Command.encode` of a C-STORE-RSP without Error Comment (``command`` has six
    elements, its CommandField is C-STORE-RSP); None when a value is not of the usual type or
    does not fit (the general path then raises)."""
    if type(command[COMMAND_FIELD]) is not int:
        return None
    try:
        sop_class = command[AFFECTED_SOP_CLASS_UID]
        message_id = command[MESSAGE_ID_BEING_RESPONDED_TO]
        data_set_type = command[COMMAND_DATA_SET_TYPE]
        status = command[STATUS]
        sop_instance = command[AFFECTED_SOP_INSTANCE_UID]
    except KeyError:
        return None
    if (type(sop_class) is not str or type(sop_instance) is not str or type(message_id) is not int
            or type(data_set_type) is not int or type(status) is not int):
        return None
    prefix = _STORE_RSP_PREFIXES.get(sop_class)
    try:
        if prefix is None:
            prefix = (_encode_value(AFFECTED_SOP_CLASS_UID, "UI", sop_class)
                      + _encode_value(COMMAND_FIELD, "US", C_STORE_RSP)
                      + _ELEMENT_HEADER.pack(0, MESSAGE_ID_BEING_RESPONDED_TO & 0xFFFF, 2))
            if len(_STORE_RSP_PREFIXES) >= 64:
                _STORE_RSP_PREFIXES.clear()
            _STORE_RSP_PREFIXES[sop_class] = prefix
        uid = sop_instance.encode("ascii")
        middle = _STORE_RSP_MIDDLE.pack(message_id, _DATA_SET_TYPE_US, data_set_type, _STATUS_US,
                                        status)
    except (LocalProtocolError, UnicodeEncodeError, struct.error):
        return None
    if len(uid) % 2:
        uid += b"\0"
    length = len(prefix) + len(middle) + 8 + len(uid)
    return b"".join((_GROUP_LENGTH, length.to_bytes(4, "little"), prefix, middle,
                     _ELEMENT_HEADER.pack(0, AFFECTED_SOP_INSTANCE_UID & 0xFFFF, len(uid)), uid))


def c_echo_rq(message_id: int, sop_class_uid: str = VERIFICATION) -> Command:
    """C-ECHO-RQ (PS3.7 9.3.5.1)."""
    return Command({
        AFFECTED_SOP_CLASS_UID: sop_class_uid, COMMAND_FIELD: C_ECHO_RQ,
        MESSAGE_ID: message_id, COMMAND_DATA_SET_TYPE: NO_DATA_SET,
    })  # fmt: skip


def c_echo_rsp(
    message_id_being_responded_to: int, status: int = SUCCESS, sop_class_uid: str = VERIFICATION
) -> Command:
    """C-ECHO-RSP (PS3.7 9.3.5.2)."""
    return Command({
        AFFECTED_SOP_CLASS_UID: sop_class_uid, COMMAND_FIELD: C_ECHO_RSP,
        MESSAGE_ID_BEING_RESPONDED_TO: message_id_being_responded_to,
        COMMAND_DATA_SET_TYPE: NO_DATA_SET, STATUS: status,
    })  # fmt: skip


def c_store_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    priority: int = PRIORITY_MEDIUM,
    move_originator_ae_title: str | None = None,
    move_originator_message_id: int | None = None,
) -> Command:
    """C-STORE-RQ (PS3.7 9.3.1.1); the data set follows in its own PDVs."""
    command = Command({
        AFFECTED_SOP_CLASS_UID: sop_class_uid, COMMAND_FIELD: C_STORE_RQ, MESSAGE_ID: message_id,
        PRIORITY: priority, COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
        AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
    })  # fmt: skip
    if move_originator_ae_title is not None:
        command[MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE] = move_originator_ae_title
    if move_originator_message_id is not None:
        command[MOVE_ORIGINATOR_MESSAGE_ID] = move_originator_message_id
    return command


def c_store_rsp(
    message_id_being_responded_to: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    error_comment: str | None = None,
) -> Command:
    """C-STORE-RSP (PS3.7 9.3.1.2); ``error_comment`` is cut to LO's 64 characters."""
    return n_rsp(C_STORE_RSP, message_id_being_responded_to, sop_class_uid, sop_instance_uid,
                 status, error_comment)


def n_action_rsp(
    message_id_being_responded_to: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    action_type_id: int | None = None,
    error_comment: str | None = None,
) -> Command:
    """N-ACTION-RSP (PS3.7 10.3.4.2) without an Action Reply data set."""
    command = n_rsp(N_ACTION_RSP, message_id_being_responded_to, sop_class_uid,
                    sop_instance_uid, status, error_comment)
    if action_type_id is not None:
        command[ACTION_TYPE_ID] = action_type_id
    return command


def n_rsp(
    field: int,
    message_id_being_responded_to: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    error_comment: str | None = None,
) -> Command:
    """A response naming its Affected SOP Class and Instance, without a data set: N-CREATE
    (PS3.7 10.3.5.2), N-SET (10.3.3.2), N-ACTION (10.3.4.2), and C-STORE (9.3.1.2)."""
    command = Command({
        AFFECTED_SOP_CLASS_UID: sop_class_uid, COMMAND_FIELD: field,
        MESSAGE_ID_BEING_RESPONDED_TO: message_id_being_responded_to,
        COMMAND_DATA_SET_TYPE: NO_DATA_SET, STATUS: status,
        AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
    })  # fmt: skip
    if error_comment is not None:
        command[ERROR_COMMENT] = _comment(error_comment)
    return command


def _comment(text: str) -> str:
    """An Error Comment: LO, ASCII here, at most 64 characters."""
    return text.encode("ascii", "replace").decode("ascii")[:64]


def failure_rsp(request: Command, status: int, comment: str) -> Command:
    """The response to ``request`` (any command) carrying a failure ``status`` and comment."""
    field = request.get(COMMAND_FIELD)
    response = Command({
        COMMAND_FIELD: (field | 0x8000) if isinstance(field, int) else 0x8000,
        MESSAGE_ID_BEING_RESPONDED_TO: request.message_id or 0,
        COMMAND_DATA_SET_TYPE: NO_DATA_SET, STATUS: status,
        ERROR_COMMENT: _comment(comment),
    })  # fmt: skip
    for tag in (AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID):
        if request.get(tag):
            response[tag] = request[tag]
    return response


def n_event_report_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type_id: int
) -> Command:
    """N-EVENT-REPORT-RQ (PS3.7 10.3.1.1); the Event Information data set follows."""
    return Command({
        AFFECTED_SOP_CLASS_UID: sop_class_uid, COMMAND_FIELD: N_EVENT_REPORT_RQ,
        MESSAGE_ID: message_id, COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
        AFFECTED_SOP_INSTANCE_UID: sop_instance_uid, EVENT_TYPE_ID: event_type_id,
    })  # fmt: skip
