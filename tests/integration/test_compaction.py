"""Compaction with a real archive: replaced instances leave dead records behind; the server
(automatic threshold) and `pacs compact` reclaim them without losing a live instance."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.conftest import REPO, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import read_blob, same_dataset, stored_instance

pytestmark = pytest.mark.integration


def send(port: int, files: list[Path]) -> None:
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def segment_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "blobs").glob("*.seg"))


def check_all(data_dir: Path, files: list[Path]) -> None:
    for path in files:
        original = pydicom.dcmread(path)
        found = stored_instance(data_dir, original.SOPInstanceUID)
        assert found is not None, path.name
        assert same_dataset(read_blob(found[1]), original), path.name


def pacs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


# `pacs compact` in a process that SIGKILLs itself when compaction reaches the named step
# (pacs.store.compaction's crash_hook): no cleanup, no unwinding, as a kill -9 from outside.
KILLED_AT = """
import os, signal, sys
from pacs.store import compaction
step = sys.argv[1]
compaction.crash_hook = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == step else None
from pacs.cli import main
sys.exit(main(sys.argv[2:]))
"""


def with_dead_records(archive_factory, tmp_path: Path):
    """A stopped archive of 40 instances, every other one replaced (its old copy dead), in
    64 KiB segments; (the archive, the files of its live instances)."""
    env = {"PACS_SEGMENT_SIZE": "65536", "PACS_COMPACT_THRESHOLD": "0"}
    archive = archive_factory("--on-duplicate", "replace", "--workers", "1", env=env)
    first = [write(make_ct(instance_number=i), tmp_path / f"a{i}.dcm") for i in range(40)]
    send(archive.port, first)
    # Re-send every other instance with new content: the old copies become dead records.
    resent = [write(make_ct(sop_uid=pydicom.dcmread(f).SOPInstanceUID, patient_name="New^Name",
                            instance_number=i), tmp_path / f"b{i}.dcm")
              for i, f in enumerate(first) if i % 2 == 0]
    send(archive.port, resent)
    assert archive.stop() == 0
    return archive, resent + [f for i, f in enumerate(first) if i % 2 == 1]


def test_pacs_compact_reclaims_dead_records_and_keeps_live_ones(archive_factory, tmp_path):
    archive, expected = with_dead_records(archive_factory, tmp_path)
    before = segment_bytes(archive.data_dir)
    proc = pacs("compact", "--min-dead-fraction", "0.3", "--data-dir", str(archive.data_dir))
    assert proc.returncode == 0, proc.stderr
    assert "moved" in proc.stdout
    assert segment_bytes(archive.data_dir) < before
    check_all(archive.data_dir, expected)
    verify = pacs("verify", "--data-dir", str(archive.data_dir))
    assert verify.returncode == 0, verify.stdout
    archive.start()  # the archive opens and serves on the compacted segments
    more = [write(make_ct(), tmp_path / "c.dcm")]
    send(archive.port, more)
    check_all(archive.data_dir, expected + more)


def test_server_compacts_automatically(archive_factory, tmp_path: Path) -> None:
    env = {"PACS_SEGMENT_SIZE": "65536", "PACS_COMPACT_THRESHOLD": "0.3",
           "PACS_COMPACT_CHECK_INTERVAL": "0.3"}
    archive = archive_factory("--on-duplicate", "replace", "--workers", "1", env=env)
    first = [write(make_ct(instance_number=i), tmp_path / f"a{i}.dcm") for i in range(40)]
    send(archive.port, first)
    resent = [write(make_ct(sop_uid=pydicom.dcmread(f).SOPInstanceUID, patient_name="New^Name",
                            instance_number=i), tmp_path / f"b{i}.dcm")
              for i, f in enumerate(first)]
    send(archive.port, resent)
    deadline = time.monotonic() + 20
    while "compaction moved" not in archive.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "compaction moved" in archive.log()
    check_all(archive.data_dir, resent)
    assert archive.stop() == 0
    assert pacs("verify", "--data-dir", str(archive.data_dir)).returncode == 0


@pytest.mark.parametrize("step", ["copied", "sealed", "renamed", "relocated", "unlinked"])
def test_compaction_killed_at_each_step_loses_nothing(archive_factory, tmp_path, step: str):
    archive, expected = with_dead_records(archive_factory, tmp_path)
    args = ["compact", "--min-dead-fraction", "0.3", "--data-dir", str(archive.data_dir)]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, step, *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # it reached the step
    check_all(archive.data_dir, expected)
    verify = pacs("verify", "--data-dir", str(archive.data_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # A later compaction finishes the work (its lock died with the process) ...
    before = segment_bytes(archive.data_dir)
    proc = pacs(*args)
    assert proc.returncode == 0, proc.stderr
    check_all(archive.data_dir, expected)
    assert not list((archive.data_dir / "blobs").glob("*.tmp"))
    if step in ("copied", "sealed"):  # nothing had replaced the old segments yet
        assert segment_bytes(archive.data_dir) < before
    # ... and the archive serves on what it left, storing more.
    archive.start()
    more = [write(make_ct(), tmp_path / "c.dcm")]
    send(archive.port, more)
    check_all(archive.data_dir, expected + more)
    assert archive.stop() == 0
    verify = pacs("verify", "--data-dir", str(archive.data_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
