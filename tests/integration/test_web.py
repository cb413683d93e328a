"""DICOMweb and REST over a real ``pacs serve``: dicomweb-client for the happy paths, httpx for
errors and the REST endpoints; what STOW-RS stores, QIDO-RS finds and WADO-RS returns byte for
byte (the data set part), and what storescu stores is visible over HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from pacs.dicom import part10
from pacs.dicom.convert import convert_dataset
from tests.conftest import ArchiveProcess, free_port, require_tool
from tests.dicomgen import make_ct, write

pytestmark = pytest.mark.integration

JPEG_BASELINE_FILE = "SC_rgb_jpeg_dcmtk.dcm"
DICOM_JSON = "application/dicom+json"


def wait_http(archive: ArchiveProcess, port: int, timeout: float = 20.0) -> str:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/system", timeout=2).status_code == 200:
                return base
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"HTTP did not come up:\n{archive.log()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[ArchiveProcess, str]]:
    """One archive (two workers: DIMSE stores may land in worker 1, HTTP in both)."""
    tmp = tmp_path_factory.mktemp("web")
    http_port = free_port()
    archive = ArchiveProcess(tmp / "data", free_port(),
                             extra_args=["--http-port", str(http_port), "--workers", "2"])
    archive.start()
    base = wait_http(archive, http_port)
    yield archive, base
    archive.stop()


@pytest.fixture
def base(server) -> str:
    return server[1]


@pytest.fixture
def client(base) -> DICOMwebClient:
    return DICOMwebClient(url=f"{base}/dicom-web")


def part10_bytes(ds: pydicom.Dataset, tmp: Path, syntax: str = ExplicitVRLittleEndian) -> bytes:
    return write(ds, tmp / f"{uuid.uuid4().hex}.dcm", syntax).read_bytes()


def dataset_part(data: bytes) -> bytes:
    _meta, offset = part10.read_file_meta(data)
    return data[offset:]


def multipart(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    body = b"".join(b"\r\n--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + p for p in parts)
    return body + b"\r\n--" + boundary.encode() + b"--\r\n"


def stow(base: str, parts: list[bytes], study: str | None = None,
         content_type: str = 'multipart/related; type="application/dicom"; boundary=b0undary',
         body: bytes | None = None) -> httpx.Response:
    url = f"{base}/dicom-web/studies" + (f"/{study}" if study else "")
    return httpx.post(url, content=multipart(parts) if body is None else body,
                      headers={"Content-Type": content_type}, timeout=30)


def wado_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(part Content-Type, part body) of a multipart/related response."""
    ctype = response.headers["content-type"]
    assert ctype.startswith("multipart/related"), ctype
    boundary = ctype.split("boundary=")[1].split(";")[0].strip('"').encode()
    chunks = response.content.split(b"--" + boundary)
    out = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        if body.endswith(b"\r\n"):
            body = body[:-2]
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        out.append((headers["Content-Type"], body))
    return out


def values(row: dict, tag: str) -> list:
    return row.get(tag, {}).get("Value", [])


def count(base: str, path: str, **params: str) -> int:
    response = httpx.get(f"{base}/dicom-web/{path}", params=params)
    assert response.status_code in (200, 204), response.text
    return int(response.headers["X-Total-Count"])


# -- STOW-RS -> QIDO-RS -> WADO-RS ------------------------------------------------------------


def test_stow_then_qido_then_wado_byte_identical(base: str, client, tmp_path: Path) -> None:
    study = make_ct().StudyInstanceUID
    series = make_ct().SeriesInstanceUID
    datasets = [make_ct(patient_id="WEB-RT", patient_name="Roundtrip^Rita", study_uid=study,
                        series_uid=series, instance_number=i) for i in (1, 2, 3)]
    files = [part10_bytes(ds, tmp_path) for ds in datasets]
    response = stow(base, files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == DICOM_JSON
    body = response.json()
    referenced = values(body, "00081199")
    assert {values(item, "00081155")[0] for item in referenced} == {
        ds.SOPInstanceUID for ds in datasets}
    assert "00081198" not in body

    # C-FIND-equivalent queries at every level
    studies = client.search_for_studies(search_filters={"PatientID": "WEB-RT"})
    assert [values(s, "0020000D")[0] for s in studies] == [study]
    assert values(studies[0], "00201208") == [3]  # NumberOfStudyRelatedInstances: a number
    assert values(studies[0], "00100010") == [{"Alphabetic": "Roundtrip^Rita"}]
    assert studies[0]["00100010"]["vr"] == "PN"
    found_series = client.search_for_series(study)
    assert [values(s, "0020000E")[0] for s in found_series] == [series]
    instances = client.search_for_instances(study, series)
    assert sorted(values(i, "00080018")[0] for i in instances) == sorted(
        ds.SOPInstanceUID for ds in datasets)

    # WADO-RS returns the very bytes that were stored (data set part)
    for ds, sent in zip(datasets, files, strict=True):
        r = httpx.get(f"{base}/dicom-web/studies/{study}/series/{series}/instances/"
                      f"{ds.SOPInstanceUID}",
                      headers={"Accept": 'multipart/related; type="application/dicom"; '
                                         "transfer-syntax=*"})
        assert r.status_code == 200, r.text
        [(ctype, got)] = wado_parts(r)
        assert ctype == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        assert dataset_part(got) == dataset_part(sent)
    retrieved = client.retrieve_study(study)
    assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(
        ds.SOPInstanceUID for ds in datasets)
    one = client.retrieve_instance(study, series, datasets[0].SOPInstanceUID)
    assert np.array_equal(one.pixel_array, datasets[0].pixel_array)


def test_dicomweb_client_store_and_metadata(client) -> None:
    ds = make_ct(patient_id="WEB-DWC", patient_name="Client^Carl")
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    result = client.store_instances([ds])  # pydicom writes it without a preamble
    assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    [meta] = client.retrieve_study_metadata(ds.StudyInstanceUID)
    assert values(meta, "00100020") == ["WEB-DWC"]
    assert values(meta, "00100010") == [{"Alphabetic": "Client^Carl"}]
    assert values(meta, "00080018") == [ds.SOPInstanceUID]
    assert values(meta, "00200013") == [1]
    assert values(meta, "00083002") == [ExplicitVRLittleEndian]
    pixels = meta["7FE00010"]  # from the index: no pixel data, a reference to it
    assert "Value" not in pixels and "InlineBinary" not in pixels
    assert pixels["BulkDataURI"].endswith(f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010")
    series_meta = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert series_meta == [meta]
    instance_meta = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert instance_meta == meta
    back = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                    ds.SOPInstanceUID)
    assert back.PatientName == "Client^Carl"
    assert np.array_equal(back.pixel_array, ds.pixel_array)


def test_storescu_instances_visible_over_qido_and_wado(server, base, tmp_path: Path) -> None:
    archive, _ = server
    study = make_ct().StudyInstanceUID
    files = [write(make_ct(patient_id=f"WEB-SCU{i % 2}", patient_name="Dimse^Dora",
                           study_uid=study, instance_number=i), tmp_path / f"{i}.dcm")
             for i in range(6)]
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), *map(str, files)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert count(base, "instances", PatientName="dimse*") == 6
    assert count(base, f"studies/{study}/series") == 6
    rows = httpx.get(f"{base}/dicom-web/instances", params={"StudyInstanceUID": study}).json()
    by_uid = {values(r, "00080018")[0]: r for r in rows}
    for path in files:
        ds = pydicom.dcmread(path)
        row = by_uid[ds.SOPInstanceUID]
        url = values(row, "00081190")[0]
        r = httpx.get(url, headers={"Accept": "multipart/related; type=application/dicom"})
        assert r.status_code == 200, r.text
        [(_ctype, got)] = wado_parts(r)
        assert dataset_part(got) == dataset_part(path.read_bytes())


# -- QIDO-RS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qido_study(server) -> str:
    """Five instances of one patient in two series (CT x3, MR x2)."""
    _archive, base = server
    study = make_ct().StudyInstanceUID
    ct, mr = make_ct().SeriesInstanceUID, make_ct().SeriesInstanceUID
    tmp = Path(f"/tmp/web-qido-{uuid.uuid4().hex}")
    tmp.mkdir()
    files = [part10_bytes(make_ct(patient_id="WEB-Q", patient_name="Smith^Quinn",
                                  study_uid=study, series_uid=ct if i < 3 else mr,
                                  modality="CT" if i < 3 else "MR", instance_number=i + 1),
                          tmp) for i in range(5)]
    assert stow(base, files).status_code == 200
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return study


def test_qido_matching_by_keyword_tag_and_wildcard(base, qido_study) -> None:
    assert count(base, "studies", PatientID="WEB-Q") == 1
    assert count(base, "studies", **{"00100020": "WEB-Q"}) == 1
    assert count(base, "studies", PatientName="SMITH^Q*") == 1  # fuzzy names by default
    assert count(base, "studies", PatientID="WEB-Q", StudyDate="20260101-20260131") == 1
    assert count(base, "studies", PatientID="WEB-Q", StudyDate="20250101-20250131") == 0
    assert count(base, "series", PatientID="WEB-Q", Modality="MR") == 1
    assert count(base, f"studies/{qido_study}/instances") == 5
    assert count(base, "studies", StudyInstanceUID=f"1.2.3.4,{qido_study}") == 1
    rows = httpx.get(f"{base}/dicom-web/studies", params={"PatientID": "WEB-Q"}).json()
    assert values(rows[0], "00080061") == ["CT", "MR"]  # ModalitiesInStudy, multi-valued
    assert values(rows[0], "00201206") == [2]
    empty = httpx.get(f"{base}/dicom-web/studies", params={"PatientID": "NOBODY"})
    assert empty.status_code == 204
    assert empty.headers["X-Total-Count"] == "0"


def test_qido_includefield_limit_offset_orderby(base, qido_study) -> None:
    url = f"{base}/dicom-web/studies/{qido_study}/instances"
    default = httpx.get(url).json()[0]
    assert "0008103E" not in default  # SeriesDescription is not a default instance key
    rows = httpx.get(url, params={"includefield": "SeriesDescription,00100010"}).json()
    assert values(rows[0], "0008103E") == ["Axial"]
    assert values(rows[0], "00100010") == [{"Alphabetic": "Smith^Quinn"}]
    every = httpx.get(url, params={"includefield": "all"}).json()[0]
    assert {"00100020", "00080020", "00080060", "00200013"} <= set(every)
    page = httpx.get(url, params={"limit": "2", "offset": "1", "orderby": "InstanceNumber"})
    assert page.headers["X-Total-Count"] == "5"
    assert [values(r, "00200013")[0] for r in page.json()] == [2, 3]
    desc = httpx.get(url, params={"limit": "1", "orderby": "-InstanceNumber"}).json()
    assert values(desc[0], "00200013") == [5]
    exact = httpx.get(f"{base}/dicom-web/studies",
                      params={"PatientName": "smith^quinn", "fuzzymatching": "true"})
    assert exact.headers["X-Total-Count"] == "1"


@pytest.mark.parametrize("params", [
    {"NoSuchKeyword": "x"},
    {"includefield": "NoSuchKeyword"},
    {"limit": "many"},
    {"limit": "-1"},
    {"offset": "x"},
    {"fuzzymatching": "maybe"},
    {"SeriesDescription": "Axial"},  # below the STUDY level
    {"orderby": "Nonsense"},
])
def test_qido_bad_parameters_are_400(base, params) -> None:
    response = httpx.get(f"{base}/dicom-web/studies", params=params)
    assert response.status_code == 400, response.text
    assert "error" in response.json()


# -- WADO-RS ----------------------------------------------------------------------------------


def test_wado_unknown_uids_are_404(base, qido_study) -> None:
    series = values(httpx.get(f"{base}/dicom-web/studies/{qido_study}/series").json()[0],
                    "0020000E")[0]
    for path in ("studies/1.2.3", f"studies/{qido_study}/series/1.2.3",
                 f"studies/1.2.3/series/{series}",
                 f"studies/{qido_study}/series/{series}/instances/1.2.3",
                 "studies/1.2.3/metadata", f"studies/{qido_study}/series/1.2.3/metadata"):
        assert httpx.get(f"{base}/dicom-web/{path}").status_code == 404, path


def test_wado_transfer_syntax_negotiation(base, tmp_path: Path) -> None:
    ds = make_ct(patient_id="WEB-TS")
    sent = part10_bytes(ds, tmp_path)
    assert stow(base, [sent]).status_code == 200
    url = (f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    implicit = httpx.get(url, headers={
        "Accept": f'multipart/related; type="application/dicom"; '
                  f"transfer-syntax={ImplicitVRLittleEndian}"})
    assert implicit.status_code == 200
    [(ctype, got)] = wado_parts(implicit)
    assert ctype.endswith(f"transfer-syntax={ImplicitVRLittleEndian}")
    meta, _ = part10.read_file_meta(got)
    assert meta["TransferSyntaxUID"] == ImplicitVRLittleEndian
    expected = convert_dataset(dataset_part(sent), ExplicitVRLittleEndian,
                               ImplicitVRLittleEndian)
    assert dataset_part(got) == expected
    assert pydicom.dcmread(io.BytesIO(got)).PatientID == "WEB-TS"
    # no way to JPEG-encode a native instance; a JSON type is not a DICOM instance
    for accept in (f'multipart/related; type="application/dicom"; '
                   f"transfer-syntax={JPEGBaseline8Bit}",
                   "application/dicom+json", 'multipart/related; type="image/jpeg"'):
        response = httpx.get(url, headers={"Accept": accept})
        assert response.status_code == 406, accept


def test_wado_decompresses_jpeg_for_explicit_le(server, base) -> None:
    archive, _ = server
    path = get_testdata_file(JPEG_BASELINE_FILE)
    proc = subprocess.run([require_tool("storescu"), "-xy", "-aec", "PACS", "127.0.0.1",
                           str(archive.port), path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ds = pydicom.dcmread(path)
    url = (f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    stored = wado_parts(httpx.get(url, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}))
    assert stored[0][0].endswith(f"transfer-syntax={JPEGBaseline8Bit}")
    default = wado_parts(httpx.get(url))  # the Standard's default: Explicit VR Little Endian
    assert default[0][0].endswith(f"transfer-syntax={ExplicitVRLittleEndian}")
    plain = pydicom.dcmread(io.BytesIO(default[0][1]))
    assert plain.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert plain.pixel_array.shape == ds.pixel_array.shape


# -- STOW-RS failures -------------------------------------------------------------------------


def test_stow_other_study_fails_202_and_409(base, tmp_path: Path) -> None:
    study = make_ct().StudyInstanceUID
    good = make_ct(patient_id="WEB-MIX", study_uid=study)
    bad = make_ct(patient_id="WEB-MIX")
    response = stow(base, [part10_bytes(good, tmp_path), part10_bytes(bad, tmp_path)], study)
    assert response.status_code == 202, response.text
    body = response.json()
    [failed] = values(body, "00081198")
    assert values(failed, "00081155") == [bad.SOPInstanceUID]
    assert values(failed, "00081197") == [0xA900]
    assert [values(i, "00081155")[0] for i in values(body, "00081199")] == [good.SOPInstanceUID]
    assert values(body, "00081190") == [f"{base}/dicom-web/studies/{study}"]
    assert count(base, "instances", SOPInstanceUID=bad.SOPInstanceUID) == 0
    assert count(base, "instances", SOPInstanceUID=good.SOPInstanceUID) == 1

    other = make_ct(patient_id="WEB-MIX")
    response = stow(base, [part10_bytes(other, tmp_path), b"not dicom at all"], study)
    assert response.status_code == 409, response.text
    reasons = sorted(values(f, "00081197")[0] for f in values(response.json(), "00081198"))
    assert reasons == [0xA900, 0xC000]


def test_stow_wrong_media_type_is_415(base, tmp_path: Path) -> None:
    data = part10_bytes(make_ct(patient_id="WEB-415"), tmp_path)
    for ctype in ("application/dicom", 'multipart/related; type="application/dicom+json"; '
                  "boundary=b0undary", "text/plain"):
        response = stow(base, [data], content_type=ctype)
        assert response.status_code == 415, ctype
    assert count(base, "studies", PatientID="WEB-415") == 0


def test_stow_malformed_multipart_is_400_and_stores_nothing(base, tmp_path: Path) -> None:
    first = part10_bytes(make_ct(patient_id="WEB-400"), tmp_path)
    second = part10_bytes(make_ct(patient_id="WEB-400"), tmp_path)
    whole = multipart([first, second])
    truncated = whole[: len(whole) - 200]  # the second part never ends
    bodies = {
        "truncated": truncated,
        "no closing delimiter": whole[: whole.rindex(b"--b0undary--")],
        "wrong boundary": multipart([first], boundary="other"),
        "empty": b"",
        "bad header": b"--b0undary\r\nnot a header\r\n\r\n" + first + b"\r\n--b0undary--",
    }
    for name, body in bodies.items():
        response = stow(base, [], body=body)
        assert response.status_code == 400, name
    no_boundary = stow(base, [first], content_type='multipart/related; type="application/dicom"')
    assert no_boundary.status_code == 400
    assert count(base, "studies", PatientID="WEB-400") == 0


def test_stow_duplicate_is_accepted_once(base, tmp_path: Path) -> None:
    data = part10_bytes(make_ct(patient_id="WEB-DUP"), tmp_path)
    assert stow(base, [data]).status_code == 200
    assert stow(base, [data, data]).status_code == 200
    assert count(base, "instances", PatientID="WEB-DUP") == 1


def test_stow_body_over_limit_is_413(archive_factory, tmp_path: Path) -> None:
    http_port = free_port()
    archive = archive_factory("--http-port", str(http_port), "--workers", "1",
                              env={"PACS_HTTP_MAX_BODY": "100000"})
    base = wait_http(archive, http_port)
    small = part10_bytes(make_ct(patient_id="WEB-413", rows=16, columns=16), tmp_path)
    assert stow(base, [small]).status_code == 200
    big = [part10_bytes(make_ct(patient_id="WEB-413"), tmp_path) for _ in range(12)]
    # declared too large: refused before the body is read
    assert stow(base, big).status_code == 413

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield multipart(big)

    response = httpx.post(f"{base}/dicom-web/studies", content=chunked(), headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'})
    assert response.status_code == 413
    assert count(base, "instances", PatientID="WEB-413") == 1
    assert not list((archive.data_dir / "spool").rglob("spool-web-*"))


def test_stow_large_instance_is_spooled(base, tmp_path: Path) -> None:
    """Bigger than the in-memory part limit (16 MiB): spooled to disk, then stored."""
    ds = make_ct(patient_id="WEB-BIG", rows=3000, columns=3000)
    data = part10_bytes(ds, tmp_path)
    assert len(data) > 16 * 1024 * 1024
    response = stow(base, [data])
    assert response.status_code == 200, response.text
    url = (f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    with httpx.stream("GET", url, headers={"Accept": "multipart/related; "
                                           "type=application/dicom; transfer-syntax=*"}) as r:
        got = b"".join(r.iter_bytes())
    assert got.count(dataset_part(data)) == 1


# -- REST, rendered, viewer -------------------------------------------------------------------


def test_system_and_statistics(server, base, qido_study) -> None:
    archive, _ = server
    system = httpx.get(f"{base}/system").json()
    assert system["DicomAet"] == "PACS"
    assert system["DicomPort"] == archive.port
    assert system["HttpPort"] == int(base.rsplit(":", 1)[1])
    assert system["Version"]
    stats = httpx.get(f"{base}/statistics").json()
    assert stats["CountInstances"] >= 5
    assert stats["CountStudies"] == count(base, "studies")
    assert stats["CountSeries"] == count(base, "series")
    assert int(stats["TotalDiskSize"]) > 0


def test_rendered_frame_and_window(base, tmp_path: Path) -> None:
    from PIL import Image

    ds = make_ct(patient_id="WEB-PNG", rows=32, columns=48)
    assert stow(base, [part10_bytes(ds, tmp_path)]).status_code == 200
    url = (f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    response = httpx.get(f"{url}/rendered", params={"window": "1000,1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    assert image.shape == (32, 48)
    assert np.array_equal(image, np.where(ds.pixel_array >= 1000, 255, 0))
    assert httpx.get(f"{url}/frames/1/rendered").status_code == 200
    assert httpx.get(f"{url}/frames/2/rendered").status_code == 404
    assert httpx.get(f"{url}/rendered", params={"window": "a,b"}).status_code == 400
    assert httpx.get(f"{url}/rendered", headers={"Accept": "image/gif"}).status_code == 406


def test_viewer_page(base, qido_study) -> None:
    page = httpx.get(f"{base}/viewer", params={"StudyInstanceUID": qido_study})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert qido_study in page.text and "/rendered" in page.text
    assert httpx.get(f"{base}/viewer", params={"StudyInstanceUID": "<x>"}).status_code == 400


def test_errors_are_json(base) -> None:
    response = httpx.get(f"{base}/dicom-web/studies/1.2.3")
    assert response.status_code == 404
    assert json.loads(response.text)["error"]
