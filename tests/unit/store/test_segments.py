"""SegmentStore specifics: recovery, roll-over, several writers, tombstones, big spooled parts."""

from __future__ import annotations

import errno
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import xxhash

from pacs.errors import BlobNotFound, StorageError
from pacs.store import segment_format as fmt
from pacs.store.crc import crc32
from pacs.store.segments import SegmentStore


def blobs(store: SegmentStore, n: int, size: int = 1000, prefix: str = "1.2") -> dict[str, bytes]:
    """Put n distinct blobs; location -> bytes."""
    out = {}
    for i in range(n):
        data = hashlib.sha256(f"{prefix}.{i}".encode()).digest() * (size // 32)
        out[store.put(f"{prefix}.{i}", [data]).location] = data
    return out


def seg_path(root: Path, location: str) -> Path:
    return root / location.split(":")[0]


def test_location_and_layout(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, writer_id="w3")
    info = store.put("1.2.3", [b"abc"])
    assert info.location == f"w3-00000001.seg:{fmt.HEADER_SIZE}:3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w3-00000001.seg"]
    raw = (tmp_path / "w3-00000001.seg").read_bytes()
    assert raw[:4] == fmt.MAGIC and raw[-3:] == b"abc" and b"1.2.3" in raw[: fmt.HEADER_SIZE]
    assert list(store.iter_records()) == [(info.location, "1.2.3")]


@pytest.mark.parametrize(
    "bogus",
    [
        ":88:3",
        "w0-00000001.seg:89:2",
        "w0-00000001.seg:88:4",
        "w0-00000001.seg:088:3",
        "w0-00000001.seg:0:3",
        "w0-00000002.seg:88:3",
        "compact-00000001.seg:88:3",
    ],
)
def test_locations_not_pointing_at_a_record(tmp_path: Path, bogus: str) -> None:
    store = SegmentStore(tmp_path)
    store.put("1.2.3", [b"abc"])
    with pytest.raises(BlobNotFound):
        store.get(bogus)
    with pytest.raises(BlobNotFound):
        store.delete(bogus)


def test_bad_arguments(tmp_path: Path) -> None:
    for writer in ("", "compact", "a-b", "../x", "x" * 33):
        with pytest.raises(ValueError):
            SegmentStore(tmp_path, writer_id=writer)
    with pytest.raises(ValueError):
        SegmentStore(tmp_path, segment_size=100)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError):
        SegmentStore(tmp_path / "file")


def test_long_key(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    key = "1." * 100
    info = store.put(key, [b"x"])
    ((_, stored),) = store.iter_records()
    assert stored.startswith("#") and len(stored) <= fmt.KEY_MAX
    assert store.get(info.location) == b"x"


# -- recovery ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        b"\x00" * 10,  # zeros, as a file system may show after a crash
        fmt.pack_header(fmt.KIND_BLOB, b"1.9", 500, 0)[:40],  # half a header
        fmt.pack_header(fmt.KIND_BLOB, b"1.9", 500, 0) + b"y" * 100,  # header, part of data
        os.urandom(3000),
    ],
)
def test_torn_tail_is_cut(tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture) -> None:
    store = SegmentStore(tmp_path)
    stored = blobs(store, 5)
    store.close()
    path = tmp_path / "w0-00000001.seg"
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(tail)
    with caplog.at_level(logging.INFO):
        reopened = SegmentStore(tmp_path)
    if tail.count(0) == len(tail):  # what a crash leaves after a zero-filled tail, too
        assert f"dropped {len(tail)} bytes of zero-filled space at offset {size}" in caplog.text
    else:
        assert f"torn tail of {len(tail)} bytes at offset {size}" in caplog.text
    assert path.stat().st_size == size
    for location, data in stored.items():
        assert reopened.get(location) == data
    info = reopened.put("1.3", [b"after"])
    assert reopened.get(info.location) == b"after"
    assert sorted(reopened.locations()) == sorted([*stored, info.location])


def test_records_inside_a_torn_tail_are_not_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A torn record's data may hold what looks like a record (here a tombstone of another
    blob, e.g. in a private tag): recovery must not search it for records."""
    store = SegmentStore(tmp_path, prefill=0)
    kept = store.put("1.2.1", [b"A" * 5000]).location
    target = kept.encode()
    embedded = fmt.pack_header(fmt.KIND_TOMBSTONE, b"1.2.1", len(target), crc32(target)) + target
    start = store._tail
    store.put("1.2.2", [b"\0" * 1000 + embedded + b"P" * 200_000], durable=False)
    store.close()
    path = tmp_path / "w0-00000001.seg"
    os.truncate(path, start + fmt.HEADER_SIZE + 10_000)  # a crash while 1.2.2 was written
    with caplog.at_level(logging.WARNING):
        reopened = SegmentStore(tmp_path, prefill=0)
    assert f"torn tail of {fmt.HEADER_SIZE + 10_000} bytes at offset {start}" in caplog.text
    assert "corrupt" not in caplog.text
    assert path.stat().st_size == start
    assert reopened.get(kept) == b"A" * 5000
    assert list(reopened.iter_own_records()) == [(kept, "1.2.1")]
    reopened.close()
    assert SegmentStore(tmp_path, writer_id="w1").get(kept) == b"A" * 5000


def test_bad_crc_of_last_record_is_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SegmentStore(tmp_path)
    stored = blobs(store, 3)
    store.close()
    last = list(stored)[-1]
    path = seg_path(tmp_path, last)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # inside the last blob's data: its crc no longer matches
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING):
        reopened = SegmentStore(tmp_path)
    assert f"torn tail of {fmt.HEADER_SIZE + len(stored[last])} bytes" in caplog.text
    assert sorted(reopened.locations()) == sorted(list(stored)[:-1])


def test_corruption_inside_is_kept_not_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SegmentStore(tmp_path)
    stored = blobs(store, 4)
    store.close()
    second = list(stored)[1]
    path = seg_path(tmp_path, second)
    raw = bytearray(path.read_bytes())
    data_offset = int(second.split(":")[1])
    raw[data_offset + 7] ^= 0xFF  # data crc of record 2 fails
    raw[data_offset + 1000 + 2] ^= 0xFF  # and record 3's header is broken: resync past it
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING):
        reopened = SegmentStore(tmp_path)
    assert "corrupt bytes" in caplog.text and "torn tail" not in caplog.text
    assert path.stat().st_size > len(raw)  # nothing cut; sealed and a new segment started
    last = list(stored)[3]
    assert reopened.get(last) == stored[last]
    info = reopened.put("1.4", [b"new"])
    assert info.location.startswith("w0-00000002.seg:")


def test_roll_over(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_size=8192)
    stored = blobs(store, 30)
    names = store.segments()
    assert len(names) >= 4
    assert all(p.stat().st_size <= 8192 + 400 for p in tmp_path.glob("*.seg"))
    stats = {s.name: s for s in store.segment_stats()}
    assert [stats[n].sealed for n in names] == [True] * (len(names) - 1) + [False]
    big = store.put("1.big", [b"z" * 20000])  # bigger than a segment: gets one of its own
    assert store.get(big.location) == b"z" * 20000
    store.close()
    reopened = SegmentStore(tmp_path, segment_size=8192)
    for location, data in stored.items():
        assert reopened.get(location) == data
    assert sorted(reopened.locations()) == sorted([*stored, big.location])


def test_crash_between_new_segment_and_seal(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    stored = blobs(store, 3)
    store.close()
    (tmp_path / "w0-00000002.seg").write_bytes(b"")  # created, then the crash
    reopened = SegmentStore(tmp_path)
    stats = {s.name: s for s in reopened.segment_stats()}
    assert stats["w0-00000001.seg"].sealed and not stats["w0-00000002.seg"].sealed
    assert sorted(reopened.locations()) == sorted(stored)


def test_torn_footer_is_rewritten(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_size=4096)
    stored = blobs(store, 8)
    store.close()
    first = tmp_path / "w0-00000001.seg"
    os.truncate(first, first.stat().st_size - 5)  # the footer is torn
    reopened = SegmentStore(tmp_path, segment_size=4096)
    assert {s.name: s.sealed for s in reopened.segment_stats()}["w0-00000001.seg"]
    assert sorted(reopened.locations()) == sorted(stored)


# -- several writers ----------------------------------------------------------------------------


def test_two_writers_share_a_root(tmp_path: Path) -> None:
    a = SegmentStore(tmp_path, writer_id="w0", segment_size=8192)
    b = SegmentStore(tmp_path, writer_id="w1", segment_size=8192)
    from_a = blobs(a, 20, prefix="1.a")
    from_b = blobs(b, 20, prefix="1.b")
    everything = {**from_a, **from_b}
    for store in (a, b):
        for location, data in everything.items():
            assert store.get(location) == data
    gone = next(iter(from_a))
    b.delete(gone)  # a tombstone in w1's segment for a blob in w0's
    assert gone not in set(a.locations())  # listing rescans every writer's segments
    b.close()
    a.close()
    c = SegmentStore(tmp_path, writer_id="w2")
    with pytest.raises(BlobNotFound):
        c.get(gone)
    assert sorted(c.locations()) == sorted(set(everything) - {gone})


def _child(root: str, writer: str, n: int) -> dict[str, str]:
    store = SegmentStore(Path(root), writer_id=writer, segment_size=64 * 1024)
    out = {}
    for i in range(n):
        data = f"{writer}-{i}".encode() * (i + 1)
        out[store.put(f"1.{writer}.{i}", [data], durable=False).location] = data.hex()
        if i % 10 == 9:
            store.flush()
    store.close()
    return out


def test_processes_write_concurrently(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        results = pool.starmap(_child, [(str(tmp_path), f"p{k}", 120) for k in range(3)])
    reader = SegmentStore(tmp_path, writer_id="reader")
    expected = {loc: bytes.fromhex(h) for r in results for loc, h in r.items()}
    assert len(expected) == 360
    assert sorted(reader.locations()) == sorted(expected)
    for location, data in expected.items():
        assert reader.get(location) == data


# -- tombstones, spooled parts -------------------------------------------------------------------


def test_tombstones_survive_reopen_and_roll(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_size=4096)
    stored = blobs(store, 12)
    dead = list(stored)[::4]
    for location in dead:
        store.delete(location)
    blobs(store, 6, prefix="1.later")  # rolls: tombstones move into sealed indexes
    store.close()
    reopened = SegmentStore(tmp_path, segment_size=4096)
    for location in dead:
        with pytest.raises(BlobNotFound):
            reopened.get(location)
    assert not set(dead) & set(reopened.locations())
    assert sum(s.dead_bytes for s in reopened.segment_stats()) == 992 * len(dead)


@pytest.mark.parametrize("writer", ["w0", "w1"], ids=["own", "other"])
@pytest.mark.parametrize(
    ("at", "mask"), [(2, 0x80), (-1, 0x01)], ids=["not-utf8", "other-location"]
)
def test_a_damaged_tombstone_in_a_seal_is_not_trusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, writer: str, at: int, mask: int
) -> None:
    """One flipped bit in a seal's tombstone section: the segment's own tombstone records are
    walked instead (the seal was read without its CRC, and the open failed or the delete was
    undone)."""
    store = SegmentStore(tmp_path, segment_size=4096)
    gone = store.put("1.2.1", [b"A" * 1000]).location
    kept = store.put("1.2.2", [b"B" * 1000]).location
    store.delete(gone)
    store.put("1.2.3", [b"C" * 3000])  # rolls: w0-00000001.seg is sealed with the tombstone
    store.close()
    path = tmp_path / "w0-00000001.seg"
    raw = bytearray(path.read_bytes())
    i = raw.rfind(gone.encode())  # the tombstone's copy in the seal's index
    raw[i + at % len(gone)] ^= mask
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING):
        reopened = SegmentStore(tmp_path, writer_id=writer, segment_size=4096)
    assert "segment w0-00000001.seg: seal index fails its CRC" in caplog.text
    assert reopened.get(kept) == b"B" * 1000
    with pytest.raises(BlobNotFound):
        reopened.get(gone)
    assert gone not in set(reopened.locations())
    assert kept in set(reopened.locations())
    reopened.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = SegmentStore(tmp_path, writer_id=writer, segment_size=4096)
    # Its writer sealed it again from its verified records; to others it stays damaged.
    assert ("seal index fails its CRC" in caplog.text) == (writer != "w0")
    listed = set(again.locations())
    assert kept in listed and gone not in listed


def test_damaged_tombstone_records_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another writer's unsealed segment is walked: a tombstone record whose data fails its
    CRC, or names no location (not UTF-8), kills nothing and stops no open."""
    store = SegmentStore(tmp_path)
    kept = store.put("1.2.1", [b"x" * 100]).location
    store.close()
    named = kept.encode()
    flipped = bytes([named[-1] ^ 0x01])
    torn = fmt.pack_header(fmt.KIND_TOMBSTONE, b"1.2.1", len(named), crc32(named))
    odd = b"\xff\xfe"
    (tmp_path / "other-00000001.seg").write_bytes(
        torn + named[:-1] + flipped
        + fmt.pack_header(fmt.KIND_TOMBSTONE, b"1.2.1", len(odd), crc32(odd)) + odd
    )
    with caplog.at_level(logging.WARNING):
        reopened = SegmentStore(tmp_path)
    assert "segment other-00000001.seg: the tombstone at 0 is damaged" in caplog.text
    assert reopened.get(kept) == b"x" * 100
    assert list(reopened.locations()) == [kept]


@pytest.mark.parametrize("kind", ["folder", "fifo", "dangling-link", "link-to-folder"])
def test_entries_named_like_segments_that_are_no_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A folder (or FIFO, or link to neither) named like a segment is skipped with a warning
    naming it; the store opened and listed, compacted, reindexed from, as without it."""
    store = SegmentStore(tmp_path, segment_size=4096)
    stored = blobs(store, 8)
    store.close()
    odd = tmp_path / "backup-00000001.seg"
    if kind == "folder":
        odd.mkdir()
    elif kind == "fifo":
        os.mkfifo(odd)
    elif kind == "dangling-link":
        odd.symlink_to(tmp_path / "nowhere")
    else:
        (tmp_path / "elsewhere").mkdir()
        odd.symlink_to(tmp_path / "elsewhere")
    with caplog.at_level(logging.WARNING):
        reopened = SegmentStore(tmp_path, segment_size=4096)
        assert sorted(reopened.locations()) == sorted(stored)
        assert odd.name not in reopened.segments()
        reopened.compact(lambda location: True, lambda mapping: None)
    assert f"{odd} is named like a segment but is no regular file" in caplog.text
    assert caplog.text.count(str(odd)) == 1  # once per store, not at every listing
    for location, data in stored.items():
        assert reopened.get(location) == data


def test_a_segment_that_cannot_be_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SegmentStore(tmp_path)
    blobs(store, 2)
    store.close()
    (tmp_path / "other-00000001.seg").write_bytes(b"")
    read_sealed_index = fmt.read_sealed_index

    def failing(fd: int, size: int, records: bool = True) -> fmt.SegmentIndex | None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("other-00000001.seg"):
            raise OSError(errno.EIO, "I/O error")
        return read_sealed_index(fd, size, records)

    monkeypatch.setattr(fmt, "read_sealed_index", failing)
    with pytest.raises(StorageError, match=r"other-00000001\.seg: \[Errno 5\] I/O error"):
        SegmentStore(tmp_path)


def test_large_spooled_part_is_copied_in(tmp_path: Path) -> None:
    big = os.urandom(6 * (1 << 20) + 3)
    spool = tmp_path / "spool"
    spool.write_bytes(big)
    store = SegmentStore(tmp_path / "store")
    info = store.put("1.2.3", [b"DICM", spool, b"end"])
    expected = b"DICM" + big + b"end"
    assert info.size == len(expected)
    assert info.digest == "x3:" + xxhash.xxh3_128(expected).hexdigest()
    assert store.get(info.location, 4, len(big)) == big
    assert b"".join(store.iter_chunks(info.location)) == expected
    store.close()
    # The recovery scan verifies the big record's crc and keeps it.
    assert SegmentStore(tmp_path / "store").get(info.location) == expected


@pytest.mark.parametrize("broken", [("copy_file_range",), ("copy_file_range", "sendfile")])
def test_copy_fallbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: tuple[str, ...]
) -> None:
    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    for name in broken:
        monkeypatch.setattr(os, name, refuse)
    data = os.urandom(3 * (1 << 20) + 17)
    spool = tmp_path / "spool"
    spool.write_bytes(data)
    store = SegmentStore(tmp_path / "store")
    first = store.put("1.2.2", [b"x"])
    info = store.put("1.2.3", [b"head", spool, b"tail"])
    assert store.get(info.location) == b"head" + data + b"tail"
    assert store.get(first.location) == b"x"


def test_failed_put_leaves_no_partial_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SegmentStore(tmp_path / "store")
    first = store.put("1.2.2", [b"first"])
    spool = tmp_path / "spool"
    spool.write_bytes(b"abc" * 1000)

    def fail(*args: object) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "copy_file_range", fail)
    with pytest.raises(StorageError, match="I/O error"):
        store.put("1.2.3", [b"head", spool])
    with pytest.raises(StorageError, match=r"1\.2\.4"):
        store.put("1.2.4", [tmp_path / "no-such-spool"])
    monkeypatch.undo()
    after = store.put("1.2.5", [b"after"])
    assert list(store.locations()) == [first.location, after.location]
    store.close()
    assert list(SegmentStore(tmp_path / "store").locations()) == [first.location, after.location]


# -- zero-filled space ahead of the tail (small puts) ---------------------------------------------


def wait_fill(store: SegmentStore) -> None:
    with store._fill_lock:  # held while a filler runs
        pass


def check_then_reopen(store: SegmentStore, root: Path, expected: dict[str, bytes]) -> None:
    """Every record reads back, and a reopened store finds exactly these."""
    for location, data in expected.items():
        assert store.get(location) == data
    store.close()
    reopened = SegmentStore(root)
    assert {loc for loc, _ in reopened.iter_records()} == set(expected)
    reopened.close()


def small_puts(store: SegmentStore, n: int, size: int = 900, prefix: str = "9") -> dict[str, bytes]:
    out = {}
    for i in range(n):
        data = hashlib.sha256(f"{prefix}.{i}".encode()).digest() * (size // 32)
        info = store.try_put(f"{prefix}.{i}", [data])
        if info is None:  # a roll, or a running fill in the way: the flush thread's put
            info = store.put(f"{prefix}.{i}", [data], durable=False)
        out[info.location] = data
    return out


def test_small_puts_keep_zeros_ahead_of_the_tail(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, prefill=64 * 1024)
    written = small_puts(store, 3)
    wait_fill(store)
    path = tmp_path / "w0-00000001.seg"
    raw = path.read_bytes()
    tail = max(int(loc.split(":")[1]) + int(loc.split(":")[2]) for loc in written)
    assert len(raw) >= tail + 32 * 1024 and raw[tail:].count(0) == len(raw) - tail
    written |= small_puts(store, 40, prefix="10")  # overwrite the zeros, refill as they go
    wait_fill(store)
    for location, data in written.items():
        assert store.get(location) == data
    store.close()  # a clean close cuts the zeros off
    tail = max(int(loc.split(":")[1]) + int(loc.split(":")[2]) for loc in written)
    assert path.stat().st_size == tail
    reopened = SegmentStore(tmp_path)
    assert {loc for loc, _ in reopened.iter_records()} == set(written)
    reopened.close()


def test_crash_with_zeros_ahead_recovers_without_a_torn_tail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    live = tmp_path / "live"
    store = SegmentStore(live, prefill=64 * 1024)
    written = small_puts(store, 5)
    store.flush()
    wait_fill(store)
    crashed = tmp_path / "crashed"  # the files as a kill -9 leaves them
    crashed.mkdir()
    for p in live.iterdir():
        (crashed / p.name).write_bytes(p.read_bytes())
    store.close()
    with caplog.at_level(logging.INFO, logger="pacs.store.segments"):
        recovered = SegmentStore(crashed)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("zero-filled space" in r.getMessage() for r in caplog.records)
    for location, data in written.items():
        assert recovered.get(location) == data
    tail = max(int(loc.split(":")[1]) + int(loc.split(":")[2]) for loc in written)
    assert (crashed / "w0-00000001.seg").stat().st_size == tail
    recovered.close()


def test_torn_record_before_the_zeros_is_still_a_torn_tail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SegmentStore(tmp_path, prefill=64 * 1024)
    written = small_puts(store, 3)
    wait_fill(store)
    path = tmp_path / "w0-00000001.seg"
    tail = max(int(loc.split(":")[1]) + int(loc.split(":")[2]) for loc in written)
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, fmt.MAGIC + b"\x07" * 20, tail)  # half a header written into the zeros
    os.close(fd)
    store._closed = True  # abandon it like a crash would (no clean close)
    store._close_fds()
    with caplog.at_level(logging.INFO, logger="pacs.store.segments"):
        recovered = SegmentStore(tmp_path)
    assert any("torn tail" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert {loc for loc, _ in recovered.iter_records()} == set(written)
    recovered.close()


def test_rolls_seal_segments_that_had_zeros_ahead(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_size=48 * 1024, prefill=16 * 1024)
    written = small_puts(store, 150, size=960)
    wait_fill(store)
    names = store.segments()
    assert len(names) >= 3
    for name in names[:-1]:  # sealed: the footer ends the file, no zeros after it
        fd = os.open(tmp_path / name, os.O_RDONLY)
        try:
            assert fmt.read_sealed_index(fd, os.fstat(fd).st_size, records=False) is not None
        finally:
            os.close(fd)
    check_then_reopen(store, tmp_path, written)


def test_try_put_of_bytes_writes_the_records_put_writes(tmp_path: Path) -> None:
    """try_put's path for parts in memory (bytes, bytearray) against put's general one: the
    same segment bytes, locations, sizes and digests; other parts take the general path."""
    parts = [[b"meta" * 30, b"data" * 2000], [bytearray(b"x" * 777)], [b"", b"y"],
             [memoryview(b"z" * 300)], [b"a" * 10, bytearray(b"b" * 5), b"c"]]
    fast, general = SegmentStore(tmp_path / "fast", prefill=0), SegmentStore(tmp_path / "gen",
                                                                            prefill=0)
    for i, p in enumerate(parts):
        a = fast.try_put(f"1.2.{i}", p)
        b = general.put(f"1.2.{i}", p, durable=False)
        assert a == b
        assert a is not None and fast.get(a.location) == b"".join(bytes(x) for x in p)
    fast.flush()
    general.flush()
    name = "w0-00000001.seg"
    assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "gen" / name).read_bytes()
    fast.close()
    general.close()
    reopened = SegmentStore(tmp_path / "fast", prefill=0)
    assert reopened.get(a.location) == b"a" * 10 + b"bbbbbc"
    reopened.close()


def test_puts_go_on_while_a_flush_waits_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flush's fdatasync runs outside the write lock: a put (and a roll) during it proceed,
    and the next flush makes the new put durable."""
    store = SegmentStore(tmp_path, segment_size=1 << 16, prefill=0)
    first = store.put("1.2.1", [b"a" * 1000], durable=False)
    entered, release = threading.Event(), threading.Event()
    synced: list[int] = []
    real = os.fdatasync

    def slow_disk(fd: int) -> None:
        if not entered.is_set():  # the flush's: the disk takes its time
            entered.set()
            assert release.wait(30)
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_disk)
    flusher = threading.Thread(target=store.flush)
    flusher.start()
    assert entered.wait(30)
    # The flush is inside its fdatasync: these must not wait for it.
    second = store.put("1.2.2", [b"b" * 1000], durable=False)
    rolled = store.put("1.2.3", [b"c" * 70000], durable=False)  # bigger than a segment: rolls
    assert flusher.is_alive()
    release.set()
    flusher.join(30)
    assert not flusher.is_alive()
    store.flush()
    monkeypatch.undo()
    written = {"1.2.1": (first, b"a" * 1000), "1.2.2": (second, b"b" * 1000),
               "1.2.3": (rolled, b"c" * 70000)}
    for _, (info, data) in written.items():
        assert store.get(info.location) == data
    store.close()
    reopened = SegmentStore(tmp_path, segment_size=1 << 16, prefill=0)
    for _, (info, data) in written.items():
        assert reopened.get(info.location) == data
    reopened.close()


def test_a_flush_with_nothing_new_waits_for_the_flush_still_syncing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put made before a flush that is inside its fdatasync is durable only when that
    fdatasync returns: a second flush (nothing new to sync) waits for it, and fails with it."""
    store = SegmentStore(tmp_path, prefill=0)
    store.put("1.2.1", [b"a" * 1000], durable=False)
    entered, release = threading.Event(), threading.Event()

    def failing_disk(fd: int) -> None:
        entered.set()
        assert release.wait(30)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_disk)

    def flush_in_thread(errors: list[BaseException], done: threading.Event) -> threading.Thread:
        def run() -> None:
            try:
                store.flush()
            except StorageError as exc:
                errors.append(exc)
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    first_errors: list[BaseException] = []
    flusher = flush_in_thread(first_errors, threading.Event())
    assert entered.wait(30)
    second_done = threading.Event()
    second_errors: list[BaseException] = []
    second = flush_in_thread(second_errors, second_done)
    assert not second_done.wait(0.3), "the second flush did not wait for the first one's sync"
    release.set()
    flusher.join(30)
    second.join(30)
    assert first_errors and second_errors
    monkeypatch.undo()
    store.close()


def test_try_put_never_rolls(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_size=8192, prefill=0)
    assert store.try_put("a", [b"a" * 5000]) is not None
    assert store.try_put("b", [b"b" * 5000]) is None  # would roll: creating files, fsyncs
    assert store.segments() == ["w0-00000001.seg"]
    info = store.put("b", [b"b" * 5000])
    assert store.segments() == ["w0-00000001.seg", "w0-00000002.seg"]
    assert store.get(info.location) == b"b" * 5000
    store.close()


def test_nothing_is_written_where_a_fill_runs(tmp_path: Path) -> None:
    """While a filler writes zeros past the zeroed end, a small put that would reach it is
    turned away (try_put -> None) and a blocking one stops the fill and waits for it."""
    import threading

    store = SegmentStore(tmp_path, prefill=64 * 1024)
    small_puts(store, 1)
    wait_fill(store)
    room = store._zeroed_end - store._tail
    store._fill_lock.acquire()  # as if a filler were running from the zeroed end
    store._fill_start = store._zeroed_end
    try:
        assert store.try_put("fits", [b"f" * 100]) is not None
        assert store.try_put("reaches", [b"r" * room]) is None
        done: list[str] = []
        putter = threading.Thread(
            target=lambda: done.append(store.put("big", [b"b" * room]).location))
        putter.start()
        putter.join(0.3)
        assert not done and store._fill_stop  # asked the fill to stop, waiting for it
    finally:
        store._fill_lock.release()
    putter.join(10)
    assert done and store.get(done[0]) == b"b" * room
    store.close()


def test_large_puts_append_without_filling(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, prefill=64 * 1024)
    info = store.put("large", [b"L" * 300_000], durable=True)
    assert not store._fill_lock.locked()
    assert (tmp_path / "w0-00000001.seg").stat().st_size == store._tail
    assert store.get(info.location) == b"L" * 300_000
    store.close()


def test_a_put_past_a_running_fill_stops_it(tmp_path: Path) -> None:
    """A large put reaching the fill's region stops the fill after its current chunk (not its
    fdatasync); records stay contiguous, so a reopen finds every one of them."""
    store = SegmentStore(tmp_path, prefill=8 << 20)
    first = small_puts(store, 1)
    large = store.put("large", [b"L" * (20 << 20)], durable=False)  # past the whole fill
    assert not store._fill_lock.locked()  # stopped (or done): never left running under it
    rest = small_puts(store, 5, prefix="11")
    store.flush()
    expected = {**first, large.location: b"L" * (20 << 20), **rest}
    check_then_reopen(store, tmp_path, expected)


def test_a_fill_that_cannot_start_leaves_the_put_standing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pacs.store.segments as segments_module

    store = SegmentStore(tmp_path, prefill=64 * 1024)

    def no_descriptors(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(segments_module.os, "open", no_descriptors)  # the filler's file
    info = store.try_put("1.2", [b"x" * 500])
    monkeypatch.undo()
    assert info is not None and store.get(info.location) == b"x" * 500
    assert not store._fill_lock.locked()  # never left held: later puts do not wait
    assert store.put("1.3", [b"y" * 200_000]).size == 200_000
    store.close()


def _same_open_file(a: int, b: int) -> bool:
    """Whether two descriptors share one open file (a dup does: its offset moves along)."""
    before = os.lseek(b, 0, os.SEEK_CUR)
    os.lseek(a, before + 12345, os.SEEK_SET)
    shared = os.lseek(b, 0, os.SEEK_CUR) == before + 12345
    os.lseek(a, before, os.SEEK_SET)
    return shared


def test_each_sync_path_has_an_open_file_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux reports a write-back error once per open file: the loops' sync target, ``flush``
    and the filler each fdatasync an open file of their own, opened before the segment's first
    record, so none takes another's report (a dup of the writer's descriptor would)."""
    import pacs.store.segments as segments_module

    store = SegmentStore(tmp_path, segment_size=256 * 1024, prefill=16 * 1024)
    flushed: list[int] = []
    real_fdatasync = os.fdatasync

    def recording_fdatasync(fd: int) -> None:
        flushed.append(os.dup(fd))
        real_fdatasync(fd)

    names = set()
    for round_ in range(2):  # the first segment, then the one after a roll
        store.put(f"1.{round_}", [b"a" * 100], durable=False)
        name, loop_fd = store.sync_target()
        assert name == store.active_segment
        names.add(name)
        with monkeypatch.context() as patch:
            patch.setattr(segments_module.os, "fdatasync", recording_fdatasync)
            store.flush()
        (flush_fd,) = flushed
        flushed.clear()
        writer_fd = store._wfd
        for a, b in ((loop_fd, writer_fd), (flush_fd, writer_fd), (loop_fd, flush_fd)):
            assert not _same_open_file(a, b)
        assert os.fstat(loop_fd).st_ino == os.fstat(writer_fd).st_ino == os.fstat(flush_fd).st_ino
        # Later sync targets of the same segment share the loops' open file: one at a time.
        _, again = store.sync_target()
        assert _same_open_file(loop_fd, again)
        for fd in (loop_fd, flush_fd, again):
            os.close(fd)
        store.put(f"2.{round_}", [b"b" * 300 * 1024])  # bigger than a segment: one of its own
    assert len(names) == 2
    # The filler writes its zeros through an open file of its own as well.
    store.put("3.1", [b"c" * 100], durable=False)  # a fresh segment, with room to fill
    shared: list[bool] = []
    real_open = os.open

    def recording_open(*args: Any, **kwargs: Any) -> int:
        fd = real_open(*args, **kwargs)
        shared.append(_same_open_file(fd, store._wfd))
        return fd

    with monkeypatch.context() as patch:
        patch.setattr(segments_module.os, "open", recording_open)
        assert store.try_put("3.2", [b"d" * 100]) is not None
    assert shared == [False]
    while store._fill_lock.locked():
        time.sleep(0.01)
    store.close()


def test_a_roll_that_cannot_open_the_next_segment_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors at a roll: the put fails, the half-made segment is gone (the next
    roll makes it again), and the sync target still names the file it syncs."""
    store = SegmentStore(tmp_path, segment_size=64 * 1024, prefill=0)
    first = store.put("1.1", [b"a" * 40_000])
    before = store.active_segment

    def no_descriptors(path: Path) -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    with monkeypatch.context() as patch:
        patch.setattr(SegmentStore, "_open_sync_files", staticmethod(no_descriptors))
        with pytest.raises(StorageError):
            store.put("1.2", [b"b" * 40_000])  # does not fit: a roll
    assert store.active_segment == before
    assert store.segments() == [before]
    name, fd = store.sync_target()
    assert name == before and os.fstat(fd).st_ino == os.fstat(store._wfd).st_ino
    os.close(fd)
    second = store.put("1.2", [b"b" * 40_000])  # the roll works now
    assert store.active_segment != before and len(store.segments()) == 2
    name, fd = store.sync_target()
    assert name == store.active_segment
    assert os.fstat(fd).st_ino == (tmp_path / name).stat().st_ino
    os.close(fd)
    check_then_reopen(store, tmp_path, {first.location: b"a" * 40_000,
                                        second.location: b"b" * 40_000})


@pytest.mark.parametrize("seal_fails", [False, True], ids=["sealed", "seal-failed"])
def test_the_loops_sync_the_old_segment_until_its_seal_is_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seal_fails: bool) -> None:
    """A roll creates the next segment, then seals (and fdatasyncs) the one it left. While
    that fdatasync runs, a loop's fdatasync of the new segment would not make its puts still
    in the old one durable: ``sync_target`` names the old segment until the seal is durable or
    its failure counted (a store checked after that sees the count move)."""
    import pacs.store.segments as segments_module

    store = SegmentStore(tmp_path, segment_size=64 * 1024, prefill=0)
    loop_put = store.try_put("1.1", [b"a" * 40_000])  # in the first segment, not durable yet
    assert loop_put is not None
    first = store.active_segment
    in_seal = threading.Event()
    release = threading.Event()
    real_fdatasync = os.fdatasync

    def slow_seal(fd: int) -> None:
        if os.fstat(fd).st_size > 40_000 and not in_seal.is_set():  # the first segment's
            in_seal.set()
            assert release.wait(10)
            if seal_fails:
                raise OSError(errno.EIO, "Input/output error")
        real_fdatasync(fd)

    monkeypatch.setattr(segments_module.os, "fdatasync", slow_seal)
    errors: list[Exception] = []

    def roll() -> None:
        try:
            store.put("1.2", [b"b" * 40_000])  # does not fit: rolls, durable
        except StorageError as exc:
            errors.append(exc)

    roller = threading.Thread(target=roll)
    roller.start()
    try:
        assert in_seal.wait(10)
        assert store.active_segment != first  # the put goes to the new segment...
        failures = store.failures
        name, fd = store.sync_target()  # ...but the loops still sync the one being sealed
        inode = os.fstat(fd).st_ino
        os.close(fd)
        assert name == first and inode == (tmp_path / first).stat().st_ino
    finally:
        release.set()
        roller.join(10)
    name, fd = store.sync_target()
    os.close(fd)
    assert name == store.active_segment != first
    if seal_fails:
        assert store.failures == failures + 1 and len(errors) == 1  # counted before the move
    else:
        assert store.failures == failures and not errors
        assert store.get(loop_put.location) == b"a" * 40_000
    monkeypatch.undo()
    store.close()


def test_failed_fdatasyncs_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed fdatasync may leave the lost pages marked clean, so a later one succeeds
    without them: the store counts each failure for the writers."""
    import pacs.store.segments as segments_module

    store = SegmentStore(tmp_path, prefill=0)
    store.put("1.1", [b"a" * 100], durable=False)
    assert store.failures == 0

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(segments_module.os, "fdatasync", eio)
        with pytest.raises(StorageError):
            store.flush()
        with pytest.raises(StorageError):
            store.put("1.2", [b"b" * 100])  # a durable put
    assert store.failures == 2
    store.note_sync_failure(OSError(errno.EIO, "Input/output error"), "the loop's fdatasync")
    assert store.failures == 3
    store.flush()  # the file itself is usable again for new puts
    store.close()


# -- direct writes of large records (O_DIRECT) ------------------------------------------------


def cached_pages(path: Path) -> list[bool]:
    """Which pages of ``path`` are in the page cache (mincore of a mapping never touched)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        try:
            vec = (ctypes.c_ubyte * pages)()
            assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0
            return [bool(v & 1) for v in vec]
        finally:
            libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    finally:
        os.close(fd)


def direct_io_here(root: Path) -> bool:
    probe = root / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


LARGE_SIZES = [300_000, 262_144 - 88, 525_000, 5_000_000]  # the last: more than one buffer


def large_then_small(store: SegmentStore, prefix: str = "L") -> dict[str, bytes]:
    """Large records at unaligned tails between small ones; location -> bytes."""
    out: dict[str, bytes] = {}
    for i, size in enumerate(LARGE_SIZES):
        small = bytes([i]) * (333 + 1000 * i)
        out[store.put(f"{prefix}.s{i}", [small], durable=False).location] = small
        data = hashlib.sha256(f"{prefix}.{i}".encode()).digest() * (size // 32)
        meta = b"M" * (128 + i)  # a Part-10 header part, as ingest passes it
        info = store.put(f"{prefix}.{i}", [meta, bytearray(data)], durable=False)
        out[info.location] = meta + data
    store.flush()
    return out


def test_large_records_written_directly_equal_buffered_ones(tmp_path: Path) -> None:
    """The same puts through the direct path and the page cache give byte-identical segments,
    and the direct path really bypassed the cache for whole blocks."""
    if not direct_io_here(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    direct = SegmentStore(tmp_path / "direct", prefill=0)
    buffered = SegmentStore(tmp_path / "buffered", prefill=0, direct_min=0)
    written = large_then_small(direct)
    assert large_then_small(buffered) == written
    assert direct._dfd >= 0 and direct.direct_min > 0 and buffered._dfd < 0
    name = "w0-00000001.seg"
    raw = (tmp_path / "direct" / name).read_bytes()
    cached = cached_pages(tmp_path / "direct" / name)
    assert raw == (tmp_path / "buffered" / name).read_bytes()
    for location, data in written.items():
        assert direct.get(location) == data
    # read_bytes above pulled every page in again: check residency on a fresh store's file
    fresh = SegmentStore(tmp_path / "fresh", prefill=0)
    info = fresh.put("big", [b"h" * 100, bytes(range(256)) * 4000], durable=True)
    pages = cached_pages(tmp_path / "fresh" / name)
    offset = int(info.location.split(":")[1])
    first_whole = -(-(offset - fmt.HEADER_SIZE) // 4096) + 1  # past the buffered head block
    last_whole = (offset + info.size) // 4096 - 1
    assert last_whole > first_whole
    assert not any(pages[first_whole:last_whole]), "whole blocks went through the page cache"
    assert fresh.get(info.location) == b"h" * 100 + bytes(range(256)) * 4000
    for store in (direct, buffered, fresh):
        store.close()
    del cached
    check_then_reopen(SegmentStore(tmp_path / "direct"), tmp_path / "direct", written)


def test_a_record_header_never_goes_direct(tmp_path: Path) -> None:
    """A large record starting on a block boundary: its header's block goes through the page
    cache with the records before it (a header reaching the disk before their pages would make
    a power cut look like corruption), the blocks after it go direct."""
    if not direct_io_here(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    store = SegmentStore(tmp_path, prefill=0)
    first = store.put("1.2.1", [b"a" * (4096 - fmt.HEADER_SIZE)], durable=False)
    assert store._tail == 4096
    big = store.put("1.2.2", [bytes(range(256)) * 2000], durable=True)
    pages = cached_pages(tmp_path / "w0-00000001.seg")
    assert pages[1] and not any(pages[2:(4096 + fmt.HEADER_SIZE + big.size) // 4096])
    check_then_reopen(store, tmp_path, {first.location: b"a" * (4096 - fmt.HEADER_SIZE),
                                        big.location: bytes(range(256)) * 2000})


def test_out_of_descriptors_skips_direct_writes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE opening the direct descriptor: that record goes buffered, the next ones direct."""
    if not direct_io_here(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    real_open = os.open
    refusals = []

    def open_once_refused(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT and not refusals:
            refusals.append(path)
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_once_refused)
    store = SegmentStore(tmp_path, prefill=0)
    a = store.put("1.2.1", [b"x" * 600_000], durable=False)
    assert refusals and store._dfd < 0 and store.direct_min > 0
    b = store.put("1.2.2", [b"y" * 600_000], durable=True)
    assert store._dfd >= 0
    monkeypatch.undo()
    check_then_reopen(store, tmp_path, {a.location: b"x" * 600_000, b.location: b"y" * 600_000})


@pytest.mark.parametrize("refusal", [errno.EINVAL, errno.EOPNOTSUPP])
def test_direct_writes_refused_fall_back_to_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    refusal: int,
) -> None:
    """A file system refusing O_DIRECT (at open, or EINVAL at the write, e.g. an alignment it
    does not take) gets the same records through the page cache, and direct writes stop."""
    real_open, real_pwrite = os.open, os.pwrite

    def open_refusing(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(refusal, os.strerror(refusal))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_refusing)
    store = SegmentStore(tmp_path / "a", prefill=0)
    written = large_then_small(store)
    assert store.direct_min == 0 and store._dfd < 0
    monkeypatch.undo()
    check_then_reopen(store, tmp_path / "a", written)

    if not direct_io_here(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    store = SegmentStore(tmp_path / "b", prefill=0)
    refused: list[int] = []

    def pwrite_refusing(fd: int, data: bytes, offset: int) -> int:
        if fd == store._dfd:
            refused.append(offset)
            raise OSError(refusal, os.strerror(refusal))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite_refusing)
    with caplog.at_level(logging.WARNING, logger="pacs.store.segments"):
        written = large_then_small(store)
    monkeypatch.undo()
    assert len(refused) == 1 and store.direct_min == 0
    assert "direct writes refused" in caplog.text
    check_then_reopen(store, tmp_path / "b", written)


def test_a_failed_direct_write_leaves_no_partial_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not direct_io_here(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    store = SegmentStore(tmp_path, prefill=0)
    first = store.put("1.2.1", [b"first"], durable=False)
    real_pwrite = os.pwrite

    def full_disk(fd: int, data: bytes, offset: int) -> int:
        if fd == store._dfd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(StorageError, match="No space left"):
        store.put("1.2.2", [b"x" * 600_000], durable=False)
    monkeypatch.undo()
    after = store.put("1.2.3", [b"y" * 600_000], durable=True)
    assert store.direct_min > 0  # a full disk is no reason to stop writing directly
    check_then_reopen(store, tmp_path, {first.location: b"first", after.location: b"y" * 600_000})


def test_direct_writes_across_rolls_and_into_zero_filled_space(tmp_path: Path) -> None:
    """Large records land in space small puts zero-filled, and in new segments after rolls
    (each segment its own direct descriptor); all read back after a reopen."""
    store = SegmentStore(tmp_path, segment_size=2 << 20, prefill=1 << 20)
    expected: dict[str, bytes] = {}
    for round_ in range(4):
        expected.update(small_puts(store, 20, prefix=f"s{round_}"))
        wait_fill(store)
        data = bytes([round_]) * 700_000
        expected[store.put(f"big{round_}", [b"meta", data], durable=False).location] = (
            b"meta" + data)
    store.flush()
    assert len(store.segments()) >= 2
    check_then_reopen(store, tmp_path, expected)


def test_spooled_parts_go_direct_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data set spooled to a file (over ``spool_memory_limit``) is read chunk by chunk into the
    aligned buffer: the same segment bytes as the page-cache copy, its blocks never cached; a
    spool file that shrinks under the copy fails the put and leaves no partial record."""
    if not direct_io_here(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    big, small = tmp_path / "big.spool", tmp_path / "small.spool"
    big.write_bytes(os.urandom(5 * (1 << 20) + 3))
    small.write_bytes(b"s" * 1000)
    parts: list[list[bytes | Path]] = [[b"meta" * 40, big], [small, b"x" * 300_000, small],
                                       [b"m" * 7, big, b"tail"]]
    stores = {"direct": SegmentStore(tmp_path / "direct", prefill=0),
              "buffered": SegmentStore(tmp_path / "buffered", prefill=0, direct_min=0)}
    infos = {name: [store.put(f"1.2.{i}", p, durable=False) for i, p in enumerate(parts)]
             for name, store in stores.items()}
    for store in stores.values():
        store.flush()
    assert infos["direct"] == infos["buffered"]
    name = "w0-00000001.seg"
    pages = cached_pages(tmp_path / "direct" / name)
    offset = int(infos["direct"][0].location.split(":")[1])
    whole = range(-(-offset // 4096) + 1, (offset + infos["direct"][0].size) // 4096 - 1)
    assert len(whole) > 1000 and not any(pages[i] for i in whole)
    assert ((tmp_path / "direct" / name).read_bytes()
            == (tmp_path / "buffered" / name).read_bytes())
    direct = stores["direct"]
    expected = {info.location: b"".join(x if isinstance(x, bytes) else x.read_bytes() for x in p)
                for info, p in zip(infos["direct"], parts, strict=True)}
    real_preadv = os.preadv

    def shrunk(fd: int, buffers: list[memoryview], offset: int) -> int:
        # The digest reads 1 MiB chunks and sees the whole file; the copy into the 2 MiB
        # aligned buffer then finds it cut short.
        if len(buffers[0]) > fmt.CHUNK:
            return 0
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", shrunk)
    with pytest.raises(StorageError, match="shrank"):
        direct.put("1.2.9", [b"h", big], durable=False)
    monkeypatch.undo()
    stores["buffered"].close()
    check_then_reopen(direct, tmp_path / "direct", expected)
