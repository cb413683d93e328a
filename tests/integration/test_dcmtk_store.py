"""Real dcmtk clients against a running archive: echo, store in every native syntax and of
pydicom's own test files (compressed ones included); what is stored is what was sent."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from pacs.dicom import uids
from tests.conftest import require_tool
from tests.dicomgen import NATIVE_SYNTAXES, make_ct, write
from tests.integration.archive_check import read_blob, same_dataset, stored_instance

pytestmark = pytest.mark.integration


def dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool(tool), *args], capture_output=True, text=True,
                          timeout=timeout)


# storescu re-encodes to its preferred syntax unless told to propose the file's own.
STORESCU_PROPOSE = {
    uids.IMPLICIT_VR_LITTLE_ENDIAN: "-xi",
    uids.EXPLICIT_VR_LITTLE_ENDIAN: "-xe",
    uids.EXPLICIT_VR_BIG_ENDIAN: "-xb",
    uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG Extended
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE
}


def test_echoscu(archive) -> None:
    proc = dcmtk("echoscu", "-aec", "PACS", "127.0.0.1", str(archive.port))
    assert proc.returncode == 0, proc.stderr


def assert_stored_as_sent(data_dir: Path, sent: Path, calling_aet: str = "STORESCU") -> None:
    original = pydicom.dcmread(sent)
    found = stored_instance(data_dir, original.SOPInstanceUID)
    assert found is not None, f"{sent.name} was not indexed"
    record, blob = found
    assert blob[128:132] == b"DICM"
    stored = read_blob(blob)
    meta = stored.file_meta
    assert meta.ImplementationClassUID == uids.IMPLEMENTATION_CLASS_UID
    assert meta.SourceApplicationEntityTitle == calling_aet
    assert meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert record.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
    assert same_dataset(stored, original), f"{sent.name}: stored data set differs"
    assert record.size == len(blob)


@pytest.mark.parametrize("transfer_syntax", NATIVE_SYNTAXES, ids=uids.uid_name)
def test_storescu_native_syntaxes(archive, tmp_path: Path, transfer_syntax: str) -> None:
    files = [write(make_ct(instance_number=i), tmp_path / f"{i}.dcm", transfer_syntax)
             for i in range(3)]
    proc = dcmtk("storescu", STORESCU_PROPOSE[transfer_syntax], "-aec", "PACS", "127.0.0.1",
                 str(archive.port), *map(str, files))
    assert proc.returncode == 0, proc.stderr
    for f in files:
        assert_stored_as_sent(archive.data_dir, f)
    record, _ = stored_instance(archive.data_dir, pydicom.dcmread(files[0]).SOPInstanceUID)
    assert record.attributes["PatientName"] == "Doe^Jane"
    assert record.attributes["Modality"] == "CT"
    assert record.attributes["StudyDate"] == "20260102"


def _pydicom_test_files() -> list[Path]:
    """pydicom's test files that are Part-10 storage instances (compressed ones included)."""
    folder = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]
    chosen = []
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta or "SOPInstanceUID" not in ds:
            continue
        if meta.get("MediaStorageSOPClassUID") not in uids.STORAGE_SOP_CLASSES:
            continue
        if ds.get("SOPClassUID") != meta.MediaStorageSOPClassUID:
            continue
        if ds.SOPInstanceUID != meta.get("MediaStorageSOPInstanceUID"):
            continue
        if meta.TransferSyntaxUID not in STORESCU_PROPOSE:
            continue
        chosen.append(path)
    return chosen


PYDICOM_FILES = _pydicom_test_files()


def test_pydicom_test_files_cover_compressed_syntaxes() -> None:
    syntaxes = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
                for p in PYDICOM_FILES}
    assert len(PYDICOM_FILES) >= 20
    assert {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.80"} <= syntaxes


def test_storescu_pydicom_test_files(archive, tmp_path: Path) -> None:
    """Each file is sent by its own storescu: success means stored exactly as sent."""
    sent, refused = [], []
    for path in PYDICOM_FILES:
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        proc = dcmtk("storescu", "-v", STORESCU_PROPOSE[syntax], "-aec", "PACS", "127.0.0.1",
                     str(archive.port), str(path))
        output = proc.stdout + proc.stderr
        if "Received Store Response (Success)" in output:
            sent.append(path)
        elif "Store Response" in output:
            refused.append(path)
        # else storescu declined the file itself (it cannot send a few of pydicom's odd ones)
    # The archive refuses only instances without the UIDs its hierarchy needs (0xA900).
    for path in refused:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert not (ds.get("StudyInstanceUID") and ds.get("SeriesInstanceUID")), path.name
    assert "refused: data set has no StudyInstanceUID" in archive.log() or not refused
    assert len(sent) >= 30
    # Several of pydicom's files share a SOP Instance UID: the first one sent is kept.
    first_by_uid: dict[str, Path] = {}
    for path in sent:
        first_by_uid.setdefault(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID,
                                path)
    for path in first_by_uid.values():
        assert_stored_as_sent(archive.data_dir, path)


def test_storescu_same_instance_twice_is_kept_once(archive, tmp_path: Path) -> None:
    path = write(make_ct(), tmp_path / "a.dcm", ExplicitVRLittleEndian)
    for _ in range(2):
        proc = dcmtk("storescu", "-aec", "PACS", "127.0.0.1", str(archive.port), str(path))
        assert proc.returncode == 0, proc.stderr
    from tests.integration.archive_check import statistics

    assert statistics(archive.data_dir)["instances"] == 1
    assert "duplicate SOPInstanceUID" in archive.log()
