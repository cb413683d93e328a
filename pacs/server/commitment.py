"""Storage Commitment Push Model SCP (PS3.4 Annex J).

An N-ACTION-RQ (Action Type ID 1, "Request Storage Commitment") names a transaction and the
instances to commit. It is answered at once (success, or a failure for a bad request); the
check runs afterwards off the event loop: an instance is committed when the catalog knows it
and its blob exists with the indexed size and BLAKE2b digest. The outcome goes back as an
N-EVENT-REPORT-RQ (Event Type ID 1 all committed, 2 some failed) on the same association while
it is open, else on a new association to the requester's AE (``[remote.AET]`` in the settings),
where we take the SCP role of the Storage Commitment SOP class; when neither works it is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence

from pacs.dicom import uids
from pacs.errors import BlobNotFound, PacsError
from pacs.index.maintenance import blob_digest
from pacs.net import (
    RoleSelection,
    dimse,
)
from pacs.server.messages import Request, Response
from pacs.server.scu import SCUError, StoreSCU

if TYPE_CHECKING:
    from pacs.archive import Archive
    from pacs.config import RemoteAE

log = logging.getLogger("pacs.commitment")

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP instance
REQUEST_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2)
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type IDs (PS3.4 J.3.3)

# Failure Reasons (PS3.4 J.3.3.1.1) and N-ACTION statuses (PS3.7 C.5 / 10.1.4.1.10).
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
NO_SUCH_SOP_CLASS = 0x0118
CLASS_INSTANCE_CONFLICT = 0x0119
NO_SUCH_ACTION_TYPE = 0x0123

REPORT_TIMEOUT = 30.0  # for the N-EVENT-REPORT-RSP, and to connect / associate / release


class CommitmentRequestError(PacsError):
    """An N-ACTION-RQ we cannot take on: ``status`` and a comment for the response."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status, self.comment = status, comment


@dataclass(slots=True)
class Outcome:
    """The result of checking one transaction: (SOP class, SOP instance[, reason]) lists."""

    transaction_uid: str
    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def event_type(self) -> int:
        return SOME_FAILED if self.failed else ALL_COMMITTED


def _syntax(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a native transfer syntax."""
    if transfer_syntax == uids.IMPLICIT_VR_LITTLE_ENDIAN:
        return True, True
    return False, transfer_syntax != uids.EXPLICIT_VR_BIG_ENDIAN


def _uid(value: object) -> str:
    return str(value or "").strip(" \x00")


def parse_action(data: bytes, transfer_syntax: str) -> tuple[str, list[tuple[str, str]]]:
    """TransactionUID and the (SOP class, SOP instance) pairs of an N-ACTION-RQ data set;
    CommitmentRequestError(0x0110) when it is unreadable or incomplete."""
    implicit, little = _syntax(transfer_syntax)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(BytesIO(data), implicit, little)
            transaction = _uid(ds.get("TransactionUID"))
            items = ds.get("ReferencedSOPSequence")
            references = [(_uid(item.get("ReferencedSOPClassUID")),
                           _uid(item.get("ReferencedSOPInstanceUID"))) for item in items or ()]
    except Exception as exc:  # pydicom raises many kinds on garbage
        raise CommitmentRequestError(PROCESSING_FAILURE,
                                     f"cannot read the action information: {exc}") from exc
    if not transaction:
        raise CommitmentRequestError(PROCESSING_FAILURE, "no TransactionUID")
    if not references:
        raise CommitmentRequestError(PROCESSING_FAILURE, "no ReferencedSOPSequence items")
    for index, (sop_class, sop_instance) in enumerate(references, 1):
        if not sop_class or not sop_instance:
            raise CommitmentRequestError(
                PROCESSING_FAILURE, f"ReferencedSOPSequence item {index} lacks a UID")
    return transaction, references


def encode_report(outcome: Outcome, retrieve_aet: str, transfer_syntax: str) -> bytes:
    """The N-EVENT-REPORT Event Information data set (PS3.4 J.3.3.1)."""
    ds = Dataset()
    ds.TransactionUID = outcome.transaction_uid
    if outcome.committed:
        ds.RetrieveAETitle = retrieve_aet
        committed = []
        for sop_class, sop_instance in outcome.committed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            item.RetrieveAETitle = retrieve_aet
            committed.append(item)
        ds.ReferencedSOPSequence = DicomSequence(committed)
    if outcome.failed:
        failed = []
        for sop_class, sop_instance, reason in outcome.failed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            item.FailureReason = reason
            failed.append(item)
        ds.FailedSOPSequence = DicomSequence(failed)
    implicit, little = _syntax(transfer_syntax)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    write_dataset(buffer, ds)
    return buffer.getvalue()


def check_instances(
    archive: Archive, transaction_uid: str, references: Sequence[tuple[str, str]]
) -> Outcome:
    """Blocking: which referenced instances we hold intact (catalog + blob size + digest)."""
    outcome = Outcome(transaction_uid)
    for sop_class, sop_instance in references:
        record = archive.catalog.get_instance(sop_instance)
        if record is None:
            outcome.failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
            continue
        stored_class = record.attributes.get("SOPClassUID", "")
        if stored_class and stored_class != sop_class:
            log.warning("commitment %s: %s is a %s, not a %s", transaction_uid, sop_instance,
                        stored_class, sop_class)
            outcome.failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
            continue
        try:
            size, digest = blob_digest(archive.store, record.location)
        except BlobNotFound:
            log.error("commitment %s: blob of %s missing at %s", transaction_uid, sop_instance,
                      record.location)
            outcome.failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
            continue
        except (PacsError, OSError) as exc:
            log.error("commitment %s: cannot read %s: %s", transaction_uid, sop_instance, exc)
            outcome.failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
            continue
        if size != record.size or (record.digest and digest != record.digest):
            log.error("commitment %s: blob of %s damaged (size %d, indexed %d%s)",
                      transaction_uid, sop_instance, size, record.size,
                      ", digest differs" if digest != record.digest else "")
            outcome.failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
            continue
        outcome.committed.append((sop_class, sop_instance))
    return outcome


class ReportSCU(StoreSCU):
    """A requestor association to the commitment requester, proposing the Storage Commitment
    Push Model with the SCP role for us, to send it N-EVENT-REPORT-RQs."""

    @classmethod
    async def open(
        cls, remote: RemoteAE, calling_aet: str, timeout: float, max_pdu: int
    ) -> ReportSCU:
        scu = await cls.connect(
            remote.host, remote.port, calling_aet=calling_aet, called_aet=remote.aet,
            contexts=[(STORAGE_COMMITMENT_PUSH_MODEL,
                       (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN))],
            roles=[RoleSelection(STORAGE_COMMITMENT_PUSH_MODEL, False, True)],
            timeout=timeout, max_pdu=max_pdu,
        )  # fmt: skip
        if not scu.accepted.get(STORAGE_COMMITMENT_PUSH_MODEL):
            scu.abort()
            raise SCUError(f"{scu.peer}: Storage Commitment Push Model not accepted")
        return scu

    async def report(self, outcome: Outcome, retrieve_aet: str, timeout: float) -> int:
        """Send the N-EVENT-REPORT-RQ of ``outcome``: the peer's status."""
        self._check()
        transfer = self.accepted[STORAGE_COMMITMENT_PUSH_MODEL][0]
        context_id = self.contexts[(STORAGE_COMMITMENT_PUSH_MODEL, transfer)]
        message_id = (next(self._message_ids) - 1) % 0xFFFF + 1
        command = dimse.n_event_report_rq(message_id, STORAGE_COMMITMENT_PUSH_MODEL,
                                          STORAGE_COMMITMENT_INSTANCE, outcome.event_type)
        data = encode_report(outcome, retrieve_aet, transfer)
        self._write(self._association.send_command(context_id, command, True))
        self._write(self._association.send_dataset(context_id, data))
        event = await self._response(message_id, timeout)
        status = event.command.status
        return status if status is not None else PROCESSING_FAILURE


class CommitmentSCP:
    """N-ACTION-RQ handler; the checks and reports run as tasks of their own."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._tasks: set[asyncio.Task[None]] = set()

    async def n_action(self, request: Request) -> Response:
        command = request.command
        message_id = command.message_id or 0
        sop_class = str(command.get(dimse.REQUESTED_SOP_CLASS_UID) or request.abstract_syntax)
        sop_instance = str(command.get(dimse.REQUESTED_SOP_INSTANCE_UID)
                           or STORAGE_COMMITMENT_INSTANCE)
        action = command.get(dimse.ACTION_TYPE_ID)
        try:
            if sop_class != STORAGE_COMMITMENT_PUSH_MODEL or (
                    request.abstract_syntax != STORAGE_COMMITMENT_PUSH_MODEL):
                raise CommitmentRequestError(NO_SUCH_SOP_CLASS,
                                             f"N-ACTION for SOP class {sop_class}")
            if action != REQUEST_COMMITMENT:
                raise CommitmentRequestError(NO_SUCH_ACTION_TYPE,
                                             f"Action Type ID {action!r} is not 1")
            data = request.dataset_bytes()
            if data is None:
                raise CommitmentRequestError(PROCESSING_FAILURE, "N-ACTION-RQ without data set")
            transaction, references = parse_action(data, request.transfer_syntax)
        except CommitmentRequestError as exc:
            log.warning("%s: storage commitment request refused: %s", request.calling_aet,
                        exc.comment)
            return Response(dimse.n_action_rsp(message_id, sop_class, sop_instance, exc.status,
                                               error_comment=exc.comment))
        log.info("%s: storage commitment %s requested for %d instances", request.calling_aet,
                 transaction, len(references))
        task = asyncio.get_running_loop().create_task(
            self._commit(request, transaction, references))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return Response(dimse.n_action_rsp(message_id, sop_class, sop_instance, dimse.SUCCESS,
                                           action_type_id=REQUEST_COMMITMENT))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("storage commitment failed", exc_info=task.exception())

    async def _commit(
        self, request: Request, transaction: str, references: list[tuple[str, str]]
    ) -> None:
        await asyncio.sleep(0)  # the N-ACTION-RSP goes out first
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self.archive.executor, check_instances,
                                             self.archive, transaction, references)
        log.info("%s: storage commitment %s: %d committed, %d failed", request.calling_aet,
                 transaction, len(outcome.committed), len(outcome.failed))
        aet = self.archive.settings.aet
        why = "no association"
        association = request.sub_operations
        if association is not None:
            data = encode_report(outcome, aet, request.transfer_syntax)
            command = dimse.n_event_report_rq(0, STORAGE_COMMITMENT_PUSH_MODEL,
                                              STORAGE_COMMITMENT_INSTANCE, outcome.event_type)
            try:
                response = await association.send_request(request.context_id, command, data,
                                                          REPORT_TIMEOUT)
            except (ConnectionError, TimeoutError, PacsError) as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.info("%s: storage commitment %s: not reported on the requesting "
                         "association (%s)", request.calling_aet, transaction, why)
            else:
                self._log_status(request.calling_aet, transaction, response.status, "same")
                return
        remote = self.archive.settings.remotes.get(request.calling_aet)
        if remote is None:
            log.error("%s: storage commitment %s (event type %d) cannot be reported: the "
                      "association is gone (%s) and %s is no configured remote AE",
                      request.calling_aet, transaction, outcome.event_type, why,
                      request.calling_aet)
            return
        scu: ReportSCU | None = None
        try:
            scu = await ReportSCU.open(remote, aet, REPORT_TIMEOUT,
                                       self.archive.settings.max_pdu_size)
            status = await scu.report(outcome, aet, REPORT_TIMEOUT)
        except (SCUError, PacsError, OSError) as exc:
            log.error("%s: storage commitment %s (event type %d) cannot be reported: %s",
                      request.calling_aet, transaction, outcome.event_type, exc)
            return
        finally:
            if scu is not None:
                with contextlib.suppress(Exception):
                    await scu.release(REPORT_TIMEOUT)
        self._log_status(request.calling_aet, transaction, status, "a new")

    @staticmethod
    def _log_status(aet: str, transaction: str, status: int | None, which: str) -> None:
        if status == dimse.SUCCESS:
            log.info("%s: storage commitment %s reported on %s association", aet, transaction,
                     which)
        else:
            log.warning("%s: storage commitment %s reported on %s association, answered with "
                        "status %s", aet, transaction, which,
                        f"0x{status:04X}" if status is not None else "none")
