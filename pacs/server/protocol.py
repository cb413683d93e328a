"""The DIMSE transport: an asyncio BufferedProtocol around one sans-IO ``Association``.

Bytes from the socket go straight into the association's receive buffer (no copy), events come
out and are acted upon; what the association wants written is written. Timers (ARTIM and the
idle timeout) live here because clocks are I/O.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from pacs.errors import PacsError
from pacs.net import Association, events, negotiation
from pacs.server.services import Request
from pacs.server.spool import Spool

if TYPE_CHECKING:
    from pacs.server.dimse_server import DimseServer

log = logging.getLogger("pacs.dimse")


class DicomProtocol(asyncio.BufferedProtocol):
    """One TCP connection, acceptor side."""

    def __init__(self, server: DimseServer) -> None:
        self.server = server
        self.settings = server.settings
        self.association = Association.acceptor(
            ae_title=self.settings.aet, max_pdu_length=self.settings.max_pdu_size
        )
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.calling_aet = ""
        self._loop = asyncio.get_running_loop()
        self._artim: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._last_progress = self._loop.time()
        self._spool: Spool | None = None
        self._pending_command: tuple[int, object] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._release_requested = False
        self._accepted = False
        self._closed = False
        self._paused = False

    # --- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server.connection_opened(self)
        self._flush()
        self._update_timers()
        self._idle = self._loop.call_later(self.settings.idle_timeout, self._check_idle)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.association.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.association.buffer_updated(nbytes)
        except PacsError as exc:  # the association already queued an A-ABORT
            log.warning("%s %s: protocol error: %s", self.peer, self.calling_aet, exc)
        self._drain_events()

    def eof_received(self) -> bool:
        self.association.receive_data(b"")
        self._drain_events()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for handle in (self._artim, self._idle):
            if handle is not None:
                handle.cancel()
        if self._spool is not None:
            log.warning("%s %s: connection lost during a C-STORE; dropped the partial data set",
                        self.peer, self.calling_aet)
            self._spool.discard()
            self._spool = None
        self.server.connection_closed(self)

    def pause_reading(self) -> None:
        if self.transport is not None and not self._paused and not self._closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._paused and not self._closed:
            self._paused = False
            self.transport.resume_reading()

    # --- events ------------------------------------------------------------------------------

    def _drain_events(self) -> None:
        while True:
            event = self.association.next_event()
            if event is None:
                break
            self._last_progress = self._loop.time()
            self._on_event(event)
        self._flush()
        self._update_timers()

    def _flush(self) -> None:
        data = self.association.data_to_send()
        if data and self.transport is not None and not self._closed:
            self.transport.write(data)
        if self.association.should_close and self.transport is not None and not self._closed:
            self.transport.close()

    def _on_event(self, event: object) -> None:
        raise NotImplementedError

    def _update_timers(self) -> None:
        running = self.association.artim_running
        if running and self._artim is None:
            self._artim = self._loop.call_later(self.settings.acse_timeout, self._artim_expired)
        elif not running and self._artim is not None:
            self._artim.cancel()
            self._artim = None

    def _artim_expired(self) -> None:
        self._artim = None
        log.info("%s %s: ARTIM timer expired", self.peer, self.calling_aet)
        self.association.timer_expired()
        self._drain_events()
        if self.transport is not None and not self._closed:
            self.transport.close()

    def _check_idle(self) -> None:
        if self._closed:
            return
        idle_for = self._loop.time() - self._last_progress
        if idle_for >= self.settings.idle_timeout and not self._tasks:
            log.info("%s %s: idle for %.1f s, aborting", self.peer, self.calling_aet, idle_for)
            self.association.abort()
            self._flush()
            if self.transport is not None:
                self.transport.abort()
            return
        wait = max(self.settings.idle_timeout - idle_for, 0.05)
        self._idle = self._loop.call_later(wait, self._check_idle)


__all__ = ["DicomProtocol", "Request", "Spool", "events", "negotiation"]
