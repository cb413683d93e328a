"""`pacs import`: which files a run finds (folders, symlinks, DICOMDIR sets), the spool of large
data sets (never left partial, bounded by max_dataset_size) and a report of odd file names."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pydicom
import pytest

from bench.bench_import import generate, sop_uid
from pacs.config import Settings
from pacs.importer import collect, import_command
from tests.conftest import require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import statistics, stored_instance
from tests.integration.test_import import summary


def settings_for(tmp_path: Path, **overrides: int) -> Settings:
    return Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28, **overrides)


def run_import(settings: Settings, tmp_path: Path, paths: list[Path],
               capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``pacs import`` in this process (one worker): exit status and stdout."""
    status = import_command(settings, paths, report=tmp_path / "report.txt", jobs=1)
    return status, capsys.readouterr().out


def report_rejected(tmp_path: Path) -> dict[bytes, bytes]:
    """The report's rejected files (path → reason), as bytes: paths need not be UTF-8."""
    lines = (tmp_path / "report.txt").read_bytes().splitlines()
    return dict(line.split(b"\t", 1) for line in lines if not line.startswith(b"#"))


def test_symlink_loops_are_walked_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = generate(src, 4, per_folder=2)
    (src / "self").symlink_to(".")  # a loop: src/self -> src
    (src / "alias").symlink_to(files[0].parent.name)  # the same folder a second time
    found, missing = collect([src])
    assert missing == []
    assert sorted(os.path.realpath(path) for path in found) == sorted(map(str, files))


def test_dangling_symlink_in_a_folder_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = generate(src, 2)
    link = files[0].parent / "gone.dcm"
    link.symlink_to(tmp_path / "unmounted" / "IM0003.dcm")
    found, missing = collect([src])
    assert sorted(found) == sorted(map(str, files))
    assert missing == [(str(link), "broken symbolic link")]
    assert collect([link]) == ([], [(str(link), "broken symbolic link")])


def test_dicomdir_named_imports_its_set_and_reports_missing_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    media = tmp_path / "media"
    (media / "X").mkdir(parents=True)
    for i, path in enumerate(generate(tmp_path / "gen", 4, first=300), 1):
        shutil.copy(path, media / "X" / f"IM{i}")
    subprocess.run([require_tool("dcmmkdir"), "--recurse", "--input-directory", str(media), "X"],
                   check=True, capture_output=True, timeout=60, cwd=media)
    dicomdir = media / "DICOMDIR"
    (media / "X" / "IM2").rename(media / "X" / "im2")  # a copy of a CD, names lower-cased
    (media / "X" / "IM3").unlink()  # lost from the copy
    ds = pydicom.dcmread(dicomdir)  # and one entry pointing out of the set's folder
    outside = [r for r in ds.DirectoryRecordSequence if r.get("ReferencedFileID") == ["X", "IM4"]]
    with pytest.warns(UserWarning, match="VR CS"):
        outside[0].ReferencedFileID = ["..", "gen", "IM4"]
    ds.save_as(dicomdir)

    status, out = run_import(settings_for(tmp_path), tmp_path, [dicomdir], capsys)
    assert status == 1, out
    assert summary(out) == {"imported": 2, "skipped": 0, "rejected": 2, "ignored": 1}
    assert report_rejected(tmp_path) == {
        os.fsencode(media / "X" / "IM3"): b"referenced by DICOMDIR, missing",
        os.fsencode(media / ".." / "gen" / "IM4"): b"referenced by DICOMDIR, outside its folder"}
    assert stored_instance(tmp_path / "data", sop_uid(301)) is not None  # the lower-cased one
    assert statistics(tmp_path / "data")["instances"] == 2

    # The set's folder and its DICOMDIR both named: each file once.
    found, missing = collect([media, dicomdir])
    names = ("DICOMDIR", "X/IM1", "X/IM4", "X/im2")  # IM4 found by the walk
    assert sorted(found) == sorted(str(media / name) for name in names)
    assert sorted(reason for _, reason in missing) == [
        "referenced by DICOMDIR, missing", "referenced by DICOMDIR, outside its folder"]


def test_failed_spool_leaves_no_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.dcm"
    write(make_ct(sop_uid="1.2.3.4.77", rows=256, columns=256), big)  # 128 KiB of pixels
    archive = tmp_path / "src" / "set.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.write(big, "IMG/big.dcm")
    raw = bytearray(archive.read_bytes())
    raw[100_000] ^= 0xFF  # a damaged byte: the CRC check fails at the member's end
    archive.write_bytes(raw)
    settings = settings_for(tmp_path, spool_memory_limit=1024)
    status, out = run_import(settings, tmp_path, [archive], capsys)
    assert status == 1, out
    assert b"Bad CRC-32" in report_rejected(tmp_path)[os.fsencode(f"{archive}!IMG/big.dcm")]
    assert list(settings.spool_dir.rglob("spool-*")) == []


def test_data_set_over_max_dataset_size_is_not_spooled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write(make_ct(sop_uid="1.2.3.4.78", rows=64, columns=64), src / "big.dcm")  # 8 KiB
    with zipfile.ZipFile(src / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(src / "big.dcm", "IMG/big.dcm")
    settings = settings_for(tmp_path, spool_memory_limit=1024, max_dataset_size=4096)
    status, out = run_import(settings, tmp_path, [src], capsys)
    assert status == 1, out
    reasons = report_rejected(tmp_path)
    limit = b"data set larger than max_dataset_size (4096 bytes)"
    assert reasons == {os.fsencode(src / "big.dcm"): limit,
                       os.fsencode(f"{src / 'bomb.zip'}!IMG/big.dcm"): limit}
    assert statistics(tmp_path / "data")["instances"] == 0


def test_report_of_a_file_name_that_is_not_utf8(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    generate(src, 1)
    name = os.fsencode(src) + b"/r\xe9sum\xe9.txt"
    with open(name, "wb") as fh:
        fh.write(b"not dicom")
    status, out = run_import(settings_for(tmp_path), tmp_path, [src], capsys)
    assert status == 1, out
    assert report_rejected(tmp_path) == {name: b"not a DICOM file (no DICM prefix)"}
    assert "r\\udce9sum\\udce9.txt: not a DICOM file" in out  # printed, escaped
