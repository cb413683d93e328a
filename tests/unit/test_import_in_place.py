"""`pacs import --in-place` on files that change under the archive: a path reused for another
instance, files moved after import, a failed index commit, read-only media."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from bench.bench_import import generate, sop_uid
from pacs.config import Settings
from pacs.deletion import delete_instances
from pacs.errors import PacsError
from pacs.index.maintenance import verify
from pacs.index.writer import CatalogWriter
from pacs.maintenance import _open
from pacs.store.external import Journal
from tests.integration.archive_check import stored_instance
from tests.integration.test_import import summary
from tests.unit.test_import_durability import run_import, settings_for


def journaled(settings: Settings) -> list[str]:
    return list(Journal(settings.blob_dir).locations())


def test_journal_keeps_a_path_while_one_of_its_entries_lives(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.path.write_text("+/old/format\n+/gone\n-/gone\n")  # lines of the previous format
    journal.add([("ext:/p", "1.2"), ("ext:/p", "1.3"), ("ext:/old/format", "1.4")])
    journal.remove("ext:/p", "1.2")
    assert sorted(journal.locations()) == ["ext:/old/format", "ext:/p"]
    journal.remove("ext:/p", "1.3")
    journal.remove("ext:/old/format", "1.5")  # its old-format line: the UID was not journaled
    assert list(journal.locations()) == ["ext:/old/format"]
    journal.remove("ext:/old/format", "1.4")
    assert list(journal.locations()) == []


def test_reused_path_replaces_the_entry_of_the_instance_it_held(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """IM1 overwritten with the next exam's instance and imported again: the first instance
    (whose file is gone) is unindexed, the second served; deleting it, verify and reindex agree."""
    settings = settings_for(tmp_path)
    generated = generate(tmp_path / "g", 2, first=1)
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(generated[0], export / "IM1")
    assert summary(run_import(settings, tmp_path, export, capsys, in_place=True)[1])[
        "imported"] == 1
    shutil.copy(generated[1], export / "IM1.tmp")
    os.replace(export / "IM1.tmp", export / "IM1")
    status, out, err = run_import(settings, tmp_path, export, capsys, in_place=True)
    assert status == 0 and summary(out)["imported"] == 1, out + err
    assert stored_instance(settings.data_dir, sop_uid(1)) is None
    found = stored_instance(settings.data_dir, sop_uid(2))
    assert found is not None and found[1] == generated[1].read_bytes()
    assert journaled(settings) == [f"ext:{export / 'IM1'}"]
    store, catalog = _open(settings)  # type: ignore[misc]
    try:
        assert verify(catalog, store).ok
        assert delete_instances(catalog, store, [sop_uid(2)])[0] == 1
    finally:
        catalog.close()
        store.close()
    assert journaled(settings) == []


def test_verify_flags_an_in_place_entry_the_journal_lacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(tmp_path)
    paths = generate(tmp_path / "src", 2)
    status, out, err = run_import(settings, tmp_path, tmp_path / "src", capsys, in_place=True)
    assert status == 0 and summary(out)["imported"] == 2, out + err
    Journal(settings.blob_dir).remove(f"ext:{paths[0]}")  # e.g. un-journaled by a wrong line
    store, catalog = _open(settings)  # type: ignore[misc]
    try:
        report = verify(catalog, store)
    finally:
        catalog.close()
        store.close()
    assert not report.ok and report.unjournaled == [(sop_uid(0), f"ext:{paths[0]}")]


def test_a_file_whose_index_commit_fails_leaves_no_journal_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path)
    generate(tmp_path / "src", 2)

    def failing_submit(self: CatalogWriter, *args: object, **kwargs: object) -> None:
        raise PacsError("index full")

    monkeypatch.setattr(CatalogWriter, "submit", failing_submit)
    status, out, err = run_import(settings, tmp_path, tmp_path / "src", capsys, in_place=True)
    assert status != 0 and summary(out)["rejected"] == 2, out + err
    assert journaled(settings) == []


def test_moved_files_are_indexed_at_their_new_place(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(tmp_path)
    generate(tmp_path / "a", 3)
    status, out, err = run_import(settings, tmp_path, tmp_path / "a", capsys, in_place=True)
    assert status == 0 and summary(out)["imported"] == 3, out + err
    (tmp_path / "a").rename(tmp_path / "b")
    status, out, err = run_import(settings, tmp_path, tmp_path / "b", capsys, in_place=True)
    assert status == 0 and summary(out)["imported"] == 3, out + err
    for i in range(3):
        found = stored_instance(settings.data_dir, sop_uid(i))
        assert found is not None and found[0].location.startswith(f"ext:{tmp_path / 'b'}")
    assert all(location.startswith(f"ext:{tmp_path / 'b'}") for location in journaled(settings))
    status, out, err = run_import(settings, tmp_path, tmp_path / "b", capsys, in_place=True)
    assert summary(out)["skipped"] == 3, out + err  # where they are now: skipped again


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EROFS], ids=["EINVAL", "EROFS"])
def test_read_only_media_need_no_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """squashfs and iso9660 refuse fsync (EINVAL): they hold no dirty data, nothing to flush."""
    settings = settings_for(tmp_path)
    generate(tmp_path / "src", 2)
    real_fsync = os.fsync
    source = str(tmp_path / "src")

    def read_only_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(source):
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", read_only_fsync)
    status, out, err = run_import(settings, tmp_path, tmp_path / "src", capsys, in_place=True)
    assert status == 0 and summary(out)["imported"] == 2, out + err
