"""C-FIND with real clients: dcmtk findscu and pynetdicom, both models, every level,
C-CANCEL, and bad identifiers."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from tests.conftest import ArchiveProcess, free_port, require_tool
from tests.dicomgen import make_ct, write

pytestmark = pytest.mark.integration

STUDY_ROOT = StudyRootQueryRetrieveInformationModelFind
PATIENT_ROOT = PatientRootQueryRetrieveInformationModelFind


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """Two patients; SMITH has two studies (CT with 2 series, MR), JONES one CT study.

    One archive for the module's read-only queries (starting one per test is slow)."""
    tmp_path = tmp_path_factory.mktemp("find")
    archive = ArchiveProcess(tmp_path / "data", free_port(),
                             extra_args=["--acse-timeout", "2", "--idle-timeout", "3"])
    archive.start()
    layout = [
        ("P1", "SMITH^ANN", "20240105", [("CT", 3), ("CT", 2)], "ACC1"),
        ("P1", "SMITH^ANN", "20240220", [("MR", 2)], "ACC2"),
        ("P2", "JONES^BOB", "20231111", [("CT", 1)], "ACC3"),
    ]
    files, studies = [], {}
    n = 0
    for patient_id, name, date, series_list, accession in layout:
        study_uid = make_ct().StudyInstanceUID
        studies[accession] = study_uid
        for modality, count in series_list:
            series_uid = make_ct().SeriesInstanceUID
            for i in range(count):
                ds = make_ct(patient_id=patient_id, patient_name=name, study_uid=study_uid,
                             series_uid=series_uid, instance_number=i + 1, modality=modality)
                ds.StudyDate = date
                ds.AccessionNumber = accession
                files.append(write(ds, tmp_path / f"{n}.dcm"))
                n += 1
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), *map(str, files)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    yield archive, studies
    archive.stop()


def findscu(port: int, model: str, *keys: str) -> tuple[list[dict[str, str]], str]:
    proc = subprocess.run([require_tool("findscu"), "-v", model, "-aec", "PACS",
                           *[a for k in keys for a in ("-k", k)], "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    results = []
    for block in output.split("Find Response:")[1:]:
        if "(Pending)" not in block.splitlines()[0]:
            continue
        row = {}
        for match in re.finditer(r"\(([0-9a-f]{4}),([0-9a-f]{4})\) \w\w \[([^\]]*)\]\s+#.*?(\w+)$",
                                 block, re.M):
            row[match[4]] = match[3].strip(" \x00")  # UI values are NUL-padded
        results.append(row)
    return results, output


def test_findscu_study_root_study_level(populated) -> None:
    archive, studies = populated
    rows, _ = findscu(archive.port, "-S", "QueryRetrieveLevel=STUDY", "PatientName=smith*",
                      "StudyInstanceUID", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                      "NumberOfStudyRelatedInstances", "AccessionNumber")
    by_accession = {r["AccessionNumber"]: r for r in rows}
    assert set(by_accession) == {"ACC1", "ACC2"}
    assert by_accession["ACC1"]["NumberOfStudyRelatedSeries"] == "2"
    assert by_accession["ACC1"]["NumberOfStudyRelatedInstances"] == "5"
    assert by_accession["ACC2"]["ModalitiesInStudy"] == "MR"
    assert by_accession["ACC1"]["StudyInstanceUID"] == studies["ACC1"]


def test_findscu_date_range_and_modality(populated) -> None:
    archive, _ = populated
    rows, _ = findscu(archive.port, "-S", "QueryRetrieveLevel=STUDY", "StudyDate=20240101-",
                      "ModalitiesInStudy=CT", "AccessionNumber")
    assert [r["AccessionNumber"] for r in rows] == ["ACC1"]


def test_findscu_patient_root_every_level(populated) -> None:
    archive, studies = populated
    patients, _ = findscu(archive.port, "-P", "QueryRetrieveLevel=PATIENT", "PatientID",
                          "PatientName", "NumberOfPatientRelatedStudies")
    assert {(p["PatientID"], p["NumberOfPatientRelatedStudies"]) for p in patients} == {
        ("P1", "2"), ("P2", "1")}
    p1_studies, _ = findscu(archive.port, "-P", "QueryRetrieveLevel=STUDY", "PatientID=P1",
                            "StudyInstanceUID")
    assert {s["StudyInstanceUID"] for s in p1_studies} == {studies["ACC1"], studies["ACC2"]}
    series, _ = findscu(archive.port, "-P", "QueryRetrieveLevel=SERIES", "PatientID=P1",
                        f"StudyInstanceUID={studies['ACC1']}", "SeriesInstanceUID", "Modality",
                        "NumberOfSeriesRelatedInstances")
    assert sorted(s["NumberOfSeriesRelatedInstances"] for s in series) == ["2", "3"]
    series_uid = next(s["SeriesInstanceUID"] for s in series
                      if s["NumberOfSeriesRelatedInstances"] == "3")
    images, _ = findscu(archive.port, "-P", "QueryRetrieveLevel=IMAGE", "PatientID=P1",
                        f"StudyInstanceUID={studies['ACC1']}",
                        f"SeriesInstanceUID={series_uid}", "SOPInstanceUID", "InstanceNumber")
    assert sorted(i["InstanceNumber"] for i in images) == ["1", "2", "3"]


def test_findscu_lower_level_key_is_refused(populated) -> None:
    archive, _ = populated
    _, output = findscu(archive.port, "-S", "QueryRetrieveLevel=STUDY", "SOPInstanceUID=1.2.3")
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in output


def test_pynetdicom_both_models(populated) -> None:
    archive, _ = populated
    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(STUDY_ROOT)
    ae.add_requested_context(PATIENT_ROOT)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACS")
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.Modality = "CT"
        query.SeriesInstanceUID = ""
        query.PatientName = ""
        statuses, identifiers = [], []
        for status, identifier in assoc.send_c_find(query, STUDY_ROOT):
            statuses.append(status.Status)
            if identifier is not None:
                identifiers.append(identifier)
        assert statuses[-1] == 0x0000 and set(statuses[:-1]) == {0xFF00}
        assert len(identifiers) == 3
        assert {str(i.PatientName) for i in identifiers} == {"SMITH^ANN", "JONES^BOB"}
        query = Dataset()
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientID = "P2"
        query.PatientName = ""
        found = [i for _s, i in assoc.send_c_find(query, PATIENT_ROOT) if i is not None]
        assert [str(i.PatientName) for i in found] == ["JONES^BOB"]
    finally:
        assoc.release()


def test_bad_identifiers(populated) -> None:
    archive, _ = populated
    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACS")
    try:
        missing_level = Dataset()
        missing_level.PatientName = "*"
        bad_level = Dataset()
        bad_level.QueryRetrieveLevel = "GALAXY"
        patient_in_study_root = Dataset()
        patient_in_study_root.QueryRetrieveLevel = "PATIENT"
        for identifier in (missing_level, bad_level, patient_in_study_root):
            results = list(assoc.send_c_find(identifier, STUDY_ROOT))
            status = results[-1][0]
            assert status.Status & 0xF000 in (0xA000, 0xC000), identifier
            assert status.get("ErrorComment")
    finally:
        assoc.release()
    assert archive.alive()


def test_c_cancel_stops_a_long_query(archive, tmp_path: Path) -> None:
    """The C-CANCEL-RQ goes out right behind the C-FIND-RQ: the query stops early with the
    Cancel status, whatever the client's reading speed."""
    from pacs.dicom.identifier import encode_identifier
    from pacs.net import CommandReceived, dimse
    from tests.dicomgen import dataset_bytes
    from tests.netclient import Client

    # Stored with our own client: 300 pynetdicom C-STOREs on one association now and then lost
    # a response to pynetdicom's reactor thread on a loaded machine (it takes the message off
    # the queue before send_c_store waits for it: "Received unexpected C-STORE service
    # message"), failing the setup of this test.
    syntax = "1.2.840.10008.1.2.1"
    with Client(archive.port, calling="PYSTORE") as client:
        client.associate()
        assert client.context_for(CTImageStorage)[1] == syntax
        for i in range(300):
            ds = make_ct(patient_id=f"C{i}")
            assert client.store(dataset_bytes(ds), ds.SOPInstanceUID).status == 0
        client.release()
    with Client(archive.port, contexts=[(STUDY_ROOT, (syntax,))]) as client:
        client.associate()
        context_id, _ = client.context_for(STUDY_ROOT)
        find = dimse.Command({
            dimse.AFFECTED_SOP_CLASS_UID: STUDY_ROOT, dimse.COMMAND_FIELD: dimse.C_FIND_RQ,
            dimse.MESSAGE_ID: 7, dimse.PRIORITY: 0,
            dimse.COMMAND_DATA_SET_TYPE: dimse.DATA_SET_PRESENT,
        })  # fmt: skip
        cancel = dimse.Command({
            dimse.COMMAND_FIELD: dimse.C_CANCEL_RQ, dimse.MESSAGE_ID_BEING_RESPONDED_TO: 7,
            dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATA_SET,
        })  # fmt: skip
        identifier = encode_identifier({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""},
                                       syntax)
        client.sock.sendall(client.assoc.send_command(context_id, find, True)
                            + client.assoc.send_dataset(context_id, identifier)
                            + client.assoc.send_command(context_id, cancel, False))
        statuses = []
        while not statuses or statuses[-1] in (0xFF00, 0xFF01):
            event = client.wait_for(CommandReceived)
            assert isinstance(event, CommandReceived)
            statuses.append(event.command.status)
        client.release()
    assert statuses[-1] == 0xFE00, statuses[-3:]
    assert len(statuses) < 301
    deadline = time.monotonic() + 5
    while "C-FIND cancelled" not in archive.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "C-FIND cancelled" in archive.log()
