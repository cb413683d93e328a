"""The Orthanc-style REST API over a real ``pacs serve`` (two workers: storescu may land in
worker 1, HTTP in both): lists and details, the stored file, the preview, deletions
(index and blobs, seen by C-FIND, QIDO-RS and WADO-RS), /tools/find, /modalities with a C-STORE
to dcmtk's storescp, error codes, and a schemathesis run against /openapi.json."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from pacs.dicom import part10
from tests.conftest import ArchiveProcess, free_port, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.test_find import findscu
from tests.integration.test_web import wait_http

pytestmark = pytest.mark.integration


def dataset_part(data: bytes) -> bytes:
    _meta, offset = part10.read_file_meta(data)
    return data[offset:]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[ArchiveProcess, str]]:
    tmp = tmp_path_factory.mktemp("rest")
    http_port = free_port()
    archive = ArchiveProcess(tmp / "data", free_port(),
                             extra_args=["--http-port", str(http_port), "--workers", "2"])
    archive.start()
    yield archive, wait_http(archive, http_port)
    archive.stop()


def storescu(archive: ArchiveProcess, files: list[Path]) -> None:
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), *map(str, files)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def populate(archive: ArchiveProcess, tmp: Path, patient: str, series_sizes: list[int]) -> \
        dict[str, Any]:
    """One study of ``patient`` with series of the given sizes, sent with storescu."""
    study = generate_uid()
    series = [generate_uid() for _ in series_sizes]
    files: dict[str, Path] = {}
    n = 0
    for s, size in zip(series, series_sizes, strict=True):
        for i in range(size):
            ds = make_ct(patient_id=patient, patient_name=f"Rest^{patient}", study_uid=study,
                         series_uid=s, instance_number=i + 1, rows=16, columns=16)
            n += 1
            files[ds.SOPInstanceUID] = write(ds, tmp / f"{uuid.uuid4().hex}.dcm")
    storescu(archive, list(files.values()))
    return {"patient": patient, "study": study, "series": series, "files": files}


def get(base: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{base}{path}", params=params, timeout=30)


def ok_json(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["error"], str)


def test_lists_and_details(server, tmp_path: Path) -> None:
    archive, base = server
    pid = f"REST-LIST {uuid.uuid4().hex[:6]}"  # a space: URL-encoded in paths
    data = populate(archive, tmp_path, pid, [2, 1])
    study, series = data["study"], data["series"]
    instances = list(data["files"])

    assert pid in ok_json(get(base, "/patients"))
    assert study in ok_json(get(base, "/studies"))
    assert set(series) <= set(ok_json(get(base, "/series")))
    assert set(instances) <= set(ok_json(get(base, "/instances")))

    patient = ok_json(get(base, f"/patients/{quote(pid)}"))
    assert patient["ID"] == pid and patient["Type"] == "Patient"
    assert patient["MainDicomTags"]["PatientID"] == pid
    assert patient["MainDicomTags"]["PatientName"] == f"Rest^{pid}"
    assert patient["Studies"] == [study]
    assert (patient["CountStudies"], patient["CountSeries"], patient["CountInstances"]) == \
        (1, 2, 3)

    st = ok_json(get(base, f"/studies/{study}"))
    assert st["Type"] == "Study" and st["ParentPatient"] == pid
    assert st["MainDicomTags"]["StudyInstanceUID"] == study
    assert st["PatientMainDicomTags"]["PatientID"] == pid
    assert sorted(st["Series"]) == sorted(series)
    assert (st["CountSeries"], st["CountInstances"]) == (2, 3)

    se = ok_json(get(base, f"/series/{series[0]}"))
    assert se["ParentStudy"] == study and se["MainDicomTags"]["Modality"] == "CT"
    assert se["CountInstances"] == 2 and len(se["Instances"]) == 2

    inst = ok_json(get(base, f"/instances/{instances[0]}"))
    assert inst["ParentSeries"] == series[0] and inst["ParentStudy"] == study
    assert inst["MainDicomTags"]["SOPInstanceUID"] == instances[0]
    assert inst["FileSize"] > 0

    expanded = ok_json(get(base, "/studies", expand=""))
    assert any(d["ID"] == study and d["CountInstances"] == 3 for d in expanded)
    everything = ok_json(get(base, "/instances"))
    assert ok_json(get(base, "/instances", limit=2, since=1)) == everything[1:3]
    assert ok_json(get(base, "/instances", limit=0)) == []


def test_file_is_the_stored_part10_and_preview_is_png(server, tmp_path: Path) -> None:
    archive, base = server
    data = populate(archive, tmp_path, "REST-FILE", [2])
    for uid, path in data["files"].items():
        response = get(base, f"/instances/{uid}/file")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/dicom"
        body = response.content
        assert body[128:132] == b"DICM"
        assert dataset_part(body) == dataset_part(path.read_bytes())
        assert len(body) == ok_json(get(base, f"/instances/{uid}"))["FileSize"]
        assert pydicom.dcmread(path).SOPInstanceUID == uid
        # the same stored bytes as WADO-RS sends for "as stored"
        wado = httpx.get(f"{base}/dicom-web/studies/{data['study']}/series/"
                         f"{data['series'][0]}/instances/{uid}",
                         headers={"Accept": 'multipart/related; type="application/dicom"; '
                                            'transfer-syntax=*'})
        assert wado.status_code == 200
        assert dataset_part(body) in wado.content

        preview = get(base, f"/instances/{uid}/preview")
        assert preview.status_code == 200, preview.text
        assert preview.headers["content-type"] == "image/png"
        assert preview.content.startswith(b"\x89PNG\r\n\x1a\n")


def _statistics(base: str) -> dict[str, Any]:
    return ok_json(get(base, "/statistics"))  # type: ignore[no-any-return]


def _qido_count(base: str, **params: str) -> int:
    response = httpx.get(f"{base}/dicom-web/instances", params=params)
    assert response.status_code in (200, 204), response.text
    return int(response.headers["X-Total-Count"])


def test_delete_every_level(server, tmp_path: Path) -> None:
    archive, base = server
    pid = "REST-DEL"
    data = populate(archive, tmp_path, pid, [2, 2])
    other = populate(archive, tmp_path, pid, [1])  # a second study of the same patient
    study, series = data["study"], data["series"]
    instances = list(data["files"])
    before = _statistics(base)
    size = ok_json(get(base, f"/instances/{instances[0]}"))["FileSize"]

    # one instance: its series remains
    response = httpx.delete(f"{base}/instances/{instances[0]}")
    body = ok_json(response)
    assert body["DeletedInstances"] == 1 and body["DeletedSize"] == size
    assert body["RemainingAncestor"]["ID"] == series[0]
    after = _statistics(base)
    assert after["CountInstances"] == before["CountInstances"] - 1
    assert int(after["TotalDiskSize"]) == int(before["TotalDiskSize"]) - size
    assert_error(get(base, f"/instances/{instances[0]}"), 404)
    assert_error(get(base, f"/instances/{instances[0]}/file"), 404)
    assert _qido_count(base, SOPInstanceUID=instances[0]) == 0
    wado = httpx.get(f"{base}/dicom-web/studies/{study}/series/{series[0]}/instances/"
                     f"{instances[0]}")
    assert wado.status_code == 404
    rows, _ = findscu(archive.port, "-S", "QueryRetrieveLevel=IMAGE",
                      f"StudyInstanceUID={study}", "SOPInstanceUID")
    assert sorted(r["SOPInstanceUID"] for r in rows) == sorted(instances[1:])
    assert_error(httpx.delete(f"{base}/instances/{instances[0]}"), 404)

    # a series: its last instance takes the series away, the study remains
    body = ok_json(httpx.delete(f"{base}/series/{series[0]}"))
    assert body["DeletedInstances"] == 1 and body["RemainingAncestor"]["ID"] == study
    assert_error(get(base, f"/series/{series[0]}"), 404)
    assert ok_json(get(base, f"/studies/{study}"))["Series"] == [series[1]]

    # a study: the patient remains (its other study)
    body = ok_json(httpx.delete(f"{base}/studies/{study}"))
    assert body["DeletedInstances"] == 2 and body["RemainingAncestor"]["ID"] == pid
    assert_error(get(base, f"/studies/{study}"), 404)
    assert httpx.get(f"{base}/dicom-web/studies/{study}").status_code == 404
    assert _qido_count(base, StudyInstanceUID=study) == 0
    rows, _ = findscu(archive.port, "-S", "QueryRetrieveLevel=STUDY",
                      f"StudyInstanceUID={study}")
    assert rows == []

    # the patient: everything goes
    body = ok_json(httpx.delete(f"{base}/patients/{pid}"))
    assert body["DeletedInstances"] == 1 and body["RemainingAncestor"] is None
    assert_error(get(base, f"/patients/{pid}"), 404)
    assert_error(get(base, f"/studies/{other['study']}"), 404)
    final = _statistics(base)
    assert final["CountInstances"] == before["CountInstances"] - 5
    assert final["CountStudies"] == before["CountStudies"] - 2
    assert final["CountPatients"] == before["CountPatients"] - 1
    assert pid not in ok_json(get(base, "/patients"))
    rows, _ = findscu(archive.port, "-P", "QueryRetrieveLevel=PATIENT", f"PatientID={pid}")
    assert rows == []

    # the blobs went too: pacs verify finds no orphan (nor anything missing)
    verify = subprocess.run([*_pacs(), "verify", "--data-dir", str(archive.data_dir)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "orphan" not in (verify.stdout + verify.stderr).lower().replace("0 orphan", "")


def _pacs() -> list[str]:
    import sys
    return [sys.executable, "-m", "pacs"]


def test_tools_find(server, tmp_path: Path) -> None:
    archive, base = server
    pid = "REST-FIND"
    data = populate(archive, tmp_path, pid, [2, 1])

    def find(body: Any) -> httpx.Response:
        return httpx.post(f"{base}/tools/find", json=body, timeout=30)

    assert ok_json(find({"Level": "Study", "Query": {"PatientName": "rest^rest-fin*"}})) == \
        [data["study"]]
    assert ok_json(find({"Level": "Study", "Query": {"PatientName": "rest^rest-fin*"},
                         "CaseSensitive": True})) == []
    assert ok_json(find({"Level": "Patient", "Query": {"PatientID": pid}})) == [pid]
    assert sorted(ok_json(find({"Level": "Series",
                                "Query": {"StudyInstanceUID": data["study"]}}))) == \
        sorted(data["series"])
    found = ok_json(find({"Level": "Instance", "Query": {"00100020": pid}, "Expand": True}))
    assert sorted(d["ID"] for d in found) == sorted(data["files"])
    assert all(d["Type"] == "Instance" for d in found)
    assert len(ok_json(find({"Level": "Instance", "Query": {"PatientID": pid},
                             "Limit": 2}))) == 2
    for bad in ({"Level": "Nope"}, {"Query": {}}, {"Level": "Study", "Query": {"Nope": "x"}},
                {"Level": "Study", "Limit": -1}, {"Level": "Study", "Query": {"PatientID": 1}},
                {"Level": "Study", "Extra": 1}, [1, 2]):
        assert_error(find(bad), 400)
    assert_error(httpx.post(f"{base}/tools/find", content=b"{not json"), 400)


def test_modalities_crud_and_store(server, tmp_path: Path, scp_factory) -> None:
    archive, base = server
    data = populate(archive, tmp_path, "REST-MOD", [2, 1])
    scp = scp_factory()
    host, port, aet = scp.dest

    assert_error(get(base, f"/modalities/{aet}"), 404)
    created = httpx.put(f"{base}/modalities/{aet}", json={"Host": host, "Port": port})
    assert created.status_code == 201, created.text
    assert created.json() == {"AET": aet, "Host": host, "Port": port, "AllowMove": True,
                              "UseDicomTls": False}
    assert aet in ok_json(get(base, "/modalities"))
    assert ok_json(get(base, "/modalities", expand="true"))[aet]["Port"] == port
    assert ok_json(get(base, f"/modalities/{aet}"))["Host"] == host
    replaced = httpx.put(f"{base}/modalities/{aet}",
                         json={"Host": host, "Port": port, "AllowMove": False})
    assert replaced.status_code == 200 and replaced.json()["AllowMove"] is False

    assert ok_json(httpx.post(f"{base}/modalities/{aet}/echo", timeout=30))["Status"] == 0

    # a series and an instance of the other series
    one = next(u for u, p in data["files"].items()
               if pydicom.dcmread(p).SeriesInstanceUID == data["series"][1])
    body = ok_json(httpx.post(f"{base}/modalities/{aet}/store",
                              json={"Resources": [data["series"][0], one]}, timeout=60))
    assert (body["Completed"], body["Failed"], body["InstancesCount"]) == (3, 0, 3)
    received = scp.received()
    assert set(received) == set(data["files"])
    for uid, path in data["files"].items():
        assert received[uid].PixelData == pydicom.dcmread(path).PixelData
    body = ok_json(httpx.post(f"{base}/modalities/{aet}/store", json=data["study"],
                              timeout=60))
    assert body["Completed"] == 3

    for bad in ({"Host": host}, {"Host": host, "Port": 0}, {"Host": "", "Port": 104},
                {"Host": host, "Port": "104"}, {"Host": host, "Port": 104, "Nope": 1},
                {"AET": "OTHER", "Host": host, "Port": 104}, [1]):
        assert_error(httpx.put(f"{base}/modalities/{aet}", json=bad), 400)
    assert_error(httpx.put(f"{base}/modalities/{'X' * 17}", json={"Host": host, "Port": 1}),
                 400)
    assert_error(httpx.post(f"{base}/modalities/{aet}/store",
                            json={"Resources": ["1.2.3.999"]}), 404)
    for bad in ({"Resources": []}, {"Resources": [1]}, {"Other": []}, 5):
        assert_error(httpx.post(f"{base}/modalities/{aet}/store", json=bad), 400)

    assert ok_json(httpx.delete(f"{base}/modalities/{aet}")) == {}
    assert aet not in ok_json(get(base, "/modalities"))
    assert_error(httpx.delete(f"{base}/modalities/{aet}"), 404)
    assert_error(httpx.post(f"{base}/modalities/{aet}/store", json=data["study"]), 404)
    assert_error(httpx.post(f"{base}/modalities/{aet}/echo"), 404)


def test_errors(server) -> None:
    _archive, base = server
    for kind in ("patients", "studies", "series", "instances"):
        assert_error(get(base, f"/{kind}/1.2.3.4.5.999"), 404)
        assert_error(httpx.delete(f"{base}/{kind}/1.2.3.4.5.999"), 404)
        assert_error(get(base, f"/{kind}", limit="x"), 400)
        assert_error(get(base, f"/{kind}", since="-1"), 400)
        assert_error(get(base, f"/{kind}", expand="maybe"), 400)
        assert_error(get(base, f"/{kind}", nope="1"), 400)
    assert_error(get(base, "/instances/1.2.3.999/file"), 404)
    assert_error(get(base, "/instances/1.2.3.999/preview"), 404)


def test_openapi_with_schemathesis(server, request: pytest.FixtureRequest) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    _archive, base = server
    document = ok_json(get(base, "/openapi.json"))
    assert document["openapi"].startswith("3.")
    assert "/tools/find" in document["paths"]
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    negative = schemathesis.GenerationMode.NEGATIVE
    # One session for every call, closed at the end: left to the garbage collector, the
    # sockets of per-call sessions surface as ResourceWarnings (errors in this suite).
    session = requests.Session()
    request.addfinalizer(session.close)
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(base_url=base, session=session, checks=checks,
                                  timeout=10)

        check()

        # invalid input: never a 5xx, always a documented status and content type
        @given(case=operation.as_strategy(generation_mode=negative))
        @settings(max_examples=10, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def reject(case: Any) -> None:
            case.call_and_validate(base_url=base, session=session,
                                  checks=[not_a_server_error], timeout=10)

        with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (/system)
            reject()
