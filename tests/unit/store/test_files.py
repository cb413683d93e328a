"""FileStore specifics: layout, crash leftovers, copy fallbacks, error mapping."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pacs.errors import StorageError
from pacs.store.files import FileStore, _copy_file


def test_layout_is_sharded_and_named_by_key(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    info = store.put("1.2.840.1", [b"x"])
    d1, d2, name = info.location.split("/")
    assert len(d1) == len(d2) == 2 and name == "1.2.840.1.dcm"
    assert (tmp_path / info.location).read_bytes() == b"x"
    # A key that is no safe file name is replaced by its hash.
    odd = store.put("../../evil key", [b"y"])
    assert ".." not in odd.location and store.get(odd.location) == b"y"
    assert not list((tmp_path / ".tmp").iterdir())


def test_crash_leftovers_removed_at_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FileStore(tmp_path)
    info = store.put("1.2.3", [b"kept"])
    (tmp_path / ".tmp" / "deadbeef").write_bytes(b"half a blob")
    reopened = FileStore(tmp_path)
    assert not (tmp_path / ".tmp" / "deadbeef").exists()
    assert "deadbeef" in caplog.text
    assert list(reopened.locations()) == [info.location]


@pytest.mark.parametrize("broken", [("copy_file_range",), ("copy_file_range", "sendfile")])
def test_copy_fallbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: tuple[str, ...]
) -> None:
    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    for name in broken:
        monkeypatch.setattr(os, name, refuse)
    data = os.urandom(3 * (1 << 20) + 17)
    src = tmp_path / "spool"
    src.write_bytes(data)
    store = FileStore(tmp_path / "store")
    info = store.put("1.2.3", [b"head", src, b"tail"])
    assert store.get(info.location) == b"head" + data + b"tail"
    assert info.size == len(data) + 8


@pytest.mark.parametrize(
    "broken", [(), ("copy_file_range",), ("copy_file_range", "sendfile")]
)
def test_copy_starts_at_the_file_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: tuple[str, ...]
) -> None:
    """Compaction seeks the source to a record first: every fallback copies from there."""

    def refuse(*args: object) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    for name in broken:
        monkeypatch.setattr(os, name, refuse)
    data = os.urandom(2 * (1 << 20) + 333)
    (tmp_path / "src").write_bytes(data)
    (tmp_path / "dst").write_bytes(b"keep")
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY)
    try:
        start, count = 1000, (1 << 20) + 4321
        os.lseek(src, start, os.SEEK_SET)
        os.lseek(dst, 4, os.SEEK_SET)
        assert _copy_file(src, dst, count) == count
        assert os.lseek(src, 0, os.SEEK_CUR) == start + count
        assert os.lseek(dst, 0, os.SEEK_CUR) == 4 + count
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == b"keep" + data[start : start + count]


def test_other_copy_errors_are_storage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "copy_file_range", fail)
    src = tmp_path / "spool"
    src.write_bytes(b"abc")
    store = FileStore(tmp_path / "store")
    with pytest.raises(StorageError, match="I/O error"):
        store.put("1.2.3", [src])
    assert list(store.locations()) == []
    assert not list((tmp_path / "store" / ".tmp").iterdir())  # the temporary file is gone


def test_missing_part_file_is_storage_error(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    with pytest.raises(StorageError, match=r"1\.2\.3"):
        store.put("1.2.3", [tmp_path / "no-such-spool"])


def test_unusable_root_is_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="file"):
        FileStore(tmp_path / "file")


def test_closed_store_refuses(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    info = store.put("1.2.3", [b"x"])
    store.close()
    with pytest.raises(StorageError):
        store.get(info.location)
    with pytest.raises(StorageError):
        store.put("1.2.4", [b"x"])
