"""Cutting a byte stream into upper layer PDUs (PS3.8 Section 9.3.1), in place.

:class:`PDUFramer` owns one fixed receive buffer. An asyncio ``BufferedProtocol`` receives
straight into it (``get_buffer()`` / ``buffer_updated(n)``); ``feed(data)`` copies for other
callers. ``next_pdu()`` returns each complete PDU as ``(pdu_type, body)``, ``body`` being a
memoryview of the PDU's variable field inside the buffer: no copy, no growing bytearray.

Lifetime rule: a view returned by ``next_pdu()`` (and every slice of it) stays valid only until
the next ``get_buffer()`` or ``feed()`` call, which moves the unparsed tail (less than one PDU)
to the front of the buffer and overwrites the bytes behind old views.
"""

from __future__ import annotations

import struct

from pacs.errors import LocalProtocolError
from pacs.net.pdu import ABORT_UNRECOGNIZED_PDU, PDU_TYPES, InvalidPDUError

DEFAULT_MAX_PDU_LENGTH = 256 * 1024
MIN_BUFFER_SIZE = 64 * 1024

_LENGTH = struct.Struct(">I")


class PDUFramer:
    """Frames PDUs out of a receive buffer of ``max(max_pdu_length + 6, 64 KiB)`` bytes.

    A PDU whose length field exceeds ``buffer size - 6`` (the largest PDU that fits) or whose
    type is not 01H-07H raises :class:`~pacs.net.pdu.InvalidPDUError`; the framer is then
    out of step with the stream and must not be used further.
    """

    __slots__ = ("_buffer", "_end", "_start", "_view", "limit")

    def __init__(self, max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH) -> None:
        size = max(max_pdu_length + 6, MIN_BUFFER_SIZE)
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self._start = 0  # first byte not yet handed out as a PDU
        self._end = 0  # end of the received bytes
        self.limit = size - 6  # the largest PDU length field accepted

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a PDU."""
        return self._end - self._start

    def _compact(self) -> None:
        start, end = self._start, self._end
        if start == end:
            self._start = self._end = 0
        elif start:
            # At most one partial PDU: the memmove is bounded by the buffer size.
            self._buffer[0 : end - start] = self._view[start:end]
            self._start, self._end = 0, end - start

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """The free tail of the receive buffer (invalidates views from ``next_pdu``)."""
        self._compact()
        if self._end == len(self._buffer):
            raise LocalProtocolError("receive buffer full: call next_pdu() until it returns None")
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written at the start of the last ``get_buffer()``."""
        if nbytes < 0 or self._end + nbytes > len(self._buffer):
            raise LocalProtocolError(f"buffer_updated({nbytes}) beyond the buffer")
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Copy as much of ``data`` as fits and return the count; drain ``next_pdu`` in between."""
        free = self.get_buffer()
        count = min(len(free), len(data))
        free[:count] = data[:count]
        self._end += count
        return count

    def reset(self) -> None:
        """Drop every buffered byte (after an error, when the stream cannot be re-synchronised)."""
        self._start = self._end = 0

    def next_pdu(self) -> tuple[int, memoryview] | None:
        """The next complete PDU as (type, variable field view), or None when more bytes are due."""
        start = self._start
        available = self._end - start
        if not available:
            return None
        pdu_type = self._buffer[start]
        if pdu_type not in PDU_TYPES:
            raise InvalidPDUError(f"unknown PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)
        if available < 6:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer, start + 2)
        if length > self.limit:
            raise InvalidPDUError(f"PDU length {length} exceeds the limit of {self.limit} bytes")
        stop = start + 6 + length
        if stop > self._end:
            return None
        self._start = stop
        return pdu_type, self._view[start + 6 : stop]
