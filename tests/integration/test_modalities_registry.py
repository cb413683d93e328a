"""REST /modalities changes reach C-MOVE in every worker and survive a restart (pacs.remotes):
PUT a destination over httpx, dcmtk movescu to it (served by both workers), DELETE it (0xA801
from both workers), 409 for an AE of the settings file, and the registry after a restart."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.conftest import ArchiveProcess, free_port
from tests.integration.archive_check import same_dataset
from tests.integration.test_move import completed, config, movescu, stock
from tests.integration.test_web import wait_http

pytestmark = pytest.mark.integration

ATTEMPTS = 40  # SO_REUSEPORT picks a worker per connection: both serve one long before this


def move_study(archive: ArchiveProcess, destination: str, study: str) -> str:
    return movescu(archive.port, destination, "-S", "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={study}")


def workers_logging(archive: ArchiveProcess, pattern: str, offset: int) -> set[str]:
    return set(re.findall(rf"\[(w\d)\] pacs\.move: {pattern}", archive.log()[offset:]))


def test_rest_destination_in_every_worker_and_after_restart(
        archive_factory, scp_factory, tmp_path: Path) -> None:
    scp = scp_factory()
    http_port = free_port()
    archive = archive_factory("--workers", "2", "--http-port", str(http_port),
                              "--config", config(tmp_path, CONF=scp.port))
    base = wait_http(archive, http_port)
    files = stock(archive, tmp_path, 3)
    study = pydicom.dcmread(files[0]).StudyInstanceUID

    assert "dimse status                  : 0xa801" in move_study(archive, "NEWDEST",
                                                                  study).lower()
    created = httpx.put(f"{base}/modalities/NEWDEST",
                        json={"Host": "127.0.0.1", "Port": scp.port}, timeout=30)
    assert created.status_code == 201, created.text
    assert (tmp_path / "data0" / "state" / "modalities.json").is_file()
    served: set[str] = set()
    offset = len(archive.log())
    for _ in range(ATTEMPTS):
        out = move_study(archive, "NEWDEST", study)
        assert "DIMSE Status                  : 0x0000" in out, out[-2000:]
        assert completed(out) == 3
        served = workers_logging(archive, r"\S+: C-MOVE of 3 instances to NEWDEST: 3 completed",
                                 offset)
        if served == {"w0", "w1"}:
            break
    assert served == {"w0", "w1"}, archive.log()[offset:]
    received = scp.received()
    assert set(received) == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    for path in files:
        original = pydicom.dcmread(path)
        assert same_dataset(received[original.SOPInstanceUID], original)

    refused = httpx.delete(f"{base}/modalities/CONF", timeout=30)
    assert refused.status_code == 409
    assert "defined in the settings file" in refused.json()["error"]
    assert httpx.get(f"{base}/modalities/CONF", timeout=30).status_code == 200

    assert httpx.delete(f"{base}/modalities/NEWDEST", timeout=30).status_code == 200
    offset = len(archive.log())
    unknown: set[str] = set()
    for _ in range(ATTEMPTS):
        out = move_study(archive, "NEWDEST", study)
        assert "dimse status                  : 0xa801" in out.lower(), out[-2000:]
        unknown = workers_logging(archive, r"\S+: C-MOVE to unknown destination 'NEWDEST'",
                                  offset)
        if unknown == {"w0", "w1"}:
            break
    assert unknown == {"w0", "w1"}, archive.log()[offset:]

    # An entry added over REST, and an override of a settings entry, survive a restart.
    assert httpx.put(f"{base}/modalities/LATER", json={"Host": "127.0.0.1", "Port": scp.port,
                                                       "AllowMove": True},
                     timeout=30).status_code == 201
    assert httpx.put(f"{base}/modalities/CONF", json={"Host": "127.0.0.1", "Port": 1},
                     timeout=30).status_code == 200  # it existed: from the settings
    assert archive.stop() == 0
    archive.start()
    base = wait_http(archive, http_port)
    listed = httpx.get(f"{base}/modalities", params={"expand": "true"}, timeout=30).json()
    assert set(listed) == {"CONF", "LATER"}
    assert listed["CONF"]["Port"] == 1
    out = move_study(archive, "LATER", study)
    assert "DIMSE Status                  : 0x0000" in out, out[-2000:]
    assert completed(out) == 3
    # Deleting the override brings the settings entry back.
    assert httpx.delete(f"{base}/modalities/CONF", timeout=30).status_code == 200
    assert httpx.get(f"{base}/modalities/CONF", timeout=30).json()["Port"] == scp.port
    out = move_study(archive, "CONF", study)
    assert completed(out) == 3, out[-2000:]
