"""Specific Character Set: our index values equal pydicom's for the repertoires we must honour."""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from pacs.dicom import scan as scan_mod
from pacs.dicom.charset import decode_value, python_encodings
from tests.unit.dicom.builders import EXPLICIT, IMPLICIT, el

CASES = [
    ("ISO_IR 100", "Buc^Jérôme", "Étude du cou"),
    ("ISO_IR 192", "Wang^XiaoDong=王^小東", "Ünïcödé 研究"),
    ("ISO 2022 IR 6\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう", "Study"),
    ("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎", "CT"),
    ("ISO 2022 IR 100", "Müller^Jürgen", "Schädel"),
    ("GB18030", "Wang^XiaoDong=王^小东", "胸部 CT"),
    ("ISO_IR 144", "Иванов^Иван", "Голова"),
    ("", "Doe^John\\Roe^Jane", "Two\\Values"),
]


def _encode(charset: str, name: str, description: str, implicit: bool) -> bytes:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    ds.PatientName = name.split("\\") if "\\" in name else name
    ds.StudyDescription = description.split("\\") if "\\" in description else description
    ds.PatientID = "ID 1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesNumber = "7"
    ds.set_original_encoding(implicit, True, None)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(fp, ds)
    return fp.getvalue()


def _pydicom_values(data: bytes, implicit: bool) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.filereader.read_dataset(io.BytesIO(data), implicit, True)
        out = {}
        for kw in scan_mod.INDEX_KEYWORDS:
            if kw in ds:
                value = ds.data_element(kw).value
                out[kw] = ("\\".join(str(v) for v in value)
                           if isinstance(value, pydicom.multival.MultiValue) else str(value))
    return out


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize(("charset", "name", "description"), CASES, ids=[c[0] for c in CASES])
def test_values_equal_pydicom(charset, name, description, implicit):
    data = _encode(charset, name, description, implicit)
    ours = scan_mod.read_index_attributes(data, IMPLICIT if implicit else EXPLICIT)
    assert ours == _pydicom_values(data, implicit)
    assert ours["PatientName"] == name
    assert ours["StudyDescription"] == description


def test_unknown_and_broken_charsets_never_raise_nor_warn():
    data = el(0x00080005, "CS", b"ISO_IR 999") + el(0x00100010, "PN", b"Caf\xe9^\x1b$B\x99\x99")
    values = scan_mod.read_index_attributes(data, EXPLICIT)  # warnings are errors in tests
    assert values["SpecificCharacterSet"] == "ISO_IR 999"
    assert values["PatientName"].startswith("Caf")
    assert python_encodings("ISO_IR 999") == ("iso8859",)
    bad_utf8 = el(0x00080005, "CS", b"ISO_IR 192") + el(0x00100010, "PN", b"\xff\xfe^A")
    assert scan_mod.read_index_attributes(bad_utf8, EXPLICIT)["PatientName"] == "\ufffd\ufffd^A"


@pytest.mark.parametrize(
    ("vr", "raw", "expected"),
    [
        ("UI", b"1.2.3\x00", "1.2.3"),
        ("UI", b"1.2\\3.4\x00", "1.2\\3.4"),
        ("CS", b"CT ", "CT"),
        ("DA", b"20240101", "20240101"),
        ("IS", b" 12 ", "12"),
        ("IS", b"1\\ 2 ", "1\\2"),
        ("LO", b"a \\b ", "a\\b"),
        ("PN", b"A^B=\x00", "A^B"),
        ("PN", b"A^B \\C^D ", "A^B \\C^D"),
        ("AE", b" AET  ", "AET"),
        ("LT", b"line\\with backslash ", "line\\with backslash"),
    ],
)
def test_padding_and_multi_values(vr, raw, expected):
    assert decode_value(vr, raw, ("iso8859",)) == expected


def test_element_vr_overrides_and_exclusions():
    data = (
        el(0x00080018, "UN", b"1.2.3\x00")  # UN: decoded by the dictionary VR (UI)
        + el(0x00080060, "LO", b"CT ")  # another string VR: used as written
        + el(0x00100010, "SQ", b"")  # a sequence where a string belongs: omitted
        + el(0x00100020, "LO", b"", length=0)  # present but empty: ''
    )
    assert scan_mod.read_index_attributes(data, EXPLICIT) == {
        "SOPInstanceUID": "1.2.3",
        "Modality": "CT",
        "PatientID": "",
    }


def test_last_duplicate_wins_and_unsorted_tags():
    data = el(0x00100020, "LO", b"B") + el(0x00080060, "CS", b"MR") + el(0x00100020, "LO", b"C ")
    assert scan_mod.read_index_attributes(data, EXPLICIT) == {"Modality": "MR", "PatientID": "C"}
    sorted_dup = el(0x00100020, "LO", b"B") + el(0x00100020, "LO", b"C ")
    assert scan_mod.read_index_attributes(sorted_dup, EXPLICIT) == {"PatientID": "C"}
