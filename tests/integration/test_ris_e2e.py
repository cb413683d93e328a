"""The RIS round trip on a real `pacs serve`: an HL7 order becomes a worklist item, the modality
(dcmtk findscu -W, then storescu) stores the study with the worklist's UIDs, the order completes,
an ORU^R01 reaches a test MLLP receiver from the durable outbox (also across a restart while the
RIS is down), and the EHR finds the study over FHIR and opens its viewer URL."""

from __future__ import annotations

import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import httpx
import pytest

from pacs.audit import read_events
from tests.conftest import ArchiveProcess, free_port, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.test_web import wait_http
from tests.integration.test_worklist import STANDARD_KEYS, ack_code, findscu, orm, send

pytestmark = pytest.mark.integration

SB, EB, CR = b"\x0b", b"\x1c", b"\r"


class RisReceiver:
    """A minimal RIS: receives MLLP frames, keeps the messages, answers AA."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[hl7.Message] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                buffer = b""
                while True:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    while EB + CR in buffer:
                        frame, _, buffer = buffer.partition(EB + CR)
                        message = hl7.parse(frame.lstrip(SB).decode())
                        control = str(message.extract_field("MSH", 1, 10))
                        ack = f"MSH|^~\\&|RIS|RIS|PACS|PACS|20260101||ACK|A{control}|P|2.5.1\r" \
                              f"MSA|AA|{control}\r"
                        self.request.sendall(SB + ack.encode() + EB + CR)
                        with receiver.arrived:
                            receiver.messages.append(message)
                            receiver.arrived.notify_all()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[hl7.Message]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.messages) < count and time.monotonic() < deadline:
                self.arrived.wait(0.2)
            return list(self.messages)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ris_setup(tmp_path: Path) -> Iterator[tuple[ArchiveProcess, str, int]]:
    hl7_port, ris_port, http_port = free_port(), free_port(), free_port()
    config = tmp_path / "pacs.toml"
    config.write_text(
        f'hl7_port = {hl7_port}\nris_host = "127.0.0.1"\nris_port = {ris_port}\n'
        f'reconcile_quiet_period = 1.0\nforward_retry_base = 0.2\n'
        f'public_url = "http://127.0.0.1:{http_port}"\n')
    archive = ArchiveProcess(tmp_path / "data", free_port(),
                             extra_args=["--config", str(config), "--http-port", str(http_port),
                                         "--workers", "2"])
    archive.hl7_port = hl7_port  # type: ignore[attr-defined]
    archive.start()
    base = wait_http(archive, http_port)
    yield archive, base, ris_port
    archive.stop()


def _store_study(archive: ArchiveProcess, folder: Path, item: object, count: int) -> None:
    folder.mkdir()
    series = None
    files = []
    for number in range(1, count + 1):
        ds = make_ct(patient_id=item.PatientID, patient_name=str(item.PatientName),  # type: ignore[attr-defined]
                     study_uid=item.StudyInstanceUID, series_uid=series,  # type: ignore[attr-defined]
                     instance_number=number)
        series = ds.SeriesInstanceUID
        ds.AccessionNumber = item.AccessionNumber  # type: ignore[attr-defined]
        files.append(write(ds, folder / f"{number}.dcm"))
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), *map(str, files)], capture_output=True, text=True,
                          env={"TCP_NODELAY": "1"})
    assert proc.returncode == 0, proc.stderr


def _wait_off_worklist(archive: ArchiveProcess, out: Path, station: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not findscu(archive.port, out, *STANDARD_KEYS,
                       f"(0040,0100)[0].ScheduledStationAETitle={station}"):
            return
        time.sleep(0.3)
    raise AssertionError(f"the order never completed:\n{archive.log()[-3000:]}")


def test_order_to_images_to_oru_to_ehr(ris_setup, tmp_path: Path) -> None:
    archive, base, ris_port = ris_setup
    hl7_port = archive.hl7_port  # type: ignore[attr-defined]
    assert ack_code(send(hl7_port, orm("NW", "E2E1", patient="E2EPAT", name="Lind^Eva",
                                       accession="E2EACC", station="CTE2E"))) == "AA"
    (item,) = findscu(archive.port, tmp_path / "wl", *STANDARD_KEYS,
                      "(0040,0100)[0].ScheduledStationAETitle=CTE2E")
    _store_study(archive, tmp_path / "study", item, 3)
    _wait_off_worklist(archive, tmp_path / "wl2", "CTE2E")
    # The RIS was down when the order completed: the ORU waits in the outbox and is retried.
    ris = RisReceiver(ris_port)
    try:
        (oru,) = ris.wait_for(1)
    finally:
        ris.close()
    assert str(oru.extract_field("MSH", 1, 9, 1, 1)) == "ORU"
    assert str(oru.extract_field("MSH", 1, 9, 1, 2)) == "R01"
    assert str(oru.extract_field("PID", 1, 3, 1, 1)) == "E2EPAT"
    assert str(oru.extract_field("OBR", 1, 18)) == "E2EACC"
    assert str(oru.extract_field("OBX", 1, 5)) == item.StudyInstanceUID
    viewer = str(oru.segments("OBX")[1][5][0][0])
    assert viewer == f"{base}/viewer?StudyInstanceUID={item.StudyInstanceUID}"
    # The EHR side: the study over FHIR by accession, and the viewer link answers.
    bundle = httpx.get(f"{base}/fhir/ImagingStudy", params={"identifier": "E2EACC"}).json()
    assert bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["id"] == item.StudyInstanceUID
    assert bundle["entry"][0]["resource"]["numberOfInstances"] == 3
    page = httpx.get(viewer)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "delivered to 127.0.0.1" in archive.log()
    orders = [e for e in read_events(archive.data_dir / "audit") if e["action"] == "order"]
    assert [(e["study_uid"], e["status"]) for e in orders] == [
        (item.StudyInstanceUID, "COMPLETED")]


def test_outbox_survives_a_restart_while_the_ris_is_down(ris_setup, tmp_path: Path) -> None:
    archive, _base, ris_port = ris_setup
    hl7_port = archive.hl7_port  # type: ignore[attr-defined]
    assert ack_code(send(hl7_port, orm("NW", "E2E2", patient="E2EPAT2", accession="E2EACC2",
                                       station="CTRST"))) == "AA"
    (item,) = findscu(archive.port, tmp_path / "wl", *STANDARD_KEYS,
                      "(0040,0100)[0].ScheduledStationAETitle=CTRST")
    _store_study(archive, tmp_path / "study", item, 2)
    _wait_off_worklist(archive, tmp_path / "wl2", "CTRST")
    deadline = time.monotonic() + 20
    while "ORU for order" not in archive.log() and time.monotonic() < deadline:
        time.sleep(0.2)  # at least one failed delivery before the stop
    assert "ConnectionRefusedError" in archive.log()
    assert archive.stop() == 0
    ris = RisReceiver(ris_port)
    try:
        archive.start()
        (oru,) = ris.wait_for(1)
        time.sleep(1.0)  # a duplicate would arrive within the next rounds
        assert len(ris.messages) == 1
    finally:
        ris.close()
    assert str(oru.extract_field("OBX", 1, 5)) == item.StudyInstanceUID
