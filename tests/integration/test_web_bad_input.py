"""HTTP requests a helper's hunt found mishandled, over a real ``pacs serve`` with httpx: HEAD
on streamed routes, huge offsets, a non-ASCII multipart boundary, FHIR search values, deeply
nested JSON, an unresolvable modality host, a QIDO Accept it cannot serve, malformed bulk
data tags. Each gets a clear 4xx (or, for HEAD, headers alone), never a 500."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ArchiveProcess, free_port
from tests.dicomgen import make_ct, write
from tests.integration.test_web import wait_http

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stocked(tmp_path_factory) -> Iterator[tuple[ArchiveProcess, str, str, str]]:
    """An archive holding one CT instance, stored over STOW-RS: (archive, base, study, sop)."""
    tmp = tmp_path_factory.mktemp("webbad")
    http_port = free_port()
    archive = ArchiveProcess(tmp / "data", free_port(),
                             extra_args=["--http-port", str(http_port), "--workers", "1"])
    archive.start()
    base = wait_http(archive, http_port)
    ds = make_ct()
    data = write(ds, tmp / "ct.dcm").read_bytes()
    body = (b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b0--\r\n")
    response = httpx.post(f"{base}/dicom-web/studies", content=body, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0'})
    assert response.status_code == 200, response.text
    yield archive, base, ds.StudyInstanceUID, ds.SOPInstanceUID
    archive.stop()


def no_server_errors(archive: ArchiveProcess) -> None:
    log = archive.log()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]


def raw_exchange(base: str, request: bytes) -> bytes:
    """Send ``request`` on one connection and read until the server is quiet for 0.5 s."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        sock.settimeout(0.5)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def instance_url(base: str, study: str, sop: str) -> str:
    series = httpx.get(f"{base}/dicom-web/studies/{study}/series").json()
    series_uid = series[0]["0020000E"]["Value"][0]
    return f"{base}/dicom-web/studies/{study}/series/{series_uid}/instances/{sop}"


def test_head_on_streamed_routes_sends_headers_alone(stocked) -> None:
    archive, base, study, sop = stocked
    instance = instance_url(base, study, sop).removeprefix(base)
    paths = [f"/dicom-web/studies/{study}", instance, f"{instance}/frames/1",
             f"/instances/{sop}/file"]
    host = base.removeprefix("http://")
    for path in paths:
        # A HEAD then a GET of /system on one keep-alive connection: the second response must
        # start right after the first one's headers (a body in between put clients out of step).
        exchange = raw_exchange(base, (
            f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
            f"GET /system HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").encode())
        head, _, rest = exchange.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (path, head)
        assert rest.startswith(b"HTTP/1.1 200"), (path, rest[:200])
    no_server_errors(archive)


def test_huge_offsets_are_empty_not_errors(stocked) -> None:
    archive, base, *_ = stocked
    response = httpx.get(f"{base}/dicom-web/studies",
                         params={"offset": str(2**63 - 8), "limit": "10"})
    assert response.status_code == 204, response.text
    response = httpx.post(f"{base}/tools/find", json={"Level": "Study", "Limit": 5,
                                                      "Since": 2**63 - 2, "Query": {}})
    assert response.status_code == 200 and response.json() == [], response.text
    no_server_errors(archive)


def test_non_ascii_multipart_boundary_is_refused(stocked) -> None:
    archive, base, *_ = stocked
    host = base.removeprefix("http://")
    body = b"--\xe2\x82\xac\r\n\r\n\r\n--\xe2\x82\xac--\r\n"
    exchange = raw_exchange(base, (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\nContent-Type: multipart/related; "
        f'type="application/dicom"; boundary=').encode() + "€".encode() + b"\r\n\r\n"
        + body)
    assert exchange.startswith(b"HTTP/1.1 400"), exchange[:300]
    no_server_errors(archive)


def test_fhir_search_values(stocked) -> None:
    archive, base, *_ = stocked
    response = httpx.get(f"{base}/fhir/ImagingStudy", params={"identifier": "urn:oid:abc"})
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    response = httpx.get(f"{base}/fhir/ImagingStudy", params={"patient": "PID001",
                                                               "_count": "²"})
    assert response.status_code == 400, response.text
    no_server_errors(archive)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/fhir/ServiceRequest"), ("POST", "/tools/find"), ("PUT", "/modalities/DEEP")])
def test_deeply_nested_json_is_a_bad_request(stocked, method: str, path: str) -> None:
    archive, base, *_ = stocked
    response = httpx.request(method, f"{base}{path}", content=b"[" * 100_000,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    no_server_errors(archive)


def test_unresolvable_modality_host_is_refused(stocked) -> None:
    archive, base, *_ = stocked
    for host in ("a..b", "x" * 100 + ".example"):
        response = httpx.put(f"{base}/modalities/BADHOST", json={"Host": host, "Port": 11112})
        assert response.status_code == 400, (host, response.text)
    assert httpx.get(f"{base}/modalities/BADHOST").status_code == 404
    no_server_errors(archive)


def test_qido_honours_accept(stocked) -> None:
    archive, base, *_ = stocked
    for accept in ("application/dicom+xml", "text/html"):
        response = httpx.get(f"{base}/dicom-web/studies", headers={"Accept": accept})
        assert response.status_code == 406, (accept, response.status_code)
    for accept in ("application/dicom+json", "application/json", "*/*"):
        response = httpx.get(f"{base}/dicom-web/studies", headers={"Accept": accept})
        assert response.status_code == 200, (accept, response.status_code)
    no_server_errors(archive)


def test_bulkdata_tag_must_be_eight_hex_digits(stocked) -> None:
    archive, base, study, sop = stocked
    instance = instance_url(base, study, sop)
    for tag in ("-1234567", "+1234567", "0x001000", "1_234567"):
        response = httpx.get(f"{instance}/bulkdata/{tag}")
        assert response.status_code == 400, (tag, response.status_code)
    no_server_errors(archive)


def test_rendered_frame_zero_is_a_bad_request(stocked) -> None:
    archive, base, study, sop = stocked
    instance = instance_url(base, study, sop)
    assert httpx.get(f"{instance}/frames/0").status_code == 400
    assert httpx.get(f"{instance}/frames/0/rendered").status_code == 400
    assert httpx.get(f"{instance}/frames/1/rendered").status_code == 200
    no_server_errors(archive)


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_leave_mid_transfer_are_one_log_line(stocked, tmp_path) -> None:
    """A download or an upload cut off by the client: an INFO line each, no ERROR traceback
    (aiohttp's "Error handling request"), and the archive goes on serving."""
    archive, base, *_ = stocked
    big = make_ct(rows=4096, columns=4096)  # 32 MiB: more than the socket buffers hold
    data = write(big, tmp_path / "big.dcm").read_bytes()
    body = b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b0--\r\n"
    response = httpx.post(f"{base}/dicom-web/studies", content=body, timeout=60, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0'})
    assert response.status_code == 200, response.text
    host, port = base.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET /instances/{big.SOPInstanceUID}/file HTTP/1.1\r\n"
                     f"Host: {host}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        reset(sock)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(f"GET /dicom-web/studies/{big.StudyInstanceUID} HTTP/1.1\r\n"
                 f"Host: {host}\r\nAccept: multipart/related; type=\"application/dicom\"\r\n"
                 f"\r\n".encode())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    reset(sock)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall((f"POST /dicom-web/studies HTTP/1.1\r\nHost: {host}\r\n"
                  f"Content-Length: {len(body)}\r\nContent-Type: multipart/related; "
                  f'type="application/dicom"; boundary=b0\r\n\r\n').encode() + body[:1 << 20])
    time.sleep(0.3)
    reset(sock)

    deadline = time.monotonic() + 10
    while (archive.log().count("cut off by the client") < 2
           or "upload cut off" not in archive.log()):
        assert time.monotonic() < deadline, archive.log()[-3000:]
        time.sleep(0.05)
    no_server_errors(archive)
    assert httpx.get(f"{base}/system").status_code == 200
