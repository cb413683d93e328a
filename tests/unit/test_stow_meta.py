"""STOW-RS's quick reads give what the general code gives: the file meta UIDs and data set
offset of ``pacs.web.stow.read_meta`` against ``part10.read_file_meta``, and the media-type
splitting's fast paths against the character-by-character one, on arbitrary input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacs.dicom import part10
from pacs.errors import DicomFormatError
from pacs.web import multipart
from pacs.web.stow import read_meta
from tests.dicomgen import make_ct, write

KEYS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


@pytest.fixture(scope="module")
def part10_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write(make_ct(), Path(tmp_path_factory.mktemp("meta")) / "ct.dcm").read_bytes()


def _reference(buffer: bytes) -> tuple[dict[str, str], int] | None:
    try:
        return part10.read_file_meta(buffer)
    except DicomFormatError:
        return None


def _quick(buffer: bytes) -> tuple[dict[str, str], int] | None:
    try:
        return read_meta(buffer)
    except DicomFormatError:
        return None


def _same(buffer: bytes) -> None:
    expected, got = _reference(buffer), _quick(buffer)
    assert (expected is None) == (got is None)
    if expected is not None and got is not None:
        assert got[1] == expected[1]
        assert {k: got[0].get(k) for k in KEYS} == {k: expected[0].get(k) for k in KEYS}


def test_valid_file(part10_file: bytes) -> None:
    meta, offset = read_meta(part10_file)
    assert meta["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    assert part10_file[offset:offset + 2] == b"\x08\x00"  # the data set's first group
    _same(part10_file)


def test_without_preamble(part10_file: bytes) -> None:
    meta, offset = read_meta(part10_file[132:])
    expected, expected_offset = part10.read_file_meta(part10_file)
    assert offset == expected_offset - 132
    assert {k: meta[k] for k in KEYS} == {k: expected[k] for k in KEYS}


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_meta(part10_file: bytes, data: st.DataObject) -> None:
    end = part10.read_file_meta(part10_file)[1]
    buffer = bytearray(part10_file[:end + 64])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(132, end + 8))
        buffer[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(132, len(buffer)))
    _same(bytes(buffer[:cut]))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='";,\\ a=b/', max_size=40), st.sampled_from([";", ","]))
def test_split_fast_paths(value: str, sep: str) -> None:
    assert multipart._split(value, sep) == multipart._split_quoted(value, sep)
    assert multipart._split(value, sep) == multipart._split_quoted(value, sep)  # cached
