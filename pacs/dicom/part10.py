"""PS3.10 Section 7.1 file meta information: write it fast, read it back.

The archive stores each instance as received (a bare dataset) with this header prepended:
a 128-byte preamble, ``DICM``, and group 0002 in Explicit VR Little Endian with a correct
(0002,0000) File Meta Information Group Length.
"""

from __future__ import annotations

from functools import lru_cache
from struct import Struct

from pydicom.datadict import keyword_for_tag

from pacs.dicom import scan as _scan_mod
from pacs.dicom.scan import Buffer
from pacs.dicom.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
)
from pacs.errors import DicomFormatError

__all__ = ["PREAMBLE_LENGTH", "file_meta", "read_file_meta"]

PREAMBLE_LENGTH = 128
_PREFIX = b"\x00" * PREAMBLE_LENGTH + b"DICM"
_SHORT = Struct("<HH2sH")
_LONG = Struct("<HH2sHI")
_LONG_VRS = frozenset(
    ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)
_VERSION = _LONG.pack(0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def _element(elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"value of (0002,{elem:04X}) too long")
    return _SHORT.pack(0x0002, elem, vr, len(value)) + value


def _uid(elem: int, uid: str) -> bytes:
    raw = uid.encode("ascii")
    if len(raw) > 64:
        raise ValueError(f"UID longer than 64 characters: {uid!r}")
    if len(raw) & 1:
        raw += b"\x00"
    return _element(elem, b"UI", raw)


def _text(elem: int, vr: bytes, text: str, limit: int) -> bytes:
    raw = text.encode("ascii")
    if len(raw) > limit or b"\\" in raw:
        raise ValueError(f"invalid {vr.decode()} value: {text!r}")
    if len(raw) & 1:
        raw += b" "
    return _element(elem, vr, raw)


_IMPLEMENTATION = _uid(0x0012, IMPLEMENTATION_CLASS_UID) + _text(
    0x0013, b"SH", IMPLEMENTATION_VERSION_NAME, 16
)


def file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_aet: str = ""
) -> bytes:
    """Preamble, ``DICM`` and group 0002 for a dataset in ``transfer_syntax_uid``.

    Raises ValueError for values that cannot be encoded (non-ASCII, UIDs over 64 characters,
    AE titles over 16).
    """
    head, tail = _constant_parts(sop_class_uid, transfer_syntax_uid, source_aet)
    instance = _uid(0x0003, sop_instance_uid)
    group_length = _SHORT.pack(0x0002, 0x0000, b"UL", 4) + (
        len(head) + len(instance) + len(tail)).to_bytes(4, "little")
    return b"".join((_PREFIX, group_length, head, instance, tail))


@lru_cache(maxsize=256)
def _constant_parts(sop_class_uid: str, transfer_syntax_uid: str,
                    source_aet: str) -> tuple[bytes, bytes]:
    """The elements before and after (0002,0003): one association stores many instances of
    few SOP classes in one transfer syntax, so they are encoded once, not per C-STORE."""
    aet = source_aet.strip()
    return (
        _VERSION + _uid(0x0002, sop_class_uid),
        _uid(0x0010, transfer_syntax_uid) + _IMPLEMENTATION
        + (_text(0x0016, b"AE", aet, 16) if aet else b""),
    )


def _meta_value(vr: str, value: bytes) -> str:
    if vr in ("OB", "UN"):
        return value.hex()
    if vr == "UL" and len(value) == 4:
        return str(int.from_bytes(value, "little"))
    text = value.decode("latin-1")
    if vr in ("AE", "SH"):
        return text.strip(" \x00")
    return text.rstrip(" \x00")


def read_file_meta(buffer: Buffer) -> tuple[dict[str, str], int]:
    """Parse preamble + ``DICM`` + group 0002: (keyword -> str, offset of the dataset).

    OB values are given in hex, UL in decimal. Raises DicomFormatError when ``buffer`` is
    not a Part-10 stream or its group 0002 is malformed.
    """
    if len(buffer) < PREAMBLE_LENGTH + 4 or bytes(buffer[128:132]) != b"DICM":
        raise DicomFormatError("not a DICOM Part-10 stream: no DICM prefix", PREAMBLE_LENGTH)
    table = _scan_mod.scan(
        buffer, EXPLICIT_VR_LITTLE_ENDIAN, stop_tag=0x00030000, offset=PREAMBLE_LENGTH + 4
    )
    meta: dict[str, str] = {}
    end = table.stop_offset if table.stop_offset is not None else len(buffer)
    for index, element in enumerate(table):
        start = element.value_offset
        if element.tag >> 16 != 0x0002:
            # The dataset starts here (pydicom ends group 0002 the same way).
            long_header = element.vr in _LONG_VRS and table.raw[4 * index + 1] != 0
            end = start - (12 if long_header else 8)
            break
        if element.length == _scan_mod.UNDEFINED_LENGTH:
            raise DicomFormatError(
                "undefined length in the file meta information", start, element.tag
            )
        value = bytes(buffer[start : start + element.length])
        keyword = keyword_for_tag(element.tag) or _tag_name(element.tag)
        meta[keyword] = _meta_value(element.vr, value)
    return meta, end


def _tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
