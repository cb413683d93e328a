"""TCP settings every DICOM connection of ours uses, acceptor and requestor alike."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
from typing import Any

_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # Linux only
_ONE = ctypes.c_int(1)
_ONE_REF = ctypes.byref(_ONE)  # made once: a byref per read cost a fifth of the call
_setsockopt: Any
try:
    _setsockopt = ctypes.PyDLL(None).setsockopt  # keeps the GIL: a short call
except (OSError, AttributeError):  # pragma: no cover - no C library symbols
    _setsockopt = None


class QuickAck:
    """TCP_NODELAY once, TCP_QUICKACK after reads.

    Without quick ACKs, a peer without TCP_NODELAY (pynetdicom, many modalities) holds its next
    small PDU until our delayed ACK, ~40 ms per request. Linux clears the flag after each ACK,
    hence ``after_read`` on every read that leaves the peer sending (the SCP skips it once a
    message is complete: its response carries the ACK).
    """

    __slots__ = ("_fd", "_sock")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._sock: socket.socket | None = None
        self._fd = -1
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not _TCP_QUICKACK:
            return
        # uvloop's transport socket makes a socket object (and a getsockname call) per
        # setsockopt: on every read that cost more than the option itself. The C call on the
        # descriptor does not (it is only used while the transport reads, so it is open).
        fd = sock.fileno()
        if _setsockopt is not None and isinstance(fd, int) and fd >= 0:
            self._fd = fd
        else:
            self._sock = sock

    def after_read(self) -> None:
        if self._fd >= 0:
            assert _setsockopt is not None
            if _setsockopt(self._fd, socket.IPPROTO_TCP, _TCP_QUICKACK, _ONE_REF, 4):
                self._fd = -1  # not a TCP socket after all (e.g. a test's socket pair)
        elif self._sock is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                self._sock = None
