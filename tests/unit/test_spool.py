"""Spool: small data sets stay in memory, large ones go to a temp file, discard leaves nothing."""

from __future__ import annotations

from pathlib import Path

from pacs.server.spool import Spool


def test_small_stays_in_memory(tmp_path: Path) -> None:
    spool = Spool(100, tmp_path)
    spool.write(memoryview(b"abc"))
    spool.write(b"def")
    assert spool.finish() == b"abcdef"
    assert list(tmp_path.iterdir()) == []


def test_large_goes_to_disk(tmp_path: Path) -> None:
    spool = Spool(10, tmp_path)
    buffer = bytearray(b"0123456789")
    spool.write(memoryview(buffer)[:6])
    buffer[:] = b"XXXXXXXXXX"  # the receive buffer is reused: the spool copied it already
    spool.write(b"abcdefgh")
    result = spool.finish()
    assert isinstance(result, Path)
    assert result.read_bytes() == b"012345abcdefgh"
    assert spool.size == 14
    spool.discard()
    assert not result.exists()


def test_discard_midway_removes_the_file(tmp_path: Path) -> None:
    spool = Spool(4, tmp_path)
    spool.write(b"123456789")
    assert len(list(tmp_path.iterdir())) == 1
    spool.discard()
    assert list(tmp_path.iterdir()) == []
