"""CRC-32 target: the compiled twin (pacs.store._ccrc) against zlib.crc32 on arbitrary input.

The first four bytes are the running value, the fifth the offset of the checksummed view (so
unaligned starts are covered), the seventh how many times the rest is repeated (so views pass
the 4 KiB above which the twin releases the GIL), the rest the data; the sums must agree, for
the whole view and for it split in two where the sixth byte says.
"""

from __future__ import annotations

import zlib

from pacs.extensions import compiled

_ccrc = compiled("pacs.store._ccrc")
if _ccrc is None:  # now, not at the first input
    raise ImportError("pacs.store._ccrc is not built")


def check(data: bytes) -> None:
    if len(data) < 7:
        return
    value = int.from_bytes(data[:4], "little")
    view = memoryview(data[7:] * (1 + data[6] % 8))[data[4] % 16:]
    expected = zlib.crc32(view, value)
    got = _ccrc.crc32(view, value)
    if got != expected:
        raise AssertionError(f"crc32 of {len(view)} bytes from {value:#x}: {got:#x} != "
                             f"{expected:#x}")
    cut = data[5] * len(view) // 256
    split = _ccrc.crc32(view[cut:], _ccrc.crc32(view[:cut], value))
    if split != expected:
        raise AssertionError(f"crc32 split at {cut} of {len(view)}: {split:#x} != "
                             f"{expected:#x}")


def seeds() -> list[bytes]:
    return [bytes(70), bytes(range(256)) * 3,
            b"\xff" * 4 + b"\x03\x80\x07" + b"123456789" * 200]
