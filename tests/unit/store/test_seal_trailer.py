"""The seal index's trailer: the tombstone section's own CRC, so that an open checks the
tombstones without reading the whole index; seals written before it are still read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pacs.store import segment_format as fmt

GONE = "w0-00000001.seg:88:1000"


def _seal(path: Path, index: bytes) -> tuple[int, int]:
    """A segment holding only a seal with ``index``; (fd, size)."""
    path.write_bytes(fmt.seal_bytes(0, index))
    return os.open(path, os.O_RDONLY), path.stat().st_size


def _index(keys: list[bytes], tombstones: list[str]) -> bytes:
    entries = b"".join(fmt.encode_record_entry(88 + 200 * i, 100, k) for i, k in enumerate(keys))
    return fmt.encode_index(entries, len(keys), tombstones)


def _flip(path: Path, needle: bytes, at: int, mask: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[raw.index(needle) + at] ^= mask
    path.write_bytes(raw)


def test_a_flipped_bit_in_the_tombstones_is_caught_by_the_trailer(tmp_path: Path) -> None:
    path = tmp_path / "w0-00000002.seg"
    fd, size = _seal(path, _index([b"1.2.3", b"1.2.4"], [GONE]))
    try:
        index = fmt.read_sealed_index(fd, size, records=False)
        assert index is not None and index.tombstones == [GONE]
    finally:
        os.close(fd)
    _flip(path, GONE.encode(), len(GONE) - 1, 0x01)  # another location, still UTF-8
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(fmt.DamagedSeal, match="fails its CRC"):
            fmt.read_sealed_index(fd, size, records=False)
    finally:
        os.close(fd)


def test_an_open_reads_the_tombstones_only(tmp_path: Path) -> None:
    """Damage in the record entries is not looked at by records=False (the full read sees it):
    an open reads the tombstone section and the trailer, not the whole index."""
    path = tmp_path / "w0-00000002.seg"
    fd, size = _seal(path, _index([b"1.2.3", b"1.2.4"], [GONE]))
    os.close(fd)
    _flip(path, b"1.2.4", 0, 0x80)
    fd = os.open(path, os.O_RDONLY)
    try:
        index = fmt.read_sealed_index(fd, size, records=False)
        assert index is not None and index.tombstones == [GONE] and index.records == []
        with pytest.raises(fmt.DamagedSeal, match="seal index fails its CRC"):
            fmt.read_sealed_index(fd, size)
    finally:
        os.close(fd)


def test_the_full_read_sees_through_the_trailer(tmp_path: Path) -> None:
    """Records, tombstones and sources come back whole; the trailer is no source."""
    entries = fmt.encode_record_entry(88, 100, b"1.2.3") + fmt.encode_record_entry(276, 9, b"4")
    origins = ["w0-00000001.seg:88:100", "w0-00000001.seg:300:9"]
    fd, size = _seal(tmp_path / "compact-00000001.seg",
                     fmt.encode_index(entries, 2, [GONE], origins))
    try:
        index = fmt.read_sealed_index(fd, size)
        assert index is not None
        assert index.records == [(88, 100, "1.2.3"), (276, 9, "4")]
        assert index.tombstones == [GONE] and index.sources() == origins
    finally:
        os.close(fd)


def _old_index(keys: list[bytes], tombstones: list[str]) -> bytes:
    """An index as written before trailers."""
    return _index(keys, tombstones)[: -8]


@pytest.mark.parametrize(("at", "mask"), [(2, 0x80), (-1, 0x01)], ids=["not-utf8", "other"])
def test_an_old_seal_is_read_without_its_crc(tmp_path: Path, at: int, mask: int) -> None:
    """A seal written before trailers: the tombstones are only decoded (as before the whole
    index was checked at every open); one that does not decode raises DamagedSeal (the caller
    walks the segment), never a UnicodeDecodeError."""
    path = tmp_path / "w0-00000002.seg"
    fd, size = _seal(path, _old_index([b"1.2.3"], [GONE]))
    try:
        index = fmt.read_sealed_index(fd, size, records=False)
        assert index is not None and index.tombstones == [GONE]
        index = fmt.read_sealed_index(fd, size)
        assert index is not None and index.records == [(88, 100, "1.2.3")]
    finally:
        os.close(fd)
    _flip(path, GONE.encode(), at % len(GONE), mask)
    fd = os.open(path, os.O_RDONLY)
    try:
        if mask == 0x80:
            with pytest.raises(fmt.DamagedSeal, match="does not decode"):
                fmt.read_sealed_index(fd, size, records=False)
        else:  # undetectable without reading the whole index, as before
            assert fmt.read_sealed_index(fd, size, records=False) is not None
        with pytest.raises(fmt.DamagedSeal, match="fails its CRC"):
            fmt.read_sealed_index(fd, size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("damage", ["count", "length"])
def test_an_old_seal_whose_tombstone_section_is_cut_raises_damaged_seal(
    tmp_path: Path, damage: str
) -> None:
    index = bytearray(_old_index([b"1.2.3"], [GONE]))
    if damage == "count":
        index[0] = 5  # five tombstones in the room of one
    else:
        index[16] = 0xFF  # the first tombstone's length runs past the section
    fd, size = _seal(tmp_path / "w0-00000002.seg", bytes(index))
    try:
        with pytest.raises(fmt.DamagedSeal):
            fmt.read_sealed_index(fd, size, records=False)
    finally:
        os.close(fd)


def test_an_old_seal_that_ends_like_a_trailer_is_read(tmp_path: Path) -> None:
    """A key ending in the trailer's magic and 4 more bytes: the whole index's CRC tells it is
    no damaged trailer."""
    key = b"1.2.3TMB1abcd"
    fd, size = _seal(tmp_path / "w0-00000002.seg", _old_index([key], [GONE]))
    try:
        index = fmt.read_sealed_index(fd, size, records=False)
        assert index is not None and index.tombstones == [GONE]
        index = fmt.read_sealed_index(fd, size)
        assert index is not None and index.records == [(88, 100, key.decode())]
    finally:
        os.close(fd)
