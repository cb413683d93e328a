"""C-MOVE SCP (PS3.4 C.4.2): the instances go to the move destination, a remote AE of the
registry (``pacs.remotes``: the settings and REST ``/modalities``), as C-STORE sub-operations
over new associations (``pacs.server.scu``).

Statuses: 0xFF00 pending with the counts after the first sub-operation and then at most every
``PENDING_INTERVAL``, then 0x0000 all done, 0xB000 some failed (Failed SOP Instance UID
List), 0xA702 none could be done, 0xFE00 cancelled, 0xA801 unknown move destination,
0xA900 / 0xC000 a bad identifier.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pacs import metrics
from pacs.net import dimse
from pacs.remotes import RemoteRegistry
from pacs.server.get import (
    PENDING_INTERVAL,
    Counts,
    audit_retrieve,
    final_response,
    identified_instances,
    retrieve_rsp,
)
from pacs.server.messages import Request, Response
from pacs.server.scu import remote_tls, send_instances

if TYPE_CHECKING:
    from pacs.archive import Archive

log = logging.getLogger("pacs.move")

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
MOVE_MODELS = {PATIENT_ROOT_MOVE: "PATIENT", STUDY_ROOT_MOVE: "STUDY"}

UNKNOWN_DESTINATION = 0xA801
PARALLEL_FROM = 16  # moves of fewer instances use one association


class MoveSCP:
    """Answers C-MOVE-RQ in the Patient Root and Study Root models."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.remotes = RemoteRegistry(archive.settings)

    async def c_move(self, request: Request) -> Response:
        settings = self.archive.settings
        destination = str(request.command.get(dimse.MOVE_DESTINATION) or "").strip()
        remote = self.remotes.get(destination)
        counts = Counts(remaining=0)
        if remote is None or not remote.move_destination:
            log.warning("%s: C-MOVE to unknown destination %r", request.calling_aet, destination)
            response = retrieve_rsp(request, dimse.C_MOVE_RSP, UNKNOWN_DESTINATION, counts, True)
            response[dimse.ERROR_COMMENT] = f"unknown move destination {destination}"[:64]
            if self.archive.audit is not None:
                self.archive.audit.record("retrieve", "failure", user=request.calling_aet,
                                          source=request.peer, operation="C-MOVE",
                                          destination=destination,
                                          detail="unknown move destination")
            return Response(response)
        records, counts = await identified_instances(self.archive, request, MOVE_MODELS)
        assert request.send_pending is not None
        send_pending = request.send_pending
        due = asyncio.Event()  # a sub-operation finished since the last pending response
        sizes = {r.sop_instance_uid: r.size for r in records}

        def on_result(uid: str, status: int, comment: str | None) -> None:
            counts.record(uid, status)
            if dimse.delivered(status):
                metrics.BYTES_SENT.inc(("C-MOVE",), sizes.get(uid, 0))
            if status != dimse.SUCCESS:
                log.info("%s: sub-operation for %s: 0x%04X %s", destination, uid, status,
                         comment or "")
            due.set()

        async def report() -> None:
            # Pending responses in order, never concurrently: one after the first finished
            # sub-operation, then at most one per PENDING_INTERVAL with the counts of then.
            while True:
                await due.wait()
                due.clear()
                if counts.remaining:
                    await send_pending(
                        retrieve_rsp(request, dimse.C_MOVE_RSP, dimse.PENDING, counts, False),
                        None)
                    await asyncio.sleep(PENDING_INTERVAL)

        items = [(r.location, r.attributes.get("SOPClassUID", ""), r.sop_instance_uid,
                  r.transfer_syntax_uid) for r in records]
        sending = asyncio.create_task(send_instances(
            self.archive.store, items, (remote.host, remote.port, remote.aet), settings.aet,
            associations=settings.move_associations if len(items) >= PARALLEL_FROM else 1,
            on_result=on_result,
            move_originator_aet=request.calling_aet,
            move_originator_message_id=request.command.message_id,
            tls=remote_tls(settings, remote),
        ))  # fmt: skip
        reporter = asyncio.create_task(report())
        cancelled = False
        try:
            if items:
                cancel = asyncio.create_task(
                    request.cancel.wait() if request.cancel is not None else asyncio.Event().wait()
                )
                done, _ = await asyncio.wait({sending, cancel},
                                             return_when=asyncio.FIRST_COMPLETED)
                cancel.cancel()
                if sending not in done:
                    cancelled = True
                    sending.cancel()  # aborts its associations
                    await asyncio.gather(sending, return_exceptions=True)
                else:
                    sending.result()
            else:
                await sending
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        log.info("%s: C-MOVE of %d instances to %s: %d completed, %d failed, %d warnings%s",
                 request.calling_aet, len(records), destination, counts.completed,
                 counts.failed, counts.warning, " (cancelled)" if cancelled else "")
        audit_retrieve(self.archive, request, "C-MOVE", destination, records, counts, cancelled)
        return final_response(request, dimse.C_MOVE_RSP, counts, cancelled)
