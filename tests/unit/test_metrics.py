"""pacs.metrics: in-process aggregates flushed into prometheus_client, summed across processes
in multiprocess mode; bounded labels; the exposition parses; the audit buffer's aggregation."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from pacs import metrics
from pacs.audit import AuditTrail, read_events


def _worker(folder: str, stores: int, aet: str) -> None:
    """A spawned process: multiprocess mode, as a `pacs serve` worker runs."""
    os.environ[metrics.ENV] = folder  # before prometheus_client is first imported
    from pacs import metrics as child

    for _ in range(stores):
        child.DIMSE_REQUESTS.inc(("C-STORE", child.aet_label(aet), "success"))
        child.DIMSE_SECONDS.observe(0.002, "C-STORE")
        child.SCAN_SECONDS.observe(4e-6)
    child.BYTES_RECEIVED.inc(("C-STORE",), 1000 * stores)
    child.flush()
    child.DIMSE_SECONDS.observe(20.0, "C-MOVE")  # after a first flush: only the growth goes
    child.flush()


def _families(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def test_counters_and_histograms_of_two_processes_are_summed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(str(tmp_path), n, aet))
                 for n, aet in ((3, "CT1"), (5, "MR1"))]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per process

    body, content_type = metrics.exposition(path=str(tmp_path))
    assert content_type.startswith("text/plain")
    found = _families(body)
    requests = "pacs_dimse_requests_total"
    labels = (("calling_aet", "CT1"), ("operation", "C-STORE"), ("status_class", "success"))
    assert found[(requests, labels)] == 3
    assert found[(requests, (("calling_aet", "MR1"), *labels[1:]))] == 5
    assert found[("pacs_bytes_received_total", (("service", "C-STORE"),))] == 8000
    store = (("operation", "C-STORE"),)
    assert found[("pacs_dimse_request_seconds_count", store)] == 8
    assert found[("pacs_dimse_request_seconds_sum", store)] == pytest.approx(0.016)
    assert found[("pacs_dimse_request_seconds_bucket", (("le", "0.001"), *store))] == 0
    assert found[("pacs_dimse_request_seconds_bucket", (("le", "0.0025"), *store))] == 8
    assert found[("pacs_dimse_request_seconds_bucket", (("le", "+Inf"), *store))] == 8
    move = (("operation", "C-MOVE"),)
    assert found[("pacs_dimse_request_seconds_count", move)] == 2
    assert found[("pacs_dimse_request_seconds_bucket", (("le", "10.0"), *move))] == 0
    assert found[("pacs_dimse_request_seconds_bucket", (("le", "30.0"), *move))] == 2
    assert found[("pacs_scan_seconds_bucket", (("le", "5e-06"),))] == 8
    assert found[("pacs_scan_seconds_bucket", (("le", "2.5e-06"),))] == 0


def test_in_process_exposition_parses_and_counts_what_was_recorded() -> None:
    """Without a multiprocess folder (a test, a tool) the metrics live in memory."""
    assert metrics.multiprocess_dir() is None
    before = _families(metrics.exposition()[0])
    metrics.HTTP_REQUESTS.inc(("GET", "/dicom-web/studies", "200"))
    metrics.HTTP_REQUESTS.inc(("GET", "/dicom-web/studies", "200"))
    metrics.COMMIT_SECONDS.observe(0.003)
    after = _families(metrics.exposition()[0])
    key = ("pacs_http_requests_total",
           (("method", "GET"), ("route", "/dicom-web/studies"), ("status", "200")))
    assert after[key] - before.get(key, 0) == 2
    count = ("pacs_index_commit_seconds_count", ())
    assert after[count] - before.get(count, 0) == 1
    bucket = ("pacs_index_commit_seconds_bucket", (("le", "0.005"),))
    assert after[bucket] - before.get(bucket, 0) == 1
    below = ("pacs_index_commit_seconds_bucket", (("le", "0.0025"),))
    assert after[below] - before.get(below, 0) == 0


def test_labels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_aets", set())
    labels = {metrics.aet_label(f"AE{i}") for i in range(metrics.MAX_AET_LABELS + 50)}
    assert len(labels) == metrics.MAX_AET_LABELS + 1
    assert metrics.aet_label("AE0") == "AE0"
    assert metrics.aet_label("LATECOMER") == "other"
    assert metrics.sop_class_label("1.2.840.10008.5.1.4.1.1.2") == "CTImageStorage"
    assert metrics.sop_class_label("1.2.3.4.5") == "other"
    assert metrics.sop_class_label("not a uid") == "other"
    assert metrics.http_method_label("GET") == "GET"
    assert metrics.http_method_label("BREW") == "other"


@pytest.mark.parametrize(("status", "kind"), [
    (0x0000, "success"), (0xB000, "warning"), (0xB007, "warning"), (0x0107, "warning"),
    (0xFE00, "cancel"), (0xA700, "failure"), (0xC000, "failure"), (0xA801, "failure"),
    (0x0110, "failure"), (None, "failure"),
])
def test_status_classes(status: int | None, kind: str) -> None:
    assert metrics.status_class(status) == kind


def test_audit_buffer_writes_one_event_per_key_once_idle_or_old(tmp_path: Path) -> None:
    audit = AuditTrail(tmp_path)
    buffer = metrics.AuditBuffer(audit, idle=2.0, max_age=60.0)
    try:
        for _ in range(3):
            buffer.add("store", "CT1", "10.0.0.7:4000", "1.2.3", "P1", size=100)
        buffer.add("store", "CT1", "10.0.0.7:4000", "1.2.4", "P1", size=50)
        buffer.add("store", "CT1", "10.0.0.7:4000", "", "", outcome="failure")
        buffer.flush(buffer._entries[("store", "success", "CT1", "10.0.0.7:4000", "1.2.3", "P1",
                                      "")][3] + 1.0)
        assert read_events(tmp_path) == []  # idle for less than 2 s: still open
        buffer.flush(max(v[3] for v in buffer._entries.values()) + 2.0)
        events = {(e.get("study_uid", ""), e["outcome"]): e
                  for e in read_events(tmp_path)}
        assert set(events) == {("1.2.3", "success"), ("1.2.4", "success"), ("", "failure")}
        assert events[("1.2.3", "success")]["count"] == 3
        assert events[("1.2.3", "success")]["bytes"] == 300
        assert events[("1.2.3", "success")]["patient_id"] == "P1"
        assert events[("1.2.3", "success")]["source"] == "10.0.0.7:4000"
        assert events[("", "failure")]["count"] == 1
        # A stream is cut after max_age seconds even when it never pauses.
        buffer.add("view", "alice", "10.0.0.9", "1.2.3", "P1", "rendered")
        (entry,) = buffer._entries.values()
        entry[3] = entry[2] + 59.5  # last added 0.5 s before the flush below
        buffer.flush(entry[2] + 60.0)
        assert buffer._entries == {}
        buffer.add("view", "alice", "10.0.0.9", "1.2.3", "P1", "rendered")
        buffer.close()  # what is left is written at close (and at exit)
        assert [e["detail"] for e in read_events(tmp_path) if e["action"] == "view"] == \
            ["rendered", "rendered"]
    finally:
        audit.close()


def test_audit_buffer_of_a_disabled_trail_records_nothing(tmp_path: Path) -> None:
    audit = AuditTrail(tmp_path / "audit", enabled=False)
    buffer = metrics.audit_buffer(audit)
    buffer.add("store", "CT1", "peer", "1.2.3", "P1")
    buffer.close()
    assert not (tmp_path / "audit").exists()


def test_prepare_multiprocess_dir_starts_afresh(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from pacs.config import Settings

    monkeypatch.delenv(metrics.ENV, raising=False)
    settings = Settings(data_dir=tmp_path)
    stale = tmp_path / "state" / "metrics" / "counter_1.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    folder = metrics.prepare_multiprocess_dir(settings)
    assert folder == tmp_path / "state" / "metrics" and folder.is_dir()
    assert not stale.exists()
    assert os.environ[metrics.ENV] == str(folder)
    monkeypatch.delenv(metrics.ENV)
    off = Settings(data_dir=tmp_path / "off", metrics=False)
    assert metrics.prepare_multiprocess_dir(off) is None
    assert metrics.ENV not in os.environ
