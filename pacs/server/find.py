"""C-FIND SCP (PS3.4 C.4.1): identifier in, pending responses streamed out as rows are found.

The query runs on the executor in chunks (LMDB reads never hold a transaction across chunks),
each row is sent as a pending response right away, and a C-CANCEL-RQ stops it between rows with
the Cancel status. Statuses: 0xFF00 pending, 0x0000 done, 0xFE00 cancelled, 0xA900 identifier
does not match the SOP class, 0xC000 unable to process (with an error comment).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Generator
from typing import TYPE_CHECKING

from pacs.dicom.identifier import encode_identifiers
from pacs.dicom.identifier_table import encode_identifier_table
from pacs.index.query import Query, QueryEngine, parse_identifier
from pacs.metrics import query_keys
from pacs.net import dimse
from pacs.server.messages import Request, Response, request_identifier

if TYPE_CHECKING:
    from pacs.archive import Archive

log = logging.getLogger("pacs.find")

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
FIND_MODELS = {PATIENT_ROOT_FIND: "PATIENT", STUDY_ROOT_FIND: "STUDY"}

# Rows fetched per executor call: a small first chunk answers the first match at once, larger
# ones after it (each executor round trip costs a thread handoff; 64 per call took a fifth of
# a 10,000-study listing's time).
FIRST_CHUNK, CHUNK = 64, 2048
BATCH = 64  # matches written at once, between two turns of the event loop


def find_rsp(request: Request, status: int, has_dataset: bool) -> dimse.Command:
    return dimse.Command({
        dimse.AFFECTED_SOP_CLASS_UID: request.abstract_syntax,
        dimse.COMMAND_FIELD: dimse.C_FIND_RSP,
        dimse.MESSAGE_ID_BEING_RESPONDED_TO: request.command.message_id or 0,
        dimse.COMMAND_DATA_SET_TYPE: dimse.DATA_SET_PRESENT if has_dataset else dimse.NO_DATA_SET,
        dimse.STATUS: status,
    })  # fmt: skip


def audit_query(archive: Archive, request: Request, model: str, level: str,
                elements: dict[str, str], matches: int, cancelled: bool = False) -> None:
    """One audit "query" event: who asked what, and how many matches went back."""
    if archive.audit is None:
        return
    keys = query_keys(elements)
    patient_id = keys.get("PatientID", "")
    study_uid = keys.get("StudyInstanceUID", "")
    archive.audit.record("query", "success", user=request.calling_aet, source=request.peer,
                         patient_id="" if any(c in patient_id for c in "*?") else patient_id,
                         study_uid=study_uid if "\\" not in study_uid else "",
                         operation="C-FIND", model=model, level=level, keys=keys,
                         matches=matches, cancelled=cancelled)


def encoded_matches(engine: QueryEngine, query: Query, syntax: str
                    ) -> Generator[list[bytes], None, None]:
    """The identifiers of ``query``'s matches in ``syntax``, a chunk at a time: straight from
    the study columns when the engine answers with tables, else row by row (FIRST_CHUNK rows,
    then CHUNK)."""
    keys, tables, rows = engine.answer(query)
    if tables is not None:
        for table in tables:
            yield encode_identifier_table(table, keys, query.level, syntax)
        return
    assert rows is not None
    size = FIRST_CHUNK
    while chunk := list(itertools.islice(rows, size)):
        yield encode_identifiers(chunk, syntax)
        size = CHUNK


class FindSCP:
    """Answers C-FIND-RQ in the Patient Root and Study Root models."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def c_find(self, request: Request) -> Response:
        model, elements = request_identifier(request, FIND_MODELS)
        settings = self.archive.settings
        query = parse_identifier(
            None, model, elements,
            limit=settings.max_find_results or None,
            fuzzy_names=settings.fuzzy_person_names,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        executor = self.archive.executor
        engine = await loop.run_in_executor(executor, lambda: self.archive.queries)
        chunks = encoded_matches(engine, query, request.transfer_syntax)
        sent = 0
        send_many = request.send_pending_many
        assert send_many is not None
        pending = find_rsp(request, dimse.PENDING, True).encode()  # the same for every match
        while (chunk := await loop.run_in_executor(executor, next, chunks, None)) is not None:
            for start in range(0, len(chunk), BATCH):
                # A C-CANCEL-RQ is read while the loop turns, between batches.
                if request.cancel is not None and request.cancel.is_set():
                    chunks.close()
                    log.info("%s: C-FIND cancelled after %d matches", request.calling_aet, sent)
                    audit_query(self.archive, request, model, query.level, elements, sent, True)
                    return Response(find_rsp(request, dimse.CANCEL, False))
                batch = chunk[start:start + BATCH]
                await send_many(pending, batch)
                sent += len(batch)
                await asyncio.sleep(0)  # writes go out while the next batch is encoded
        log.info("%s: C-FIND %s level, %d matches", request.calling_aet, query.level, sent)
        audit_query(self.archive, request, model, query.level, elements, sent)
        return Response(find_rsp(request, dimse.SUCCESS, False))
