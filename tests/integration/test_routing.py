"""Routing rules forward to a real dcmtk storescp, through a durable queue: a forward queued
while the destination is down survives a restart of the archive and goes out later."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.conftest import REPO, free_port, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import same_dataset
from tests.integration.peers import StoreSCP

pytestmark = pytest.mark.integration


def config(tmp_path: Path, port: int) -> str:
    path = tmp_path / "pacs.toml"
    path.write_text(f'[remote.STORESCP]\nhost = "127.0.0.1"\nport = {port}\n'
                    '[[route]]\ndestination = "STORESCP"\nmodality = "CT"\n'
                    'calling_aet = "MODALITY"\n')
    return str(path)


def send(port: int, files: list[Path], calling: str = "MODALITY") -> None:
    proc = subprocess.run([require_tool("storescu"), "-aet", calling, "-aec", "PACS",
                           "127.0.0.1", str(port), *map(str, files)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_rule_forwards_matching_instances_only(archive_factory, scp_factory, tmp_path):
    scp = scp_factory()
    archive = archive_factory("--config", config(tmp_path, scp.port))
    ct = [write(make_ct(instance_number=i), tmp_path / f"ct{i}.dcm") for i in range(3)]
    mr = write(make_ct(modality="MR"), tmp_path / "mr.dcm")
    send(archive.port, [*ct, mr])
    other = write(make_ct(), tmp_path / "other.dcm")
    send(archive.port, [other], calling="ELSEWHERE")
    assert wait_for(lambda: len(scp.received()) >= 3)
    time.sleep(1.0)  # nothing else may follow
    got = scp.received()
    assert set(got) == {pydicom.dcmread(p).SOPInstanceUID for p in ct}
    for path in ct:
        original = pydicom.dcmread(path)
        assert same_dataset(got[original.SOPInstanceUID], original)


def test_forward_survives_restart_while_destination_down(archive_factory, tmp_path: Path):
    port = free_port()
    env = {"PACS_FORWARD_RETRY_BASE": "0.2"}
    archive = archive_factory("--config", config(tmp_path, port), env=env)
    files = [write(make_ct(instance_number=i), tmp_path / f"{i}.dcm") for i in range(2)]
    send(archive.port, files)
    assert wait_for(lambda: "forward of" in archive.log() and "failed" in archive.log())
    assert archive.stop() == 0
    jobs = subprocess.run([sys.executable, "-m", "pacs", "jobs", "--data-dir",
                           str(archive.data_dir)], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert "2 forwards queued" in jobs.stdout, jobs.stdout
    assert "attempts" in jobs.stdout
    archive.start()
    scp = StoreSCP(tmp_path / "late", port=port)
    try:
        assert wait_for(lambda: len(scp.received()) == 2, 30)
    finally:
        scp.kill()
    assert wait_for(lambda: queue_empty(archive))


def queue_empty(archive) -> bool:
    jobs = subprocess.run([sys.executable, "-m", "pacs", "jobs", "--data-dir",
                           str(archive.data_dir)], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    return "0 forwards queued" in jobs.stdout


def test_forward_acknowledged_with_a_warning_is_done(archive_factory, pynetdicom_scp,
                                                     tmp_path: Path) -> None:
    """A destination answering 0x0107 (a warning of PS3.7 Annex C) stored the instance: the
    forward leaves the queue and is not sent again."""
    scp = pynetdicom_scp(status=0x0107)
    env = {"PACS_FORWARD_RETRY_BASE": "0.2"}  # a retry, if any, within the wait below
    archive = archive_factory("--config", config(tmp_path, scp.port), env=env)
    ct = write(make_ct(), tmp_path / "ct.dcm")
    send(archive.port, [ct])
    assert wait_for(lambda: len(scp.stored) >= 1)
    time.sleep(2.0)  # ten retry periods: a forward kept in the queue would go again
    assert scp.stored == [pydicom.dcmread(ct).SOPInstanceUID]
    assert queue_empty(archive)


@pytest.mark.parametrize(("stop", "resent_at_most"), [
    ("SIGTERM", 1),  # the one in flight: stored, its acknowledgement never came
    ("SIGKILL", 10),  # ... and those of the last second (about 5), not yet settled
])
def test_forwards_acknowledged_before_a_stop_are_not_sent_again(
        archive_factory, pynetdicom_scp, tmp_path: Path, stop: str,
        resent_at_most: int) -> None:
    """The archive stops in the middle of a forwarding round of 30 instances: after the
    restart the rest goes, not what the destination acknowledged before the stop (a round
    settled only at its end, so everything went again)."""
    scp = pynetdicom_scp(delay=0.25)
    archive = archive_factory("--config", config(tmp_path, scp.port))
    files = [write(make_ct(instance_number=i), tmp_path / f"{i}.dcm") for i in range(30)]
    send(archive.port, files)
    assert wait_for(lambda: len(scp.stored) >= 20)
    if stop == "SIGTERM":
        assert archive.stop() == 0
    else:
        archive.kill_all()
    before = len(scp.stored)
    assert before < 30
    archive.start()
    assert wait_for(lambda: len(set(scp.stored)) == 30, 60)
    assert wait_for(lambda: queue_empty(archive))
    assert set(scp.stored) == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    resent = len(scp.stored) - 30
    assert resent <= resent_at_most, f"{resent} of the {before} stored before the stop again"
