"""C-GET with real clients: dcmtk getscu and pynetdicom at every level; what arrives equals
what was stored; conversion for peers that accept only other syntaxes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.conftest import ArchiveProcess, free_port, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import same_dataset

pytestmark = pytest.mark.integration

JPEG_BASELINE_FILE = "SC_rgb_jpeg_dcmtk.dcm"


@pytest.fixture(scope="module")
def stocked(tmp_path_factory):
    """A CT study of 2 series (3 + 2 instances, Explicit VR LE) and one JPEG Baseline image."""
    tmp = tmp_path_factory.mktemp("get")
    archive = ArchiveProcess(tmp / "data", free_port(),
                             extra_args=["--acse-timeout", "5", "--idle-timeout", "10"])
    archive.start()
    study = make_ct().StudyInstanceUID
    series = [make_ct().SeriesInstanceUID, make_ct().SeriesInstanceUID]
    files = [write(make_ct(study_uid=study, series_uid=series[0 if i < 3 else 1],
                           instance_number=i), tmp / f"{i}.dcm") for i in range(5)]
    storescu = require_tool("storescu")
    for args in ([*map(str, files)], ["-xy", get_testdata_file(JPEG_BASELINE_FILE)]):
        proc = subprocess.run([storescu, "-aec", "PACS", "127.0.0.1", str(archive.port), *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    yield archive, study, series, files
    archive.stop()


def getscu(port: int, out: Path, *args: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([require_tool("getscu"), "-v", "-aec", "PACS", "-od", str(out), *args,
                           "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def received(out: Path) -> dict[str, pydicom.FileDataset]:
    return {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in out.iterdir())}


def test_getscu_study_level_returns_what_was_stored(stocked, tmp_path: Path) -> None:
    archive, study, _series, files = stocked
    output = getscu(archive.port, tmp_path / "out", "-S", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={study}")
    assert "Number of Completed Suboperations : 5" in output
    got = received(tmp_path / "out")
    assert len(got) == 5
    for path in files:
        original = pydicom.dcmread(path)
        assert same_dataset(got[original.SOPInstanceUID], original)


def test_getscu_series_and_image_levels(stocked, tmp_path: Path) -> None:
    archive, study, series, files = stocked
    getscu(archive.port, tmp_path / "series", "-S", "-k", "QueryRetrieveLevel=SERIES",
           "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series[1]}")
    assert len(received(tmp_path / "series")) == 2
    one = pydicom.dcmread(files[0]).SOPInstanceUID
    getscu(archive.port, tmp_path / "image", "-S", "-k", "QueryRetrieveLevel=IMAGE",
           "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series[0]}",
           "-k", f"SOPInstanceUID={one}")
    assert list(received(tmp_path / "image")) == [one]


def test_implicit_only_peer_gets_converted_instances(stocked) -> None:
    """A C-GET peer that takes CT images in Implicit VR LE only gets them converted."""
    archive, study, _series, files = stocked
    arrived: dict[str, tuple[str, Dataset]] = {}

    def on_store(event: evt.Event) -> int:
        arrived[event.request.AffectedSOPInstanceUID] = (event.context.transfer_syntax,
                                                         event.dataset)
        return 0x0000

    ae = AE(ae_title="PYGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        final = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))[-1][0]
    finally:
        assoc.release()
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 5
    for path in files:
        original = pydicom.dcmread(path)
        syntax, dataset = arrived[original.SOPInstanceUID]
        assert syntax == ImplicitVRLittleEndian
        assert same_dataset(dataset, original)


def test_compressed_instance_is_decompressed_for_an_uncompressed_peer(stocked, tmp_path):
    archive, _study, _series, _files = stocked
    original = pydicom.dcmread(get_testdata_file(JPEG_BASELINE_FILE))
    getscu(archive.port, tmp_path / "out", "-S", "-k", "QueryRetrieveLevel=STUDY",
           "-k", f"StudyInstanceUID={original.StudyInstanceUID}")
    copy = received(tmp_path / "out")[original.SOPInstanceUID]
    assert f"sending {original.SOPInstanceUID} as 1.2.840.10008.1.2.1, converted from " \
        "1.2.840.10008.1.2.4.50" in archive.log()
    assert np.array_equal(copy.pixel_array, original.pixel_array)


def pynetdicom_get(port: int, study: str, on_store, level: str = "STUDY",
                   **keys: str) -> list[tuple[Dataset, Dataset | None]]:
    """A Study Root C-GET of ``study`` (at ``level`` with the unique ``keys`` below it) by
    pynetdicom taking the SCP role of the first 100 storage classes; ``on_store`` answers
    each sub-operation. The (status, identifier)s."""
    ae = AE(ae_title="PYGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for context in StoragePresentationContexts[:100]:
        ae.add_requested_context(context.abstract_syntax)
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = level
        query.StudyInstanceUID = study
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        return list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()


def test_pynetdicom_get_with_counts(stocked) -> None:
    archive, study, _series, files = stocked
    stored: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        stored.append(event.dataset)
        return 0x0000

    responses = pynetdicom_get(archive.port, study, on_store)
    final = responses[-1][0]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 5
    assert {r[0].Status for r in responses[:-1]} == {0xFF00}
    assert sorted(ds.InstanceNumber for ds in stored) == [0, 1, 2, 3, 4]
    del files


def test_refused_sub_operations_listed_in_the_final_response(stocked) -> None:
    """PS3.4 C.4.3.1.3.1: a final Warning names the failed instances in the identifier's
    Failed SOP Instance UID List (it was announced in the counts but never sent)."""
    archive, study, _series, files = stocked
    refused: list[str] = []

    def on_store(event: evt.Event) -> int:
        if event.dataset.InstanceNumber in (1, 3):
            refused.append(event.dataset.SOPInstanceUID)
            return 0xA700
        return 0x0000

    final, identifier = pynetdicom_get(archive.port, study, on_store)[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (3, 2)
    assert identifier is not None
    listed = identifier.FailedSOPInstanceUIDList
    assert sorted([listed] if isinstance(listed, str) else listed) == sorted(refused)
    del files


def test_get_of_unknown_study_completes_nothing(stocked, tmp_path: Path) -> None:
    archive, *_ = stocked
    output = getscu(archive.port, tmp_path / "out", "-S", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "StudyInstanceUID=1.2.3.4.5.6.7")
    assert "Number of Completed Suboperations : 0" in output
    assert not list((tmp_path / "out").iterdir())


def test_sub_operations_answered_with_a_warning_are_counted_warnings(stocked) -> None:
    """0x0107 (Attribute List Error) is a warning of PS3.7 Annex C: the peer stored the
    instance. Those sub-operations count as warnings (final 0xB000), none as failed."""
    archive, study, _series, files = stocked

    def on_store(event: evt.Event) -> int:
        return 0x0107 if event.dataset.InstanceNumber in (1, 3) else 0x0000

    final, identifier = pynetdicom_get(archive.port, study, on_store)[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfWarningSuboperations,
            final.NumberOfFailedSuboperations) == (3, 2, 0)
    assert identifier is None or "FailedSOPInstanceUIDList" not in identifier
    del files


def test_image_level_uids_not_here_are_failed_sub_operations(stocked) -> None:
    """IMAGE level naming an instance the archive does not have: that sub-operation fails
    (PS3.4 C.4.3.3.1), listed in the final 0xB000; naming only such instances is 0xA702."""
    archive, study, series, files = stocked
    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        stored.append(event.dataset.SOPInstanceUID)
        return 0x0000

    here = pydicom.dcmread(files[0])
    final, identifier = pynetdicom_get(
        archive.port, study, on_store, "IMAGE", SeriesInstanceUID=series[0],
        SOPInstanceUID=f"{here.SOPInstanceUID}\\1.2.3.4.404")[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
    assert identifier is not None and identifier.FailedSOPInstanceUIDList == "1.2.3.4.404"
    assert stored == [here.SOPInstanceUID]
    final, identifier = pynetdicom_get(archive.port, study, on_store, "IMAGE",
                                       SeriesInstanceUID=series[0],
                                       SOPInstanceUID="1.2.3.4.404\\1.2.3.4.405")[-1]
    assert final.Status == 0xA702
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 2)
    assert identifier is not None
    assert list(identifier.FailedSOPInstanceUIDList) == ["1.2.3.4.404", "1.2.3.4.405"]
    assert stored == [here.SOPInstanceUID]
