"""Modality Performed Procedure Step SCP (PS3.4 Annex F.7): N-CREATE and N-SET.

A modality reports what it performs: N-CREATE (status IN PROGRESS) when the exam starts, N-SET
with COMPLETED or DISCONTINUED when it ends. Each step is kept in the LMDB sub-database ``mpps``
(``b"<SOP Instance UID>" -> JSON MppsRecord``) and updates the order it names:

* the order is the worklist item whose StudyInstanceUID, else AccessionNumber (with the
  ScheduledProcedureStepID when given), matches an item of the Scheduled Step Attributes
  Sequence; a step for no known order (an unscheduled exam) is kept but updates nothing;
* IN PROGRESS -> the item is STARTED; DISCONTINUED -> DISCONTINUED (off the worklist, no ORU);
  COMPLETED -> COMPLETED (the RIS learns of the images when reconciliation sees them).

Statuses (PS3.4 F.7.2.1.2, F.7.2.2.2): 0x0111 duplicate SOP instance, 0x0106 invalid attribute
value (a status other than IN PROGRESS at creation, or an unknown one), 0x0112 no such SOP
instance (N-SET of an unknown step), 0x0110 with Error ID 0xA710 (a step already COMPLETED or
DISCONTINUED may no longer be updated; without an Error ID: the step could not be stored
durably, e.g. a failed catalog sync), 0x0120 missing attribute.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid

from pacs.dicom import uids
from pacs.errors import CatalogError
from pacs.net import dimse
from pacs.server.messages import Request, Response
from pacs.worklist.store import DB_NAME as WORKLIST_DB
from pacs.worklist.store import WorklistItem

if TYPE_CHECKING:
    from pacs.archive import Archive

log = logging.getLogger("pacs.mpps")

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
DB_NAME = "mpps"
PROCESSING_FAILURE = 0x0110
DUPLICATE_INSTANCE = 0x0111
NO_SUCH_INSTANCE = 0x0112
INVALID_ATTRIBUTE_VALUE = 0x0106
MISSING_ATTRIBUTE = 0x0120
NO_LONGER_UPDATABLE = 0xA710  # Error ID with PROCESSING_FAILURE (PS3.4 F.7.2.2.2)
FINAL = ("COMPLETED", "DISCONTINUED")
_ORDER_STATUS = {"IN PROGRESS": "STARTED", "COMPLETED": "COMPLETED",
                 "DISCONTINUED": "DISCONTINUED"}


class MppsError(Exception):
    def __init__(self, status: int, comment: str, error_id: int | None = None) -> None:
        super().__init__(comment)
        self.status, self.comment, self.error_id = status, comment, error_id


@dataclass(slots=True)
class MppsRecord:
    uid: str
    status: str
    order_key: str = ""
    patient_id: str = ""
    study_uid: str = ""
    accession_number: str = ""
    calling_aet: str = ""
    created: float = 0.0
    updated: float = 0.0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> MppsRecord:
        return cls(**json.loads(raw))


def _parse(data: bytes | None, transfer_syntax: str) -> Dataset:
    if not data:
        raise MppsError(MISSING_ATTRIBUTE, "request without a data set")
    try:
        ds = read_dataset(BytesIO(data), transfer_syntax == uids.IMPLICIT_VR_LITTLE_ENDIAN,
                          transfer_syntax != uids.EXPLICIT_VR_BIG_ENDIAN)
        for element in ds.iterall():  # decode now: a bad value fails here, not later
            if element.VR != "SQ" and _dictionary_vr(element.tag) == "SQ":
                raise MppsError(INVALID_ATTRIBUTE_VALUE,
                                f"{element.keyword} must be a sequence, not {element.VR}")
        return ds
    except MppsError:
        raise
    except Exception as exc:  # pydicom raises many kinds on garbage (OSError, struct, ...)
        raise MppsError(PROCESSING_FAILURE, f"cannot decode the data set: {exc}") from None


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:  # private or unknown
        return ""


def _scheduled(ds: Dataset) -> list[tuple[str, str, str]]:
    """(StudyInstanceUID, AccessionNumber, ScheduledProcedureStepID) of each scheduled step."""
    steps = []
    for item in ds.get("ScheduledStepAttributesSequence", []) or []:
        steps.append((str(item.get("StudyInstanceUID", "") or ""),
                      str(item.get("AccessionNumber", "") or ""),
                      str(item.get("ScheduledProcedureStepID", "") or "")))
    return steps


def _order_of(items: list[WorklistItem], steps: list[tuple[str, str, str]]) -> WorklistItem | None:
    for study_uid, accession, sps_id in steps:
        for item in items:
            if study_uid and item.study_instance_uid == study_uid:
                return item
        for item in items:
            if accession and item.accession_number == accession and (
                    not sps_id or item.sps_id == sps_id):
                return item
    return None


class MppsSCP:
    """N-CREATE / N-SET on the MPPS SOP class; writes go through the catalog writer thread."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def _write(self, fn: Any) -> Any:
        """``fn`` in one write transaction, durable on return: the catalog commits without
        fsync and MPPS steps are in no segment log, so the sync comes before any success."""
        catalog = self.archive.catalog
        try:
            result = self.archive.writer.run(lambda: catalog._write(fn)).result()
            catalog.sync()  # in this thread, not the writer's: an fsync there stalls ingest
        except CatalogError as exc:
            log.error("MPPS step not stored durably: %s", exc)
            raise MppsError(PROCESSING_FAILURE, f"not stored: {exc}") from exc
        return result

    def _apply_order(self, t: Any, record: MppsRecord, status: str, now: float) -> None:
        if not record.order_key:
            return
        db = self.archive.catalog.database(WORKLIST_DB)
        raw = t.txn.get(record.order_key.encode(), db=db)
        if raw is None:
            return
        item = WorklistItem.decode(bytes(raw))
        if item.status in ("CANCELLED", "DISCONTINUED"):
            return  # the RIS cancelled it: a late MPPS does not revive it
        item = replace(item, status=_ORDER_STATUS[status], mpps_uid=record.uid, updated=now,
                       order_control="MPPS")
        t.txn.put(item.key.encode(), item.encode(), db=db)

    def _create(self, uid: str, ds: Dataset, calling_aet: str) -> MppsRecord:
        status = str(ds.get("PerformedProcedureStepStatus", "") or "").strip()
        if status != "IN PROGRESS":
            raise MppsError(INVALID_ATTRIBUTE_VALUE, f"N-CREATE with PerformedProcedureStepStatus"
                            f" {status!r}: must be IN PROGRESS")
        steps = _scheduled(ds)
        now = time.time()
        catalog = self.archive.catalog

        def apply(t: Any) -> MppsRecord:
            db = catalog.database(DB_NAME)
            if t.txn.get(uid.encode(), db=db) is not None:
                raise MppsError(DUPLICATE_INSTANCE, f"MPPS {uid} exists")
            with t.txn.cursor(db=catalog.database(WORKLIST_DB)) as cursor:
                items = [WorklistItem.decode(bytes(v)) for _k, v in cursor]
            order = _order_of([i for i in items if i.active], steps)
            first = steps[0] if steps else ("", "", "")
            record = MppsRecord(uid, status, order.key if order else "",
                                str(ds.get("PatientID", "") or ""),
                                order.study_instance_uid if order else first[0],
                                order.accession_number if order else first[1],
                                calling_aet, now, now)
            t.txn.put(uid.encode(), record.encode(), db=db)
            self._apply_order(t, record, status, now)
            return record

        result: MppsRecord = self._write(apply)
        return result

    def _set(self, uid: str, ds: Dataset) -> MppsRecord:
        status = str(ds.get("PerformedProcedureStepStatus", "") or "").strip()
        if status and status not in _ORDER_STATUS:
            raise MppsError(INVALID_ATTRIBUTE_VALUE,
                            f"PerformedProcedureStepStatus {status!r} is not one of "
                            "IN PROGRESS, COMPLETED, DISCONTINUED")
        now = time.time()
        catalog = self.archive.catalog

        def apply(t: Any) -> MppsRecord:
            db = catalog.database(DB_NAME)
            raw = t.txn.get(uid.encode(), db=db)
            if raw is None:
                raise MppsError(NO_SUCH_INSTANCE, f"MPPS {uid} is unknown")
            record = MppsRecord.decode(bytes(raw))
            if record.status in FINAL:
                raise MppsError(PROCESSING_FAILURE, f"MPPS {uid} is {record.status}: it may no "
                                "longer be updated", NO_LONGER_UPDATABLE)
            if status:
                record = replace(record, status=status, updated=now)
            t.txn.put(uid.encode(), record.encode(), db=db)
            if status:
                self._apply_order(t, record, status, now)
            return record

        result: MppsRecord = self._write(apply)
        return result

    async def n_create(self, request: Request) -> Response:
        command = request.command
        uid = str(command.get(dimse.AFFECTED_SOP_INSTANCE_UID) or "") or generate_uid()
        return await self._answer(request, dimse.N_CREATE_RSP, uid, "N-CREATE")

    async def n_set(self, request: Request) -> Response:
        uid = str(request.command.get(dimse.REQUESTED_SOP_INSTANCE_UID) or "")
        return await self._answer(request, dimse.N_SET_RSP, uid, "N-SET")

    async def _answer(self, request: Request, field: int, uid: str, name: str) -> Response:
        message_id = request.command.message_id or 0
        loop = asyncio.get_running_loop()
        try:
            if request.abstract_syntax != MPPS_SOP_CLASS:
                raise MppsError(0x0118, f"{name} on {request.abstract_syntax}")  # no such class
            if not uid:
                raise MppsError(MISSING_ATTRIBUTE, f"{name} without a SOP Instance UID")
            ds = _parse(request.dataset_bytes(), request.transfer_syntax)
            if field == dimse.N_CREATE_RSP:
                record = await loop.run_in_executor(self.archive.executor, self._create, uid, ds,
                                                    request.calling_aet)
            else:
                record = await loop.run_in_executor(self.archive.executor, self._set, uid, ds)
        except MppsError as exc:
            log.warning("%s: MPPS %s %s refused: %s", request.calling_aet, name, uid, exc.comment)
            response = dimse.n_rsp(field, message_id, MPPS_SOP_CLASS, uid, exc.status,
                                   exc.comment)
            if exc.error_id is not None:
                response[dimse.ERROR_ID] = exc.error_id
            return Response(response)
        log.info("%s: MPPS %s %s: %s (order %s, study %s)", request.calling_aet, name, uid,
                 record.status, record.order_key or "none", record.study_uid or "?")
        if self.archive.audit is not None:
            self.archive.audit.record("order", user=request.calling_aet, source=request.peer,
                                      patient_id=record.patient_id, study_uid=record.study_uid,
                                      mpps=uid, status=record.status, order=record.order_key)
        return Response(dimse.n_rsp(field, message_id, MPPS_SOP_CLASS, uid, dimse.SUCCESS))
