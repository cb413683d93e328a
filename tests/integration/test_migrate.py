"""``pacs migrate`` from a real other PACS: Debian's Orthanc on loopback, its own config, as the
source; our ``pacs serve`` as the destination of its C-MOVE sub-operations."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from bench import orthanc as orthanc_mod
from tests.conftest import REPO, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import read_blob, same_dataset, statistics, stored_instance

pytestmark = pytest.mark.integration

# (StudyDate, instances): several years, two studies in one year and three in one month, so a
# --slice-limit of 1 splits years into months and a month into days.
STUDIES = [("20190315", 40), ("20210704", 30), ("20210705", 30), ("20210706", 30),
           ("20211120", 30), ("20240229", 40), ("19991231", 20), ("20260102", 30)]


def require_orthanc() -> None:
    if not orthanc_mod.available():
        pytest.fail("Orthanc is not installed: `make test` (system-deps) installs Debian's "
                    "`orthanc` package, or run apt-get install orthanc")


def generate(tmp_path: Path) -> dict[str, list[Path]]:
    folder = tmp_path / "src"
    folder.mkdir()
    by_study: dict[str, list[Path]] = {}
    for n, (date, count) in enumerate(STUDIES):
        first = make_ct(patient_id=f"MIG{n}")
        series = [make_ct().SeriesInstanceUID for _ in range(2)]
        files = []
        for i in range(count):
            ds = make_ct(patient_id=f"MIG{n}", study_uid=first.StudyInstanceUID,
                         series_uid=series[i % 2], instance_number=i, rows=32, columns=32)
            ds.StudyDate = date
            files.append(write(ds, folder / f"{n}-{i}.dcm"))
        by_study[first.StudyInstanceUID] = files
    return by_study


def stock_orthanc(orthanc: orthanc_mod.Orthanc, files: list[Path]) -> None:
    proc = subprocess.run([require_tool("storescu"), "-aet", orthanc_mod.CALLER,
                           "-aec", orthanc_mod.AET, "127.0.0.1", str(orthanc.dicom_port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:] + orthanc.log_tail()
    assert orthanc.count_instances() == len(files)


def migrate_args(archive, orthanc: orthanc_mod.Orthanc, report: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pacs", "migrate", "--from",
            f"{orthanc_mod.AET}@127.0.0.1:{orthanc.dicom_port}", "--data-dir",
            str(archive.data_dir), "--port", str(archive.port), "--report", str(report),
            *extra]


def run_migrate(archive, orthanc, report: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(migrate_args(archive, orthanc, report, *extra), capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def report_rows(report: Path) -> dict[str, tuple[int, int, str]]:
    rows = {}
    for line in report.read_text().splitlines():
        if line.startswith("#"):
            continue
        uid, _date, _pid, source, ours, status = line.split("\t", 5)
        rows[uid] = (int(source), int(ours), status)
    return rows


def moved_studies(stdout: str) -> int:
    match = re.search(r"moved (\d+) studies \((\d+) instances, ([\d,.]+) instances/s\)", stdout)
    assert match, stdout
    return int(match[1])


def test_migrate_from_orthanc_all_present_and_report(archive_factory, tmp_path: Path) -> None:
    require_orthanc()
    by_study = generate(tmp_path)
    files = [f for fs in by_study.values() for f in fs]
    archive = archive_factory()
    with orthanc_mod.Orthanc(tmp_path / "orthanc", destinations={archive.aet: archive.port}) as o:
        stock_orthanc(o, files)
        report = tmp_path / "report.txt"
        proc = run_migrate(archive, o, report, "--slice-limit", "1", "--since-year", "2000",
                           "--parallel", "3")
        assert proc.returncode == 0, proc.stdout + proc.stderr + o.log_tail()
        assert moved_studies(proc.stdout) == len(STUDIES)
        print(proc.stdout)
        stats = statistics(archive.data_dir)
        assert stats["instances"] == len(files)
        assert stats["studies"] == len(STUDIES)
        rows = report_rows(report)
        assert set(rows) == set(by_study)
        for uid, fs in by_study.items():
            assert rows[uid] == (len(fs), len(fs), "ok")
        assert re.search(rf"instances\s+{len(files)}\s+{len(files)}\s+0", proc.stdout)
        for path in files[::37]:  # identical content, element by element
            original = pydicom.dcmread(path)
            found = stored_instance(archive.data_dir, original.SOPInstanceUID)
            assert found is not None
            assert same_dataset(original, read_blob(found[1]))
        # A second run moves nothing, still exit 0.
        again = run_migrate(archive, o, tmp_path / "report2.txt")
        assert again.returncode == 0, again.stdout + again.stderr
        assert moved_studies(again.stdout) == 0
        state = archive.data_dir / "state"
        assert any(state.glob("migrate-ORTHANC-*.json"))


def test_migrate_report_lists_missing_studies(archive_factory, tmp_path: Path) -> None:
    """A source that cannot deliver (our AE unknown to it as a destination): exit 1, every
    study reported missing with its counts."""
    require_orthanc()
    by_study = generate(tmp_path)
    files = [f for fs in list(by_study.values())[:2] for f in fs]
    archive = archive_factory()
    # Orthanc knows our AE title as a caller on the wrong port: its C-MOVE cannot connect.
    dead = archive.port + 1 if archive.port < 65535 else archive.port - 1
    with orthanc_mod.Orthanc(tmp_path / "orthanc", destinations={archive.aet: dead}) as o:
        stock_orthanc(o, files)
        report = tmp_path / "report.txt"
        proc = run_migrate(archive, o, report)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        rows = report_rows(report)
        assert len(rows) == 2
        for uid in list(by_study)[:2]:
            source, ours, status = rows[uid]
            assert (source, ours) == (len(by_study[uid]), 0)
            assert status.startswith(f"MISSING {source}")
        assert proc.stdout.count("missing: study") == 2


def test_migrate_resumes_after_kill(archive_factory, tmp_path: Path) -> None:
    require_orthanc()
    by_study = generate(tmp_path)
    files = [f for fs in by_study.values() for f in fs]
    archive = archive_factory()
    with orthanc_mod.Orthanc(tmp_path / "orthanc", destinations={archive.aet: archive.port}) as o:
        stock_orthanc(o, files)
        first_study = min(len(fs) for fs in by_study.values())
        proc = subprocess.Popen(
            migrate_args(archive, o, tmp_path / "killed.txt", "--parallel", "1"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (archive.data_dir / "index").exists() and \
                    statistics(archive.data_dir)["instances"] >= first_study:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the migration ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        landed = statistics(archive.data_dir)["instances"]
        assert 0 < landed < len(files)
        report = tmp_path / "report.txt"
        again = run_migrate(archive, o, report)
        assert again.returncode == 0, again.stdout + again.stderr + o.log_tail()
        assert 0 < moved_studies(again.stdout) < len(STUDIES)
        assert "skipped 0 " not in again.stdout
        assert statistics(archive.data_dir)["instances"] == len(files)
        assert all(status == "ok" for _s, _o, status in report_rows(report).values())


def test_migrate_get_needs_no_move_destination(archive_factory, tmp_path: Path) -> None:
    """--get: Orthanc knows our AE title only as a caller (its port is wrong, so a C-MOVE to
    us could not connect); the C-GET sub-operations are ingested by the migrate process."""
    require_orthanc()
    by_study = generate(tmp_path)
    files = [f for fs in by_study.values() for f in fs]
    archive = archive_factory()
    dead = archive.port + 1 if archive.port < 65535 else archive.port - 1
    with orthanc_mod.Orthanc(tmp_path / "orthanc", destinations={archive.aet: dead}) as o:
        stock_orthanc(o, files)
        report = tmp_path / "report.txt"
        proc = run_migrate(archive, o, report, "--get", "--parallel", "3")
        assert proc.returncode == 0, proc.stdout + proc.stderr + o.log_tail()
        assert moved_studies(proc.stdout) == len(STUDIES)
        assert statistics(archive.data_dir)["instances"] == len(files)
        assert all(status == "ok" for _s, _o, status in report_rows(report).values())
        for path in files[::29]:  # identical content, element by element
            original = pydicom.dcmread(path)
            found = stored_instance(archive.data_dir, original.SOPInstanceUID)
            assert found is not None
            assert same_dataset(original, read_blob(found[1]))
        # The running archive serves what the migrate process ingested (shared index).
        proc = subprocess.run(
            [require_tool("findscu"), "-S", "-aec", archive.aet, "-k",
             "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "127.0.0.1",
             str(archive.port)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0
        assert (proc.stdout + proc.stderr).count("(0020,000d)") == len(STUDIES)
        assert pacs_verify(archive.data_dir) == 0
        again = run_migrate(archive, o, tmp_path / "report2.txt", "--get")
        assert again.returncode == 0, again.stdout + again.stderr
        assert moved_studies(again.stdout) == 0


def pacs_verify(data_dir: Path) -> int:
    return subprocess.run([sys.executable, "-m", "pacs", "verify", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=120, cwd=REPO).returncode


def test_a_study_complete_by_count_is_checked_instance_by_instance(
        archive_factory, tmp_path: Path) -> None:
    """The source holds A, B, C of a study; this archive A, B and a D sent here directly (after
    go-live): the counts match, yet C must be migrated."""
    require_orthanc()
    first = make_ct(patient_id="MIGX")
    instances = [make_ct(patient_id="MIGX", study_uid=first.StudyInstanceUID,
                         series_uid=first.SeriesInstanceUID, instance_number=i, rows=32,
                         columns=32) for i in range(4)]
    for ds in instances:
        ds.StudyDate = "20230101"
    paths = [write(ds, tmp_path / f"x{i}.dcm") for i, ds in enumerate(instances)]
    source_files, here_files = paths[:3], [paths[0], paths[1], paths[3]]
    archive = archive_factory()
    store_here = subprocess.run([require_tool("storescu"), "-aec", archive.aet, "127.0.0.1",
                                 str(archive.port), *map(str, here_files)],
                                capture_output=True, text=True, timeout=60)
    assert store_here.returncode == 0, store_here.stderr
    absent = instances[2].SOPInstanceUID
    assert stored_instance(archive.data_dir, absent) is None
    with orthanc_mod.Orthanc(tmp_path / "orthanc", destinations={archive.aet: archive.port}) as o:
        stock_orthanc(o, source_files)
        report = tmp_path / "report.txt"
        proc = run_migrate(archive, o, report)
        assert proc.returncode == 0, proc.stdout + proc.stderr + o.log_tail()
        assert moved_studies(proc.stdout) == 1
        assert stored_instance(archive.data_dir, absent) is not None
        assert report_rows(report)[first.StudyInstanceUID] == (3, 4, "ok")
        # Verified and remembered: the next run moves nothing.
        again = run_migrate(archive, o, tmp_path / "report2.txt")
        assert again.returncode == 0 and moved_studies(again.stdout) == 0, again.stdout


def test_a_move_that_falls_short_is_not_hidden_by_instances_of_our_own(
        archive_factory, tmp_path: Path) -> None:
    """The source holds 6 instances of a study, one of them over this archive's
    ``max_dataset_size`` (refused); this archive holds 5 others of it, sent here directly.
    After the move 10 are here, more than the source's 6: the study is still incomplete."""
    require_orthanc()
    first = make_ct(patient_id="MIGY")
    sizes = [256] + [32] * 10  # the 256x256 one is refused here
    instances = [make_ct(patient_id="MIGY", study_uid=first.StudyInstanceUID,
                         series_uid=first.SeriesInstanceUID, instance_number=i, rows=r,
                         columns=r) for i, r in enumerate(sizes)]
    for ds in instances:
        ds.StudyDate = "20230101"
    paths = [write(ds, tmp_path / f"y{i}.dcm") for i, ds in enumerate(instances)]
    config = tmp_path / "pacs.toml"
    config.write_text("max_dataset_size = 65536\n")
    archive = archive_factory("--config", str(config))
    store_here = subprocess.run([require_tool("storescu"), "-aec", archive.aet, "127.0.0.1",
                                 str(archive.port), *map(str, paths[6:])],
                                capture_output=True, text=True, timeout=60)
    assert store_here.returncode == 0, store_here.stderr
    with orthanc_mod.Orthanc(tmp_path / "orthanc", destinations={archive.aet: archive.port}) as o:
        stock_orthanc(o, paths[:6])
        report = tmp_path / "report.txt"
        proc = run_migrate(archive, o, report)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert stored_instance(archive.data_dir, instances[0].SOPInstanceUID) is None
        assert all(stored_instance(archive.data_dir, ds.SOPInstanceUID) is not None
                   for ds in instances[1:6])
        source, ours, status = report_rows(report)[first.StudyInstanceUID]
        assert (source, ours) == (6, 10) and status.startswith("MISSING 1"), status
        assert re.search(r"instances\s+6\s+5\s+1", proc.stdout), proc.stdout
        assert "moved 1 studies (5 instances" in proc.stdout, proc.stdout
