"""The DICOM listener: accepts connections, counts associations, applies back-pressure."""

from __future__ import annotations

import asyncio
import logging
import socket
import zlib
from typing import TYPE_CHECKING, Any

from pacs.archive import Archive
from pacs.config import Settings
from pacs.diskspace import watermark
from pacs.server.access import ContextPolicy
from pacs.server.balance import Balance
from pacs.server.protocol import DicomProtocol
from pacs.server.services import Services, supported_contexts
from pacs.server.tls import TlsListener, dimse_server_context

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import SynchronizedArray

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
        ae_counts: Any = None,
        balance: Balance | None = None,
    ) -> None:
        """``association_counts`` holds one slot per worker process, in shared memory, so that
        ``max_associations`` caps the archive as a whole, not each worker. ``ae_counts`` (a
        lock-less shared array guarded by ``association_counts``' lock) holds one row per worker
        of hashed calling-AE slots for the per-AE caps."""
        self.settings = settings
        self.reuse_port = reuse_port
        self._counts = association_counts
        self._slot = worker_id
        self.archive = archive
        self.services = Services(archive)
        self.contexts = supported_contexts()
        self.context_policy = ContextPolicy(self.contexts)
        self.disk = watermark(settings)
        self._ae_counts = ae_counts if association_counts is not None else None
        self._ae_slots = len(ae_counts) // settings.worker_count if self._ae_counts else 0
        self._ae_local: dict[str, int] = {}  # calling AE -> associations open (one process)
        self.connections: set[DicomProtocol] = set()
        self._local_associations = 0  # accepted here and not yet ended
        self.pending_stores = 0
        self._paused: set[DicomProtocol] = set()
        self._server: asyncio.Server | None = None
        self._tls: TlsListener | None = None  # the DICOM TLS port (tls_port)
        self._idle = asyncio.Event()
        self._idle.set()
        self._balance = balance  # several workers: connections spread evenly (server.balance)
        self._adopting: set[asyncio.Task[Any]] = set()
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.tls_port:
            # Before the plain port: "DICOM SCP ... listening on" means both accept.
            self._tls = TlsListener(dimse_server_context(self.settings),
                                    lambda: DicomProtocol(self, placeable=False),
                                    self.settings.acse_timeout)
            await self._tls.start(self.settings.host, self.settings.tls_port, self.reuse_port)
            for sock in self._tls.sockets:
                host, port = sock.getsockname()[:2]
                # Worded apart from the plain port's line, which startup checks count.
                log.info("DICOM TLS SCP %s accepting on %s:%d%s", self.settings.aet, host,
                         port, " (client certificates required)" if self.settings.tls_ca else "")
        try:
            self._server = await loop.create_server(
                lambda: DicomProtocol(self),
                self.settings.host,
                self.settings.port,
                reuse_address=True,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
        except BaseException:
            if self._tls is not None:
                self._tls.close()
            raise
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("DICOM SCP %s listening on %s:%d", self.settings.aet, host, port)
        if self._balance is not None:
            inbox = self._balance.inboxes[self._balance.worker_id]
            loop.add_reader(inbox.fileno(), self._adopt)
            self._adopt()  # handed over while this worker was (re)starting

    # --- connections spread over the workers (pacs.server.balance) ---------------------------

    def hand_over(self, protocol: DicomProtocol, transport: asyncio.BaseTransport) -> bool:
        """For a connection just accepted: count it here, or hand it to a less busy worker
        and True (the caller then leaves it alone; closing our descriptor keeps it open)."""
        balance = self._balance
        if balance is None or self._stopping:
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        target = balance.choose()
        if target is None or not balance.hand_over(target, sock.fileno()):
            protocol.counted = True  # kept: counted here
            return False
        log.debug("connection from %s handed to worker %d", transport.get_extra_info("peername"),
                  target)
        transport.close()
        return True

    def _adopt(self) -> None:
        """Reader of our inbox: serve the connections other workers handed to us."""
        assert self._balance is not None
        loop = asyncio.get_running_loop()
        for sock in self._balance.received():
            if self._stopping:
                sock.close()
                self._balance.closed()
                continue

            def adopted() -> DicomProtocol:
                protocol = DicomProtocol(self, placeable=False)
                protocol.counted = True  # counted for us by the worker that handed it over
                return protocol

            task = loop.create_task(self._serve_adopted(sock, adopted))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    async def _serve_adopted(self, sock: socket.socket, factory: Any) -> None:
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().connect_accepted_socket(factory, sock)
        except OSError as exc:  # the peer left meanwhile
            log.info("handed-over connection gone before it was served (%s)", exc)
            sock.close()
            assert self._balance is not None
            self._balance.closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def tls_port(self) -> int:
        """The DICOM TLS port; 0 when there is none."""
        if self._tls is None or not self._tls.sockets:
            return 0
        return int(self._tls.sockets[0].getsockname()[1])

    # --- bookkeeping called by the protocols ---------------------------------------------------

    def connection_opened(self, protocol: DicomProtocol) -> None:
        self.connections.add(protocol)

    def connection_closed(self, protocol: DicomProtocol) -> None:
        self.connections.discard(protocol)
        self._paused.discard(protocol)
        if protocol.counted and self._balance is not None:
            protocol.counted = False
            self._balance.closed()

    @property
    def associations(self) -> int:
        """Associations open in every worker."""
        if self._counts is None:
            return self._local_associations
        with self._counts.get_lock():
            return int(sum(self._counts[:]))

    def admit_association(self, calling_aet: str = "", ae_cap: int = 0) -> str | None:
        """Count a new association of ``calling_aet`` unless the archive-wide cap or its
        per-AE cap ``ae_cap`` (0: none) is reached; None when counted, else why not."""
        if self._counts is None:
            if self._local_associations >= self.settings.max_associations:
                return f"{self._local_associations} associations already open"
            open_here = self._ae_local.get(calling_aet, 0)
            if ae_cap and open_here >= ae_cap:
                return f"{calling_aet!r} already has {open_here} associations open (cap {ae_cap})"
            self._ae_local[calling_aet] = open_here + 1
            self._local_associations += 1
            return None
        with self._counts.get_lock():
            total = sum(self._counts[:])
            if total >= self.settings.max_associations:
                return f"{total} associations already open"
            if self._ae_counts is not None:
                # A stable hash: every worker process must agree on the slot (a collision only
                # makes the cap stricter for the two AEs sharing it).
                slot = self._ae_slot(calling_aet)
                open_ae = sum(self._ae_counts[slot::self._ae_slots])
                if ae_cap and open_ae >= ae_cap:
                    return f"{calling_aet!r} already has {open_ae} associations open (cap {ae_cap})"
                self._ae_counts[self._slot * self._ae_slots + slot] += 1
            self._counts[self._slot] += 1
        self._local_associations += 1
        self._ae_local[calling_aet] = self._ae_local.get(calling_aet, 0) + 1
        return None

    def _ae_slot(self, calling_aet: str) -> int:
        return zlib.crc32(calling_aet.encode("utf-8", "replace")) % self._ae_slots

    def remove_association(self, calling_aet: str = "") -> None:
        self._local_associations -= 1
        left = self._ae_local.get(calling_aet, 0) - 1
        if left > 0:
            self._ae_local[calling_aet] = left
        else:
            self._ae_local.pop(calling_aet, None)
        if self._counts is not None:
            with self._counts.get_lock():
                self._counts[self._slot] -= 1
                if self._ae_counts is not None:
                    self._ae_counts[self._slot * self._ae_slots + self._ae_slot(calling_aet)] -= 1

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
        self._stopping = True
        if self._balance is not None:
            asyncio.get_running_loop().remove_reader(
                self._balance.inboxes[self._balance.worker_id].fileno())
        if self._server is not None:
            self._server.close()
        if self._tls is not None:
            self._tls.close()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("%d stores still in flight after %.0f s", self.pending_stores, grace)
        for protocol in list(self.connections):
            protocol.shutdown()
        if self._server is not None:
            await self._server.wait_closed()
        if self._tls is not None:
            await self._tls.wait_closed()
