"""The DICOM listener: accepts connections, counts associations, applies back-pressure."""

from __future__ import annotations

import asyncio
import logging
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

from pacs.archive import Archive
from pacs.config import Settings
from pacs.server.protocol import DicomProtocol
from pacs.server.services import Services, supported_contexts

log = logging.getLogger("pacs.dimse")


class DimseServer:
    """Owns the listening socket and every live ``DicomProtocol``."""

    def __init__(
        self,
        settings: Settings,
        archive: Archive,
        reuse_port: bool = False,
        association_counts: SynchronizedArray[Any] | None = None,
        worker_id: int = 0,
    ) -> None:
        """``association_counts`` holds one slot per worker process, in shared memory, so that
        ``max_associations`` caps the archive as a whole, not each worker."""
        self.settings = settings
        self.reuse_port = reuse_port
        self._counts = association_counts
        self._slot = worker_id
        self.archive = archive
        self.services = Services(archive)
        self.contexts = supported_contexts()
        self.connections: set[DicomProtocol] = set()
        self._local_associations = 0  # accepted here and not yet ended
        self.pending_stores = 0
        self._paused: set[DicomProtocol] = set()
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: DicomProtocol(self),
            self.settings.host,
            self.settings.port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=1024,
        )
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("DICOM SCP %s listening on %s:%d", self.settings.aet, host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    # --- bookkeeping called by the protocols ---------------------------------------------------

    def connection_opened(self, protocol: DicomProtocol) -> None:
        self.connections.add(protocol)

    def connection_closed(self, protocol: DicomProtocol) -> None:
        self.connections.discard(protocol)
        self._paused.discard(protocol)

    @property
    def associations(self) -> int:
        """Associations open in every worker."""
        if self._counts is None:
            return self._local_associations
        with self._counts.get_lock():
            return int(sum(self._counts[:]))

    def try_add_association(self) -> bool:
        """Count a new association unless the archive-wide cap is reached."""
        if self._counts is None:
            if self._local_associations >= self.settings.max_associations:
                return False
            self._local_associations += 1
            return True
        with self._counts.get_lock():
            if sum(self._counts[:]) >= self.settings.max_associations:
                return False
            self._counts[self._slot] += 1
        self._local_associations += 1
        return True

    def remove_association(self) -> None:
        self._local_associations -= 1
        if self._counts is not None:
            with self._counts.get_lock():
                self._counts[self._slot] -= 1

    def store_started(self, protocol: DicomProtocol) -> None:
        """Count a store in flight; stop reading from peers while the queue is full."""
        self.pending_stores += 1
        self._idle.clear()
        if self.pending_stores >= self.settings.max_pending_stores:
            protocol.pause_reading()
            self._paused.add(protocol)

    def store_finished(self) -> None:
        self.pending_stores -= 1
        if self.pending_stores < self.settings.max_pending_stores and self._paused:
            for protocol in list(self._paused):
                protocol.resume_reading()
            self._paused.clear()
        if self.pending_stores == 0:
            self._idle.set()

    # --- shutdown ------------------------------------------------------------------------------

    async def stop(self, grace: float = 30.0) -> None:
        """Stop listening, let in-flight stores answer, then close every connection."""
        if self._server is not None:
            self._server.close()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("%d stores still in flight after %.0f s", self.pending_stores, grace)
        for protocol in list(self.connections):
            protocol.shutdown()
        if self._server is not None:
            await self._server.wait_closed()
