"""The audit trail and /metrics after an end-to-end scenario against a real ``pacs serve`` with
two workers: dcmtk storescu, findscu, getscu and movescu (to a dcmtk storescp), then QIDO-RS,
WADO-RS, a rendered frame, the viewer page and a REST DELETE over httpx."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pacs.audit import read_events
from tests.conftest import free_port, require_tool
from tests.dicomgen import make_ct, write
from tests.netclient import Client

pytestmark = pytest.mark.integration

ENV = dict(os.environ, TCP_NODELAY="1")


def dcmtk(tool: str, *args: str) -> str:
    proc = subprocess.run([require_tool(tool), *args], capture_output=True, text=True,
                          timeout=120, env=ENV)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def wait_http(base: str, log: Callable[[], str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/system", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"HTTP did not come up:\n{log()}")


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics scrape: (name, sorted labels) -> value."""
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(value for (n, have), value in found.items()
               if n == name and set(labels.items()) <= set(have))


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``check`` (metrics of other workers flush once a second, repeated audit events
    after 2 s idle) until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen in {timeout} s")
        time.sleep(0.2)


def stock(folder: Path, patient_id: str, count: int) -> tuple[str, str, list[str], list[Path]]:
    """``count`` CT files of one new study: (study, series, SOP instance UIDs, paths)."""
    folder.mkdir()
    first = make_ct(patient_id=patient_id)
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    datasets = [first] + [make_ct(study_uid=study, series_uid=series, patient_id=patient_id,
                                  instance_number=i + 2) for i in range(count - 1)]
    paths = [write(ds, folder / f"{i}.dcm") for i, ds in enumerate(datasets)]
    return study, series, [ds.SOPInstanceUID for ds in datasets], paths


def test_every_action_is_audited_and_counted(archive_factory, scp_factory,
                                             tmp_path: Path) -> None:
    scp = scp_factory()
    config = tmp_path / "pacs.toml"
    config.write_text(f'[remote.STORESCP]\nhost = "127.0.0.1"\nport = {scp.port}\n')
    http_port = free_port()
    archive = archive_factory("--config", str(config), "--workers", "2",
                              "--http-port", str(http_port))
    base = f"http://127.0.0.1:{http_port}"
    wait_http(base, archive.log)
    port = str(archive.port)

    kept, series, instances, kept_files = stock(tmp_path / "a", "PAT-KEPT", 4)
    gone, _, _, gone_files = stock(tmp_path / "b", "PAT-GONE", 2)
    dcmtk("storescu", "-aet", "MODALITY1", "-aec", "PACS", "127.0.0.1", port,
          *map(str, kept_files + gone_files))
    found = dcmtk("findscu", "-v", "-S", "-aet", "FINDER", "-aec", "PACS",
                  "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT-KEPT",
                  "-k", "StudyInstanceUID", "127.0.0.1", port)
    assert kept in found
    got = dcmtk("getscu", "-v", "-aet", "GETTER", "-aec", "PACS", "-od",
                str(tmp_path), "-S", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={kept}", "127.0.0.1", port)
    assert "Number of Completed Suboperations : 4" in got
    moved = dcmtk("movescu", "-v", "-aet", "MOVER", "-aec", "PACS", "-aem", "STORESCP",
                  "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={kept}",
                  "127.0.0.1", port)
    assert "Received Final Move Response (Success)" in moved

    with httpx.Client(base_url=base, timeout=30) as http:
        qido = http.get("/dicom-web/studies", params={"PatientID": "PAT-KEPT"})
        assert qido.status_code == 200 and len(qido.json()) == 1
        wado = http.get(f"/dicom-web/studies/{kept}")
        assert wado.status_code == 200 and len(wado.content) > 4 * 8192
        rendered = http.get(f"/dicom-web/studies/{kept}/series/{series}/instances/"
                            f"{instances[0]}/rendered")
        assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")
        viewer = http.get("/viewer", params={"StudyInstanceUID": kept})
        assert viewer.status_code == 200
        deleted = http.delete(f"/studies/{gone}")
        assert deleted.status_code == 200 and deleted.json()["DeletedInstances"] == 2
        assert http.get("/no/such/route").status_code == 404

    # -- /metrics: both workers' counters summed (stores and HTTP requests may land on either;
    # the worker not answering the scrape flushes once a second) -------------------------------
    def metrics_complete() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        found = samples(base)
        requests = "pacs_dimse_requests_total"
        ready = (
            total(found, requests, operation="C-STORE", calling_aet="MODALITY1",
                  status_class="success") == 6
            and total(found, requests, operation="C-FIND", calling_aet="FINDER") == 1
            and total(found, requests, operation="C-GET", calling_aet="GETTER",
                      status_class="success") == 1
            and total(found, requests, operation="C-MOVE", calling_aet="MOVER",
                      status_class="success") == 1
            and all(total(found, "pacs_bytes_sent_total", service=service) > 0
                    for service in ("C-GET", "C-MOVE", "WADO-RS", "rendered"))
            and total(found, "pacs_http_requests_total", method="GET",
                      route="/dicom-web/studies", status="200") == 1
            and total(found, "pacs_http_requests_total", route="unmatched", status="404") == 1
            and total(found, "pacs_http_requests_total", method="DELETE",
                      route="/studies/{id}", status="200") == 1
        )
        return found if ready else None

    found = eventually(metrics_complete, "DIMSE and HTTP counters of both workers")
    assert total(found, "pacs_instances_stored_total", calling_aet="MODALITY1",
                 sop_class="CTImageStorage") == 6
    assert total(found, "pacs_dimse_request_seconds_count", operation="C-STORE") == 6
    assert total(found, "pacs_dimse_request_seconds_bucket", operation="C-STORE",
                 le="+Inf") == 6
    assert total(found, "pacs_dimse_request_seconds_sum", operation="C-STORE") > 0
    assert total(found, "pacs_dimse_request_seconds_count", operation="C-MOVE") == 1
    assert total(found, "pacs_scan_seconds_count") == 6
    assert total(found, "pacs_index_commit_seconds_count") >= 1
    dataset_bytes = sum(p.stat().st_size for p in kept_files + gone_files)
    assert 0.9 * dataset_bytes < total(found, "pacs_bytes_received_total",
                                       service="C-STORE") < dataset_bytes
    for service in ("C-GET", "C-MOVE", "WADO-RS", "rendered"):
        assert total(found, "pacs_bytes_sent_total", service=service) > 0, service
    assert total(found, "pacs_http_requests_total", method="GET",
                 route="/dicom-web/studies", status="200") == 1
    assert total(found, "pacs_http_requests_total", method="DELETE", route="/studies/{id}",
                 status="200") == 1
    assert total(found, "pacs_http_requests_total", route="unmatched", status="404") == 1
    assert total(found, "pacs_instances_indexed") == 4
    assert total(found, "pacs_studies_indexed") == 1
    assert ("pacs_associations_open", ()) in found

    # -- the audit trail --------------------------------------------------------------------
    audit_dir = archive.data_dir / "audit"

    def matching(**fields: Any) -> list[dict[str, Any]]:
        return [e for e in read_events(audit_dir)
                if all(e.get(k) == v for k, v in fields.items())]

    def stored(study: str) -> int:
        return sum(e["count"] for e in matching(action="store", user="MODALITY1",
                                                study_uid=study))

    eventually(lambda: stored(kept) == 4 and stored(gone) == 2, "store events")
    store = matching(action="store", study_uid=kept)[0]
    assert store["patient_id"] == "PAT-KEPT" and store["outcome"] == "success"
    assert store["source"].startswith("127.0.0.1:")

    (query,) = matching(action="query", user="FINDER")
    assert query["keys"] == {"PatientID": "PAT-KEPT"} and query["matches"] == 1
    assert query["patient_id"] == "PAT-KEPT" and query["level"] == "STUDY"

    (get,) = matching(action="retrieve", operation="C-GET")
    assert (get["user"], get["study_uid"], get["patient_id"], get["count"], get["outcome"]) == \
        ("GETTER", kept, "PAT-KEPT", 4, "success")
    (move,) = matching(action="retrieve", operation="C-MOVE")
    assert (move["user"], move["destination"], move["study_uid"], move["count"]) == \
        ("MOVER", "STORESCP", kept, 4)

    (qido_event,) = matching(action="query", operation="QIDO-RS")
    assert qido_event["patient_id"] == "PAT-KEPT" and qido_event["matches"] == 1
    assert qido_event["source"] == "127.0.0.1"
    (wado_event,) = matching(action="view", operation="WADO-RS")
    assert (wado_event["study_uid"], wado_event["patient_id"], wado_event["count"]) == \
        (kept, "PAT-KEPT", 4)
    (viewer_event,) = matching(action="view", operation="viewer")
    assert viewer_event["patient_id"] == "PAT-KEPT" and viewer_event["study_uid"] == kept
    rendered_events = eventually(lambda: matching(action="view", detail="rendered"),
                                 "the rendered frame's view event")
    assert rendered_events[0]["study_uid"] == kept and rendered_events[0]["count"] == 1

    (delete,) = matching(action="delete")
    assert (delete["study_uid"], delete["patient_id"], delete["count"], delete["level"]) == \
        (gone, "PAT-GONE", 2, "Study")


def test_a_single_worker_serves_metrics_and_audits_stores_up_to_its_stop(
        archive_factory, tmp_path: Path) -> None:
    http_port = free_port()
    archive = archive_factory("--workers", "1", "--http-port", str(http_port))
    base = f"http://127.0.0.1:{http_port}"
    wait_http(base, archive.log)
    dcmtk("echoscu", "-aet", "PINGER", "-aec", "PACS", "127.0.0.1", str(archive.port))
    found = samples(base)
    assert total(found, "pacs_dimse_requests_total", operation="C-ECHO", calling_aet="PINGER",
                 status_class="success") == 1
    assert total(found, "pacs_dimse_request_seconds_count", operation="C-ECHO") == 1
    assert (archive.data_dir / "state" / "metrics").is_dir()
    # The associations gauge counts the single worker's open associations too.
    assert total(found, "pacs_associations_open") == 0
    with Client(archive.port, calling="GAUGE") as client:
        client.associate()
        assert total(samples(base), "pacs_associations_open") == 1
        client.release()
    # Stopped right after the store: its buffered audit event is written on the way out.
    study, _, _, files = stock(tmp_path / "a", "PAT-LAST", 2)
    dcmtk("storescu", "-aet", "LAST", "-aec", "PACS", "127.0.0.1", str(archive.port),
          *map(str, files))
    assert archive.stop() == 0
    events = [e for e in read_events(archive.data_dir / "audit") if e["action"] == "store"]
    assert [(e["user"], e["study_uid"], e["count"]) for e in events] == [("LAST", study, 2)]
    assert "Traceback" not in archive.log()


def test_metrics_and_audit_can_be_turned_off(archive_factory, tmp_path: Path) -> None:
    http_port = free_port()
    archive = archive_factory("--workers", "2", "--http-port", str(http_port),
                              env={"PACS_METRICS": "false", "PACS_AUDIT": "false"})
    base = f"http://127.0.0.1:{http_port}"
    wait_http(base, archive.log)
    _, _, _, files = stock(tmp_path / "a", "PAT-OFF", 1)
    dcmtk("storescu", "-aec", "PACS", "127.0.0.1", str(archive.port), str(files[0]))
    assert httpx.get(f"{base}/dicom-web/studies").status_code == 200
    assert httpx.get(f"{base}/metrics").status_code == 404
    assert archive.stop() == 0
    assert read_events(archive.data_dir / "audit") == []
    assert not (archive.data_dir / "state" / "metrics").exists()


def test_json_log_lines(archive_factory) -> None:
    """`log_format = "json"`: every line the server and its workers write is one JSON object."""
    archive = archive_factory("--workers", "2", "--log-format", "json")
    dcmtk("echoscu", "-aet", "JSONLOG", "-aec", "PACS", "127.0.0.1", str(archive.port))
    assert archive.stop() == 0
    lines = [line for line in archive.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # a plain line would fail here
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert {e.get("process") for e in entries} >= {"w0", "w1"}
    assert any("JSONLOG" in e["message"] and e["logger"] == "pacs.dimse" for e in entries)
