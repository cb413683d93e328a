"""Worker 0's HL7 listener: MLLP frames -> ``OrderHandler`` -> worklist items in the catalog.

The listener is optional for the archive: when its port cannot be bound (in use, e.g. by a second
archive on the same host with the default 2575), the error is logged and DICOM and HTTP are
served without it; ``hl7_port = 0`` turns it off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pacs.worklist.hl7_orders import OrderHandler, reject_unframed
from pacs.worklist.mllp import MllpServer
from pacs.worklist.store import WorklistStore

if TYPE_CHECKING:
    from pacs.archive import Archive

log = logging.getLogger("pacs.hl7")


async def start_hl7_listener(archive: Archive) -> MllpServer | None:
    """Listen on ``hl7_host:hl7_port``; writes go through the archive's catalog writer."""
    settings = archive.settings

    def run_write(fn: Callable[[], Any]) -> Any:
        return archive.writer.run(fn).result()

    store = WorklistStore(archive.catalog, run_write)
    handler = OrderHandler(store, settings.worklist_station_aet, settings.aet)
    server = MllpServer(
        settings.hl7_host, settings.hl7_port, handler.handle,
        lambda junk, reason: reject_unframed(junk, reason, settings.aet),
        executor=archive.executor,
    )
    try:
        await server.start()
    except OSError as exc:
        log.error("HL7 listener not started: cannot listen on %s:%d: %s; serving without it",
                  settings.hl7_host, settings.hl7_port, exc)
        return None
    return server
