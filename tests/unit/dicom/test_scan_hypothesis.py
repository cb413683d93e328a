"""Generated and mutated byte streams: both twins give equal tables or equal errors."""

from __future__ import annotations

import zlib

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pacs.dicom import part10
from pacs.dicom import scan as scan_mod
from pacs.errors import DicomFormatError
from tests.unit.dicom.builders import (
    BIG,
    CORES,
    DEFLATED,
    EXPLICIT,
    IMPLICIT,
    READERS,
    TEST_FILES,
    el,
    item,
    read_index,
    seq,
)

# With one twin available (PACS_NO_EXTENSIONS=1) these still check its invariants.
SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TAGS = st.one_of(
    st.sampled_from([0x00080005, 0x00080018, 0x00080060, 0x00100010, 0x00200013, 0x7FE00010]),
    st.integers(0x00080000, 0x7FE0FFFF),
    st.sampled_from([0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD]),
)
VRS = st.sampled_from(["CS", "PN", "UI", "OB", "OW", "UN", "UT", "SQ", "US", "XX", "LO", "UV"])
VALUES = st.binary(max_size=24)


@st.composite
def datasets(draw, depth=0):
    """(list of element specs): ("el", tag, vr, value) or ("sq", tag, vr, undefined, items)."""
    elements = []
    for _ in range(draw(st.integers(0, 5 if depth < 2 else 2))):
        tag = draw(TAGS)
        if depth < 3 and draw(st.integers(0, 4)) == 0:
            items = [
                (draw(datasets(depth + 1)), draw(st.booleans()))
                for _ in range(draw(st.integers(0, 2)))
            ]
            elements.append(("sq", tag, draw(st.sampled_from(["SQ", "UN", "OB"])),
                             draw(st.booleans()), items))
        else:
            elements.append(("el", tag, draw(VRS), draw(VALUES)))
    return sorted(elements, key=lambda e: e[1])


def encode(spec, explicit: bool, little: bool) -> bytes:
    out = []
    for kind, tag, vr, *rest in spec:
        use_vr = vr if explicit else None
        if kind == "el":
            out.append(el(tag, use_vr, rest[0], little=little))
        else:
            undefined, items = rest
            encoded = [item(encode(s, explicit, little), undefined=u, little=little)
                       for s, u in items]
            out.append(seq(tag, encoded, vr=use_vr, undefined=undefined, little=little))
    return b"".join(out)


@st.composite
def streams(draw):
    spec = draw(datasets())
    syntax = draw(st.sampled_from([EXPLICIT, IMPLICIT, BIG]))
    data = bytearray(encode(spec, syntax != IMPLICIT, syntax != BIG))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "ffff", "fffe"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "ffff":
            data[pos : pos + 4] = b"\xff\xff\xff\xff"
        else:
            data[pos : pos + 4] = draw(st.sampled_from([b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0",
                                                         b"\xfe\xff\xdd\xe0"]))
    stop = draw(st.sampled_from([scan_mod.PIXEL_DATA, 0x100000000, 0x00100000]))
    offset = draw(st.integers(0, min(len(data), 3)))
    return bytes(data), syntax, stop, offset


def _has_delimiter_tags(spec) -> bool:
    for kind, tag, *rest in spec:
        if tag >= 0xFFFE0000:
            return True
        if kind == "sq" and any(_has_delimiter_tags(items) for items, _u in rest[2]):
            return True
    return False


def outcome(name, data, syntax, stop, offset):
    """Table (and index record) or error of one twin; its index reader must agree with it."""
    try:
        record = read_index(name, data, syntax, stop, offset)
    except DicomFormatError as exc:
        record = exc
    try:
        table = scan_mod._scan(CORES[name], data, syntax, stop, offset)
    except DicomFormatError as exc:
        assert record == exc
        return ("error", exc.reason, exc.offset, exc.tag)
    attributes = scan_mod.index_attributes(table)  # must never raise
    assert record == attributes
    assert all(isinstance(v, str) for v in attributes.values())
    assert all(e.value_offset + (0 if e.length == 0xFFFFFFFF else e.length) <= len(table.buffer)
               for e in table)
    return ("table", table.raw, table.stop_offset, attributes)


@SETTINGS
@given(streams())
def test_twins_agree_on_generated_and_mutated_streams(case):
    data, syntax, stop, offset = case
    results = [outcome(name, data, syntax, stop, offset) for name in READERS]
    assert all(r == results[0] for r in results)


@SETTINGS
@given(st.binary(max_size=64), st.sampled_from([EXPLICIT, IMPLICIT, BIG]))
def test_twins_agree_on_random_bytes(data, syntax):
    results = [outcome(name, data, syntax, 0x100000000, 0) for name in READERS]
    assert all(r == results[0] for r in results)


@SETTINGS
@given(streams(), st.booleans())
def test_twins_agree_on_deflated_streams(case, garble):
    data, _syntax, stop, _offset = case
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = bytearray(compressor.compress(data) + compressor.flush())
    if garble and deflated:
        deflated[len(deflated) // 2] ^= 0x5A
    results = [outcome(name, bytes(deflated), DEFLATED, stop, 0) for name in READERS]
    assert all(r == results[0] for r in results)


@SETTINGS
@given(datasets(), st.sampled_from([EXPLICIT, IMPLICIT, BIG]))
def test_well_formed_streams_list_their_top_level_elements(spec, syntax):
    assume(not _has_delimiter_tags(spec))
    data = encode(spec, syntax != IMPLICIT, syntax != BIG)
    expected = [tag for _kind, tag, *_ in spec]
    for core in CORES.values():
        table = scan_mod._scan(core, data, syntax, 0x100000000, 0)
        assert table.tags == expected


def _real_datasets() -> list[tuple[bytes, str]]:
    out = []
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                 "UN_sequence.dcm", "nested_priv_SQ.dcm", "rtplan.dcm", "JPEG2000.dcm"):
        data = (TEST_FILES / name).read_bytes()
        meta, offset = part10.read_file_meta(data)
        out.append((data[offset : offset + 4096], meta["TransferSyntaxUID"]))
    return out


REAL = _real_datasets()


@SETTINGS
@given(st.sampled_from(REAL), st.data())
def test_twins_agree_on_mutated_real_headers(real, data):
    dataset, syntax = real
    mutated = bytearray(dataset)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(mutated) - 1))
        mutated[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    results = [outcome(name, bytes(mutated[:cut]), syntax, 0x100000000, 0) for name in READERS]
    assert all(r == results[0] for r in results)


# Index values: every decoding branch of the compiled fast path against the pure record.
CHARSETS = ["", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "\\ISO 2022 IR 87", "GB18030",
            "ISO_IR 13", "ISO_IR 144", "ISO_IR 999", "ISO 2022 IR 6\\ISO 2022 IR 149", "UTF-7"]
INDEX_TAGS = [t for t in sorted(scan_mod._INDEX_TAGS) if t != 0x00080005]
VALUE_BYTES = st.one_of(
    st.sampled_from(b" \x00\\=^\x1b$B()\x80\xe9\xff\xc3\xa9A1.z"), st.integers(0, 255)
)
INDEX_VRS = st.sampled_from([None, "AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN",
                             "SH", "ST", "TM", "UC", "UI", "UR", "UT", "UN", "OB", "SQ", "US"])


@SETTINGS
@given(
    st.sampled_from(CHARSETS),
    st.lists(
        st.tuples(st.sampled_from(INDEX_TAGS), INDEX_VRS,
                  st.lists(VALUE_BYTES, max_size=20).map(bytes)),
        max_size=8,
    ),
    st.booleans(),
)
def test_index_readers_agree_on_values(charset, elements, implicit):
    data = el(0x00080005, None if implicit else "CS", charset.encode()) if charset else b""
    for tag, vr, value in sorted(elements, key=lambda e: e[0]):
        data += el(tag, None if implicit else (vr or "UN"), value)
    syntax = IMPLICIT if implicit else EXPLICIT
    results = [outcome(name, data, syntax, scan_mod.PIXEL_DATA, 0) for name in READERS]
    assert all(r == results[0] for r in results)
