"""Start, stop and rebuild: SIGTERM finishes in-flight stores and exits 0; the index is
rebuildable from the blobs (`pacs reindex`) and checkable (`pacs verify`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.conftest import REPO, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import flip_last_byte, statistics, stored_instance

pytestmark = pytest.mark.integration


def pacs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def store_files(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def test_sigterm_during_ingest_keeps_every_acknowledged_instance(archive, tmp_path: Path):
    study = make_ct().StudyInstanceUID
    files = [write(make_ct(study_uid=study, instance_number=i, rows=128, columns=128),
                   tmp_path / f"{i:04d}.dcm") for i in range(300)]
    sender = subprocess.Popen(
        [require_tool("storescu"), "-v", "-aec", "PACS", "127.0.0.1", str(archive.port),
         *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Stop the archive once some instances went in.
    assert sender.stdout is not None
    acknowledged = 0
    for line in sender.stdout:
        if "Received Store Response (Success)" in line:
            acknowledged += 1
            if acknowledged == 20:
                break
    assert archive.stop(signal.SIGTERM) == 0
    output = sender.stdout.read()
    sender.stdout.close()
    sender.wait(60)
    acknowledged += output.count("Received Store Response (Success)")
    assert "index closed" in archive.log()
    assert 20 <= acknowledged < 300
    # Every acknowledged instance is in the index after the restart.
    archive.start()
    assert statistics(archive.data_dir)["instances"] >= acknowledged


def test_reindex_rebuilds_and_verify_checks(archive, tmp_path: Path) -> None:
    files = [write(make_ct(instance_number=i, patient_id=f"P{i % 2}"), tmp_path / f"{i}.dcm")
             for i in range(6)]
    assert store_files(archive.port, files).returncode == 0
    before = statistics(archive.data_dir)
    assert before["instances"] == 6 and before["patients"] == 2
    assert archive.stop() == 0

    data = str(archive.data_dir)
    assert pacs("verify", "--data-dir", data).returncode == 0
    shutil.rmtree(archive.data_dir / "index")
    proc = pacs("reindex", "--data-dir", data)
    assert proc.returncode == 0, proc.stderr
    assert "indexed 6 instances" in proc.stdout
    assert statistics(archive.data_dir) == before
    uid = pydicom.dcmread(files[0]).SOPInstanceUID
    record, _ = stored_instance(archive.data_dir, uid)
    assert record.attributes["PatientID"] == "P0"

    # Flip one byte of one blob: verify must notice and exit 1.
    flip_last_byte(archive.data_dir, record.location)
    proc = pacs("verify", "--data-dir", data)
    assert proc.returncode == 1
    assert "digest_mismatch" in proc.stdout


def test_bad_port_in_config_file_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "pacs.toml"
    config.write_text('port = "eleven"\n')
    proc = pacs("serve", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("pacs: error: port")


def test_export_writes_ordinary_part10_files(archive, tmp_path: Path) -> None:
    one, other = make_ct().StudyInstanceUID, make_ct().StudyInstanceUID
    files = [write(make_ct(study_uid=one if i < 3 else other, instance_number=i),
                   tmp_path / f"{i}.dcm") for i in range(5)]
    assert store_files(archive.port, files).returncode == 0
    out = tmp_path / "export"
    proc = pacs("export", str(out), "--study", one, "--data-dir", str(archive.data_dir))
    assert proc.returncode == 0, proc.stderr
    exported = sorted(out.rglob("*.dcm"))
    assert len(exported) == 3
    for path in exported:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == one
        assert path.parent.name == ds.SeriesInstanceUID and path.stem == ds.SOPInstanceUID
        _, blob = stored_instance(archive.data_dir, ds.SOPInstanceUID)
        assert path.read_bytes() == blob
