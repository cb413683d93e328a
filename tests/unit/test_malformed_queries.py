"""Identifiers and MPPS data sets with elements in the wrong shape (found by a helper's hunt):
a clear error, never a silently dropped key (which matched everything) nor a traceback."""

from __future__ import annotations

import struct

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.dicom import uids
from pacs.dicom.identifier import decode_identifier
from pacs.errors import DicomFormatError
from pacs.server.mpps import INVALID_ATTRIBUTE_VALUE, PROCESSING_FAILURE, MppsError, _parse
from tests.dicomgen import dataset_bytes


def test_a_matching_key_sent_as_a_sequence_is_refused() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    item = Dataset()
    item.PatientID = "X"
    ds.add(DataElement(0x00100020, "SQ", Sequence([item])))  # PatientID, VR LO
    with pytest.raises(DicomFormatError, match="PatientID is sent as a sequence"):
        decode_identifier(dataset_bytes(ds), uids.EXPLICIT_VR_LITTLE_ENDIAN)


def test_a_real_sequence_is_still_left_out() -> None:
    ds = Dataset()
    ds.PatientID = "X"
    ds.ReferencedStudySequence = Sequence([Dataset()])
    assert decode_identifier(dataset_bytes(ds), uids.EXPLICIT_VR_LITTLE_ENDIAN) == {
        "PatientID": "X"}


def test_mpps_sequence_sent_as_text() -> None:
    ds = Dataset()
    ds.add(DataElement(0x00400270, "LO", "not a sequence"))  # ScheduledStepAttributesSequence
    with pytest.raises(MppsError) as raised:
        _parse(dataset_bytes(ds), uids.EXPLICIT_VR_LITTLE_ENDIAN)
    assert raised.value.status == INVALID_ATTRIBUTE_VALUE


def test_mpps_undefined_length_sequence_without_its_end() -> None:
    # (0040,0270) SQ, undefined length, one item start and nothing after it.
    data = (struct.pack("<HH2sHI", 0x0040, 0x0270, b"SQ", 0, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
    with pytest.raises(MppsError) as raised:
        _parse(data, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    assert raised.value.status == PROCESSING_FAILURE


def test_mpps_value_of_a_wrong_length() -> None:
    data = struct.pack("<HH2sH", 0x0018, 0x1150, b"FD", 3) + b"abc"  # an FD of 3 bytes
    with pytest.raises(MppsError) as raised:
        _parse(data, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    assert raised.value.status == PROCESSING_FAILURE
