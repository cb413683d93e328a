"""TCP settings every DICOM connection of ours uses, acceptor and requestor alike."""

from __future__ import annotations

import asyncio
import contextlib
import socket

_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # Linux only


class QuickAck:
    """TCP_NODELAY once, TCP_QUICKACK after every read.

    Without quick ACKs, a peer without TCP_NODELAY (pynetdicom, many modalities) holds its next
    small PDU until our delayed ACK, ~40 ms per request. Linux clears the flag after each ACK,
    hence ``after_read`` on every read.
    """

    __slots__ = ("_sock",)

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._sock: socket.socket | None = None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock if _TCP_QUICKACK else None

    def after_read(self) -> None:
        if self._sock is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                self._sock = None
