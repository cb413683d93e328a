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


def test_fragments_are_copied_once_into_one_buffer(tmp_path: Path) -> None:
    """One fragment: its bytes; several: one bytearray they were appended to (no join), each
    copied when written (the receive buffer is reused afterwards)."""
    one = Spool(1000, tmp_path)
    one.write(memoryview(b"only"))
    single = one.finish()
    assert type(single) is bytes and single == b"only"
    spool = Spool(1000, tmp_path)
    buffer = bytearray(b"first")
    spool.write(memoryview(buffer))
    buffer[:] = b"XXXXX"
    spool.write(memoryview(b"second"))
    buffer2 = bytearray(b"third")
    spool.write(memoryview(buffer2))
    buffer2[:] = b"YYYYY"
    result = spool.finish()
    assert type(result) is bytearray and result == b"firstsecondthird"
    assert spool.size == 16 and list(tmp_path.iterdir()) == []
    empty = Spool(10, tmp_path)
    assert empty.finish() == b""


def test_a_first_fragment_told_more_follow_starts_the_bytearray(tmp_path: Path) -> None:
    """last=False on the first fragment (the P-DATA header says more follow): it is copied
    once, into the bytearray the others are appended to; the result is the same as without
    the hint, spilling to disk included."""
    spool = Spool(1000, tmp_path)
    buffer = bytearray(b"first")
    spool.write(memoryview(buffer), last=False)
    buffer[:] = b"XXXXX"  # the receive buffer is reused: the spool holds its own copy
    spool.write(memoryview(b"-second"), last=True)
    result = spool.finish()
    assert type(result) is bytearray and result == b"first-second"
    alone = Spool(1000, tmp_path)
    alone.write(memoryview(b"partial"), last=False)  # a data set cut short still finishes
    assert alone.finish() == b"partial"
    spilled = Spool(6, tmp_path)
    spilled.write(memoryview(b"abcd"), last=False)
    spilled.write(memoryview(b"efgh"), last=True)
    path = spilled.finish()
    assert isinstance(path, Path) and path.read_bytes() == b"abcdefgh"
    spilled.discard()


def test_spilling_after_several_fragments_keeps_their_order(tmp_path: Path) -> None:
    spool = Spool(12, tmp_path)
    for part in (b"aaaa", b"bbbb", b"cccc", b"dddd", b"ee"):
        spool.write(memoryview(part))
    result = spool.finish()
    assert isinstance(result, Path) and result.read_bytes() == b"aaaabbbbccccddddee"
    spool.discard()
