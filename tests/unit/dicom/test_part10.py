"""Part-10 file meta: written fast, read back by pydicom and by us."""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest

from pacs.dicom import part10, uids
from pacs.errors import DicomFormatError
from tests.unit.dicom.builders import TEST_FILES

CT = "1.2.840.10008.5.1.4.1.1.2"
SOP = "1.2.3.4.5.6.7"


@pytest.mark.parametrize("aet", ["", "MODALITY1", "ODD"])
def test_file_meta_is_valid_for_pydicom(aet):
    meta = part10.file_meta(CT, SOP, uids.EXPLICIT_VR_LITTLE_ENDIAN, aet)
    assert meta[:128] == b"\0" * 128 and meta[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(meta + b"\x08\x00\x60\x00CS\x02\x00CT"))
    fm = ds.file_meta
    assert fm.FileMetaInformationVersion == b"\x00\x01"
    assert fm.MediaStorageSOPClassUID == CT
    assert fm.MediaStorageSOPInstanceUID == SOP
    assert fm.TransferSyntaxUID == uids.EXPLICIT_VR_LITTLE_ENDIAN
    assert fm.ImplementationClassUID == uids.IMPLEMENTATION_CLASS_UID
    assert fm.ImplementationVersionName == uids.IMPLEMENTATION_VERSION_NAME
    assert fm.FileMetaInformationGroupLength == len(meta) - 132 - 12
    assert fm.get("SourceApplicationEntityTitle", "") == aet
    assert ds.Modality == "CT"
    assert len(meta) % 2 == 0


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "MR_small_bigendian.dcm",
             "image_dfl.dcm", "JPEG2000.dcm", "UN_sequence.dcm"]
)
def test_pydicom_reads_the_dataset_after_our_meta_identically(name):
    data = (TEST_FILES / name).read_bytes()
    meta, offset = part10.read_file_meta(data)
    original = pydicom.dcmread(io.BytesIO(data))
    header = part10.file_meta(
        meta["MediaStorageSOPClassUID"], meta["MediaStorageSOPInstanceUID"],
        meta["TransferSyntaxUID"], "STORESCU",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rewritten = pydicom.dcmread(io.BytesIO(header + data[offset:]))
    assert rewritten.file_meta.SourceApplicationEntityTitle == "STORESCU"
    assert rewritten.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert rewritten == original  # Dataset equality: every element, pixel data included


def test_read_file_meta_round_trip():
    header = part10.file_meta(CT, SOP, uids.IMPLICIT_VR_LITTLE_ENDIAN, "AET")
    data = header + b"\x08\x00\x60\x00\x02\x00\x00\x00CT"
    meta, offset = part10.read_file_meta(data)
    assert offset == len(header)
    assert meta == {
        "FileMetaInformationGroupLength": str(len(header) - 144),
        "FileMetaInformationVersion": "0001",
        "MediaStorageSOPClassUID": CT,
        "MediaStorageSOPInstanceUID": SOP,
        "TransferSyntaxUID": uids.IMPLICIT_VR_LITTLE_ENDIAN,
        "ImplementationClassUID": uids.IMPLEMENTATION_CLASS_UID,
        "ImplementationVersionName": uids.IMPLEMENTATION_VERSION_NAME,
        "SourceApplicationEntityTitle": "AET",
    }
    assert part10.read_file_meta(header) == (meta, len(header))


def test_read_file_meta_of_pydicom_file():
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    meta, offset = part10.read_file_meta(data)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert meta["TransferSyntaxUID"] == ds.file_meta.TransferSyntaxUID
    assert meta["MediaStorageSOPInstanceUID"] == ds.file_meta.MediaStorageSOPInstanceUID
    assert data[offset : offset + 4] == b"\x08\x00\x05\x00"


@pytest.mark.parametrize("data", [b"", b"\0" * 131, b"\0" * 128 + b"DICX" + b"\0" * 20])
def test_not_part10(data):
    with pytest.raises(DicomFormatError) as info:
        part10.read_file_meta(data)
    assert info.value.offset == 128


def test_truncated_meta():
    header = part10.file_meta(CT, SOP, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DicomFormatError):
        part10.read_file_meta(header[:150])


@pytest.mark.parametrize(
    "args",
    [("1.2.é", SOP, uids.EXPLICIT_VR_LITTLE_ENDIAN, ""), ("1." * 40, SOP, "1.2", ""),
     (CT, SOP, "1.2", "A" * 17)],
)
def test_file_meta_rejects_unencodable_values(args):
    with pytest.raises(ValueError):
        part10.file_meta(*args)
