"""DICOM TLS (PS3.15 B.9) and HTTPS against a real ``pacs serve``: dcmtk's ``+tls`` tools and a
pynetdicom TLS association succeed; a plain client on the TLS port, a client certificate from
an untrusted CA and a missing client certificate are refused, logged, and disturb nothing;
a bad certificate stops ``pacs serve`` with one line and exit status 2."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
import trustme
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from tests.conftest import REPO, ArchiveProcess, free_port, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import stored_instance

pytestmark = pytest.mark.integration


@dataclass
class Pki:
    dir: Path
    ca: Path  # signs the server's and the modality's certificates
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    intruder_cert: Path  # signed by a CA the archive does not trust
    intruder_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca, untrusted = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("modality@example.org", common_name="MODALITY")
    intruder = untrusted.issue_cert("intruder@example.org", common_name="INTRUDER")
    paths = Pki(tmp, tmp / "ca.pem", tmp / "server.pem", tmp / "server.key",
                tmp / "client.pem", tmp / "client.key", tmp / "intruder.pem",
                tmp / "intruder.key")
    ca.cert_pem.write_to_path(str(paths.ca))
    for leaf, cert, key in ((server, paths.server_cert, paths.server_key),
                            (client, paths.client_cert, paths.client_key),
                            (intruder, paths.intruder_cert, paths.intruder_key)):
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
    return paths


def toml(pki: Pki, path: Path, *, ca: bool = True, **extra: object) -> Path:
    lines = [f'tls_cert = "{pki.server_cert}"', f'tls_key = "{pki.server_key}"',
             "hl7_port = 0"]
    if ca:
        lines.append(f'tls_ca = "{pki.ca}"')
    lines += [f"{name} = {str(value).lower() if isinstance(value, bool) else value}"
              for name, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class TlsArchive:
    process: ArchiveProcess
    tls_port: int


def start(pki: Pki, tmp: Path, name: str, *args: str, ca: bool = True,
          **extra: object) -> TlsArchive:
    tls_port = free_port()
    config = toml(pki, tmp / f"{name}.toml", ca=ca, tls_port=tls_port, **extra)
    archive = ArchiveProcess(tmp / name, free_port(), extra_args=["--config", str(config),
                                                                  *args])
    archive.start()
    return TlsArchive(archive, tls_port)


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsArchive]:
    """Client certificates required; two workers share both ports."""
    archive = start(pki, tmp_path_factory.mktemp("tls"), "data", "--workers", "2")
    yield archive
    archive.process.stop()


def dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool(tool), *args], capture_output=True, text=True,
                          timeout=timeout)


def tls_args(pki: Pki, cert: Path | None = None, key: Path | None = None) -> list[str]:
    return ["+tls", str(key or pki.client_key), str(cert or pki.client_cert), "+cf", str(pki.ca)]


def new_log(archive: ArchiveProcess, offset: int) -> str:
    return archive.log()[offset:]


def test_log_names_the_tls_port(server: TlsArchive) -> None:
    log = server.process.log()
    assert f"and TLS port {server.tls_port}" in log
    assert log.count(f"DICOM TLS SCP PACS accepting on 127.0.0.1:{server.tls_port} "
                     "(client certificates required)") == 2  # one per worker


def test_echoscu_over_tls(server: TlsArchive, pki: Pki) -> None:
    offset = len(server.process.log())
    proc = dcmtk("echoscu", *tls_args(pki), "-aec", "PACS", "127.0.0.1", str(server.tls_port))
    assert proc.returncode == 0, proc.stderr
    assert "client certificate CN=MODALITY" in new_log(server.process, offset)


def test_storescu_over_tls_then_found_on_the_plain_port(
    server: TlsArchive, pki: Pki, tmp_path: Path
) -> None:
    ds = make_ct(patient_id="TLS001")
    sent = write(ds, tmp_path / "ct.dcm")
    proc = dcmtk("storescu", *tls_args(pki), "-aec", "PACS", "127.0.0.1",
                 str(server.tls_port), str(sent))
    assert proc.returncode == 0, proc.stderr
    found = stored_instance(server.process.data_dir, ds.SOPInstanceUID)
    assert found is not None
    assert found[0].source_aet == "STORESCU"
    out = tmp_path / "found"
    out.mkdir()
    proc = dcmtk("findscu", "-S", "-X", "-od", str(out), "-aec", "PACS",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=TLS001",
                 "-k", "StudyInstanceUID", "127.0.0.1", str(server.process.port))
    assert proc.returncode == 0, proc.stderr
    answers = [pydicom.dcmread(path) for path in sorted(out.iterdir())]
    assert [a.StudyInstanceUID for a in answers] == [ds.StudyInstanceUID]


def client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def test_pynetdicom_store_and_find_over_tls(server: TlsArchive, pki: Pki) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    context = client_context(pki, pki.client_cert, pki.client_key)
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # dcmtk negotiates 1.3: cover 1.2 here
    offset = len(server.process.log())
    assoc = ae.associate("127.0.0.1", server.tls_port, ae_title="PACS",
                         tls_args=(context, "localhost"))
    assert assoc.is_established
    try:
        ds = make_ct(patient_id="TLS002")
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(ds).Status == 0
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.PatientID = "TLS002"
        query.SeriesInstanceUID = ""
        rows = [identifier.SeriesInstanceUID for status, identifier
                in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                if status is not None and status.Status in (0xFF00, 0xFF01)]
        assert rows == [ds.SeriesInstanceUID]
    finally:
        assoc.release()
    record, _blob = stored_instance(server.process.data_dir, ds.SOPInstanceUID) or (None, b"")
    assert record is not None and record.source_aet == "PYNETDICOM"
    assert re.search(r"TLS TLSv1\.2 ECDHE-ECDSA-\S+-GCM-SHA\d+, client certificate CN=MODALITY",
                     new_log(server.process, offset))


def test_plain_client_on_the_tls_port_fails_cleanly(server: TlsArchive, pki: Pki) -> None:
    offset = len(server.process.log())
    proc = dcmtk("echoscu", "-aec", "PACS", "127.0.0.1", str(server.tls_port))
    assert proc.returncode != 0
    # Still serving on both ports.
    assert dcmtk("echoscu", "-aec", "PACS", "127.0.0.1",
                 str(server.process.port)).returncode == 0
    assert dcmtk("echoscu", *tls_args(pki), "-aec", "PACS", "127.0.0.1",
                 str(server.tls_port)).returncode == 0
    log = new_log(server.process, offset)
    assert "TLS handshake failed: not TLS, a plain connection?" in log
    assert "Traceback" not in log and "ERROR" not in log
    assert server.process.alive()


def test_untrusted_client_certificate_is_refused(server: TlsArchive, pki: Pki) -> None:
    offset = len(server.process.log())
    proc = dcmtk("echoscu", *tls_args(pki, pki.intruder_cert, pki.intruder_key), "-aec", "PACS",
                 "127.0.0.1", str(server.tls_port))
    assert proc.returncode != 0
    log = server.process.wait_log("TLS handshake failed", offset)
    failures = [line for line in log.splitlines() if "TLS handshake failed" in line]
    assert len(failures) == 1 and "CERTIFICATE_VERIFY_FAILED" in failures[0], log
    assert "INTRUDER" not in log and "association accepted" not in log
    assert "Traceback" not in log


def test_missing_client_certificate_is_refused(server: TlsArchive, pki: Pki) -> None:
    offset = len(server.process.log())
    proc = dcmtk("echoscu", "+tla", "+cf", str(pki.ca), "-aec", "PACS", "127.0.0.1",
                 str(server.tls_port))
    assert proc.returncode != 0
    log = server.process.wait_log("TLS handshake failed", offset)
    assert "TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE" in log
    assert "association accepted" not in log


def test_without_a_ca_no_client_certificate_is_asked(
    pki: Pki, tmp_path: Path
) -> None:
    archive = start(pki, tmp_path, "anon", "--workers", "1", ca=False)
    try:
        assert "client certificates required" not in archive.process.log()
        proc = dcmtk("echoscu", "+tla", "+cf", str(pki.ca), "-aec", "PACS", "127.0.0.1",
                     str(archive.tls_port))
        assert proc.returncode == 0, proc.stderr
        assert "no client certificate" in archive.process.log()
        # The server is still authenticated: a client trusting another CA refuses it.
        proc = dcmtk("echoscu", "+tla", "+cf", str(pki.intruder_cert), "-aec", "PACS",
                     "127.0.0.1", str(archive.tls_port))
        assert proc.returncode != 0
        # An orderly stop with a TLS association open: it is aborted, the archive exits 0.
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", archive.tls_port, ae_title="PACS",
                             tls_args=(client_context(pki, None, None), "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assert archive.process.stop() == 0
        assoc.join(10)  # pynetdicom ends the association when our A-ABORT arrives
        assert assoc.is_aborted
    finally:
        archive.process.stop()


def serve_once(args: list[str], env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs", "serve", "--host", "127.0.0.1",
                           "--http-port", "0", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env=dict(os.environ, **(env or {})))


def test_a_bad_certificate_stops_serve_with_one_line(pki: Pki, tmp_path: Path) -> None:
    config = toml(pki, tmp_path / "bad.toml", tls_port=free_port(), workers=2)
    mismatched = {"PACS_TLS_KEY": str(pki.client_key)}
    proc = serve_once(["--config", str(config), "--data-dir", str(tmp_path / "data"),
                       "--port", str(free_port())], mismatched)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"pacs: error: tls_key: {pki.client_key} is not the private "
                                   f"key of tls_cert {pki.server_cert}")
    assert "DICOM workers" not in proc.stdout + proc.stderr  # found before any worker started
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                       "-----END CERTIFICATE-----\n")
    proc = serve_once(["--config", str(config), "--data-dir", str(tmp_path / "data"),
                       "--port", str(free_port())], {"PACS_TLS_CERT": str(garbage)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pacs: error: tls_cert"), proc.stderr


def test_https(pki: Pki, tmp_path: Path) -> None:
    http_port = free_port()
    config = toml(pki, tmp_path / "https.toml", ca=False, http_tls=True)
    archive = ArchiveProcess(tmp_path / "data", free_port(),
                             extra_args=["--config", str(config), "--workers", "1",
                                         "--http-port", str(http_port)])
    archive.start()
    try:
        assert f"HTTPS (DICOMweb, REST, viewer) listening on 127.0.0.1:{http_port}" in \
            archive.log()
        with httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca)),
                          timeout=10) as client:
            response = client.get(f"https://localhost:{http_port}/system")
            assert response.status_code == 200
            assert response.json()["DicomAet"] == "PACS"
            # STOW-RS over HTTPS; the RetrieveURL it answers keeps the scheme.
            ds = make_ct()
            sent = write(ds, tmp_path / "ct.dcm").read_bytes()
            body = (b"\r\n--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + sent
                    + b"\r\n--b0undary--\r\n")
            response = client.post(
                f"https://localhost:{http_port}/dicom-web/studies", content=body,
                headers={"Content-Type":
                         'multipart/related; type="application/dicom"; boundary=b0undary',
                         "Accept": "application/dicom+json"})
            assert response.status_code == 200, response.text
            stored = response.json()["00081199"]["Value"][0]
            assert stored["00081190"]["Value"][0].startswith(
                f"https://localhost:{http_port}/dicom-web/studies/{ds.StudyInstanceUID}")
        with httpx.Client(timeout=10) as plain, pytest.raises(httpx.TransportError):
            plain.get(f"http://127.0.0.1:{http_port}/system")
        with httpx.Client(timeout=10) as untrusting, pytest.raises(httpx.ConnectError):
            untrusting.get(f"https://localhost:{http_port}/system")  # system CAs only
        assert archive.alive()
    finally:
        archive.stop()


def sender(pki: Pki, tmp: Path, name: str, tls_ca: Path, client: bool = True) -> ArchiveProcess:
    """An archive (AE SENDER, plain ports) whose remote PACS is ``server``'s TLS port, to be
    reached over TLS trusting ``tls_ca``, presenting the modality's certificate if ``client``."""
    lines = ['aet = "SENDER"', "hl7_port = 0", f'tls_ca = "{tls_ca}"']
    if client:
        lines += [f'tls_cert = "{pki.client_cert}"', f'tls_key = "{pki.client_key}"']
    config = tmp / f"{name}.toml"
    config.write_text("\n".join(lines) + "\n")
    archive = ArchiveProcess(tmp / name, free_port(), aet="SENDER",
                             extra_args=["--config", str(config), "--workers", "1"])
    return archive


def move_study(archive: ArchiveProcess, study: str) -> subprocess.CompletedProcess[str]:
    return dcmtk("movescu", "-S", "-aec", "SENDER", "-aem", "PACS",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                 "127.0.0.1", str(archive.port))


def test_c_move_and_rest_echo_to_a_tls_remote(server: TlsArchive, pki: Pki,
                                              tmp_path: Path) -> None:
    """``[remote.PACS] tls = true``: the C-MOVE's sub-operations and a REST C-ECHO go over DICOM
    TLS, the server checked against ``tls_ca`` and ours presented (the remote requires one)."""
    archive = sender(pki, tmp_path, "sender", pki.ca)
    # The remote comes over REST, as a user would add it.
    http_port = free_port()
    archive.extra_args += ["--http-port", str(http_port)]
    archive.start()
    try:
        base = f"http://127.0.0.1:{http_port}"
        put = httpx.put(f"{base}/modalities/PACS", json={
            "Host": "127.0.0.1", "Port": server.tls_port, "UseDicomTls": True}, timeout=30)
        assert put.status_code == 201 and put.json()["UseDicomTls"] is True, put.text
        offset = len(server.process.log())
        echo = httpx.post(f"{base}/modalities/PACS/echo", json={}, timeout=30)
        assert echo.status_code == 200 and echo.json() == {"Status": 0}, echo.text
        ds = make_ct(patient_id="TLSMOVE")
        sent = write(ds, tmp_path / "move.dcm")
        proc = dcmtk("storescu", "-aec", "SENDER", "127.0.0.1", str(archive.port), str(sent))
        assert proc.returncode == 0, proc.stderr
        proc = move_study(archive, ds.StudyInstanceUID)
        assert proc.returncode == 0, proc.stderr
        found = stored_instance(server.process.data_dir, ds.SOPInstanceUID)
        assert found is not None
        assert found[0].source_aet == "SENDER"
        assert read_blob_equal(found[1], sent)
        text = server.process.wait_log("client certificate CN=MODALITY", offset)
        assert "TLS" in text
        # Without TLS the same port is refused: the sub-operation really used it.
        httpx.put(f"{base}/modalities/PACS", json={
            "Host": "127.0.0.1", "Port": server.tls_port}, timeout=30).raise_for_status()
        echo = httpx.post(f"{base}/modalities/PACS/echo", json={}, timeout=30)
        assert echo.status_code == 502, echo.text
    finally:
        archive.stop()


def test_c_move_to_a_tls_remote_it_cannot_trust_fails_cleanly(
    server: TlsArchive, pki: Pki, tmp_path: Path
) -> None:
    """A remote whose certificate ``tls_ca`` did not sign: the sub-operations fail, one log
    line says why, and nothing is sent in the clear."""
    archive = sender(pki, tmp_path, "distrust", pki.intruder_cert)
    config = archive.extra_args[1]
    Path(config).write_text(Path(config).read_text() + (
        f'[remote.PACS]\nhost = "127.0.0.1"\nport = {server.tls_port}\ntls = true\n'))
    archive.start()
    try:
        ds = make_ct(patient_id="TLSNOPE")
        sent = write(ds, tmp_path / "nope.dcm")
        proc = dcmtk("storescu", "-aec", "SENDER", "127.0.0.1", str(archive.port), str(sent))
        assert proc.returncode == 0, proc.stderr
        proc = move_study(archive, ds.StudyInstanceUID)
        text = archive.wait_log(r"C-MOVE of 1 instances to PACS: 0 completed, 1 failed")
        assert re.search(r"1 instances not sent to PACS@.*: TLS handshake failed: "
                         r"CERTIFICATE_VERIFY_FAILED", text), text
        assert "Traceback" not in text
        assert stored_instance(server.process.data_dir, ds.SOPInstanceUID) is None
    finally:
        archive.stop()


def read_blob_equal(blob: bytes, sent: Path) -> bool:
    """The blob holds the data set that was sent (the archive writes its own file meta)."""
    from tests.integration.archive_check import read_blob, same_dataset
    return same_dataset(read_blob(blob), pydicom.dcmread(sent))


def test_a_remote_refusing_our_missing_client_certificate_says_tls(
    server: TlsArchive, pki: Pki, tmp_path: Path
) -> None:
    """Without ``tls_cert`` the remote (client certificates required) refuses us; with TLS 1.3
    that happens after the client's handshake, yet the error still names TLS."""
    archive = sender(pki, tmp_path, "anonymous", pki.ca, client=False)
    http_port = free_port()
    archive.extra_args += ["--http-port", str(http_port)]
    archive.start()
    try:
        base = f"http://127.0.0.1:{http_port}"
        httpx.put(f"{base}/modalities/PACS", json={
            "Host": "127.0.0.1", "Port": server.tls_port, "UseDicomTls": True},
            timeout=30).raise_for_status()
        echo = httpx.post(f"{base}/modalities/PACS/echo", json={}, timeout=30)
        assert echo.status_code == 502, echo.text
        assert "TLS" in echo.text, echo.text
    finally:
        archive.stop()


def test_migrate_with_get_from_a_tls_source(server: TlsArchive, pki: Pki,
                                            tmp_path: Path) -> None:
    """`pacs migrate --get --tls`: the source's C-FINDs and C-GETs go over DICOM TLS (the
    source requires client certificates); without --tls its TLS port cannot be used."""
    study = make_ct(patient_id="TLSMIG").StudyInstanceUID
    sent = [write(make_ct(patient_id="TLSMIG", study_uid=study, instance_number=i),
                  tmp_path / f"mig{i}.dcm") for i in range(3)]
    proc = dcmtk("storescu", *tls_args(pki), "-aec", "PACS", "127.0.0.1",
                 str(server.tls_port), *map(str, sent))
    assert proc.returncode == 0, proc.stderr
    archive = sender(pki, tmp_path, "target", pki.ca)
    archive.start()
    try:
        config = archive.extra_args[1]

        def migrate(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "pacs", "migrate", "--config", config,
                 "--from", f"PACS@127.0.0.1:{server.tls_port}", "--data-dir",
                 str(archive.data_dir), "--port", str(archive.port), "--aet", "SENDER",
                 "--since-year", "2000", "--undated", "--report", str(tmp_path / "r.txt"),
                 "--get", *extra], capture_output=True, text=True, timeout=120, cwd=REPO)

        plain = migrate()
        assert plain.returncode == 2, plain.stdout + plain.stderr  # no TLS: no association
        done = migrate("--tls")
        assert done.returncode == 0, done.stdout + done.stderr
        for path in sent:
            ds = pydicom.dcmread(path)
            assert stored_instance(archive.data_dir, ds.SOPInstanceUID) is not None
    finally:
        archive.stop()
