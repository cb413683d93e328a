"""Pure-Python twin of the compiled element-table loop (``ext/scan.pyx``).

Same signature, same results, same status codes: ``scan_core`` walks the top-level elements
of a dataset and returns ``(flat, status, pos, tag)`` where ``flat`` holds one
``tag, vr_code, value_offset, length`` quad per element (a list here, an ``array.array("q")``
in the compiled twin; ``vr_code`` is the two VR bytes as a 16-bit int, 0 when the element was
read as implicit VR). ``status`` is ``END`` (the buffer ended cleanly), ``STOP`` (a top-level
tag >= ``stop_tag`` starts at ``pos``) or an ``E_*`` error code, with ``pos`` the offset of
the failing header and ``tag`` its tag (-1 if unread).

The leniency policy both twins implement is documented in :mod:`pacs.dicom.scan`.
"""

from __future__ import annotations

from struct import Struct
from typing import Any

END = 0
STOP = 1
E_HEADER = 2
E_VALUE = 3
E_ITEM = 4
E_UNTERMINATED = 5
E_DEPTH = 6
E_EXPECTED_ITEM = 7
E_DELIMITER = 8
MAX_DEPTH = 128

UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD

LONG_VR_CODES = frozenset(
    (ord(vr[0]) << 8) | ord(vr[1])
    for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)

_LE = (Struct("<HH").unpack_from, Struct("<H").unpack_from, Struct("<I").unpack_from)
_BE = (Struct(">HH").unpack_from, Struct(">H").unpack_from, Struct(">I").unpack_from)


def scan_core(
    buf: Any, explicit: bool, little: bool, stop_tag: int, offset: int
) -> tuple[list[int], int, int, int]:
    """Walk top-level elements of ``buf`` from ``offset`` (see the module docstring)."""
    hh, u16, u32 = _LE if little else _BE
    long_vrs = LONG_VR_CODES
    end = len(buf)
    pos = offset
    flat: list[int] = []
    if pos < 0:
        raise ValueError("negative offset")
    if pos >= end:
        return flat, END, pos, -1

    e = explicit
    if end - pos >= 6 and hh(buf, pos)[0] != 0xFFFE:
        e = 0x41 <= buf[pos + 4] <= 0x5A and 0x41 <= buf[pos + 5] <= 0x5A
    modes = [False] * (MAX_DEPTH + 1)
    modes[0] = e
    depth = 0

    while True:
        rem = end - pos
        if depth & 1:
            # Inside an undefined-length value: items and the sequence delimiter.
            if rem < 8:
                if rem == 0:
                    return flat, E_UNTERMINATED, pos, -1
                if rem < 4:
                    return flat, E_HEADER, pos, -1
                group, elem = hh(buf, pos)
                return flat, E_HEADER, pos, group << 16 | elem
            group, elem = hh(buf, pos)
            tag = group << 16 | elem
            if tag == _SEQ_END:
                pos += 8
                depth -= 1
                continue
            if tag != _ITEM:
                return flat, E_EXPECTED_ITEM, pos, tag
            (length,) = u32(buf, pos + 4)
            if length == UNDEFINED:
                if depth >= MAX_DEPTH:
                    return flat, E_DEPTH, pos, tag
                q = pos + 8
                e = modes[depth - 1]
                if (
                    e
                    and end - q >= 6
                    and hh(buf, q)[0] != 0xFFFE
                    and not (0x41 <= buf[q + 4] <= 0x5A and 0x41 <= buf[q + 5] <= 0x5A)
                ):
                    e = False
                depth += 1
                modes[depth] = e
                pos = q
                continue
            if length > rem - 8:
                return flat, E_ITEM, pos, tag
            pos += 8 + length
            continue

        # A dataset: the top level or an undefined-length item.
        if rem < 4:
            if rem == 0:
                if depth == 0:
                    return flat, END, pos, -1
                return flat, E_UNTERMINATED, pos, -1
            return flat, E_HEADER, pos, -1
        group, elem = hh(buf, pos)
        tag = group << 16 | elem
        if depth == 0 and tag >= stop_tag:
            return flat, STOP, pos, tag
        if group == 0xFFFE:
            if depth == 0 or tag != _ITEM_END:
                return flat, E_DELIMITER, pos, tag
            if rem < 8:
                return flat, E_HEADER, pos, tag
            pos += 8
            depth -= 1
            continue
        if rem < 8:
            return flat, E_HEADER, pos, tag
        b0 = buf[pos + 4]
        b1 = buf[pos + 5]
        if modes[depth] and 0x41 <= b0 <= 0x5A and 0x41 <= b1 <= 0x5A:
            vr = b0 << 8 | b1
            if vr in long_vrs:
                if rem < 12:
                    return flat, E_HEADER, pos, tag
                (length,) = u32(buf, pos + 8)
                vpos = pos + 12
            else:
                (length,) = u16(buf, pos + 6)
                vpos = pos + 8
        else:
            vr = 0
            (length,) = u32(buf, pos + 4)
            vpos = pos + 8
        if depth == 0:
            flat += (tag, vr, vpos, length)
        if length == UNDEFINED:
            if depth >= MAX_DEPTH:
                return flat, E_DEPTH, pos, tag
            depth += 1
            pos = vpos
            continue
        if length > end - vpos:
            return flat, E_VALUE, pos, tag
        pos = vpos + length
