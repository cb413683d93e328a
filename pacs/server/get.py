"""C-GET SCP (PS3.4 C.4.3): the instances go back as C-STORE sub-operations on the same
association, over the storage contexts the peer proposed with the SCP role.

Statuses: 0xFF00 pending after the first sub-operation and then at most every
``PENDING_INTERVAL`` (with the remaining / completed / failed / warning counts), then 0x0000
all done, 0xB000 some failed (Failed SOP Instance UID List), 0xA702 none could be done,
0xFE00 cancelled, 0xA900 / 0xC000 a bad identifier.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from pacs import metrics
from pacs.dicom import uids
from pacs.dicom.identifier import encode_identifier
from pacs.errors import PacsError
from pacs.index.records import InstanceRecord
from pacs.net import dimse
from pacs.server.messages import Request, Response, request_identifier
from pacs.server.payload import Head, ReadAhead, instance_payload
from pacs.server.retrieve import resolve_instances

if TYPE_CHECKING:
    from pacs.archive import Archive
    from pacs.audit import Outcome

log = logging.getLogger("pacs.get")

PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
GET_MODELS = {PATIENT_ROOT_GET: "PATIENT", STUDY_ROOT_GET: "STUDY"}

SUB_OPERATIONS_FAILED = 0xA702
SOME_FAILED = 0xB000
SUB_STORE_TIMEOUT = 60.0
NOT_SENT = 0xC000  # a sub-operation that could not even be attempted (counted as failed)
# Pending responses are optional (PS3.4 C.4.2.1.4, C.4.3.1.4): one after the first
# sub-operation, then at most one per interval with the counts of the moment. One per
# sub-operation cost more than small sub-operations themselves, on both sides.
PENDING_INTERVAL = 0.1  # s
Chunk = bytes | memoryview


@dataclass
class Counts:
    """Sub-operation bookkeeping shared by C-GET and C-MOVE."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def record(self, uid: str, status: int) -> None:
        self.remaining -= 1
        if status == dimse.SUCCESS:
            self.completed += 1
        elif dimse.is_warning(status):  # stored: coercion, elements discarded, ...
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(uid)

    def fields(self, final: bool) -> dict[int, int | str]:
        values: dict[int, int | str] = {
            dimse.NUMBER_OF_COMPLETED_SUBOPERATIONS: self.completed,
            dimse.NUMBER_OF_FAILED_SUBOPERATIONS: self.failed,
            dimse.NUMBER_OF_WARNING_SUBOPERATIONS: self.warning,
        }
        if not final:
            values[dimse.NUMBER_OF_REMAINING_SUBOPERATIONS] = self.remaining
        return values

    def final_status(self, cancelled: bool) -> int:
        if cancelled:
            return dimse.CANCEL
        if self.failed and not (self.completed or self.warning):
            return SUB_OPERATIONS_FAILED
        if self.failed or self.warning:
            return SOME_FAILED
        return dimse.SUCCESS


def retrieve_rsp(request: Request, field_value: int, status: int, counts: Counts,
                 final: bool, has_dataset: bool = False) -> dimse.Command:
    command = dimse.Command({
        dimse.AFFECTED_SOP_CLASS_UID: request.abstract_syntax,
        dimse.COMMAND_FIELD: field_value,
        dimse.MESSAGE_ID_BEING_RESPONDED_TO: request.command.message_id or 0,
        dimse.COMMAND_DATA_SET_TYPE: dimse.DATA_SET_PRESENT if has_dataset else dimse.NO_DATA_SET,
        dimse.STATUS: status,
    })  # fmt: skip
    command.update(counts.fields(final))
    return command


# Explicit VR gives a UI element a 2-byte length: 65,534 bytes, about 1,000 UIDs of 64.
MAX_SHORT_VALUE = 0xFFFE


def failed_list(failed_uids: list[str], transfer_syntax: str) -> str:
    """The Failed SOP Instance UID List's value: every UID in Implicit VR; in the explicit
    syntaxes as many whole UIDs as the element's 2-byte length holds (padding included)."""
    text = "\\".join(failed_uids)
    if transfer_syntax == uids.IMPLICIT_VR_LITTLE_ENDIAN or len(text) + len(text) % 2 <= (
            MAX_SHORT_VALUE):
        return text
    cut = text.rfind("\\", 0, MAX_SHORT_VALUE)
    return text[:cut]


def final_response(request: Request, field_value: int, counts: Counts,
                   cancelled: bool) -> Response:
    status = counts.final_status(cancelled)
    if counts.failed_uids and status != dimse.SUCCESS:
        listed = failed_list(counts.failed_uids, request.transfer_syntax)
        kept = listed.count("\\") + 1
        if kept < len(counts.failed_uids):
            log.warning("%s: the final response lists %d of %d failed instances (the most "
                        "%s can hold in one element)", request.calling_aet, kept,
                        len(counts.failed_uids), request.transfer_syntax)
        identifier = encode_identifier({"FailedSOPInstanceUIDList": listed},
                                       request.transfer_syntax)
        return Response(retrieve_rsp(request, field_value, status, counts, True, True),
                        identifier)
    return Response(retrieve_rsp(request, field_value, status, counts, True))


def audit_retrieve(archive: Archive, request: Request, operation: str, destination: str,
                   records: list[InstanceRecord], counts: Counts, cancelled: bool) -> None:
    """One audit "retrieve" event per study sent (ATNA's "DICOM Instances Transferred")."""
    if archive.audit is None:
        return
    failed = set(counts.failed_uids)
    studies: dict[str, list[Any]] = {}  # study -> [patient_id, instances, failed]
    for record in records:
        a = record.attributes
        entry = studies.setdefault(a.get("StudyInstanceUID", ""), [a.get("PatientID", ""), 0, 0])
        entry[1] += 1
        entry[2] += record.sop_instance_uid in failed
    status = counts.final_status(cancelled)
    outcome: Outcome = "success" if not (counts.failed or cancelled) else "failure"
    for study_uid, (patient_id, instances, failures) in (studies or {"": ["", 0, 0]}).items():
        archive.audit.record(
            "retrieve", outcome, user=request.calling_aet, source=request.peer,
            patient_id=patient_id, study_uid=study_uid, operation=operation,
            destination=destination, count=instances, failed=failures,
            status=f"0x{status:04X}")


async def _counted(chunks: AsyncIterator[Chunk], service: str) -> AsyncIterator[Chunk]:
    """``chunks`` as they are, counted in pacs_bytes_sent."""
    async for chunk in chunks:
        metrics.BYTES_SENT.inc((service,), len(chunk))
        yield chunk


async def identified_instances(archive: Archive, request: Request, models: dict[str, str],
                               ) -> tuple[list[InstanceRecord], Counts]:
    """The instances a C-GET / C-MOVE identifier names (QueryError when it is bad), and the
    counts of its sub-operations: one per instance, and those it names at IMAGE level that
    are not here already failed (PS3.4 C.4.2.3.1: the final response cannot be Success when
    not every instance asked for was sent)."""
    model, elements = request_identifier(request, models)
    loop = asyncio.get_running_loop()
    engine = await loop.run_in_executor(archive.executor, lambda: archive.queries)
    records, unknown = await loop.run_in_executor(
        archive.executor, resolve_instances, archive.catalog, engine, model, elements)
    counts = Counts(remaining=len(records) + len(unknown))
    if unknown:
        log.warning("%s: %d SOP Instance UIDs asked for are not here (%s%s): failed "
                    "sub-operations", request.calling_aet, len(unknown), unknown[0],
                    ", ..." if len(unknown) > 1 else "")
    for uid in unknown:
        counts.record(uid, NOT_SENT)
    return records, counts


def _location(record: InstanceRecord) -> str:
    return record.location


class GetSCP:
    """Answers C-GET-RQ in the Patient Root and Study Root models."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def c_get(self, request: Request) -> Response:
        records, counts = await identified_instances(self.archive, request, GET_MODELS)
        subops = request.sub_operations
        assert subops is not None and request.send_pending is not None
        cancelled = False
        # The next instances are read (whole when small) in one executor call per batch while
        # the current ones are sent.
        ahead = ReadAhead(self.archive.store, deque(records), _location, self.archive.executor)
        loop = asyncio.get_running_loop()
        last_pending = -PENDING_INTERVAL
        contexts_of: dict[str, list[tuple[int, str]]] = {}  # SOP class -> accepted contexts
        try:
            while (entry := await ahead.next()) is not None:
                if request.cancel is not None and request.cancel.is_set():
                    cancelled = True
                    break
                record, head = entry
                try:
                    status = await self._sub_store(request, record, head, contexts_of)
                except ConnectionError as exc:
                    # The peer asked to release (or left) with sub-operations to go: none of
                    # them can run; the final response counts them failed, if it can still go.
                    left = records[len(records) - counts.remaining:]
                    log.warning("%s: C-GET stopped, %d sub-operations not completed: %s",
                                request.calling_aet, len(left), exc)
                    for unsent in left:
                        counts.record(unsent.sop_instance_uid, NOT_SENT)
                    break
                counts.record(record.sop_instance_uid, status)
                if counts.remaining and loop.time() - last_pending >= PENDING_INTERVAL:
                    last_pending = loop.time()
                    await request.send_pending(
                        retrieve_rsp(request, dimse.C_GET_RSP, dimse.PENDING, counts, False),
                        None)
        finally:
            ahead.give_back()
        log.info("%s: C-GET of %d instances: %d completed, %d failed, %d warnings%s",
                 request.calling_aet, len(records), counts.completed, counts.failed,
                 counts.warning, " (cancelled)" if cancelled else "")
        audit_retrieve(self.archive, request, "C-GET", request.calling_aet, records, counts,
                       cancelled)
        return final_response(request, dimse.C_GET_RSP, counts, cancelled)

    async def _sub_store(self, request: Request, record: InstanceRecord,
                         head: Head | Exception,
                         contexts_of: dict[str, list[tuple[int, str]]]) -> int:
        """One C-STORE sub-operation; its status (0xA700-ish failure when it cannot run)."""
        subops = request.sub_operations
        assert subops is not None
        sop_class = record.attributes.get("SOPClassUID", "")
        contexts = contexts_of.get(sop_class)
        if contexts is None:  # a walk over every accepted context: once per SOP class
            contexts = contexts_of[sop_class] = subops.accepted_syntaxes(sop_class)
        try:
            if isinstance(head, Exception):
                raise head
            syntax, chunks = await instance_payload(
                self.archive.store, record, [ts for _, ts in contexts], self.archive.executor,
                head)
        except (PacsError, OSError, ValueError) as exc:
            log.warning("%s: C-GET cannot send %s: %s", request.calling_aet,
                        record.sop_instance_uid, exc)
            return NOT_SENT
        context_id = next(cid for cid, ts in contexts if ts == syntax)
        if syntax != record.transfer_syntax_uid:
            log.info("%s: sending %s as %s, converted from %s", request.calling_aet,
                     record.sop_instance_uid, syntax, record.transfer_syntax_uid)
        command = dimse.c_store_rq(0, sop_class, record.sop_instance_uid,
                                   move_originator_ae_title=None)
        try:
            # The protocol writes any bytes-like chunk (its annotation says bytes).
            counted = cast(AsyncIterator[bytes], _counted(chunks, "C-GET"))
            rsp = await subops.send_sub_store(context_id, command, counted, SUB_STORE_TIMEOUT)
        except TimeoutError:
            log.warning("%s: no C-STORE-RSP for %s within %.0f s", request.calling_aet,
                        record.sop_instance_uid, SUB_STORE_TIMEOUT)
            return NOT_SENT
        return rsp.status if rsp.status is not None else NOT_SENT
