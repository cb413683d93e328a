"""HL7 to the RIS: ORU^R01 "study available" messages, a durable outbox, and the MLLP sender.

A message is queued in the same LMDB write transaction that marks its order COMPLETED
(``pacs.worklist.reconcile``), so a completed order always has its message waiting; it leaves
the queue only when the RIS answered AA or CA. A refused or unreachable RIS is retried with an
exponential back-off (``forward_retry_base`` doubled per attempt, at most an hour)::

    hl7_outbox   b"<due, 16 hex digits of µs>\\0<order key>" -> JSON OutboundMessage

ORU^R01 layout (HL7 v2.5.1): MSH, PID (PatientID^^^issuer, name), ORC (SC, placer, filler,
status CM), OBR (placer, filler, procedure code, accession in OBR-18, result status F in
OBR-25), OBX 1 ``ST`` the StudyInstanceUID (DCM 110180), OBX 2 ``RP`` the viewer URL.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pacs.worklist.store import WorklistItem

if TYPE_CHECKING:
    from pacs.archive import Archive

log = logging.getLogger("pacs.hl7")

DB_NAME = "hl7_outbox"
SB, EB, CR = b"\x0b", b"\x1c", b"\r"
POLL = 1.0  # seconds between looks at the queue
MAX_BACKOFF = 3600.0
_SEQUENCE = itertools.count(1)


@dataclass(slots=True)
class OutboundMessage:
    order_key: str
    message: str  # the HL7 text, segments ending in CR
    control_id: str
    due: float
    attempts: int = 0
    last_error: str = ""
    queued_at: float = 0.0

    @property
    def key(self) -> bytes:
        return f"{max(0, int(self.due * 1e6)):016x}\0{self.order_key}".encode()

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> OutboundMessage:
        return cls(**json.loads(raw))


def _escape(text: str) -> str:
    """HL7 escape sequences for the delimiters (a URL may hold '&')."""
    out = text.replace("\\", "\\E\\")
    for char, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
        out = out.replace(char, f"\\{code}\\")
    return out


def _xpn(pn: str) -> str:
    """DICOM PN family^given^middle^prefix^suffix -> HL7 XPN family^given^middle^suffix^prefix."""
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (_escape(p) for p in parts)
    return "^".join((family, given, middle, suffix, prefix)).rstrip("^")


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment from its non-empty fields by number (HL7 field numbers, 1-based)."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join((name, *values))


def study_available(item: WorklistItem, viewer_url: str, application: str,
                    now: float | None = None) -> tuple[str, str]:
    """(control ID, ORU^R01 text) announcing that ``item``'s study is in the archive."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    ts = stamp.strftime("%Y%m%d%H%M%S")
    control_id = f"{application[:10]}{stamp.strftime('%Y%m%d%H%M%S')}{next(_SEQUENCE):05d}"
    placer = _escape(item.placer_order_number.split("^")[0])
    filler = _escape(item.filler_order_number.split("^")[0])
    code = "^".join(_escape(v) for v in (item.procedure_code_value,
                                         item.requested_procedure_description,
                                         item.procedure_code_scheme)).rstrip("^")
    segments = [
        f"MSH|^~\\&|{_escape(application)}|PACS|RIS|RIS|{ts}||ORU^R01^ORU_R01|{control_id}|P|"
        "2.5.1",
        f"PID|1||{_escape(item.patient_id)}^^^{_escape(item.issuer_of_patient_id)}||"
        f"{_xpn(item.patient_name)}||{item.patient_birth_date}|{item.patient_sex}",
        f"ORC|SC|{placer}|{filler}||CM",
        _segment("OBR", {1: "1", 2: placer, 3: filler, 4: code,
                         7: f"{item.start_date}{item.start_time}",
                         18: _escape(item.accession_number),
                         19: _escape(item.requested_procedure_id), 22: ts, 25: "F"}),
        f"OBX|1|ST|110180^Study Instance UID^DCM||{item.study_instance_uid}||||||F",
        f"OBX|2|RP|VIEWER^Image viewer^L||{_escape(viewer_url)}^PACS^TEXT^HTML||||||F",
    ]
    return control_id, "\r".join(segments) + "\r"


def enqueue(txn: Any, db: Any, item: WorklistItem, viewer_url: str, application: str,
            now: float) -> OutboundMessage:
    """Queue the ORU for ``item`` (inside the transaction that completes the order)."""
    control_id, text = study_available(item, viewer_url, application, now)
    entry = OutboundMessage(item.key, text, control_id, now, queued_at=now)
    txn.put(entry.key, entry.encode(), db=db)
    return entry


def queued(archive: Archive) -> list[OutboundMessage]:
    """Every queued message, due first."""
    catalog = archive.catalog
    with catalog.reader(upper=False) as txn, txn.cursor(db=catalog.database(DB_NAME)) as cursor:
        return [OutboundMessage.decode(bytes(value)) for _key, value in cursor]


def _settle(archive: Archive, entry: OutboundMessage, error: str) -> None:
    """Drop a delivered entry, or move a failed one to its next due time."""
    catalog = archive.catalog

    def apply(t: Any) -> None:
        db = catalog.database(DB_NAME)
        t.txn.delete(entry.key, db=db)
        if error:
            entry.attempts += 1
            entry.last_error = error[:500]
            base = archive.settings.forward_retry_base
            delay = min(MAX_BACKOFF, base * 2 ** (entry.attempts - 1))
            entry.due = time.time() + delay
            t.txn.put(entry.key, entry.encode(), db=db)

    archive.writer.run(lambda: catalog._write(apply)).result()


async def send_mllp(host: str, port: int, message: str, timeout: float = 30.0) -> str:
    """Send one message framed in MLLP and return the ACK code (MSA-1) of the answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(SB + message.encode() + EB + CR)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(EB + CR), timeout)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    text = raw.lstrip(SB)[:-2].decode("utf-8", "replace")
    for segment in text.replace("\n", "\r").split("\r"):
        if segment.startswith("MSA"):
            fields = segment.split(segment[3] if len(segment) > 3 else "|")
            return fields[1].strip() if len(fields) > 1 else ""
    return ""


async def send_forever(archive: Archive) -> None:
    """Worker 0: deliver due messages to ``ris_host:ris_port`` until cancelled."""
    settings = archive.settings
    loop = asyncio.get_running_loop()
    while True:
        try:
            now = time.time()
            entries = await loop.run_in_executor(archive.executor, queued, archive)
            for entry in entries:
                if entry.due > now:
                    break
                try:
                    code = await send_mllp(settings.ris_host, settings.ris_port, entry.message)
                    error = "" if code in ("AA", "CA") else f"RIS answered {code or 'no MSA'}"
                except (OSError, TimeoutError, asyncio.IncompleteReadError,
                        asyncio.LimitOverrunError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                if error:
                    log.warning("ORU for order %s to %s:%d failed (attempt %d): %s",
                                entry.order_key, settings.ris_host, settings.ris_port,
                                entry.attempts + 1, error)
                else:
                    log.info("ORU %s for order %s delivered to %s:%d", entry.control_id,
                             entry.order_key, settings.ris_host, settings.ris_port)
                await loop.run_in_executor(archive.executor, _settle, archive, entry, error)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or a catalog error: log, keep the loop alive
            log.exception("HL7 outbound round failed")
        await asyncio.sleep(POLL)
