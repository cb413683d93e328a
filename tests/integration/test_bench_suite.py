"""The bench suite (`python -m bench`) against this archive: its reports are correct."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.suite import report
from bench.suite.scenarios import Result
from tests.conftest import REPO, free_port, require_tool


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


def test_tiny_run_against_a_private_archive(tmp_path: Path) -> None:
    for tool in ("storescu", "storescp", "getscu"):
        require_tool(tool)
    out = tmp_path / "results.json"
    run = _bench("--with-pacs", "--pacs-workers", "1", "--studies", "2", "--scale", "tiny",
                 "--repeat", "2", "--associations", "2", "--json", str(out),
                 "--plots", str(tmp_path / "plots"), "--work", str(tmp_path / "work"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    document = json.loads(out.read_text())
    results = {r["scenario"]: r for r in document["results"]}
    meta = document["meta"]
    # CT study (2 series x 40) and MR study (3 x 24); the first goes one by one, the rest bulk.
    assert meta["instances"] == 80 + 72 and meta["stow_instances"] == 2  # one CR study (2 x 1)
    assert results["C-STORE latency (1 assoc.)"]["items"] == 80
    assert results["C-STORE ingest (2 assoc.)"]["items"] == 72
    assert results["C-MOVE (study by study)"]["items"] == 152
    assert results["C-GET (study by study)"]["items"] == 152
    assert results["C-FIND series of a study"]["items"] == 2 * 2  # repeat x series
    assert results["C-FIND instances of a series"]["items"] == 2 * 40
    assert results["QIDO-RS instances of a series"]["items"] == 2 * 40
    assert results["STOW-RS (2 clients, 10/request)"]["items"] == 2
    assert results["WADO-RS (study by study)"]["items"] == 152
    assert all(not r["errors"] and not r["skipped"] for r in document["results"])
    assert all(r["p50_ms"] > 0 for r in document["results"] if r["operations"] and
               "ingest" not in r["scenario"])
    for name in ("throughput.png", "latency.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "C-ECHO latency" in run.stdout


def test_unreachable_target_is_reported_not_hidden(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    run = _bench("--target", f"down=NOBODY@127.0.0.1:{port}", "--scenarios", "echo,find",
                 "--studies", "1", "--scale", "tiny", "--work", str(tmp_path))
    assert run.returncode == 1
    assert "errors" in run.stdout and "down" in run.stdout


def test_ratios_say_which_target_is_faster() -> None:
    fast = Result("C-FIND x", "a", operations=4, seconds=1.0, items=200,
                  latencies_ms=[1.0, 1.0, 1.0, 1.0])
    slow = Result("C-FIND x", "b", operations=4, seconds=2.0, items=200,
                  latencies_ms=[3.0, 3.0, 3.0, 3.0])
    broken = Result("C-MOVE", "b", errors=["refused"])
    rows = report.ratios([fast, slow, broken, Result("C-MOVE", "a", items=1, seconds=1)],
                         "a", "b")
    assert rows == [{"scenario": "C-FIND x", "throughput_ratio": 2.0,
                     "p50_latency_ratio": 3.0}]  # a failed scenario gives no ratio
    assert "2.00x" in report.ratio_table(rows, "a", "b")


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    assert _bench("--scenarios", "echo,teleport", "--with-pacs").returncode == 2
    assert _bench("--studies", "1", "--work", str(tmp_path)).returncode == 2  # no target
