"""Table-driven cases for the tag scanner, run on every available twin."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import zlib

import pytest

from pacs.dicom import scan as scan_mod
from pacs.dicom.scan import Element, ElementTable
from pacs.errors import DicomFormatError
from tests.unit.dicom.builders import (
    BIG,
    CORES,
    DEFLATED,
    EXPLICIT,
    IMPLICIT,
    UNDEF,
    el,
    item,
    item_end,
    seq,
    seq_end,
    tag_bytes,
    vr_code,
)

CS = el(0x00080060, "CS", b"CT")
PN = el(0x00100010, "PN", b"Doe^John")
PIX = el(0x7FE00010, "OW", b"\0\0\0\0")
NO_STOP = 0x100000000

NESTED = seq(
    0x00081140, [item(CS + seq(0x00081150, [item(PN), item(b"")])), item(CS, undefined=False)]
)
IMPLICIT_SQ = seq(0x00081140, [item(el(0x00080060, None, b"CT"))], vr=None)
UN_SQ = seq(
    0x00091010, [item(el(0x00080060, None, b"CT") + el(0x00100010, None, b"Doe^"))], vr="UN"
)
SWITCH_SQ = seq(
    0x00081140, [item(el(0x00080060, None, b"CT") + el(0x00081150, None, b"A" * 0x4141))]
)

# (id, data, transfer syntax, stop tag, expected quads [(tag, vr, offset, length)] or error)
CASES: list[tuple[str, bytes, str, int, object]] = [
    ("empty", b"", EXPLICIT, scan_mod.PIXEL_DATA, []),
    (
        "explicit-le",
        CS + PN,
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        [(0x00080060, "CS", 8, 2), (0x00100010, "PN", 18, 8)],
    ),
    (
        "implicit-le",
        el(0x00080060, None, b"CT") + el(0x00100010, None, b"Doe^John"),
        IMPLICIT,
        scan_mod.PIXEL_DATA,
        [(0x00080060, "CS", 8, 2), (0x00100010, "PN", 18, 8)],
    ),
    (
        "explicit-be",
        el(0x00080060, "CS", b"CT", little=False) + el(0x00280010, "US", b"\x02\x00", little=False),
        BIG,
        scan_mod.PIXEL_DATA,
        [(0x00080060, "CS", 8, 2), (0x00280010, "US", 18, 2)],
    ),
    ("stop-before-pixels", CS + PIX, EXPLICIT, scan_mod.PIXEL_DATA, [(0x00080060, "CS", 8, 2)]),
    (
        "no-stop",
        CS + PIX,
        EXPLICIT,
        NO_STOP,
        [(0x00080060, "CS", 8, 2), (0x7FE00010, "OW", 22, 4)],
    ),
    (
        "long-vrs",
        el(0x00091010, "OB", b"ab")
        + el(0x00091011, "UT", b"text")
        + el(0x00091012, "UV", b"\0" * 8),
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        [(0x00091010, "OB", 12, 2), (0x00091011, "UT", 26, 4), (0x00091012, "UV", 42, 8)],
    ),
    ("odd-length", el(0x00100020, "LO", b"abc") + CS, EXPLICIT, scan_mod.PIXEL_DATA,
     [(0x00100020, "LO", 8, 3), (0x00080060, "CS", 19, 2)]),
    ("unknown-vr", el(0x00091010, "XY", b"abcd") + CS, EXPLICIT, scan_mod.PIXEL_DATA,
     [(0x00091010, "XY", 8, 4), (0x00080060, "CS", 20, 2)]),
    (
        "undefined-sq-nested",
        NESTED + PN,
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        [(0x00081140, "SQ", 12, UNDEF), (0x00100010, "PN", len(NESTED) + 8, 8)],
    ),
    (
        "defined-sq-skipped",
        seq(0x00081140, [item(CS, undefined=False), item(b"garbage", undefined=False)],
            undefined=False) + PN,
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        [(0x00081140, "SQ", 12, 33), (0x00100010, "PN", 53, 8)],
    ),
    (
        "implicit-undefined-sq",
        IMPLICIT_SQ + el(0x00100010, None, b"A^B "),
        IMPLICIT,
        scan_mod.PIXEL_DATA,
        [(0x00081140, "SQ", 8, UNDEF), (0x00100010, "PN", len(IMPLICIT_SQ) + 8, 4)],
    ),
    (
        "un-undefined-with-implicit-content",
        UN_SQ + CS,
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        [(0x00091010, "UN", 12, UNDEF), (0x00080060, "CS", len(UN_SQ) + 8, 2)],
    ),
    (
        "explicit-to-implicit-switch-in-item",
        # the item's second element has a length whose bytes look like a VR: read implicitly
        SWITCH_SQ + CS,
        EXPLICIT,
        NO_STOP,
        [(0x00081140, "SQ", 12, UNDEF), (0x00080060, "CS", len(SWITCH_SQ) + 8, 2)],
    ),
    (
        "implicit-data-under-explicit-syntax",
        el(0x00080060, None, b"CT") + el(0x00100010, None, b"Doe^John"),
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        [(0x00080060, "CS", 8, 2), (0x00100010, "PN", 18, 8)],
    ),
    (
        "explicit-data-under-implicit-syntax",
        CS + PN,
        IMPLICIT,
        scan_mod.PIXEL_DATA,
        [(0x00080060, "CS", 8, 2), (0x00100010, "PN", 18, 8)],
    ),
    (
        "bad-vr-bytes-read-implicitly",
        CS + el(0x00100010, None, b"Doe^John"),
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        [(0x00080060, "CS", 8, 2), (0x00100010, "PN", 18, 8)],
    ),
    (
        "encapsulated-pixel-data",
        CS + seq(0x7FE00010, [item(b"", undefined=False), item(b"\xff\xd8ab", undefined=False)],
                 vr="OB") + el(0xFFFCFFFC, "OB", b"\0\0"),
        EXPLICIT,
        NO_STOP,
        [(0x00080060, "CS", 8, 2), (0x7FE00010, "OB", 22, UNDEF), (0xFFFCFFFC, "OB", 62, 2)],
    ),
    (
        "offsets-are-absolute-with-stop",
        CS + el(0x00200013, "IS", b"1 ") + el(0x00280010, "US", b"\1\0"),
        EXPLICIT,
        0x00280000,
        [(0x00080060, "CS", 8, 2), (0x00200013, "IS", 18, 2)],
    ),
    # errors: (reason, offset, tag)
    ("truncated-tag", CS + b"\x10\x00", EXPLICIT, scan_mod.PIXEL_DATA,
     ("truncated element header", 10, None)),
    ("truncated-header", CS + b"\x10\x00\x10\x00PN", EXPLICIT, scan_mod.PIXEL_DATA,
     ("truncated element header", 10, 0x00100010)),
    ("truncated-long-header", CS + b"\x10\x00\x10\x00OB\0\0\1\0", EXPLICIT, scan_mod.PIXEL_DATA,
     ("truncated element header", 10, 0x00100010)),
    ("value-past-end", CS + el(0x00100010, "PN", b"Doe", length=8), EXPLICIT, scan_mod.PIXEL_DATA,
     ("element value runs past the end of the buffer", 10, 0x00100010)),
    ("implicit-value-past-end", el(0x00100010, None, b"Doe", length=0xFFFFFFF0), IMPLICIT,
     scan_mod.PIXEL_DATA, ("element value runs past the end of the buffer", 0, 0x00100010)),
    (
        "item-past-end",
        el(0x00081140, "SQ", tag_bytes(0xFFFEE000) + b"\x20\0\0\0" + b"abc", length=UNDEF),
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        ("item runs past the end of the buffer", 12, 0xFFFEE000),
    ),
    (
        "unterminated-sequence",
        el(0x00081140, "SQ", item(CS), length=UNDEF),
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        ("undefined-length sequence or item is not terminated", 12 + 8 + 10 + 8, None),
    ),
    (
        "unterminated-item",
        el(0x00081140, "SQ", tag_bytes(0xFFFEE000) + b"\xff\xff\xff\xff" + CS, length=UNDEF),
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        ("undefined-length sequence or item is not terminated", 12 + 8 + 10, None),
    ),
    (
        "non-item-in-sequence",
        el(0x00081140, "SQ", CS + seq_end(), length=UNDEF),
        EXPLICIT,
        scan_mod.PIXEL_DATA,
        ("expected an item or a sequence delimiter", 12, 0x00080060),
    ),
    ("delimiter-at-top-level", CS + item_end(), EXPLICIT, NO_STOP,
     ("unexpected item or delimiter tag", 10, 0xFFFEE00D)),
    ("sequence-delimiter-in-item",
     el(0x00081140, "SQ", tag_bytes(0xFFFEE000) + b"\xff\xff\xff\xff" + seq_end(), length=UNDEF),
     EXPLICIT, scan_mod.PIXEL_DATA, ("unexpected item or delimiter tag", 20, 0xFFFEE0DD)),
]


def _nested(depth: int) -> bytes:
    data = CS
    for _ in range(depth):
        data = seq(0x00081140, [item(data)])
    return data


CASES += [
    ("nesting-64-ok", _nested(64), EXPLICIT, scan_mod.PIXEL_DATA, [(0x00081140, "SQ", 12, UNDEF)]),
    ("nesting-65-too-deep", _nested(65), EXPLICIT, scan_mod.PIXEL_DATA,
     ("sequences nested too deeply", 64 * 20, 0x00081140)),
]


@pytest.mark.parametrize(("data", "syntax", "stop", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case(core, data, syntax, stop, expected):
    if isinstance(expected, tuple):
        with pytest.raises(DicomFormatError) as info:
            scan_mod._scan(core, data, syntax, stop, 0)
        assert (info.value.reason, info.value.offset, info.value.tag) == expected
        assert info.value == DicomFormatError(*expected)
        return
    table = scan_mod._scan(core, data, syntax, stop, 0)
    assert [tuple(e) for e in table] == expected


EXPLICIT_CASES = [c for c in CASES if c[2] == EXPLICIT]


@pytest.mark.parametrize(("data", "stop"), [(c[1], c[3]) for c in EXPLICIT_CASES],
                         ids=[c[0] for c in EXPLICIT_CASES])
def test_deflated_twin(core, data, stop):
    """The same explicit LE cases, deflated, give the same tables and errors."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = compressor.compress(data) + compressor.flush()
    plain = _outcome(core, data, EXPLICIT, stop)
    assert _outcome(core, deflated, DEFLATED, stop) == plain


def _outcome(core, data, syntax, stop):
    try:
        table = scan_mod._scan(core, data, syntax, stop, 0)
    except DicomFormatError as exc:
        return exc
    return list(table), table.stop_offset


def test_buffer_types_and_offset(core):
    data = b"\0" * 6 + CS + PN + PIX
    expected = [(0x00080060, "CS", 14, 2), (0x00100010, "PN", 24, 8)]
    for buf in (data, bytearray(data), memoryview(data)):
        table = scan_mod._scan(core, buf, EXPLICIT, scan_mod.PIXEL_DATA, 6)
        assert [tuple(e) for e in table] == expected
        assert table.stop_offset == 32
    with mmap.mmap(-1, len(data)) as m:
        m.write(data)
        table = scan_mod._scan(core, m, EXPLICIT, scan_mod.PIXEL_DATA, 6)
        assert [tuple(e) for e in table] == expected
        assert table.value(0x00100010) == b"Doe^John"
    words = memoryview(bytearray(data)).cast("H")
    table = scan_mod._scan(core, words, EXPLICIT, scan_mod.PIXEL_DATA, 6)
    assert [tuple(e) for e in table] == expected
    strided = memoryview(bytes(b for c in data for b in (c, 0xEE)))[::2]  # not contiguous
    table = scan_mod._scan(core, strided, EXPLICIT, scan_mod.PIXEL_DATA, 6)
    assert [tuple(e) for e in table] == expected
    assert scan_mod.read_index_attributes(strided, EXPLICIT, offset=6)["PatientName"] == "Doe^John"


def test_mmap_closes_after_scan(tmp_path):
    path = tmp_path / "ds"
    path.write_bytes(CS + PN)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert scan_mod.read_index_attributes(m, EXPLICIT)["PatientName"] == "Doe^John"
    # leaving the with-block closed the mmap: no export was kept alive


def test_bad_arguments():
    with pytest.raises(ValueError):
        scan_mod.scan(CS, EXPLICIT, stop_tag=-1)
    with pytest.raises(ValueError):
        scan_mod.scan(CS, EXPLICIT, offset=11)


def test_element_table_api():
    table = scan_mod.scan(CS + PN + PIX, EXPLICIT)
    assert isinstance(table, ElementTable)
    assert len(table) == 2
    assert table[0] == Element(0x00080060, "CS", 8, 2)
    assert table[-1].tag == 0x00100010
    assert table[0:1] == [Element(0x00080060, "CS", 8, 2)]
    assert table.tags == [0x00080060, 0x00100010]
    assert table.find(0x00100010) == Element(0x00100010, "PN", 18, 8)
    assert table.find(0x00100020) is None
    assert table.value(0x00080060) == b"CT"
    assert table.raw == [0x00080060, vr_code("CS"), 8, 2, 0x00100010, vr_code("PN"), 18, 8]
    assert table.stop_offset == 26
    assert "2 elements" in repr(table)
    with pytest.raises(IndexError):
        table[2]


def test_implicit_vr_names():
    data = (
        el(0x00080000, None, b"\0\0\0\0")
        + el(0x00091001, None, b"ab")
        + seq(0x00091002, [item(b"")], vr=None)
        + el(0x00280106, None, b"\0\0")
    )
    assert [e.vr for e in scan_mod.scan(data, IMPLICIT)] == ["UL", "UN", "SQ", "US"]


def test_implementation_selection():
    if os.environ.get("PACS_NO_EXTENSIONS") == "1":
        assert scan_mod.IMPLEMENTATION == "python"
    else:
        assert ("cython" if "cython" in CORES else "python") == scan_mod.IMPLEMENTATION
    code = "import pacs.dicom.scan as s; print(s.IMPLEMENTATION)"
    env = dict(os.environ, PACS_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "python"


def test_index_keywords():
    from pacs.index.records import ALL_KEYWORDS

    assert (*ALL_KEYWORDS, "SpecificCharacterSet") == scan_mod.INDEX_KEYWORDS


def test_index_from_memoryview_of_words(core):
    words = memoryview(bytearray(CS + PN)).cast("H")
    table = scan_mod._scan(core, words, EXPLICIT, scan_mod.PIXEL_DATA, 0)
    assert scan_mod.index_attributes(table) == {"Modality": "CT", "PatientName": "Doe^John"}


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def test_deflated_mmap_is_released(tmp_path):
    path = tmp_path / "ds"
    path.write_bytes(b"\0\0" + _deflate(CS + PN + PIX))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        table = scan_mod.scan(m, DEFLATED, offset=2)
        assert table.stop_offset == 26
        assert isinstance(table.buffer, bytearray)
        with pytest.raises(DicomFormatError):
            scan_mod.scan(m, DEFLATED, offset=1)  # not a deflate stream from there


def test_inflation_is_bounded(core, monkeypatch):
    monkeypatch.setattr(scan_mod, "MAX_INFLATED", 1 << 18)
    zeros = _deflate(bytes(1 << 20))  # elements (0000,0000) of length 0, forever
    with pytest.raises(DicomFormatError) as info:
        scan_mod._scan(core, zeros, DEFLATED, scan_mod.PIXEL_DATA, 0)
    assert info.value.reason == "inflated dataset exceeds the size limit"
    # only what the scan needs is inflated: a stop tag early in a huge stream is cheap
    big = _deflate(CS + PIX + bytes(1 << 24))
    assert len(scan_mod._scan(core, big, DEFLATED, scan_mod.PIXEL_DATA, 0)) == 1


def test_invalid_deflate_stream(core):
    with pytest.raises(DicomFormatError) as info:
        scan_mod._scan(core, b"\xff" * 32, DEFLATED, scan_mod.PIXEL_DATA, 0)
    assert info.value.reason.startswith("invalid deflate stream")


def test_core_rejects_negative_offset(core):
    with pytest.raises(ValueError):
        core(CS, True, True, scan_mod.PIXEL_DATA, -1)
