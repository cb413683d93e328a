"""What the processes of a real `pacs serve` hold: forked workers without multiprocessing's
resource tracker, a lean supervisor, heavy optional modules loaded only on first use; and the
supervision that forking must keep (restart with shared counts reset, exit on the supervisor's
death, orderly stop on SIGINT).

Loaded extension modules are read from ``/proc/PID/maps`` (a shared library is mapped once
imported), which needs nothing from inside the processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import ArchiveProcess, free_port, require_tool
from tests.integration.test_fhir import order
from tests.integration.test_web import wait_http

pytestmark = pytest.mark.integration

# Extension modules of packages a worker needs only for some requests.
PYDANTIC = "_pydantic_core"  # FHIR order validation (fhir.resources)
ARGON2 = "_argon2_cffi_bindings"  # password hashes, only with http_auth
ARROW = "libarrow.so"  # pyarrow: only column scans (infix wildcards, listings) use it


def maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def workers(archive: ArchiveProcess) -> list[int]:
    """Live (not zombie) children of the supervisor."""
    assert archive.proc is not None
    found = []
    for pid in archive.pids():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if int(fields[1]) == archive.proc.pid:
            found.append(pid)
    return sorted(found)


def wait_until(condition, what: str, archive: ArchiveProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}:\n{archive.log()[-3000:]}")
        time.sleep(0.05)


def listening(archive: ArchiveProcess) -> int:
    return len(re.findall(r"DICOM SCP .* listening on", archive.log()))


def echo(archive: ArchiveProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("echoscu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port)], capture_output=True, text=True, timeout=60)


def test_forked_workers_load_optional_modules_on_first_use(archive_factory) -> None:
    http_port = free_port()
    archive = archive_factory("--workers", "2", "--http-port", str(http_port),
                              env={"PACS_HL7_PORT": "0"})
    base = wait_http(archive, http_port)
    assert archive.proc is not None
    supervisor = archive.proc.pid
    pids = workers(archive)
    assert len(pids) == 2
    # Forked, not spawned: no resource tracker beside the supervisor and its two workers.
    assert sorted(archive.pids()) == sorted([supervisor, *pids])
    for pid in archive.pids():
        assert b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    for pid in pids:
        loaded = maps(pid)
        assert "lmdb" in loaded  # what every worker needs is visible here
        assert PYDANTIC not in loaded and ARGON2 not in loaded and ARROW not in loaded
    if "_asyncio" in maps(pids[0]):  # stdlib extensions are shared libraries in this build
        assert "_asyncio" not in maps(supervisor) and "_ssl" not in maps(supervisor)
    # The first FHIR order loads the validator in the worker that took it.
    response = httpx.post(f"{base}/fhir/ServiceRequest", json=order("ORD-RSS"))
    assert response.status_code == 201, response.text
    assert any(PYDANTIC in maps(pid) for pid in pids)
    # A keyed C-FIND and a C-MOVE-style lookup need no Arrow; an infix wildcard scans columns.
    findscu = require_tool("findscu")
    for name in ("DOE^J", "*OE*"):
        done = subprocess.run([findscu, "-S", "-aec", "PACS", "-k", "QueryRetrieveLevel=STUDY",
                               "-k", f"PatientName={name}", "127.0.0.1", str(archive.port)],
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, TCP_NODELAY="1"))
        assert done.returncode == 0, done.stderr
        if name == "DOE^J":
            assert not any(ARROW in maps(pid) for pid in pids)
    assert any(ARROW in maps(pid) for pid in pids)
    assert archive.stop(signal.SIGINT) == 0  # Ctrl-C: an orderly stop of every worker
    assert "all workers stopped" in archive.log()
    assert archive.pids() == []


def test_killed_workers_restart_with_their_association_counts_reset(archive_factory) -> None:
    archive = archive_factory("--workers", "2", "--max-associations", "1",
                              env={"PACS_HL7_PORT": "0"})
    before = workers(archive)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", archive.port, ae_title="PACS")
    try:
        assert held.is_established
        refused = echo(archive)  # the archive-wide cap counts across both workers
        assert refused.returncode != 0
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: listening(archive) >= 4, "the workers were not restarted", archive)
    finally:
        held.abort()
        ae.shutdown()
    after = workers(archive)
    assert len(after) == 2 and not set(after) & set(before)
    for worker_id in (0, 1):
        assert f"worker {worker_id} exited with -9; restarting it" in archive.log()
    # The dead workers' association was forgotten with them: the cap admits one again.
    result = echo(archive)
    assert result.returncode == 0, result.stderr
    assert archive.stop() == 0


def test_workers_leave_when_the_supervisor_is_killed(archive_factory) -> None:
    archive = archive_factory("--workers", "2", env={"PACS_HL7_PORT": "0"})
    assert archive.proc is not None
    pids = workers(archive)
    assert len(pids) == 2
    archive.proc.send_signal(signal.SIGKILL)  # no chance to forward anything
    archive.proc.wait()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    wait_until(lambda: not any(alive(pid) for pid in pids),
               "workers outlived their supervisor", archive)
    assert archive.log().count("index closed; bye") == 2  # each stopped in order, not killed
