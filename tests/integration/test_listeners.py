"""A second archive on ports another one listens on refuses to start: its workers bind with
SO_REUSEPORT, which would otherwise let them join the first one's listener and take half its
connections."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, free_port
from tests.netclient import Client

pytestmark = pytest.mark.integration


def serve(tmp_path, port: int, http_port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs", "serve", "--data-dir", str(tmp_path / "second"),
         "--host", "127.0.0.1", "--port", str(port), "--http-port", str(http_port),
         "--workers", "2"],
        capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize("taken", ["DICOM", "HTTP"])
def test_a_second_server_on_a_port_in_use_refuses_to_start(archive_factory, tmp_path,
                                                            taken: str) -> None:
    http_port = free_port()
    first = archive_factory("--workers", "2", "--http-port", str(http_port))
    port = first.port if taken == "DICOM" else free_port()
    proc = serve(tmp_path, port, http_port if taken == "HTTP" else free_port())
    assert proc.returncode == 2, proc.stderr
    wanted = f"{taken} port {port if taken == 'DICOM' else http_port} on 127.0.0.1 is in use"
    assert wanted in proc.stderr, proc.stderr
    assert "listening on" not in proc.stderr  # no worker was started
    assert first.alive()
    for _ in range(8):  # and answers every association
        with Client(first.port) as client:
            client.associate()
            assert client.echo() == 0x0000
            client.release()
