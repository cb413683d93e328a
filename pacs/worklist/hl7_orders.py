"""HL7 v2 orders (ORM^O01, OMI^O23) and patient updates (ADT^A08, ADT^A40) -> worklist items,
and the ACK every message gets.

Messages are parsed with the ``hl7`` library (python-hl7). Segments may end in CR (the
standard), LF or CRLF. The text is decoded as UTF-8, else Latin-1.

Order control (ORC-1)
    ``NW`` new order: a worklist item (SCHEDULED). Re-sent for an existing order, it replaces the
    order's details and keeps its StudyInstanceUID (a retransmission is harmless).
    ``XO`` change order: the fields the message carries (non-empty) replace the stored ones.
    ``SC`` status changed: ORC-5 sets the status (SC scheduled, IP started, CM completed,
    CA cancelled, DC discontinued, HD held); other fields present are applied as for XO.
    ``CA``/``OC`` cancel, ``DC``/``OD`` discontinue: the item leaves the worklist (it stays in
    the index with its status). XO, SC, CA and DC on an unknown order -> AE (204).

ORM field mapping (first repetition / component unless said otherwise)
    =====================================  ================================================
    DICOM                                  HL7
    =====================================  ================================================
    PatientID, IssuerOfPatientID           PID-3.1, PID-3.4
    PatientName                            PID-5 (XPN family^given^middle^suffix^prefix ->
                                           PN family^given^middle^prefix^suffix)
    PatientBirthDate                       PID-7 (first 8 digits)
    PatientSex                             PID-8 (M, F; O, U, A, N -> O)
    (order key)                            ORC-2 placer order number (``id^namespace``), else
                                           ORC-3 filler order number
    AccessionNumber                        OBR-18 (placer field 1), else ORC-3.1 / OBR-3.1
                                           (filler order number: the RIS numbers the order)
    RequestedProcedureID                   OBR-19 (placer field 2), else the accession number
    RequestedProcedureDescription          OBR-4.2 (universal service ID text), else OBR-4.1
    RequestedProcedureCodeSequence         OBR-4.1 code, OBR-4.3 scheme, OBR-4.2 meaning
    ScheduledProcedureStepID               OBR-20 (filler field 1), else RequestedProcedureID
    ScheduledProcedureStepDescription      OBR-4.2 (as above)
    Modality                               OBR-24 (diagnostic service section ID)
    ScheduledStationAETitle                OBR-21 (filler field 2), else the setting
                                           ``worklist_station_aet``
    ScheduledProcedureStepStartDate/Time   TQ1-7, else OBR-27.4 (quantity/timing start),
                                           else OBR-36 (scheduled date/time), else OBR-7
    ScheduledPerformingPhysicianName       OBR-34 (technician), XCN -> PN
    ReferringPhysicianName                 PV1-8, else OBR-16, else ORC-12 (XCN -> PN)
    StudyInstanceUID                       ZDS-1.1 when present, else generated (2.25 UUID
                                           UID) when the order is created
    ScheduledProcedureStepStatus           from ORC-1 / ORC-5 as above
    =====================================  ================================================

OMI^O23 (imaging order, v2.5)
    As ORM^O01, and the IPC segment, when present, wins: IPC-1 AccessionNumber, IPC-2
    RequestedProcedureID, IPC-3 StudyInstanceUID, IPC-4 ScheduledProcedureStepID, IPC-5
    Modality, IPC-9 ScheduledStationAETitle.

ADT^A08 (update patient information)
    PID-5/7/8 replace name, birth date and sex on every *active* item of the patient PID-3.1
    (and PID-3.4 issuer, when both sides have one). Items already performed keep what the
    images were labelled with. No active item: still AA (nothing to change).
ADT^A40 (merge patient)
    Every active item of the prior patient MRG-1.1 moves to the surviving patient PID-3.1, with
    the demographics of the PID segment. MRG-1 empty -> AE (101).

ACKs
    ``AA`` accepted; ``AE`` application error (required field missing 101, bad value 102/103,
    unknown order 204; not stored durably, e.g. a failed catalog sync, 207); ``AR`` rejected
    (not HL7 / MLLP framing 100, unsupported message type 200 or event 201). A negative ACK
    carries MSA-3 and an ERR segment (ERR-2 location, ERR-3 code from HL7 table 0357, ERR-4
    severity E, ERR-8 the explanation).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

import hl7
from pydicom.uid import generate_uid

from pacs.errors import CatalogError
from pacs.worklist.store import WorklistItem, WorklistStore

log = logging.getLogger("pacs.hl7")

# HL7 table 0357 (message error condition codes).
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNKNOWN_KEY = 204
INTERNAL_ERROR = 207
_ERROR_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNKNOWN_KEY: "Unknown key identifier",
    INTERNAL_ERROR: "Application internal error",
}

# ORC-5 order status (HL7 table 0038) -> Scheduled Procedure Step Status.
_ORDER_STATUS = {
    "SC": "SCHEDULED", "IP": "STARTED", "CM": "COMPLETED", "CA": "CANCELLED",
    "DC": "DISCONTINUED", "HD": "HELD",
}  # fmt: skip
_CANCEL = {"CA": "CANCELLED", "OC": "CANCELLED", "DC": "DISCONTINUED", "OD": "DISCONTINUED"}

_SEQUENCE = itertools.count(1)
# Message type -> events handled ("" = an ORM without its trigger event, as old RISes send).
_SUPPORTED = {"ORM": ("O01", ""), "OMI": ("O23",), "ADT": ("A08", "A40")}
_SUPPORTED_TEXT = "ORM^O01, OMI^O23, ADT^A08, ADT^A40"


class Hl7Error(Exception):
    """A message we answer negatively: AE (application error) or AR (reject)."""

    def __init__(self, ack_code: str, error_code: int, text: str, location: str = "") -> None:
        super().__init__(text)
        self.ack_code = ack_code
        self.error_code = error_code
        self.text = text
        self.location = location


def decode_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse(text: str) -> hl7.Message:
    """The parsed message; Hl7Error AR 100 when it is not an HL7 v2 message."""
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\n \t\0")
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7Error("AR", SEGMENT_SEQUENCE_ERROR,
                       "not an HL7 v2 message: it must start with an MSH segment", "MSH")
    for number, segment in enumerate(text.split("\r"), 1):
        if segment and not re.fullmatch(r"[A-Z][A-Z0-9]{2}", segment[:3]):
            raise Hl7Error("AR", SEGMENT_SEQUENCE_ERROR,
                           f"segment #{number} has no valid segment ID: {segment[:12]!r}")
    try:
        return hl7.parse(text)
    except Exception as exc:  # python-hl7 raises ParseException, IndexError, ValueError...
        raise Hl7Error("AR", SEGMENT_SEQUENCE_ERROR, f"unparseable HL7: {exc}", "MSH") from None


def _get(msg: hl7.Message, segment: str, field: int, component: int = 1,
         repetition: int = 1, subcomponent: int = 1) -> str:
    try:
        value = msg.extract_field(segment, 1, field, repetition, component, subcomponent)
    except (KeyError, IndexError):
        return ""
    return str(value or "").strip()


def _has(msg: hl7.Message, segment: str) -> bool:
    try:
        msg.segment(segment)
    except KeyError:
        return False
    return True


def _pn(parts: list[str]) -> str:
    """DICOM PN from its components, trailing empty ones dropped."""
    return "^".join(parts).rstrip("^")


def _xpn(msg: hl7.Message, segment: str, field: int) -> str:
    family, given, middle, suffix, prefix = (_get(msg, segment, field, c) for c in range(1, 6))
    return _pn([family, given, middle, prefix, suffix])


def _xcn(msg: hl7.Message, segment: str, field: int) -> str:
    # XCN: ID ^ family ^ given ^ middle ^ suffix ^ prefix
    family, given, middle, suffix, prefix = (_get(msg, segment, field, c) for c in range(2, 7))
    return _pn([family, given, middle, prefix, suffix])


def _order_number(msg: hl7.Message, field: int) -> str:
    number, namespace = _get(msg, "ORC", field, 1), _get(msg, "ORC", field, 2)
    return f"{number}^{namespace}" if number and namespace else number


def _datetime(value: str, where: str) -> tuple[str, str]:
    """(YYYYMMDD, HHMMSS) of an HL7 TS/DTM value; Hl7Error AE 102 when it is not one."""
    digits = value.split("+")[0].split("-")[0].split(".")[0]
    if not re.fullmatch(r"\d{8}(\d{2}(\d{2}(\d{2})?)?)?", digits):
        raise Hl7Error("AE", DATA_TYPE_ERROR, f"{where} {value!r} is not a date/time", where)
    hour, minute, second = (int(digits[i:i + 2] or 0) for i in (8, 10, 12))
    try:  # month 13 or hour 99 went on to modalities as DA/TM
        datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), hour, minute, second)
    except ValueError:
        raise Hl7Error("AE", DATA_TYPE_ERROR, f"{where} {value!r} is not a date/time",
                       where) from None
    return digits[:8], digits[8:14]


@dataclass(frozen=True, slots=True)
class Order:
    """What one ORM message says: the order control, its key, and the fields it carries."""

    control: str
    key: str
    status: str  # ORC-5, mapped; "" when absent
    values: dict[str, str]  # WorklistItem field -> value, only those present


def _patient_values(msg: hl7.Message) -> dict[str, str]:
    """Patient fields of the PID segment (those present)."""
    v = {"patient_id": _get(msg, "PID", 3, 1), "issuer_of_patient_id": _get(msg, "PID", 3, 4),
         "patient_name": _xpn(msg, "PID", 5)}
    birth = _get(msg, "PID", 7)
    if birth:
        v["patient_birth_date"] = _datetime(birth, "PID-7")[0]
    sex = _get(msg, "PID", 8).upper()
    v["patient_sex"] = sex if sex in ("M", "F", "") else "O"
    return v


def _uid(value: str, where: str) -> str:
    if len(value) > 64 or not re.fullmatch(r"[0-9]+(\.[0-9]+)*", value):
        raise Hl7Error("AE", DATA_TYPE_ERROR, f"{where} {value!r} is not a UID",
                       where.replace("-", "^1^"))
    return value


def _ipc_values(msg: hl7.Message) -> dict[str, str]:
    """OMI^O23's IPC segment (imaging procedure control), the fields present."""
    v: dict[str, str] = {}
    for field, name in ((1, "accession_number"), (2, "requested_procedure_id"),
                        (4, "sps_id"), (5, "modality"), (9, "station_aet")):
        value = _get(msg, "IPC", field)
        if value:
            v[name] = value.upper()[:16] if name in ("modality", "station_aet") else value
    uid = _get(msg, "IPC", 3)
    if uid:
        v["study_instance_uid"] = _uid(uid, "IPC-3")
    return v


def read_order(msg: hl7.Message, default_station_aet: str = "") -> Order:
    """The order of an ORM^O01 message (Hl7Error AE for missing or bad fields)."""
    if not _has(msg, "ORC"):
        raise Hl7Error("AE", REQUIRED_FIELD_MISSING, "ORM message without an ORC segment", "ORC")
    control = _get(msg, "ORC", 1).upper()
    if not control:
        raise Hl7Error("AE", REQUIRED_FIELD_MISSING, "ORC-1 (order control) is empty", "ORC^1^1")
    placer, filler = _order_number(msg, 2), _order_number(msg, 3)
    key = placer or filler
    if not key:
        raise Hl7Error("AE", REQUIRED_FIELD_MISSING,
                       "ORC-2 (placer order number) and ORC-3 (filler order number) are empty",
                       "ORC^1^2")
    status_code = _get(msg, "ORC", 5).upper()
    status = _ORDER_STATUS.get(status_code, "")
    if status_code and not status:
        raise Hl7Error("AE", TABLE_VALUE_NOT_FOUND, f"ORC-5 order status {status_code!r} is "
                       f"not one of {', '.join(_ORDER_STATUS)}", "ORC^1^5")
    v: dict[str, str] = {"placer_order_number": placer, "filler_order_number": filler}
    if _has(msg, "PID"):
        v.update(_patient_values(msg))
    if _has(msg, "OBR"):
        filler_number = _get(msg, "ORC", 3) or _get(msg, "OBR", 3)
        accession = _get(msg, "OBR", 18) or filler_number
        v["accession_number"] = accession
        v["requested_procedure_id"] = _get(msg, "OBR", 19) or accession
        v["sps_id"] = _get(msg, "OBR", 20) or v["requested_procedure_id"]
        code, text, scheme = (_get(msg, "OBR", 4, c) for c in (1, 2, 3))
        v["procedure_code_value"], v["procedure_code_scheme"] = code, scheme
        v["procedure_code_meaning"] = text
        v["requested_procedure_description"] = text or code
        v["sps_description"] = text or code
        v["modality"] = _get(msg, "OBR", 24).upper()
        v["station_aet"] = (_get(msg, "OBR", 21) or default_station_aet)[:16]
        v["performing_physician_name"] = _xcn(msg, "OBR", 34)
        when, where = "", ""
        for segment, field, component, name in (
            ("TQ1", 7, 1, "TQ1-7"), ("OBR", 27, 4, "OBR-27.4"), ("OBR", 36, 1, "OBR-36"),
            ("OBR", 7, 1, "OBR-7"),
        ):
            when = _get(msg, segment, field, component)
            if when:
                where = name
                break
        if when:
            v["start_date"], v["start_time"] = _datetime(when, where)
    referring = ""
    if _has(msg, "PV1"):
        referring = _xcn(msg, "PV1", 8)
    if not referring and _has(msg, "OBR"):
        referring = _xcn(msg, "OBR", 16)
    referring = referring or _xcn(msg, "ORC", 12)
    if referring:
        v["referring_physician_name"] = referring
    if _has(msg, "ZDS"):
        uid = _get(msg, "ZDS", 1)
        if uid:
            v["study_instance_uid"] = _uid(uid, "ZDS-1")
    if _has(msg, "IPC"):
        v.update(_ipc_values(msg))
    return Order(control, key, status, v)


def _new_item(order: Order, message_id: str, now: float) -> WorklistItem:
    item = WorklistItem(order.key, created=now)
    return _apply(item, order, message_id, now)


def _apply(item: WorklistItem, order: Order, message_id: str, now: float) -> WorklistItem:
    known = {f.name for f in fields(WorklistItem)}
    changes: dict[str, Any] = {k: v for k, v in order.values.items() if k in known and v}
    return replace(item, **changes, order_control=order.control, message_control_id=message_id,
                   updated=now)


def apply_order(store: WorklistStore, order: Order, message_id: str) -> WorklistItem:
    """Apply one order to the worklist in one transaction; the item as stored."""
    now = time.time()

    def change(current: WorklistItem | None) -> WorklistItem | Hl7Error:
        if order.control == "NW":
            if current is None:
                item = _new_item(order, message_id, now)
            else:
                item = _apply(current, order, message_id, now)
                item.status = "SCHEDULED"
            if not item.study_instance_uid:
                item.study_instance_uid = generate_uid()
            if not item.patient_id:
                return Hl7Error("AE", REQUIRED_FIELD_MISSING, "PID-3 (patient ID) is empty",
                                "PID^1^3")
            return item
        if current is None:
            return Hl7Error("AE", UNKNOWN_KEY, f"order {order.key!r} is unknown "
                            f"(ORC-1 {order.control} needs a previous NW)", "ORC^1^2")
        if order.control in _CANCEL:
            item = replace(current, status=_CANCEL[order.control], order_control=order.control,
                           message_control_id=message_id, updated=now)
            return item
        item = _apply(current, order, message_id, now)
        if order.status:
            item.status = order.status
        return item

    result = store.update(order.key, change)
    if isinstance(result, Hl7Error):
        raise result
    return result


def _demographics(item: WorklistItem, patient: dict[str, str], now: float,
                  message_id: str, control: str) -> WorklistItem:
    changes: dict[str, Any] = {k: v for k, v in patient.items() if v}
    return replace(item, **changes, order_control=control, message_control_id=message_id,
                   updated=now)


def apply_patient_update(store: WorklistStore, msg: hl7.Message,
                         message_id: str) -> list[WorklistItem]:
    """ADT^A08: new demographics on the patient's active items; the items changed."""
    if not _has(msg, "PID") or not _get(msg, "PID", 3, 1):
        raise Hl7Error("AE", REQUIRED_FIELD_MISSING, "PID-3 (patient ID) is empty", "PID^1^3")
    patient = _patient_values(msg)
    pid, issuer = patient["patient_id"], patient["issuer_of_patient_id"]
    now = time.time()

    def select(item: WorklistItem) -> bool:
        same_issuer = not issuer or not item.issuer_of_patient_id or \
            issuer == item.issuer_of_patient_id
        return item.active and item.patient_id == pid and same_issuer

    return store.update_where(select, lambda item: _demographics(item, patient, now,
                                                                 message_id, "A08"))


def apply_merge(store: WorklistStore, msg: hl7.Message, message_id: str) -> list[WorklistItem]:
    """ADT^A40: the prior patient's (MRG-1) active items move to the surviving one (PID-3)."""
    if not _has(msg, "PID") or not _get(msg, "PID", 3, 1):
        raise Hl7Error("AE", REQUIRED_FIELD_MISSING, "PID-3 (patient ID) is empty", "PID^1^3")
    prior = _get(msg, "MRG", 1, 1) if _has(msg, "MRG") else ""
    if not prior:
        raise Hl7Error("AE", REQUIRED_FIELD_MISSING, "MRG-1 (prior patient ID) is empty",
                       "MRG^1^1")
    patient = _patient_values(msg)
    now = time.time()
    return store.update_where(
        lambda item: item.active and item.patient_id == prior,
        lambda item: _demographics(item, patient, now, message_id, "A40"))


def _ts() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def _escape(text: str) -> str:
    """Text safe inside an HL7 field (default encoding characters)."""
    for char, escaped in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"),
                          ("~", "\\R\\")):
        text = text.replace(char, escaped)
    return re.sub(r"[\r\n\x00-\x1f]", " ", text)


def _msh_value(msg: hl7.Message | None, field: int, component: int = 1) -> str:
    return _escape(_get(msg, "MSH", field, component)) if msg is not None else ""


def make_ack(msg: hl7.Message | None, code: str, error: Hl7Error | None = None,
             application: str = "PACS") -> str:
    """An ACK for ``msg`` (None: unparseable): MSH, MSA and, when negative, ERR; CR-separated."""
    event = _msh_value(msg, 9, 2)
    control_id = f"PACS{int(time.time() * 1000)}{next(_SEQUENCE):04d}"
    version = _msh_value(msg, 12) or "2.5.1"
    msh = "|".join([
        "MSH", "^~\\&", _msh_value(msg, 5) or application, _msh_value(msg, 6),
        _msh_value(msg, 3), _msh_value(msg, 4), _ts(), "",
        f"ACK^{event}^ACK" if event else "ACK", control_id, _msh_value(msg, 11) or "P", version,
    ])
    msa = ["MSA", code, _msh_value(msg, 10)]
    segments = [msh]
    if error is not None:
        msa.append(_escape(error.text)[:80])
        title = _ERROR_TEXT.get(error.error_code, "")
        segments.append("|".join(msa))
        segments.append("|".join([
            "ERR", "", error.location, f"{error.error_code}^{title}^HL70357", "E", "", "", "",
            _escape(error.text),
        ]))
    else:
        segments.append("|".join(msa))
    return "\r".join(segments) + "\r"


class OrderHandler:
    """Turns one HL7 message (bytes of one MLLP frame) into its ACK, applying ORM orders."""

    def __init__(self, store: WorklistStore, default_station_aet: str = "",
                 application: str = "PACS") -> None:
        self.store = store
        self.default_station_aet = default_station_aet
        self.application = application
        self.on_applied: Callable[[WorklistItem], None] | None = None

    def handle(self, raw: bytes, peer: str = "") -> bytes:
        msg: hl7.Message | None = None
        try:
            msg = parse(decode_text(raw))
            kind, event = _get(msg, "MSH", 9, 1).upper(), _get(msg, "MSH", 9, 2).upper()
            message_id = _get(msg, "MSH", 10)
            if kind not in _SUPPORTED:
                raise Hl7Error("AR", UNSUPPORTED_MESSAGE_TYPE,
                               f"message type {kind or '(empty)'}^{event} is not supported "
                               f"({_SUPPORTED_TEXT})", "MSH^1^9")
            if event not in _SUPPORTED[kind]:
                raise Hl7Error("AR", UNSUPPORTED_EVENT_CODE,
                               f"event {kind}^{event or '(empty)'} is not supported "
                               f"({_SUPPORTED_TEXT})", "MSH^1^9^1^2")
            if kind == "ADT":
                update = apply_merge if event == "A40" else apply_patient_update
                changed = update(self.store, msg, message_id)
                log.info("HL7 %s from %s: ADT^%s for patient %s: %d worklist items updated",
                         message_id, peer, event, _get(msg, "PID", 3, 1), len(changed))
                return make_ack(msg, "AA", None, self.application).encode()
            order = read_order(msg, self.default_station_aet)
            if order.control not in ("NW", "XO", "SC", *_CANCEL):
                raise Hl7Error("AE", TABLE_VALUE_NOT_FOUND,
                               f"order control {order.control!r} is not supported (NW, XO, SC, "
                               "CA, OC, DC, OD)", "ORC^1^1")
            item = apply_order(self.store, order, message_id)
        except Hl7Error as exc:
            log.warning("HL7 %s from %s: %s %s (%d)", _get(msg, "MSH", 10) if msg else "?",
                        peer, exc.ack_code, exc.text, exc.error_code)
            return make_ack(msg, exc.ack_code, exc, self.application).encode()
        except CatalogError as exc:  # not stored, or not durably (failed sync): never AA
            log.error("HL7 %s from %s: not stored durably, answering AE: %s",
                      _get(msg, "MSH", 10) if msg else "?", peer, exc)
            error = Hl7Error("AE", INTERNAL_ERROR, f"not stored: {exc}")
            return make_ack(msg, "AE", error, self.application).encode()
        except Exception as exc:  # a bug: answer AE, keep serving
            log.exception("HL7 message from %s: internal error", peer)
            error = Hl7Error("AE", INTERNAL_ERROR, f"internal error: {exc!r}")
            return make_ack(msg, "AE", error, self.application).encode()
        log.info("HL7 %s from %s: order %s %s -> %s (accession %s, %s, station %s)",
                 message_id, peer, order.key, order.control, item.status,
                 item.accession_number, item.modality, item.station_aet)
        return make_ack(msg, "AA", None, self.application).encode()


def reject_unframed(raw: bytes, reason: str, application: str = "PACS") -> bytes:
    """The negative ACK for bytes that were not a proper MLLP frame (AR, 100)."""
    msg = None
    try:
        text = decode_text(raw)
        start = text.find("MSH")
        if start >= 0:
            msg = parse(text[start:])
    except Exception:
        msg = None
    error = Hl7Error("AR", SEGMENT_SEQUENCE_ERROR, f"MLLP framing error: {reason}")
    return make_ack(msg, "AR", error, application).encode()
