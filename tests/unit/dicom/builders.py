"""Tiny DICOM element encoder for hand-made test streams (PS3.5 Section 7)."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom

from pacs.dicom import _pyscan

LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEF = 0xFFFFFFFF
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
TEST_FILES = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
CHARSET_FILES = TEST_FILES.parent / "charset_files"


def _u16(v: int, little: bool) -> bytes:
    return v.to_bytes(2, "little" if little else "big")


def _u32(v: int, little: bool) -> bytes:
    return v.to_bytes(4, "little" if little else "big")


def tag_bytes(tag: int, little: bool = True) -> bytes:
    return _u16(tag >> 16, little) + _u16(tag & 0xFFFF, little)


def el(
    tag: int,
    vr: str | None,
    value: bytes = b"",
    *,
    little: bool = True,
    length: int | None = None,
) -> bytes:
    """One element; ``vr=None`` encodes implicit VR. ``length`` overrides the length field."""
    n = len(value) if length is None else length
    if vr is None:
        return tag_bytes(tag, little) + _u32(n, little) + value
    if vr in LONG_VRS:
        return tag_bytes(tag, little) + vr.encode() + b"\0\0" + _u32(n, little) + value
    return tag_bytes(tag, little) + vr.encode() + _u16(n, little) + value


def item(content: bytes, *, undefined: bool = True, little: bool = True) -> bytes:
    if undefined:
        return tag_bytes(0xFFFEE000, little) + _u32(UNDEF, little) + content + item_end(little)
    return tag_bytes(0xFFFEE000, little) + _u32(len(content), little) + content


def item_end(little: bool = True) -> bytes:
    return tag_bytes(0xFFFEE00D, little) + _u32(0, little)


def seq_end(little: bool = True) -> bytes:
    return tag_bytes(0xFFFEE0DD, little) + _u32(0, little)


def seq(
    tag: int,
    items: list[bytes],
    *,
    vr: str | None = "SQ",
    undefined: bool = True,
    little: bool = True,
) -> bytes:
    """A sequence of already-encoded items (see :func:`item`)."""
    body = b"".join(items)
    if undefined:
        return el(tag, vr, body + seq_end(little), little=little, length=UNDEF)
    return el(tag, vr, body, little=little)


def vr_code(vr: str) -> int:
    return (ord(vr[0]) << 8) | ord(vr[1])


def pydicom_test_files() -> list[Path]:
    """Every regular file of pydicom's bundled test and charset data (no downloads)."""
    return sorted(p for d in (TEST_FILES, CHARSET_FILES) for p in d.rglob("*") if p.is_file())


CORES = {"python": _pyscan.scan_core}
# (scan core, index core) of each twin, for scan._read_index: the pure twin has no index core
# (its record is index_attributes of its table), the compiled one takes its fast path.
READERS: dict[str, tuple[object, object]] = {"python": (_pyscan.scan_core, None)}
try:
    from pacs.dicom import _cscan
except ImportError:  # extension not built
    pass
else:
    if os.environ.get("PACS_NO_EXTENSIONS", "") not in ("1", "true", "yes"):
        CORES["cython"] = _cscan.scan_core
        READERS["cython"] = (_cscan.scan_core, _cscan.index_core)


def read_index(reader: str, data, syntax: str, stop: int = 0x7FE00010, offset: int = 0):
    """scan._read_index by one twin (see READERS)."""
    from pacs.dicom import scan as scan_mod

    core, index_core = READERS[reader]
    return scan_mod._read_index(core, index_core, data, syntax, stop, offset)
