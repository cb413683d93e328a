"""FHIR R4 on a real `pacs serve`: ServiceRequest orders become worklist items that dcmtk's
`findscu -W` sees, and ImagingStudy searches return stored studies with WADO-RS and viewer links
(checked against the fhir.resources models and followed with httpx)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest

from tests.conftest import ArchiveProcess, free_port, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.test_web import wait_http
from tests.integration.test_worklist import STANDARD_KEYS, findscu

pytestmark = pytest.mark.integration

DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[ArchiveProcess, str]]:
    tmp = tmp_path_factory.mktemp("fhir")
    http_port = free_port()
    archive = ArchiveProcess(tmp / "data", free_port(),
                             extra_args=["--http-port", str(http_port), "--workers", "2"],
                             env={"PACS_HL7_PORT": "0", "PACS_WORKLIST_STATION_AET": "ANY01"})
    archive.start()
    base = wait_http(archive, http_port)
    yield archive, base
    archive.stop()


def order(placer: str, *, status: str = "active", accession: str = "FACC1",
          station: str = "CT01", study_uid: str = "") -> dict[str, Any]:
    """A ServiceRequest shaped like an EHR's imaging order (contained Patient, typed ids)."""
    identifiers: list[dict[str, Any]] = [
        {"type": {"coding": [{"system": V2, "code": "PLAC"}]}, "value": placer},
        {"type": {"coding": [{"system": V2, "code": "ACSN"}]}, "value": accession},
    ]
    if study_uid:
        identifiers.append({"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"})
    return {
        "resourceType": "ServiceRequest",
        "contained": [{"resourceType": "Patient", "id": "pat",
                       "identifier": [{"value": "FPAT1"}],
                       "name": [{"family": "Jansen", "given": ["Anna", "Maria"]}],
                       "birthDate": "1980-04-02", "gender": "female"}],
        "identifier": identifiers,
        "status": status, "intent": "order",
        "category": [{"coding": [{"system": DCM, "code": "CT"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2",
                             "display": "CT Chest"}], "text": "CT chest without contrast"},
        "subject": {"reference": "#pat"},
        "occurrenceDateTime": "2026-12-01T09:30:00+01:00",
        "requester": {"display": "Welby^Marcus"},
        "performer": [{"reference": "Device/ct01", "display": station}],
    }


def test_service_request_becomes_a_worklist_item(server, tmp_path: Path) -> None:
    archive, base = server
    response = httpx.post(f"{base}/fhir/ServiceRequest", json=order("ORD-77"))
    assert response.status_code == 201, response.text
    created = ServiceRequest.model_validate(response.json())
    assert response.headers["Location"].endswith(f"/fhir/ServiceRequest/{created.id}")
    study_uid = next(i.value for i in created.identifier
                     if i.system == "urn:dicom:uid").removeprefix("urn:oid:")
    rows = findscu(archive.port, tmp_path / "ct01", *STANDARD_KEYS,
                   "(0040,0100)[0].ScheduledStationAETitle=CT01")
    assert len(rows) == 1
    row = rows[0]
    assert (str(row.PatientName), row.PatientID, row.PatientBirthDate, row.PatientSex) == (
        "Jansen^Anna^Maria", "FPAT1", "19800402", "F")
    assert (row.AccessionNumber, row.StudyInstanceUID) == ("FACC1", study_uid)
    assert row.RequestedProcedureDescription == "CT chest without contrast"
    step = row.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledProcedureStepStartDate,
            step.ScheduledProcedureStepStartTime[:4]) == ("CT", "20261201", "0930")
    # Re-sent with a new status: the same item, now off the worklist; GET shows the status.
    revoked = httpx.post(f"{base}/fhir/ServiceRequest", json=order("ORD-77", status="revoked"))
    assert revoked.status_code == 200
    assert findscu(archive.port, tmp_path / "gone", *STANDARD_KEYS,
                   "(0040,0100)[0].ScheduledStationAETitle=CT01") == []
    stored = httpx.get(f"{base}/fhir/ServiceRequest/{created.id}")
    assert stored.status_code == 200 and stored.json()["status"] == "revoked"


def test_put_creates_then_updates_with_a_given_study_uid(server, tmp_path: Path) -> None:
    archive, base = server
    body = order("ORD-88", station="MR02", accession="FACC2", study_uid="1.2.826.0.1.3680043.99.1")
    first = httpx.put(f"{base}/fhir/ServiceRequest/emr-88", json=body)
    assert first.status_code == 201, first.text
    body["code"]["text"] = "CT chest with contrast"
    second = httpx.put(f"{base}/fhir/ServiceRequest/emr-88", json=body)
    assert second.status_code == 200
    rows = findscu(archive.port, tmp_path / "mr02", *STANDARD_KEYS,
                   "(0040,0100)[0].ScheduledStationAETitle=MR02")
    assert [(r.StudyInstanceUID, r.RequestedProcedureDescription) for r in rows] == [
        ("1.2.826.0.1.3680043.99.1", "CT chest with contrast")]


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not JSON"),
    (b'{"resourceType": "Patient"}', 400, "ServiceRequest"),
    (b'{"resourceType": "ServiceRequest", "status": "active", "intent": "order"}', 400,
     "subject"),
    (b'{"resourceType": "ServiceRequest", "status": "draft", "intent": "order",'
     b' "subject": {"reference": "Patient/1"}}', 422, "draft"),
    (b'{"resourceType": "ServiceRequest", "status": "active", "intent": "order",'
     b' "subject": {"reference": "Group/1"}}', 422, "Patient"),
    (b'{"resourceType": "ServiceRequest", "status": "active", "intent": "order",'
     b' "subject": {"reference": "Patient/1"},'
     b' "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.x"}]}', 422, "UID"),
])
def test_bad_resources_get_an_operation_outcome(server, body: bytes, status: int,
                                                says: str) -> None:
    _archive, base = server
    response = httpx.post(f"{base}/fhir/ServiceRequest", content=body,
                          headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == status
    outcome = OperationOutcome.model_validate(response.json())
    assert says in (outcome.issue[0].diagnostics or "")


def test_imaging_study_search_links_to_wado_and_the_viewer(server, tmp_path: Path) -> None:
    archive, base = server
    first = make_ct(patient_id="FHIRPAT", patient_name="Berg^Lena")
    second = make_ct(patient_id="FHIRPAT", patient_name="Berg^Lena", instance_number=2,
                     study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID)
    study_uid = first.StudyInstanceUID
    files = []
    for number, ds in enumerate((first, second)):
        ds.AccessionNumber = "FHIRACC"
        files.append(write(ds, tmp_path / f"{number}.dcm"))
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), *map(str, files)], capture_output=True, text=True,
                          env={"TCP_NODELAY": "1"})
    assert proc.returncode == 0, proc.stderr
    for params in ({"patient": "FHIRPAT"}, {"patient": "Patient/FHIRPAT"},
                   {"identifier": "FHIRACC"}, {"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}):
        response = httpx.get(f"{base}/fhir/ImagingStudy", params=params)
        assert response.status_code == 200, (params, response.text)
        bundle = Bundle.model_validate(response.json())
        assert bundle.total == 1, params
        study = ImagingStudy.model_validate(bundle.entry[0].resource.model_dump())
        assert study.id == study_uid and study.numberOfInstances == 2
        assert study.numberOfSeries == 1 and study.subject.reference == "Patient/FHIRPAT"
    wado = study.contained[0].address
    viewer = study.extension[0].valueUrl
    assert httpx.get(f"{wado}/studies/{study_uid}/metadata").status_code == 200
    page = httpx.get(viewer)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    read = httpx.get(f"{base}/fhir/ImagingStudy/{study_uid}")
    assert read.status_code == 200 and read.json()["id"] == study_uid
    none = httpx.get(f"{base}/fhir/ImagingStudy", params={"patient": "NOBODY"})
    assert none.status_code == 200 and none.json()["total"] == 0
    assert httpx.get(f"{base}/fhir/ImagingStudy/1.2.3.404").status_code == 404
    assert httpx.get(f"{base}/fhir/ImagingStudy").status_code == 400
    assert httpx.get(f"{base}/fhir/ImagingStudy", params={"patient": "FHIR*"}).status_code == 400
    assert httpx.get(f"{base}/fhir/ServiceRequest/unknown-id").status_code == 404
