"""[[retention]] rules against a real ``pacs serve``: worker 0 deletes old studies every
retention_check_interval (stores land in either of two workers), keeps recent and undated ones,
audits each deletion; ``pacs retention --dry-run`` lists candidates and deletes nothing."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs.audit import read_events
from tests.conftest import REPO, ArchiveProcess, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.test_find import findscu

pytestmark = pytest.mark.integration

RULES = ('[[retention]]\nolder_than_days = 3650\n'
         '[[retention]]\nolder_than_days = 365\nmodality = "MR"\n')


def ago(days: int) -> str:
    return (date.today() - timedelta(days=days)).strftime("%Y%m%d")


# name -> (StudyDate, Modality); the first two go, the others stay
STUDIES = {
    "ancient_ct": (ago(4000), "CT"),
    "old_mr": (ago(800), "MR"),
    "old_ct": (ago(800), "CT"),  # only MR studies go after a year
    "recent_mr": (ago(10), "MR"),
    "undated_mr": ("", "MR"),
}
DOOMED = {"ancient_ct", "old_mr"}


def store_studies(archive: ArchiveProcess, tmp: Path) -> dict[str, str]:
    """Two instances per study, sent with dcmtk's storescu; name -> StudyInstanceUID."""
    uids: dict[str, str] = {}
    files = []
    for n, (name, (study_date, modality)) in enumerate(STUDIES.items()):
        uids[name] = generate_uid()
        series = generate_uid()
        for i in range(2):
            ds = make_ct(patient_id=f"RET{n}", study_uid=uids[name], series_uid=series,
                         modality=modality, instance_number=i + 1, rows=8, columns=8)
            ds.StudyDate = study_date
            files.append(str(write(ds, tmp / f"{uuid.uuid4().hex}.dcm")))
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), *files], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return uids


def indexed_studies(archive: ArchiveProcess) -> set[str]:
    rows, _ = findscu(archive.port, "-S", "QueryRetrieveLevel=STUDY", "PatientID=RET*",
                      "StudyInstanceUID")
    return {r["StudyInstanceUID"] for r in rows}


def retention_events(data_dir: Path) -> list[dict[str, str]]:
    return [e for e in read_events(data_dir / "audit") if e["action"] == "retention"]


def test_serve_deletes_old_studies_periodically(archive_factory, tmp_path: Path) -> None:
    config = tmp_path / "pacs.toml"
    config.write_text("retention_check_interval = 1\n" + RULES)
    archive = archive_factory("--config", str(config), "--workers", "2")
    uids = store_studies(archive, tmp_path)
    offset = len(archive.log())
    # Two runs finished after the stores: the second one started after them.
    deadline = time.monotonic() + 60
    while len(re.findall(r"retention run finished", archive.log()[offset:])) < 2:
        assert time.monotonic() < deadline, archive.log()
        assert archive.alive(), archive.log()
        time.sleep(0.1)
    assert indexed_studies(archive) == {uids[n] for n in STUDIES if n not in DOOMED}
    events = retention_events(archive.data_dir)
    assert sorted(e["study_uid"] for e in events) == sorted(uids[n] for n in DOOMED)
    by_study = {e["study_uid"]: e for e in events}
    assert by_study[uids["ancient_ct"]]["rule"] == "older_than_days=3650"
    assert by_study[uids["old_mr"]]["rule"] == "older_than_days=365 modality=MR"
    for event in events:
        assert event["user"] == "retention" and event["outcome"] == "success"
        assert event["patient_id"].startswith("RET") and event["count"] == 2
    assert "Traceback" not in archive.log()


def pacs_retention(config: Path, data_dir: Path, *flags: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pacs", "retention", "--config", str(config),
                           "--data-dir", str(data_dir), *flags],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_command_dry_run_lists_then_run_deletes(archive_factory, tmp_path: Path) -> None:
    archive = archive_factory()  # no rules: the server itself deletes nothing
    uids = store_studies(archive, tmp_path)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    out = pacs_retention(rules, archive.data_dir, "--dry-run")
    listed = set(re.findall(r"would delete study (\S+)", out))
    assert listed == {uids[n] for n in DOOMED}, out
    assert f"StudyDate {ago(4000)}" in out and "2 studies would be deleted" in out
    assert indexed_studies(archive) == set(uids.values())
    assert retention_events(archive.data_dir) == []
    # The real run, beside the running server: it sees the deletions at once.
    out = pacs_retention(rules, archive.data_dir)
    assert set(re.findall(r"deleted study (\S+)", out)) == {uids[n] for n in DOOMED}, out
    assert indexed_studies(archive) == {uids[n] for n in STUDIES if n not in DOOMED}
    assert len(retention_events(archive.data_dir)) == 2
    assert "deleted 0 studies" in pacs_retention(rules, archive.data_dir)  # nothing left
