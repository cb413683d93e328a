"""``pwrite`` that keeps the GIL, for the few KiB a large record writes through the page cache.

An I/O thread that releases the GIL for a 4 KiB page-cache write (~5 us) then waits for the
busy event loop to hand it back, ~0.2 ms a time (measured on the large C-STORE path: 1.4 ms of
wall time for 0.4 ms of CPU); holding it costs the loop those 5 us. Like ``pacs.server.tcp``'s
setsockopt, the C library's function is called through ``ctypes.PyDLL``, which keeps the GIL.
Without it (no C library symbols) ``pwrite`` is ``os.pwrite``: the same results and errors
(tests/unit/store/test_fastio.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import Any


def _held_pwrite() -> Callable[[int, Any, int], int] | None:
    try:
        c_pwrite = ctypes.PyDLL(None, use_errno=True).pwrite
    except (OSError, AttributeError):  # pragma: no cover - no C library symbols
        return None
    c_pwrite.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int64]
    c_pwrite.restype = ctypes.c_ssize_t

    def pwrite(fd: int, data: Any, offset: int, /) -> int:
        """``os.pwrite(fd, data, offset)`` without releasing the GIL."""
        raw = data if type(data) is bytes else bytes(data)  # a few KiB: the copy is cheap
        while True:
            n: int = c_pwrite(fd, raw, len(raw), offset)
            if n >= 0:
                return n
            code = ctypes.get_errno()
            if code != errno.EINTR:  # EINTR: retried, like os.pwrite (PEP 475)
                raise OSError(code, os.strerror(code))

    return pwrite


held_pwrite = _held_pwrite()
pwrite: Callable[[int, Any, int], int] = os.pwrite if held_pwrite is None else held_pwrite
IMPLEMENTATION = "python" if held_pwrite is None else "ctypes"
