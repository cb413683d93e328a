"""SCP dispatch: one table from DIMSE command field to handler; errors become statuses here.

PS3.7 §9: a request is answered by a response carrying the request's message ID, SOP class and
instance, and a status. Handlers raise ``IngestError`` (or any ``PacsError``); this module is the
single boundary that turns them into a status and an error comment on the wire.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

from pacs import metrics
from pacs.dicom import uids
from pacs.errors import IngestError, PacsError, QueryError
from pacs.ingest import CANNOT_UNDERSTAND, PROCESSING_FAILURE, SUCCESS
from pacs.net import dimse
from pacs.server.commitment import STORAGE_COMMITMENT_PUSH_MODEL, CommitmentSCP
from pacs.server.find import FIND_MODELS, FindSCP
from pacs.server.get import GET_MODELS, GetSCP
from pacs.server.messages import Handler, Request, Response
from pacs.server.move import MOVE_MODELS, MoveSCP
from pacs.server.mpps import MPPS_SOP_CLASS, MppsSCP
from pacs.server.worklist_find import MODALITY_WORKLIST_FIND, WorklistFindSCP

if TYPE_CHECKING:
    from pacs.archive import Archive
    from pacs.audit import Action

log = logging.getLogger("pacs.scp")

UNRECOGNIZED_OPERATION = 0x0211  # PS3.7 C.4.2 (general status)
SOP_CLASS_NOT_SUPPORTED = 0x0122

OPERATIONS = {
    dimse.C_ECHO_RQ: "C-ECHO", dimse.C_STORE_RQ: "C-STORE", dimse.C_FIND_RQ: "C-FIND",
    dimse.C_GET_RQ: "C-GET", dimse.C_MOVE_RQ: "C-MOVE", dimse.N_ACTION_RQ: "N-ACTION",
    dimse.N_CREATE_RQ: "N-CREATE", dimse.N_SET_RQ: "N-SET",
}  # the metrics' operation label
_AUDITED = {"C-FIND": "query", "C-GET": "retrieve", "C-MOVE": "retrieve"}


def supported_contexts() -> dict[str, tuple[str, ...]]:
    """Abstract syntax -> transfer syntaxes we accept, in our order of preference."""
    contexts: dict[str, tuple[str, ...]] = {
        uids.VERIFICATION: (uids.IMPLICIT_VR_LITTLE_ENDIAN, uids.EXPLICIT_VR_LITTLE_ENDIAN),
    }
    for find_model in (*FIND_MODELS, *GET_MODELS, *MOVE_MODELS, MODALITY_WORKLIST_FIND):
        contexts[find_model] = (
            uids.EXPLICIT_VR_LITTLE_ENDIAN,
            uids.IMPLICIT_VR_LITTLE_ENDIAN,
            uids.EXPLICIT_VR_BIG_ENDIAN,
        )
    for sop_class in uids.STORAGE_SOP_CLASSES:
        contexts[sop_class] = uids.ALL_TRANSFER_SYNTAXES
    contexts[MPPS_SOP_CLASS] = (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)
    contexts[STORAGE_COMMITMENT_PUSH_MODEL] = (
        uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)
    return contexts


class Services:
    """The SCP side of every DIMSE service the archive offers."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.ingest = archive.ingest
        self.find = FindSCP(archive)
        self.get = GetSCP(archive)
        self.move = MoveSCP(archive)
        self.commitment = CommitmentSCP(archive)
        self.worklist = WorklistFindSCP(archive)
        self.mpps = MppsSCP(archive)
        self.handlers: Mapping[int, Handler] = {
            dimse.C_ECHO_RQ: self.c_echo,
            dimse.C_STORE_RQ: self.c_store,
            dimse.C_FIND_RQ: self.c_find,
            dimse.C_GET_RQ: self.get.c_get,
            dimse.C_MOVE_RQ: self.move.c_move,
            dimse.N_ACTION_RQ: self.commitment.n_action,
            dimse.N_CREATE_RQ: self.mpps.n_create,
            dimse.N_SET_RQ: self.mpps.n_set,
        }
        # Stores are audited once per (association, study), not per instance.
        self.audit_buffer = metrics.audit_buffer(archive.audit)

    async def handle(self, request: Request) -> Response:
        """Answer a request; never raises for a handled request (status says what happened)."""
        started = time.perf_counter()
        response = await self._dispatch(request)
        field = request.command.get(dimse.COMMAND_FIELD)
        operation = OPERATIONS.get(field, "other") if isinstance(field, int) else "other"
        metrics.DIMSE_SECONDS.observe(time.perf_counter() - started, operation)
        status = response.command.status
        metrics.DIMSE_REQUESTS.inc((operation, metrics.aet_label(request.calling_aet),
                                    metrics.status_class(status)))
        return response

    def _audit_refused(self, request: Request, comment: str) -> None:
        """A refused query or retrieve (bad identifier, internal error) is audited too; a
        refused store is counted in its association's store event."""
        field = request.command.get(dimse.COMMAND_FIELD)
        operation = OPERATIONS.get(field, "") if isinstance(field, int) else ""
        if operation == "C-STORE":
            self.audit_buffer.add("store", request.calling_aet, request.peer, "", "",
                                  outcome="failure")
            return
        action = _AUDITED.get(operation)
        if action is not None and self.archive.audit is not None:
            self.archive.audit.record(cast("Action", action), "failure",
                                      user=request.calling_aet, source=request.peer,
                                      operation=operation, detail=comment)

    async def _dispatch(self, request: Request) -> Response:
        field = request.command.get(dimse.COMMAND_FIELD)
        handler = self.handlers.get(field) if isinstance(field, int) else None
        if handler is None:
            log.warning("%s: unsupported DIMSE command field %r", request.calling_aet, field)
            return self._failure(request, UNRECOGNIZED_OPERATION,
                                 f"command field {field!r} is not supported")
        try:
            return await handler(request)
        except IngestError as exc:
            log.warning("%s: %s refused: %s", request.calling_aet,
                        request.command.get(dimse.AFFECTED_SOP_INSTANCE_UID), exc.comment)
            self._audit_refused(request, exc.comment)
            return self._failure(request, exc.status, exc.comment)
        except QueryError as exc:
            log.warning("%s: query refused: %s", request.calling_aet, exc.comment)
            self._audit_refused(request, exc.comment)
            return self._failure(request, exc.status, exc.comment)
        except PacsError as exc:
            log.error("%s: processing failure: %s", request.calling_aet, exc)
            self._audit_refused(request, str(exc))
            return self._failure(request, PROCESSING_FAILURE, str(exc))
        except ConnectionError:
            raise  # the association is gone: nothing to answer
        except Exception as exc:  # a bug: answer, log it whole, keep serving
            log.exception("%s: unexpected error in %s", request.calling_aet, handler.__name__)
            self._audit_refused(request, f"internal error: {exc!r}")
            return self._failure(request, PROCESSING_FAILURE, f"internal error: {exc!r}")

    @staticmethod
    def _failure(request: Request, status: int, comment: str) -> Response:
        return Response(dimse.failure_rsp(request.command, status, comment))

    async def c_find(self, request: Request) -> Response:
        """Modality Worklist queries to the worklist SCP, the others to the Q/R one."""
        if request.abstract_syntax == MODALITY_WORKLIST_FIND:
            return await self.worklist.c_find(request)
        return await self.find.c_find(request)

    async def c_echo(self, request: Request) -> Response:
        return Response(dimse.c_echo_rsp(request.command.message_id or 0, SUCCESS))

    async def c_store(self, request: Request) -> Response:
        command = request.command
        msg_id = command.message_id or 0
        sop_class = str(command.get(dimse.AFFECTED_SOP_CLASS_UID) or request.abstract_syntax)
        sop_instance = str(command.get(dimse.AFFECTED_SOP_INSTANCE_UID) or "")
        dataset = request.dataset
        if dataset is None:
            raise IngestError(CANNOT_UNDERSTAND, "C-STORE-RQ without a data set")
        size = (len(dataset) if isinstance(dataset, (bytes, bytearray))  # not a union: per call
                else os.stat(dataset).st_size)
        metrics.BYTES_RECEIVED.inc(("C-STORE",), size)
        stored = await self.ingest.store(
            dataset,
            transfer_syntax_uid=request.transfer_syntax,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance or None,
            source_aet=request.calling_aet,
        )
        log.debug("%s: stored %s (%s)", request.calling_aet, stored.sop_instance_uid,
                  stored.outcome)
        if stored.outcome != "duplicate_kept":
            metrics.INSTANCES_STORED.inc((metrics.aet_label(request.calling_aet),
                                          metrics.sop_class_label(sop_class)))
        self.audit_buffer.add("store", request.calling_aet, request.peer, stored.study_uid,
                              stored.patient_id, size=size)
        return Response(
            dimse.c_store_rsp(msg_id, sop_class, sop_instance, SUCCESS)
        )
