"""Storage Commitment Push Model SCP (PS3.4 Annex J).

An N-ACTION-RQ (Action Type ID 1, "Request Storage Commitment") names a transaction and the
instances to commit. It is answered at once (success, or a failure for a bad request); the
check runs afterwards off the event loop: an instance is committed when the catalog knows it
and its blob exists with the indexed size and digest (``pacs.store.digest``).

The outcome is queued in the index before anything is sent (LMDB ``commitment_outbox``, keyed
by due time like ``pacs.index.outbox``), then goes back as an N-EVENT-REPORT-RQ (Event Type ID
1 all committed, 2 some failed) on the same association while it is open; delivered there, it
leaves the queue. Otherwise worker 0 (``report_forever``) sends it on a new association to the
requester's remote AE (``pacs.remotes``: ``[remote.AET]`` or REST ``/modalities``), where we
take the SCP role of the Storage Commitment SOP class, retrying with an exponential back-off
(``forward_retry_base`` doubled per attempt, at most an hour) until the requester answers; the
queue survives restarts. An orderly stop during the check still queues its outcome (the check
thread is waited for); a kill -9 before the outcome is queued loses it (the requester's own
timeout then asks again).

    commitment_outbox   b"<due, 16 hex digits of µs>\0<Transaction UID>\0<AE>" -> JSON
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence

from pacs.dicom import uids
from pacs.errors import BlobNotFound, PacsError
from pacs.index.maintenance import blob_digest
from pacs.index.outbox import due_key
from pacs.net import (
    RoleSelection,
    dimse,
)
from pacs.remotes import RemoteRegistry
from pacs.server.messages import Request, Response
from pacs.server.scu import SCUError, StoreSCU, remote_tls

if TYPE_CHECKING:
    import ssl

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
DB_NAME = "commitment_outbox"
POLL = 1.0  # seconds between looks at the queue (worker 0)
MAX_BACKOFF = 3600.0
# While the requesting association may still carry the report, worker 0 leaves the entry alone
# (no second report); after this it is due for a new association (the holder died).
SAME_ASSOCIATION_GRACE = 2 * REPORT_TIMEOUT


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


@dataclass(slots=True)
class PendingReport:
    """A checked transaction whose N-EVENT-REPORT the requester has not acknowledged yet."""

    requester: str  # calling AE title of the N-ACTION
    transaction_uid: str
    committed: list[tuple[str, str]]
    failed: list[tuple[str, str, int]]
    due: float  # seconds since the epoch: not before
    attempts: int = 0  # failed deliveries
    last_error: str = ""
    queued_at: float = 0.0

    @property
    def key(self) -> bytes:
        return due_key(self.due, self.transaction_uid, self.requester)

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.transaction_uid, list(self.committed), list(self.failed))

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PendingReport:
        data = json.loads(raw)
        data["committed"] = [tuple(c) for c in data["committed"]]
        data["failed"] = [tuple(f) for f in data["failed"]]
        return cls(**data)


def queue_report(archive: Archive, requester: str, outcome: Outcome, due: float) -> PendingReport:
    """Blocking: queue the report of ``outcome`` for ``requester``, due at ``due``."""
    now = time.time()
    entry = PendingReport(requester, outcome.transaction_uid, outcome.committed,
                          outcome.failed, due, queued_at=now)
    catalog = archive.catalog

    def apply(t: Any) -> None:
        t.txn.put(entry.key, entry.encode(), db=catalog.database(DB_NAME))

    archive.writer.run(lambda: catalog._write(apply)).result()
    return entry


def queued_reports(archive: Archive) -> list[PendingReport]:
    """Every queued report, due first."""
    catalog = archive.catalog
    with catalog.reader(upper=False) as txn, txn.cursor(db=catalog.database(DB_NAME)) as cursor:
        return [PendingReport.decode(bytes(value)) for _key, value in cursor]


def settle_report(archive: Archive, entry: PendingReport, error: str,
                  due: float | None = None) -> None:
    """Blocking: drop a delivered report (no ``error``), or move it to its next due time:
    ``due`` when given (not counted as an attempt), else after the back-off."""
    catalog = archive.catalog

    def apply(t: Any) -> None:
        db = catalog.database(DB_NAME)
        t.txn.delete(entry.key, db=db)
        if error:
            if due is None:
                entry.attempts += 1
                base = archive.settings.forward_retry_base
                entry.due = time.time() + min(MAX_BACKOFF, base * 2 ** (entry.attempts - 1))
            else:
                entry.due = due
            entry.last_error = error[:500]
            t.txn.put(entry.key, entry.encode(), db=db)

    archive.writer.run(lambda: catalog._write(apply)).result()


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
            size, digest = blob_digest(archive.store, record.location, like=record.digest)
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
        cls, remote: RemoteAE, calling_aet: str, timeout: float, max_pdu: int,
        tls: ssl.SSLContext | None = None,
    ) -> ReportSCU:
        scu = await cls.connect(
            remote.host, remote.port, calling_aet=calling_aet, called_aet=remote.aet,
            contexts=[(STORAGE_COMMITMENT_PUSH_MODEL,
                       (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN))],
            roles=[RoleSelection(STORAGE_COMMITMENT_PUSH_MODEL, False, True)],
            timeout=timeout, max_pdu=max_pdu, tls=tls,
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
        association = request.sub_operations
        # Check and queue in one executor job: an orderly stop waits for it, so the outcome
        # is queued even when the event loop no longer runs this task.
        grace = SAME_ASSOCIATION_GRACE if association is not None else 0.0
        entry = await loop.run_in_executor(self.archive.executor, check_and_queue,
                                           self.archive, request.calling_aet, transaction,
                                           references, grace)
        if association is None:
            return
        outcome = entry.outcome
        data = encode_report(outcome, self.archive.settings.aet, request.transfer_syntax)
        command = dimse.n_event_report_rq(0, STORAGE_COMMITMENT_PUSH_MODEL,
                                          STORAGE_COMMITMENT_INSTANCE, outcome.event_type)
        try:
            response = await association.send_request(request.context_id, command, data,
                                                      REPORT_TIMEOUT)
        except (ConnectionError, TimeoutError, PacsError) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.info("%s: storage commitment %s: not reported on the requesting "
                     "association (%s); worker 0 sends it on a new one", request.calling_aet,
                     transaction, why)
            await loop.run_in_executor(self.archive.executor, settle_report, self.archive,
                                       entry, why, time.time())
            return
        self._log_status(request.calling_aet, transaction, response.status, "same")
        await loop.run_in_executor(self.archive.executor, settle_report, self.archive, entry,
                                   "")

    @staticmethod
    def _log_status(aet: str, transaction: str, status: int | None, which: str) -> None:
        if status == dimse.SUCCESS:
            log.info("%s: storage commitment %s reported on %s association", aet, transaction,
                     which)
        else:
            log.warning("%s: storage commitment %s reported on %s association, answered with "
                        "status %s", aet, transaction, which,
                        f"0x{status:04X}" if status is not None else "none")


def check_and_queue(archive: Archive, requester: str, transaction: str,
                    references: Sequence[tuple[str, str]], grace: float) -> PendingReport:
    """Blocking: check the instances, queue the report (due after ``grace``)."""
    outcome = check_instances(archive, transaction, references)
    log.info("%s: storage commitment %s: %d committed, %d failed", requester, transaction,
             len(outcome.committed), len(outcome.failed))
    return queue_report(archive, requester, outcome, time.time() + grace)


async def send_report(archive: Archive, remote: RemoteAE, outcome: Outcome) -> int:
    """The N-EVENT-REPORT of ``outcome`` on a new association to ``remote``: its status."""
    aet = archive.settings.aet
    scu: ReportSCU | None = None
    try:
        scu = await ReportSCU.open(remote, aet, REPORT_TIMEOUT, archive.settings.max_pdu_size,
                                   remote_tls(archive.settings, remote))
        return await scu.report(outcome, aet, REPORT_TIMEOUT)
    finally:
        if scu is not None:
            with contextlib.suppress(Exception):
                await scu.release(REPORT_TIMEOUT)


async def report_forever(archive: Archive) -> None:
    """Worker 0: send due reports on new associations until cancelled; failures back off."""
    loop = asyncio.get_running_loop()
    remotes = RemoteRegistry(archive.settings)
    while True:
        try:
            entries = await loop.run_in_executor(archive.executor, queued_reports, archive)
            now = time.time()
            for entry in entries:
                if entry.due > now:
                    break  # keys sort by due time
                outcome = entry.outcome
                remote = remotes.get(entry.requester)
                error = ""
                if remote is None or not remote.port:
                    error = f"{entry.requester} is no known remote AE with a port"
                else:
                    try:
                        status = await send_report(archive, remote, outcome)
                    except (SCUError, PacsError, OSError, TimeoutError) as exc:
                        error = f"{type(exc).__name__}: {exc}"
                    else:
                        if status != dimse.SUCCESS:
                            error = f"answered with status 0x{status:04X}"
                if error:
                    base = archive.settings.forward_retry_base
                    log.error("%s: storage commitment %s (event type %d) cannot be reported "
                              "(attempt %d): %s; next try in %.0f s", entry.requester,
                              entry.transaction_uid, outcome.event_type, entry.attempts + 1,
                              error, min(MAX_BACKOFF, base * 2 ** entry.attempts))
                else:
                    log.info("%s: storage commitment %s reported on a new association",
                             entry.requester, entry.transaction_uid)
                await loop.run_in_executor(archive.executor, settle_report, archive, entry,
                                           error)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or a catalog error: the queue is durable, go on
            log.exception("storage commitment reporting round failed")
        await asyncio.sleep(POLL)
