"""`pacs import`: which files a run finds (folders, symlinks, DICOMDIR sets), the spool of large
data sets (never left partial, bounded by max_dataset_size) and a report of odd file names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.bench_import import generate
from pacs.config import Settings
from pacs.importer import collect, import_command


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
