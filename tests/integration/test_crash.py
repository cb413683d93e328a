"""Crash safety with real clients: kill -9 every archive process while storescu sends; after a
restart, every instance that got a success response is present, readable and identical, and
nothing half-written is indexed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.conftest import REPO, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import read_blob, same_dataset, stored_instance

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def send_until_killed(archive, files: list[Path], kill_after: int) -> list[Path]:
    """Send ``files`` with storescu; SIGKILL the archive after ``kill_after`` successes.

    Returns the files whose C-STORE got a success response.
    """
    sender = subprocess.Popen(
        [require_tool("storescu"), "-v", "-aec", "PACS", "127.0.0.1", str(archive.port),
         *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert sender.stdout is not None
    acknowledged: list[Path] = []
    current: Path | None = None
    killed = False
    for line in sender.stdout:
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line:
            assert current is not None
            acknowledged.append(current)
            if len(acknowledged) == kill_after and not killed:
                archive.kill_all()
                killed = True
    sender.stdout.close()
    sender.wait(60)
    assert killed, "the archive was not killed: too few instances acknowledged"
    return acknowledged


def assert_acknowledged_intact_after_restart(archive, acknowledged: list[Path]) -> None:
    """Restarted, the archive holds every acknowledged file identical, and every indexed blob
    is whole (``pacs verify``: present, right size, right digest)."""
    archive.start()
    for path in acknowledged:
        original = pydicom.dcmread(path)
        found = stored_instance(archive.data_dir, original.SOPInstanceUID)
        assert found is not None, f"acknowledged {path.name} lost"
        assert same_dataset(read_blob(found[1]), original)
    archive.stop()
    proc = subprocess.run([sys.executable, "-m", "pacs", "verify", "--data-dir",
                           str(archive.data_dir)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert "missing" not in proc.stdout and "mismatch" not in proc.stdout, proc.stdout
    assert "unreadable" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("kill_after", [1, 120, 600])
def test_kill_9_loses_no_acknowledged_instance(archive, tmp_path: Path, kill_after: int):
    study = make_ct().StudyInstanceUID
    files = [write(make_ct(study_uid=study, instance_number=i), tmp_path / f"{i:04d}.dcm")
             for i in range(1000)]
    acknowledged = send_until_killed(archive, files, kill_after)
    assert len(acknowledged) < len(files)
    assert_acknowledged_intact_after_restart(archive, acknowledged)


def test_kill_9_during_large_direct_writes_loses_nothing(archive, tmp_path: Path) -> None:
    """512x512 CT instances (513 KiB: their records go around the page cache with O_DIRECT)
    mixed with small ones: acknowledged ones survive a kill -9, whole and identical."""
    study = make_ct().StudyInstanceUID
    files = [write(make_ct(study_uid=study, instance_number=i,
                           rows=512 if i % 3 else 64, columns=512 if i % 3 else 64),
                   tmp_path / f"{i:04d}.dcm") for i in range(150)]
    acknowledged = send_until_killed(archive, files, 70)
    assert len(acknowledged) < len(files)
    assert_acknowledged_intact_after_restart(archive, acknowledged)


def test_restart_after_kill_replays_lost_index_entries(archive, tmp_path: Path) -> None:
    """Index commits skip their fsync (the segment log is durable): if a power cut undid the
    last ones, the restart must index them again from the log."""
    files = [write(make_ct(instance_number=i), tmp_path / f"{i}.dcm") for i in range(20)]
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), *map(str, files)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    archive.kill_all()
    # Stand-in for the power cut: drop the newest index entries (the blobs stay).
    from pacs.index.catalog import Catalog

    lost = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files[-5:]]
    catalog = Catalog(archive.data_dir / "index")
    for uid in lost:
        assert catalog.delete_instance(uid) is not None
    catalog.close()
    archive.start()
    assert "replayed" in archive.log()
    for path in files:
        original = pydicom.dcmread(path)
        found = stored_instance(archive.data_dir, original.SOPInstanceUID)
        assert found is not None, f"{path.name} not back in the index"
        assert same_dataset(read_blob(found[1]), original)
