"""A requester whose association ends (killed, reset) while its C-MOVE runs: the archive stops
the sub-operations it would send for nobody, as for a C-CANCEL."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from tests.conftest import require_tool
from tests.integration.peers import scp_factory  # noqa: F401  (fixture)
from tests.integration.test_move import config, stock

pytestmark = pytest.mark.integration


def test_c_move_stops_when_its_requester_is_gone(archive_factory, scp_factory,  # noqa: F811
                                                 tmp_path: Path) -> None:
    destination = scp_factory("--sleep-during", "1")  # a slow destination: a store a second
    archive = archive_factory("--config", config(tmp_path, STORESCP=destination.port))
    files = stock(archive, tmp_path, 20)
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    mover = subprocess.Popen(
        [require_tool("movescu"), "-S", "-aec", "PACS", "-aem", "STORESCP",
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
         "127.0.0.1", str(archive.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, TCP_NODELAY="1"))
    deadline = time.monotonic() + 30
    while not destination.received_count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert destination.received_count(), "the move never started"
    mover.kill()  # its association ends with a reset, mid-move
    mover.wait()
    at_kill = destination.received_count()
    text = archive.wait_log(r"C-MOVE of 20 instances to STORESCP: .* \(cancelled\)")
    time.sleep(3)  # three more stores' time at the destination's pace
    # At most the sub-operation in flight at the kill ends; none starts after it.
    assert destination.received_count() <= at_kill + 1
    assert "Traceback" not in text
