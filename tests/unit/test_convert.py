"""pacs.dicom.convert against pydicom: native re-encoding round trips and decompression."""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.sequence import Sequence

from pacs.dicom import uids
from pacs.dicom.convert import ConversionError, can_convert, convert_dataset, plan_syntax
from pacs.dicom.part10 import read_file_meta
from pacs.errors import DicomFormatError
from tests.dicomgen import make_ct

ILE, ELE = uids.IMPLICIT_VR_LITTLE_ENDIAN, uids.EXPLICIT_VR_LITTLE_ENDIAN
EBE, DEFLATED = uids.EXPLICIT_VR_BIG_ENDIAN, uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
# pydicom's test files include deliberately invalid values; reading them warns.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]


def quiet_read(path: Path | io.BytesIO) -> pydicom.FileDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def part10_files(syntaxes: set[str]) -> Iterator[tuple[str, str]]:
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            meta, _ = read_file_meta(path.read_bytes())
        except DicomFormatError:
            continue
        ts = meta.get("TransferSyntaxUID", "")
        if ts in syntaxes and "truncated" not in path.name:
            yield path.name, ts


NATIVE_FILES = list(part10_files({ILE, ELE, EBE, DEFLATED}))


def dataset_bytes(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    meta, offset = read_file_meta(data)
    return data[offset:], meta["TransferSyntaxUID"]


def read_bare(data: bytes, ts: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_dataset(io.BytesIO(data), ts == ILE, True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    return ds


def raw_value(elem: DataElement, parent: Dataset) -> bytes:
    """The value bytes of an element as Implicit VR LE would hold them."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_data_element(fp, elem)
    return fp.getvalue()[8:]


def assert_same(a: Dataset, b: Dataset, where: str = "", big_endian: bool = False) -> None:
    """Element-by-element equality; group lengths and trailing padding left out; an element
    read as UN on one side (a private VR that Implicit VR cannot carry) compared by bytes."""
    skip = {0xFFFCFFFC}
    a_tags = [e.tag for e in a if e.tag.element != 0 and e.tag not in skip]
    b_tags = [e.tag for e in b if e.tag.element != 0 and e.tag not in skip]
    assert a_tags == b_tags, where
    for tag in a_tags:
        x, y = a[tag], b[tag]
        if x.VR == "SQ" and y.VR == "SQ":
            assert len(x.value) == len(y.value), f"{where} {tag}"
            for i, (p, q) in enumerate(zip(x.value, y.value, strict=True)):
                assert_same(p, q, f"{where} {tag}[{i}]", big_endian)
        elif tag == 0x7FE00010 and big_endian:
            assert np.array_equal(a.pixel_array, b.pixel_array), where
        elif big_endian and x.VR == "OW":  # pydicom keeps OW as read: swapped words
            assert np.array_equal(np.frombuffer(x.value, ">u2"), np.frombuffer(y.value, "<u2"))
        elif x.VR != y.VR:
            # UN on one side (a private VR Implicit VR cannot carry), or "US or SS" that
            # pydicom resolves differently by where Pixel Representation is: same bytes
            assert raw_value(x, a) == raw_value(y, b), f"{where} {tag}"
        else:
            assert x.value == y.value, f"{where} {tag} {x.VR} {y.VR}"


# --- plan_syntax -----------------------------------------------------------------------------


def test_plan_syntax() -> None:
    jpeg = "1.2.840.10008.1.2.4.50"
    mpeg = "1.2.840.10008.1.2.4.100"
    assert plan_syntax(jpeg, [jpeg, ELE]) == jpeg
    assert plan_syntax(jpeg, [ILE, ELE]) == ELE
    assert plan_syntax(jpeg, [ILE]) == ILE
    assert plan_syntax(ILE, [ELE, ILE]) == ILE
    assert plan_syntax(ILE, [ELE]) == ELE
    assert plan_syntax(EBE, [ILE]) == ILE
    assert plan_syntax(DEFLATED, [ELE]) == ELE
    assert plan_syntax(mpeg, [ELE, ILE]) is None
    assert plan_syntax(ELE, [jpeg]) is None
    assert plan_syntax(ELE, []) is None
    assert can_convert(ELE, ELE) and not can_convert(ELE, EBE)
    with pytest.raises(ConversionError):
        convert_dataset(b"", mpeg, ELE)
    with pytest.raises(ConversionError):
        convert_dataset(b"", ELE, jpeg)


# --- native round trips over pydicom's test files --------------------------------------------


@pytest.mark.parametrize(("name", "ts"), NATIVE_FILES, ids=[n for n, _ in NATIVE_FILES])
@pytest.mark.parametrize("target", [ELE, ILE], ids=["to-explicit", "to-implicit"])
def test_native_test_files(name: str, ts: str, target: str) -> None:
    data, _ = dataset_bytes(TEST_FILES / name)
    original = quiet_read(TEST_FILES / name)
    converted = convert_dataset(data, ts, target)
    assert_same(original, read_bare(converted, target), name, ts == EBE)
    # and back again: the same data set
    if ts in (ILE, ELE):
        back = convert_dataset(converted, target, ts)
        assert_same(original, read_bare(back, ts), name)


def test_native_sample_has_enough_files() -> None:
    assert len(NATIVE_FILES) >= 25
    assert {ts for _, ts in NATIVE_FILES} == {ILE, ELE, EBE, DEFLATED}


# --- generated data sets with nested sequences -----------------------------------------------


def nested_dataset(signed: bool, undefined: bool) -> Dataset:
    ds = make_ct(rows=16, columns=16)
    ds.PixelRepresentation = 1 if signed else 0
    ds.SmallestImagePixelValue = -5 if signed else 5  # "US or SS"
    ds.add_new(0x00091010, "LO", "ACME 1.0")  # private creator
    ds.add_new(0x00091011, "UL", 123456)  # private: UN in explicit after implicit
    ds.add_new(0x00091012, "OB", b"\x01\x02" * 40000)  # private, 80 kB
    ds.ImageComments = "x" * 70001 + "y"  # LT > 64 KiB: UN in explicit
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 16]
    lut.add_new(0x00283006, "OW", np.arange(256, dtype="<u2").tobytes())  # LUTData
    lut.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = Sequence([lut])
    inner = Dataset()
    inner.CodeValue = "121"
    inner.CodingSchemeDesignator = "DCM"
    inner.CodeMeaning = "nested"
    inner.add_new(0x00111010, "LO", "OTHER")
    inner.add_new(0x00111020, "DS", "1.5")
    middle = Dataset()
    middle.ConceptNameCodeSequence = Sequence([inner, inner])
    middle.ReferencedFrameNumber = [1, 2, 3]
    middle.RealWorldValueFirstValueMapped = -3 if signed else 3
    middle.ContentSequence = Sequence([])
    outer = Dataset()
    outer.ContentSequence = Sequence([middle, Dataset()])
    outer.TextValue = "outer"
    ds.ContentSequence = Sequence([outer])
    ds.ReferencedImageSequence = Sequence()
    for elem in (ds["ContentSequence"], ds["ModalityLUTSequence"], outer["ContentSequence"],
                 middle["ConceptNameCodeSequence"]):
        elem.is_undefined_length = undefined
        for item in elem.value:
            item.is_undefined_length_sequence_item = undefined
    return ds


def encode(ds: Dataset, ts: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = ts != EBE, ts == ILE
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
@pytest.mark.parametrize(("source", "target"), [(ILE, ELE), (ELE, ILE)])
def test_generated_nested(signed: bool, undefined: bool, source: str, target: str) -> None:
    data = encode(nested_dataset(signed, undefined), source)
    original = read_bare(data, source)
    converted = convert_dataset(data, source, target)
    assert_same(original, read_bare(converted, target))
    back = convert_dataset(converted, target, source)
    assert_same(original, read_bare(back, source))
    if source == ILE:
        # implicit -> explicit -> implicit is byte for byte the original
        assert back == data


def test_explicit_vrs_chosen_for_implicit_input() -> None:
    data = encode(nested_dataset(signed=True, undefined=False), ILE)
    ds = read_bare(convert_dataset(data, ILE, ELE), ELE)
    assert ds["PixelData"].VR == "OW"
    assert ds["SmallestImagePixelValue"].VR == "SS"
    assert ds["ImageComments"].VR in ("UN", "LT")  # UN on the wire; pydicom restores LT
    assert ds.ModalityLUTSequence[0]["LUTData"].VR == "OW"
    assert ds.ContentSequence[0].ContentSequence[0]["RealWorldValueFirstValueMapped"].VR == "SS"
    raw = convert_dataset(data, ILE, ELE)
    at = raw.index(struct.pack("<HH", 0x0020, 0x4000))  # (0020,4000) ImageComments
    assert raw[at + 4 : at + 6] == b"UN"
    assert struct.unpack_from("<I", raw, at + 8)[0] == 70002


def test_group_length_recomputed() -> None:
    elements = (struct.pack("<HHI", 0x0008, 0x0000, 4) + (999).to_bytes(4, "little")
                + struct.pack("<HHI", 0x0008, 0x0016, 6) + b"1.2.3\0"
                + struct.pack("<HHI", 0x0008, 0x0060, 2) + b"CT"
                + struct.pack("<HHI", 0x0010, 0x0010, 4) + b"A^B ")
    out = convert_dataset(elements, ILE, ELE)
    assert out[:12] == struct.pack("<HH2sH", 0x0008, 0x0000, b"UL", 4) + (24).to_bytes(4, "little")
    assert out[12:] == (struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 6) + b"1.2.3\0"
                        + struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CT"
                        + struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 4) + b"A^B ")
    back = convert_dataset(out, ELE, ILE)
    assert back[:8] == elements[:8] and back[8:12] == (24).to_bytes(4, "little")
    assert back[12:] == elements[12:]


def test_un_undefined_length_copied() -> None:
    # (0009,0010) LO creator, then (0009,1000) UN of undefined length holding an implicit item
    item = struct.pack("<HHI", 0x0008, 0x0060, 2) + b"CT"
    body = (struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
            + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"ACME"
    un = struct.pack("<HH2sHI", 0x0009, 0x1000, b"UN", 0, 0xFFFFFFFF) + body
    explicit = creator + un
    implicit = convert_dataset(explicit, ELE, ILE)
    assert implicit == (struct.pack("<HHI", 0x0009, 0x0010, 4) + b"ACME"
                        + struct.pack("<HHI", 0x0009, 0x1000, 0xFFFFFFFF) + body)
    assert convert_dataset(implicit, ILE, ELE) == (
        creator + struct.pack("<HH2sHI", 0x0009, 0x1000, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 10)
        + struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CT"
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


@pytest.mark.parametrize("source", [ILE, ELE, EBE])
def test_malformed_raises_format_error(source: str) -> None:
    data = encode(nested_dataset(False, False), source)
    with pytest.raises(DicomFormatError):
        convert_dataset(data[:-7], source, ELE if source != ELE else ILE)
    # damage inside a defined-length sequence: the item length runs past its sequence
    at = data.index(b"\xfe\xff\x00\xe0" if source != EBE else b"\xff\xfe\xe0\x00")
    bad = bytearray(data)
    bad[at + 4 : at + 8] = (0x7FFFFFF0).to_bytes(4, "little" if source != EBE else "big")
    with pytest.raises(DicomFormatError):
        convert_dataset(bytes(bad), source, ELE if source != ELE else ILE)


def test_big_endian_generated(tmp_path: Path) -> None:
    from tests.dicomgen import write

    path = write(nested_dataset(True, False), tmp_path / "be.dcm", EBE)
    data, ts = dataset_bytes(path)
    original = quiet_read(path)
    for target in (ELE, ILE):
        converted = read_bare(convert_dataset(data, ts, target), target)
        assert_same(original, converted, big_endian=True)


def test_deflated_inflates() -> None:
    data, ts = dataset_bytes(Path(get_testdata_file("image_dfl.dcm")))  # type: ignore[arg-type]
    assert ts == DEFLATED
    out = convert_dataset(data, ts, ELE)
    assert_same(quiet_read(Path(get_testdata_file("image_dfl.dcm"))),  # type: ignore[arg-type]
                read_bare(out, ELE))
    with pytest.raises(DicomFormatError):
        convert_dataset(b"\xff" * 20, DEFLATED, ELE)


# --- decompression ---------------------------------------------------------------------------

COMPRESSED = [
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline
    "JPGExtended.dcm",  # JPEG extended
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS near lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "JPEG2000.dcm",  # JPEG 2000
    "examples_jpeg2k.dcm",
    "MR_small_RLE.dcm",  # RLE
    "SC_rgb_rle_16bit_2frame.dcm",
    "rtdose_rle.dcm",  # RLE, multi-frame 32 bit
]


@pytest.mark.parametrize("name", COMPRESSED)
@pytest.mark.parametrize("target", [ELE, ILE], ids=["to-explicit", "to-implicit"])
def test_decompress_equals_pydicom(name: str, target: str) -> None:
    path = Path(get_testdata_file(name))  # type: ignore[arg-type]
    data, ts = dataset_bytes(path)
    assert ts in uids.ENCAPSULATED_TRANSFER_SYNTAXES
    assert plan_syntax(ts, [target]) == target
    original = quiet_read(path)
    converted = read_bare(convert_dataset(data, ts, target), target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(original.pixel_array, converted.pixel_array)
    assert converted.SOPInstanceUID == original.SOPInstanceUID
    assert "PixelData" in converted and not converted["PixelData"].is_undefined_length


def test_undecodable_raises_conversion_error() -> None:
    # 12-bit JPEG extended that the installed libjpeg cannot decode here
    path = Path(get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm"))  # type: ignore[arg-type]
    data, ts = dataset_bytes(path)
    with pytest.raises(ConversionError):
        convert_dataset(data, ts, ELE)


def test_no_decoder() -> None:
    assert plan_syntax("1.2.840.10008.1.2.4.100", [ELE, ILE]) is None  # MPEG-2
    assert not can_convert("1.2.840.10008.1.2.1.98", ELE)  # encapsulated uncompressed


if os.environ.get("PACS_CONVERT_ALL"):  # pragma: no cover - a wider sweep on request

    def test_every_compressed_file() -> None:
        for path in sorted(TEST_FILES.glob("*.dcm")):
            try:
                data, ts = dataset_bytes(path)
            except DicomFormatError:
                continue
            if ts in uids.ENCAPSULATED_TRANSFER_SYNTAXES and can_convert(ts, ELE):
                try:
                    convert_dataset(data, ts, ELE)
                except ConversionError:
                    pass
