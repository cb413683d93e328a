"""C-FIND identifiers: our direct encoder is read back by pydicom exactly, in every native
syntax and character set; garbage identifiers raise DicomFormatError."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacs.dicom import uids
from pacs.dicom.identifier import decode_identifier, encode_identifier, encode_identifiers
from pacs.dicom.identifier_table import encode_identifier_table, rows_of_table
from pacs.errors import DicomFormatError

SYNTAXES = (uids.IMPLICIT_VR_LITTLE_ENDIAN, uids.EXPLICIT_VR_LITTLE_ENDIAN,
            uids.EXPLICIT_VR_BIG_ENDIAN)

uid = st.from_regex(r"[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){1,6}", fullmatch=True)
name = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x24F,
                             blacklist_characters="\\^=", blacklist_categories=("Cc", "Cs")),
               max_size=12).map(str.strip)
rows = st.fixed_dictionaries(
    {
        "QueryRetrieveLevel": st.sampled_from(["PATIENT", "STUDY", "SERIES", "IMAGE"]),
        "StudyInstanceUID": uid,
        "PatientName": st.builds(lambda a, b: f"{a}^{b}".strip("^"), name, name),
        "PatientID": st.from_regex(r"[A-Z0-9]{0,10}", fullmatch=True),
        "StudyDate": st.one_of(st.just(""), st.from_regex(r"(19|20)[0-9]{2}(0[1-9]|1[0-2])"
                                                          r"(0[1-9]|1[0-9]|2[0-8])",
                                                          fullmatch=True)),
        "ModalitiesInStudy": st.lists(st.sampled_from(["CT", "MR", "US", "SR"]), max_size=3,
                                      unique=True).map("\\".join),
        "NumberOfStudyRelatedInstances": st.integers(0, 10**6).map(str),
        "SeriesNumber": st.one_of(st.just(""), st.integers(-5, 999).map(str)),
    }
)


@settings(max_examples=150, deadline=None)
@given(row=rows, syntax=st.sampled_from(SYNTAXES))
def test_round_trip_through_pydicom(row: dict[str, str], syntax: str) -> None:
    charset = "" if all(ord(c) < 128 for c in row["PatientName"]) else "ISO_IR 192"
    row = {**row, "SpecificCharacterSet": charset}
    decoded = decode_identifier(encode_identifier(row, syntax), syntax)
    assert decoded == row


def test_elements_are_in_tag_order_and_even() -> None:
    data = encode_identifier({"StudyInstanceUID": "1.2.3", "QueryRetrieveLevel": "STUDY",
                              "PatientName": "A"}, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    assert data[:4] == b"\x08\x00\x52\x00"  # (0008,0052) first
    assert data.endswith(b"1.2.3\x00")  # UI padded with NUL
    assert b"A " in data  # PN padded with a space


@pytest.mark.parametrize("garbage", [b"\x08\x00\x05\x00CS\xff\xff", b"\x10\x00", b"abc"])
def test_garbage_is_a_format_error(garbage: bytes) -> None:
    with pytest.raises(DicomFormatError):
        decode_identifier(garbage, uids.EXPLICIT_VR_LITTLE_ENDIAN)


def test_rows_sharing_keys_encode_as_one_by_one() -> None:
    rows = [{"QueryRetrieveLevel": "STUDY", "PatientID": f"P{i}", "StudyDate": "20240101"}
            for i in range(5)]
    rows.insert(2, {"PatientID": "ODD", "QueryRetrieveLevel": "SERIES", "Modality": "CT"})
    rows.append({"StudyDate": "", "QueryRetrieveLevel": "STUDY", "PatientID": "LAST"})
    for syntax in SYNTAXES:
        assert encode_identifiers(rows, syntax) == [encode_identifier(r, syntax) for r in rows]
    assert encode_identifiers([], SYNTAXES[0]) == []


# -- identifiers of many rows from Arrow columns ---------------------------------------------

text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x24F,
                             blacklist_categories=("Cc", "Cs")), max_size=9)
ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=9)
# Columns of each kind of VR the index holds (PN/LO text, UI/DA/CS/IS ASCII-only), a binary VR
# and a key the table has no column for.
COLUMN_VALUES = {
    "PatientName": text, "StudyDescription": text, "PatientID": text,
    "StudyInstanceUID": uid, "StudyDate": ascii_text, "ModalitiesInStudy": ascii_text,
    "NumberOfStudyRelatedInstances": ascii_text, "Modality": text,
    "Rows": st.one_of(st.integers(0, 65535).map(str), ascii_text),
}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(0, 12), syntax=st.sampled_from(SYNTAXES),
       keys=st.lists(st.sampled_from([*COLUMN_VALUES, "StudyComments"]), unique=True,
                     max_size=6),
       level=st.sampled_from(["PATIENT", "STUDY"]), offset=st.integers(0, 3),
       nulls=st.booleans())
def test_table_encoding_equals_the_row_encoder(data: st.DataObject, n: int, syntax: str,
                                               keys: list[str], level: str, offset: int,
                                               nulls: bool) -> None:
    """Byte for byte what encode_identifiers gives for the engine's rows, for any table:
    non-ASCII text (ISO_IR 192 rows), non-ASCII in an ASCII VR and a binary VR (the row path),
    odd and even lengths, empty values, nulls, sliced columns, missing columns, every syntax."""
    columns = {}
    for k in keys:
        if k in COLUMN_VALUES:
            values: list[str | None] = data.draw(st.lists(COLUMN_VALUES[k], min_size=n + offset,
                                                          max_size=n + offset))
            if nulls and values:
                values[0] = None
            columns[k] = pa.array(values, pa.string())
    table = pa.table(columns) if columns else pa.table({"x": pa.array([""] * (n + offset))})
    table = table.slice(offset)
    expected = encode_identifiers(rows_of_table(table, keys, level), syntax)
    assert encode_identifier_table(table, keys, level, syntax) == expected


def test_table_encoding_of_the_engine_rows() -> None:
    table = pa.table({"PatientName": ["MÜLLER^JÖRG", "DOE^J"], "StudyDate": ["20240101", ""]})
    rows = rows_of_table(table, ["PatientName", "StudyDate", "StudyComments"], "STUDY")
    assert rows == [
        {"QueryRetrieveLevel": "STUDY", "PatientName": "MÜLLER^JÖRG", "StudyDate": "20240101",
         "StudyComments": "", "SpecificCharacterSet": "ISO_IR 192"},
        {"QueryRetrieveLevel": "STUDY", "PatientName": "DOE^J", "StudyDate": "",
         "StudyComments": "", "SpecificCharacterSet": ""},
    ]
    encoded = encode_identifier_table(table, ["PatientName", "StudyDate", "StudyComments"],
                                      "STUDY", uids.EXPLICIT_VR_LITTLE_ENDIAN)
    assert [decode_identifier(e, uids.EXPLICIT_VR_LITTLE_ENDIAN) for e in encoded] == rows


def test_table_encoding_refuses_what_the_row_encoder_refuses() -> None:
    """A value too long for a 16-bit length (explicit VR) is not wrapped around silently."""
    import struct

    table = pa.table({"StudyDescription": ["x" * 70000]})
    with pytest.raises(struct.error):
        encode_identifier_table(table, ["StudyDescription"], "STUDY",
                                uids.EXPLICIT_VR_LITTLE_ENDIAN)
    implicit = encode_identifier_table(table, ["StudyDescription"], "STUDY",
                                       uids.IMPLICIT_VR_LITTLE_ENDIAN)
    assert implicit == encode_identifiers(rows_of_table(table, ["StudyDescription"], "STUDY"),
                                          uids.IMPLICIT_VR_LITTLE_ENDIAN)
