"""`pacs import`: files, folders, zips and DICOMDIR sets through the C-STORE write path;
a report of rejected files, idempotent re-runs, resumption after kill -9, beside `pacs serve`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from bench.bench_import import generate, sop_uid
from pacs.errors import CatalogError
from tests.conftest import REPO, free_port, require_tool
from tests.integration.archive_check import statistics, stored_instance


def pacs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs", *args], capture_output=True,
                          text=True, cwd=cwd or REPO, timeout=120)


def summary(stdout: str) -> dict[str, int]:
    match = re.search(r"imported (\d+), skipped (\d+) .*rejected (\d+), ignored (\d+)", stdout)
    assert match, stdout
    keys = ("imported", "skipped", "rejected", "ignored")
    return dict(zip(keys, map(int, match.groups()), strict=True))


def rejected_in(report: Path) -> dict[str, str]:
    lines = [line for line in report.read_text().splitlines() if not line.startswith("#")]
    return dict(line.split("\t", 1) for line in lines)


def make_tree(root: Path) -> tuple[Path, dict[str, Path]]:
    """30 files in folders, 3 duplicates of them elsewhere, a truncated (corrupt) file, a text
    file, a zip of 5 more instances and a DICOMDIR; returns the tree and the special paths."""
    src = root / "src"
    files = generate(src / "series", 30, per_folder=10)
    dups = src / "copies"
    dups.mkdir()
    for path in files[:3]:
        (dups / f"copy-{path.name}").write_bytes(path.read_bytes())
    corrupt_source = generate(root / "tmp-corrupt", 1, first=1000)[0].read_bytes()
    corrupt = src / "corrupt.dcm"
    corrupt.write_bytes(corrupt_source[: len(corrupt_source) - 100])  # cut inside Pixel Data
    text = src / "notes.txt"
    text.write_text("not a DICOM file\n" * 20)
    zipped = generate(root / "tmp-zip", 5, first=2000)
    archive = src / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in zipped:
            zf.write(path, f"set/{path.name}")
    (src / "series" / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM")  # the set's directory
    return src, {"corrupt": corrupt, "text": text}


def test_import_tree_report_and_rerun(tmp_path: Path) -> None:
    src, special = make_tree(tmp_path)
    data = tmp_path / "data"
    report = tmp_path / "report.txt"
    first = pacs("import", "--data-dir", str(data), "--report", str(report), str(src))
    assert first.returncode == 1, first.stdout + first.stderr
    counts = summary(first.stdout)
    assert counts == {"imported": 35, "skipped": 3, "rejected": 2, "ignored": 1}
    rejected = rejected_in(report)
    assert set(rejected) == {str(special["corrupt"]), str(special["text"])}
    assert "DICM" in rejected[str(special["text"])]
    assert "parse" in rejected[str(special["corrupt"])]
    assert f"rejected: {special['text']}" in first.stdout  # printed at the end too
    stats = statistics(data)
    assert stats["instances"] == 35
    found = stored_instance(data, sop_uid(2003))  # from the zip
    assert found is not None
    record, blob = found
    assert record.source_aet == "IMPORT" and record.digest and record.size == len(blob)

    report2 = tmp_path / "report2.txt"
    started = time.monotonic()
    second = pacs("import", "--data-dir", str(data), "--report", str(report2), str(src))
    elapsed = time.monotonic() - started
    assert second.returncode == 1
    assert summary(second.stdout) == {"imported": 0, "skipped": 38, "rejected": 2,
                                      "ignored": 1}
    assert set(rejected_in(report2)) == set(rejected)
    assert elapsed < 10
    assert statistics(data)["instances"] == 35
    assert pacs("verify", "--data-dir", str(data)).returncode == 0

    # Only good files: exit status 0; the default report lands in the current folder.
    clean = pacs("import", "--data-dir", str(data), str(src / "series"), cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout
    assert list(tmp_path.glob("import-report-*.txt"))


def test_import_killed_resumes(tmp_path: Path) -> None:
    count = 5000
    src = tmp_path / "src"
    generate(src, count)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacs", "import", "--data-dir", str(data), "--jobs", "2",
         "--report", str(tmp_path / "r1.txt"), str(src)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
        start_new_session=True)
    deadline = time.monotonic() + 60
    seen = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (data / "index" / "data.mdb").exists():
                try:
                    seen = statistics(data).get("instances", 0)
                except CatalogError:  # the file exists, its databases not yet: being created
                    continue
                if seen >= 300:
                    break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 0 < seen < count, "the import was not killed mid-run"
    # One process now: the other killed writer's segments are replayed all the same.
    again = pacs("import", "--data-dir", str(data), "--jobs", "1", "--report",
                 str(tmp_path / "r2.txt"), str(src))
    assert again.returncode == 0, again.stdout + again.stderr
    counts = summary(again.stdout)
    assert counts["imported"] + counts["skipped"] == count
    assert counts["skipped"] >= seen  # what was indexed before the kill is not redone
    assert statistics(data)["instances"] == count
    verify = pacs("verify", "--data-dir", str(data))
    assert verify.returncode == 0, verify.stdout
    assert "orphans" not in verify.stdout
    assert not list((data / "spool").glob("*/spool-*"))


def test_import_beside_running_server(tmp_path: Path, archive_factory) -> None:
    archive = archive_factory()
    src = tmp_path / "src"
    generate(src, 20, first=5000)
    result = pacs("import", "--data-dir", str(archive.data_dir), "--report",
                  str(tmp_path / "r.txt"), str(src))
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result.stdout)["imported"] == 20
    proc = subprocess.run(
        [require_tool("findscu"), "-v", "-S", "-aec", "PACS", "-k", "QueryRetrieveLevel=IMAGE",
         "-k", f"StudyInstanceUID={sop_uid(0)[:-12]}1", "-k", "SeriesInstanceUID",
         "-k", "SOPInstanceUID", "127.0.0.1", str(archive.port)],
        capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    found = set(re.findall(r"\(0008,0018\) UI \[([^\]]*)\]", output))
    assert {uid.strip(" \x00") for uid in found} == {sop_uid(5000 + i) for i in range(20)}
    assert archive.alive()


def test_import_large_files_are_spooled_not_held(tmp_path: Path) -> None:
    """Files over spool_memory_limit go through the spool folder; the data set is kept as is."""
    src = tmp_path / "src"
    paths = generate(src, 10, first=7000)
    data = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "pacs", "import", "--data-dir", str(data), "--report",
         str(tmp_path / "r.txt"), str(src)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env=dict(os.environ, PACS_SPOOL_MEMORY_LIMIT="100"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from pacs.dicom.part10 import read_file_meta

    original = paths[4].read_bytes()
    found = stored_instance(data, sop_uid(7004))
    assert found is not None
    _, start = read_file_meta(original)
    _, stored_start = read_file_meta(found[1])
    assert found[1][stored_start:] == original[start:]
    assert not list((data / "spool").glob("*/spool-*"))


def test_import_in_place_served_verified_reindexed(tmp_path: Path, archive_factory) -> None:
    """--in-place: nothing copied; C-GET and WADO-RS serve the file's bytes; DELETE leaves the
    file; verify sees a changed and a removed source file; reindex keeps in-place entries."""
    import httpx

    from tests.integration.test_get import getscu
    from tests.integration.test_web import wait_http

    http_port = free_port()
    archive = archive_factory("--http-port", str(http_port))
    base = wait_http(archive, http_port)
    data = archive.data_dir
    src = tmp_path / "src"
    paths = generate(src, 12, first=9000)
    text = src / "notes.txt"
    text.write_text("not a DICOM file\n" * 20)
    report = tmp_path / "r.txt"
    result = pacs("import", "--in-place", "--data-dir", str(data), "--report", str(report),
                  str(src))
    assert result.returncode == 1, result.stdout + result.stderr
    assert summary(result.stdout) == {"imported": 12, "skipped": 0, "rejected": 1,
                                      "ignored": 0}
    assert "DICM" in rejected_in(report)[str(text)]
    found = stored_instance(data, sop_uid(9003))
    assert found is not None
    record, blob = found
    assert record.location == f"ext:{paths[3]}"
    assert blob == paths[3].read_bytes() and record.size == len(blob)
    blob_bytes = sum(p.stat().st_size for p in (data / "blobs").glob("*.seg"))
    assert blob_bytes < sum(p.stat().st_size for p in paths)  # nothing was copied

    # A second run skips them all; a copying import of the same files too (same UIDs).
    again = pacs("import", "--in-place", "--data-dir", str(data), "--report", str(report),
                 str(src))
    assert summary(again.stdout)["skipped"] == 12

    # C-GET of the study served by the running archive: the files' data sets, unchanged.
    from bench.bench_import import UID_ROOT
    from pacs.dicom.part10 import read_file_meta

    def dataset_of(data: bytes) -> tuple[str, bytes]:
        meta, start = read_file_meta(data)
        return meta["MediaStorageSOPInstanceUID"].rstrip("\x00"), data[start:]

    originals = dict(dataset_of(p.read_bytes()) for p in paths)
    out = tmp_path / "got"
    output = getscu(archive.port, out, "-S", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={UID_ROOT}1")
    assert "Number of Completed Suboperations : 12" in output
    got = dict(dataset_of(p.read_bytes()) for p in out.iterdir())
    assert got == originals
    # WADO-RS of one instance: its body part holds the file's data set.
    series = f"{UID_ROOT}{9003 // 100 + 500_000_000_000:012d}"
    response = httpx.get(f"{base}/dicom-web/studies/{UID_ROOT}1/series/{series}/instances/"
                         f"{sop_uid(9003)}",
                         headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200, response.text
    assert originals[sop_uid(9003)] in response.content

    # DELETE of an in-place instance drops its index entry only.
    deleted = httpx.delete(f"{base}/instances/{sop_uid(9005)}")
    assert deleted.status_code == 200, deleted.text
    assert paths[5].exists()
    assert stored_instance(data, sop_uid(9005)) is None
    archive.stop()
    verify = pacs("verify", "--data-dir", str(data))
    assert verify.returncode == 0, verify.stdout  # no orphan left by the delete

    # A changed and a removed source file are reported.
    changed = bytearray(paths[1].read_bytes())
    changed[-1] ^= 0xFF
    paths[1].write_bytes(bytes(changed))
    paths[2].unlink()
    verify = pacs("verify", "--data-dir", str(data))
    assert verify.returncode == 1
    assert f"digest_mismatch: ('{sop_uid(9001)}', 'ext:{paths[1]}')" in verify.stdout
    assert f"missing: ('{sop_uid(9002)}', 'ext:{paths[2]}')" in verify.stdout

    # reindex rebuilds in-place entries from the journal (the removed file fails, noted).
    reindex = pacs("reindex", "--data-dir", str(data))
    assert "indexed 10 instances, 1 failed" in reindex.stdout, reindex.stdout + reindex.stderr
    found = stored_instance(data, sop_uid(9004))
    assert found is not None and found[0].location == f"ext:{paths[4]}"
    assert stored_instance(data, sop_uid(9005)) is None  # deleted stays deleted
