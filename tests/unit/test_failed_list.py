"""The Failed SOP Instance UID List of a final C-GET / C-MOVE response: whole in Implicit VR,
cut to what an explicit syntax's 2-byte element length holds, always at a whole UID."""

from __future__ import annotations

from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid

from pacs.dicom import uids
from pacs.dicom.identifier import encode_identifier
from pacs.server.get import MAX_SHORT_VALUE, failed_list


def read_back(data: bytes, implicit: bool) -> list[str]:
    ds = read_dataset(DicomBytesIO(data), implicit, True)
    value = ds.FailedSOPInstanceUIDList
    return [value] if isinstance(value, str) else list(value)


def test_a_short_list_is_whole_in_every_syntax() -> None:
    failed = [generate_uid() for _ in range(3)]
    for syntax in (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN):
        assert failed_list(failed, syntax).split("\\") == failed


def test_a_long_list_is_cut_at_a_whole_uid_in_explicit_vr() -> None:
    failed = [generate_uid() for _ in range(2000)]  # ~120 KB joined
    listed = failed_list(failed, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    assert len(listed) + len(listed) % 2 <= MAX_SHORT_VALUE
    kept = listed.split("\\")
    assert kept == failed[:len(kept)] and len(kept) > 900
    encoded = encode_identifier({"FailedSOPInstanceUIDList": listed},
                                uids.EXPLICIT_VR_LITTLE_ENDIAN)  # raised struct.error uncut
    assert read_back(encoded, implicit=False) == kept


def test_a_long_list_is_whole_in_implicit_vr() -> None:
    failed = [generate_uid() for _ in range(2000)]
    listed = failed_list(failed, uids.IMPLICIT_VR_LITTLE_ENDIAN)
    assert listed.split("\\") == failed
    encoded = encode_identifier({"FailedSOPInstanceUIDList": listed},
                                uids.IMPLICIT_VR_LITTLE_ENDIAN)
    assert read_back(encoded, implicit=True) == failed
