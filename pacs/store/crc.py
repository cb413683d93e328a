"""The CRC-32 of segment records (``segment_format``): zlib's polynomial and values.

``crc32`` is the compiled ``pacs.store._ccrc.crc32`` (``ext/crc.pyx``: carry-less multiplication,
~14 GB/s here against zlib's ~3-4 GB/s, so a 513 KiB CT instance costs ~36 instead of ~125 us)
unless extensions are off (``PACS_NO_EXTENSIONS=1``), not built, or the CPU lacks PCLMULQDQ: then
its twin, ``zlib.crc32`` itself. Both give the same value for every input
(tests/unit/store/test_crc.py).
"""

from __future__ import annotations

import zlib
from typing import Protocol

from pacs.extensions import compiled


class Crc32(Protocol):
    def __call__(self, data: bytes | bytearray | memoryview, value: int = 0, /) -> int: ...


def _choose() -> tuple[Crc32, str]:
    module = compiled("pacs.store._ccrc")
    # Without carry-less multiplication (another CPU, or a VM hiding it) the compiled twin
    # falls back to a byte-wise table, several times slower than zlib's own.
    if module is not None and module.ACCELERATED:
        return module.crc32, "cython"
    return zlib.crc32, "python"


crc32, IMPLEMENTATION = _choose()
