"""`pacs import` durability: a failed catalog checkpoint is an error and makes the next import
replay the writer's log; stale writers (import or server workers) are replayed; files whose
file meta carries a stale SOP Instance UID are imported; in-place files are fsynced before
they are indexed."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from bench.bench_import import generate, sop_uid
from pacs.archive import open_catalog
from pacs.config import Settings
from pacs.dicom import part10
from pacs.errors import CatalogError
from pacs.importer import import_command, recover_stale_writers
from pacs.index.catalog import Catalog
from pacs.index.writer import CatalogWriter
from pacs.store.segments import SegmentStore
from pacs.writers import clean_marker, leave_clean_marker, replay_all_marker
from tests.dicomgen import make_ct
from tests.integration.archive_check import statistics, stored_instance
from tests.integration.test_import import summary


def settings_for(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28)


def run_import(settings: Settings, tmp_path: Path, src: Path, capsys: pytest.CaptureFixture[str],
               in_place: bool = False) -> tuple[int, str, str]:
    """``pacs import`` in this process (one worker): exit status, stdout, stderr."""
    status = import_command(settings, [src], report=tmp_path / "report.txt", jobs=1,
                            in_place=in_place)
    out, err = capsys.readouterr()
    return status, out, err


def written_unindexed(settings: Settings, writer: str) -> str:
    """A writer killed after its blob's fdatasync, before the index commit (no clean marker);
    the instance's SOP Instance UID."""
    ds = make_ct()
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    meta = part10.file_meta(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "MOD")
    store = SegmentStore(settings.blob_dir, writer_id=writer)
    try:
        store.put(ds.SOPInstanceUID, [meta, buffer.getvalue()], durable=True)
    finally:
        store.close()
    return str(ds.SOPInstanceUID)


def test_failed_checkpoint_fails_the_import_and_the_next_one_replays(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's last checkpoint failed (its LMDB sync may have lost commits): exit 2, not
    "imported"; the next import replays the writer's whole log though its stop was clean."""
    settings = settings_for(tmp_path)
    status, out, err = run_import(settings, tmp_path, generate(tmp_path / "a", 3)[0].parent,
                                  capsys)
    assert status == 0, out + err
    src = generate(tmp_path / "b", 3, first=3)[0].parent

    def failing_sync(self: Catalog, name: str, value: str) -> None:
        raise CatalogError("catalog sync failed: [Errno 5] Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(Catalog, "checkpoint", failing_sync)
        status, out, err = run_import(settings, tmp_path, src, capsys)
    assert status == 2, out + err
    assert "writer import0: 1 catalog checkpoint(s) failed" in err
    assert "checkpoint(s) failed" in (tmp_path / "report.txt").read_text()
    assert replay_all_marker(settings.state_dir, "import0").exists()
    assert clean_marker(settings.state_dir, "import0").exists()  # close() still left it

    # What the failed sync lost (its checkpoint is past the instance's segment).
    catalog = open_catalog(settings)
    try:
        assert catalog.delete_instance(sop_uid(4)) is not None
    finally:
        catalog.close()
    status, out, err = run_import(settings, tmp_path, src, capsys)
    assert status == 0, out + err
    assert summary(out)["skipped"] == 3  # replayed before the files were looked at
    assert stored_instance(settings.data_dir, sop_uid(4)) is not None
    assert not replay_all_marker(settings.state_dir, "import0").exists()


def test_recover_replays_a_clean_writer_with_a_replay_all_marker(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    settings.state_dir.mkdir(parents=True)
    first = written_unindexed(settings, "import0")
    leave_clean_marker(settings.state_dir, "import0")
    second = written_unindexed(settings, "import1")
    leave_clean_marker(settings.state_dir, "import1")
    replay_all_marker(settings.state_dir, "import0").write_text("a catalog checkpoint failed\n")
    assert recover_stale_writers(settings) == ["import0"]
    assert stored_instance(settings.data_dir, first) is not None
    assert stored_instance(settings.data_dir, second) is None  # clean: left alone
    assert not replay_all_marker(settings.state_dir, "import0").exists()
    assert recover_stale_writers(settings) == []  # once


def test_recover_stale_server_worker_writers(tmp_path: Path) -> None:
    """The `pacs serve` supervisor's use: ``w<N>`` writers not among its own workers, stale
    (no clean marker) and not locked, are replayed; import writers are not touched."""
    settings = settings_for(tmp_path)
    settings.state_dir.mkdir(parents=True)
    uids = {writer: written_unindexed(settings, writer)
            for writer in ["w0", "w1", "w10", "w11", "w12", "import3", "wal"]}
    leave_clean_marker(settings.state_dir, "w12")
    held = os.open(settings.state_dir / "w11.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # w11 is running elsewhere
        assert recover_stale_writers(settings, prefix="w", skip={"w0", "w1"}) == ["w10"]
    finally:
        os.close(held)
    indexed = {writer for writer, uid in uids.items()
               if stored_instance(settings.data_dir, uid) is not None}
    assert indexed == {"w10"}
    assert clean_marker(settings.state_dir, "w10").exists()
    assert recover_stale_writers(settings) == ["import3"]  # the default: import writers
    assert recover_stale_writers(settings, prefix="w", skip={"w0", "w1"}) == ["w11"]


@pytest.mark.parametrize("in_place", [False, True], ids=["copy", "in-place"])
def test_stale_file_meta_uid_is_imported(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         in_place: bool) -> None:
    """Copies whose data set got new SOP Instance UIDs (anonymised) but whose file meta still
    carries the old ones are new instances: imported, not skipped; a re-run skips them."""
    settings = settings_for(tmp_path)
    originals = generate(tmp_path / "src", 3)
    status, out, err = run_import(settings, tmp_path, tmp_path / "src", capsys, in_place)
    assert status == 0 and summary(out)["imported"] == 3, out + err
    copies = tmp_path / "copies"
    copies.mkdir()
    for i, path in enumerate(originals):
        data = path.read_bytes()
        _, start = part10.read_file_meta(data)
        old, new = sop_uid(i).encode(), sop_uid(100 + i).encode()
        assert data[start:].count(old) == 1 and data[:start].count(old) == 1
        (copies / path.name).write_bytes(data[:start] + data[start:].replace(old, new))
    status, out, err = run_import(settings, tmp_path, copies, capsys, in_place)
    assert status == 0, out + err
    assert summary(out)["imported"] == 3 and summary(out)["skipped"] == 0
    assert statistics(settings.data_dir)["instances"] == 6
    assert all(stored_instance(settings.data_dir, sop_uid(100 + i)) for i in range(3))
    status, out, err = run_import(settings, tmp_path, copies, capsys, in_place)
    assert summary(out)["skipped"] == 3 and summary(out)["imported"] == 0, out + err
    assert statistics(settings.data_dir)["instances"] == 6


def test_in_place_files_are_fsynced_before_they_are_indexed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path)
    paths = generate(tmp_path / "src", 5, per_folder=2)
    events: list[tuple[str, str]] = []
    real_fsync, real_submit = os.fsync, CatalogWriter.submit

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def recording_submit(self: CatalogWriter, record: Any, *args: Any, **kwargs: Any) -> Any:
        events.append(("index", record.location))
        return real_submit(self, record, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(CatalogWriter, "submit", recording_submit)
    status, out, err = run_import(settings, tmp_path, tmp_path / "src", capsys, in_place=True)
    assert status == 0 and summary(out)["imported"] == 5, out + err
    for path in paths:
        indexed = events.index(("index", f"ext:{path}"))
        assert ("fsync", str(path)) in events[:indexed], path
        assert ("fsync", str(path.parent)) in events[:indexed], path.parent
