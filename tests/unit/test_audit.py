"""The audit trail appends one JSON line per event, from several writers, without interleaving."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from pacs.audit import AuditTrail, read_events


def _append_many(directory: str, tag: str) -> None:
    trail = AuditTrail(Path(directory))
    for n in range(500):
        trail.record("store", user=tag, source="127.0.0.1:1", count=n, detail="x" * 300)
    trail.close()


def test_events_are_appended_as_json_lines(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path)
    trail.record("login", "failure", user="alice", source="127.0.0.1:5000")
    trail.record("delete", user="admin", patient_id="P1", study_uid="1.2.3", level="study")
    trail.close()
    events = read_events(tmp_path)
    assert [(e["action"], e["outcome"], e["user"]) for e in events] == [
        ("login", "failure", "alice"), ("delete", "success", "admin")]
    assert events[1]["study_uid"] == "1.2.3" and events[1]["level"] == "study"
    assert events[0]["time"].endswith("Z") and "patient_id" not in events[0]


def test_disabled_trail_writes_nothing(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit", enabled=False)
    trail.record("store", user="X")
    assert not (tmp_path / "audit").exists()


def test_concurrent_processes_never_interleave_lines(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), f"P{i}")) for i in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    events = read_events(tmp_path)  # a torn line would fail json.loads
    assert len(events) == 1500
    for tag in ("P0", "P1", "P2"):
        assert [e["count"] for e in events if e["user"] == tag] == list(range(500))
