"""On-disk format of the segment store: records, the seal trailer, locations, and scanners.

A segment is a file ``<owner>-<seq:08d>.seg`` of records, each::

    header (88 bytes, little endian)
        magic      4s   b"PSG1"
        kind       B    1 = blob, 2 = tombstone, 3 = seal
        flags      B    0 (reserved)
        key_len    H    bytes of key used (<= 64)
        data_len   Q    bytes of data following the header
        data_crc   I    zlib.crc32 of the data
        key        64s  UTF-8 key, zero padded (SOP Instance UIDs are at most 64 characters)
        header_crc I    zlib.crc32 of the 84 bytes above: lets a scanner re-find boundaries
    data (data_len bytes)
        blob:      the complete Part-10 file
        tombstone: the location (UTF-8) of the deleted blob; key = the deleted blob's key
        seal:      the segment's index (see ``encode_index``); always the last record

A sealed segment ends with a 16-byte footer ``<Q seal_offset><4s b"PSND"><I crc>`` so its index
is found with two reads, without walking the records. The header has a fixed size so a location
(``<segment>:<data offset>:<data length>``) points at its own header: ``get`` verifies it with
one small read and needs no lookup.
"""

from __future__ import annotations

import bisect
import hashlib
import operator
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pacs.store.crc import crc32
from pacs.store.digest import Digest

MAGIC = b"PSG1"
KIND_BLOB = 1
KIND_TOMBSTONE = 2
KIND_SEAL = 3
KEY_MAX = 64

_HEAD = struct.Struct("<4sBBHQI64s")  # the part covered by header_crc
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _CRC.size  # 88
_FOOTER = struct.Struct("<Q4sI")
FOOTER_SIZE = _FOOTER.size  # 16
_FOOTER_MAGIC = b"PSND"
_INDEX_HEAD = struct.Struct("<IIQ")  # tombstones, records, bytes of the tombstone section
_TOMB_ENTRY = struct.Struct("<H")
_REC_ENTRY = struct.Struct("<QQB")  # data offset, data length, key length; then the key
# After the record entries of a compact segment's index: where each record was first put (its
# origin, the same for every copy). Older readers stop after the entries and never see it.
_SOURCES_MAGIC = b"SRC1"
# The index's last 8 bytes: a magic and the CRC of its head and tombstone section, so that an
# open checks the tombstones with one more small read instead of reading and checking the whole
# index (seals written before it have none: older readers stop before it).
_TOMB_TRAILER = struct.Struct("<4sI")
_TOMB_MAGIC = b"TMB1"
CHUNK = 1 << 20

# Writer ids become file names and location prefixes: keep them plain. "compact" names the
# segments written by compaction, so no writer may take it.
WRITER_ID = re.compile(r"[A-Za-z0-9_]{1,32}")
COMPACT_OWNER = "compact"
SEGMENT_NAME = re.compile(r"([A-Za-z0-9_]{1,32})-(\d{8})\.seg")
_LOCATION = re.compile(r"([A-Za-z0-9_]{1,32}-\d{8}\.seg):([1-9]\d{0,18}):(0|[1-9]\d{0,18})")


def segment_name(owner: str, seq: int) -> str:
    return f"{owner}-{seq:08d}.seg"


def parse_segment_name(name: str) -> tuple[str, int] | None:
    """(owner, seq) of a segment file name, None for any other file."""
    m = SEGMENT_NAME.fullmatch(name)
    return (m[1], int(m[2])) if m else None


def format_location(segment: str, data_offset: int, length: int) -> str:
    return f"{segment}:{data_offset}:{length}"


def parse_location(location: str) -> tuple[str, int, int] | None:
    """(segment, data offset, length), or None when ``location`` is not one of ours."""
    m = _LOCATION.fullmatch(location)
    if m is None or int(m[2]) < HEADER_SIZE:
        return None
    return m[1], int(m[2]), int(m[3])


def key_bytes(key: str) -> bytes:
    """The key as stored: UTF-8, or ``#`` + a hash when longer than the 64 bytes reserved."""
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) <= KEY_MAX:
        return raw
    return b"#" + hashlib.blake2b(raw, digest_size=31).hexdigest().encode()


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded record header; ``offset`` is where the record starts."""

    offset: int
    kind: int
    key: str
    data_len: int
    data_crc: int

    @property
    def data_offset(self) -> int:
        return self.offset + HEADER_SIZE

    @property
    def end(self) -> int:
        return self.offset + HEADER_SIZE + self.data_len


def pack_header(kind: int, key: bytes, data_len: int, data_crc: int) -> bytes:
    head = _HEAD.pack(MAGIC, kind, 0, len(key), data_len, data_crc, key)
    return head + _CRC.pack(crc32(head))


def unpack_header(raw: bytes, offset: int) -> Header | None:
    """The header in ``raw`` (read at ``offset``), or None when it is not a valid header."""
    if len(raw) < HEADER_SIZE:
        return None
    head = raw[: _HEAD.size]
    magic, kind, _flags, key_len, data_len, data_crc, key = _HEAD.unpack(head)
    if magic != MAGIC or kind not in (KIND_BLOB, KIND_TOMBSTONE, KIND_SEAL) or key_len > KEY_MAX:
        return None
    if _CRC.unpack_from(raw, _HEAD.size)[0] != crc32(head):
        return None
    return Header(offset, kind, key[:key_len].decode("utf-8", "surrogatepass"), data_len, data_crc)


def read_header(fd: int, offset: int) -> Header | None:
    return unpack_header(os.pread(fd, HEADER_SIZE, offset), offset)


def crc_range(fd: int, offset: int, length: int, crc: int = 0) -> int:
    """crc32 of ``length`` bytes at ``offset``, read in chunks (never the whole range at once)."""
    end = offset + length
    while offset < end:
        chunk = os.pread(fd, min(CHUNK, end - offset), offset)
        if not chunk:
            raise EOFError(f"short read at {offset}")
        crc = crc32(chunk, crc)
        offset += len(chunk)
    return crc


# -- the seal record and footer -------------------------------------------------------------------


@dataclass(slots=True)
class SegmentIndex:
    """What a segment holds: blob records (data offset, length, key) and tombstoned locations."""

    records: list[tuple[int, int, str]] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)
    sealed: bool = False
    end: int = 0  # end of the last valid record (of the footer, when sealed)
    # Compact segments: where each record was first put (every copy of it names the same), as
    # stored (``sources`` decodes it: kept encoded, it costs a third of the memory).
    source_section: bytes = b""

    def sources(self) -> list[str]:
        """Where each record was first put (compact segments; [] for the others)."""
        if not self.source_section:
            return []
        try:
            return _decode_strings(self.source_section, len(self.records))
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise DamagedSeal(f"sources section does not decode: {exc}") from exc


def _encode_strings(strings: list[str]) -> bytes:
    return b"".join(_TOMB_ENTRY.pack(len(raw)) + raw for raw in (t.encode() for t in strings))


def encode_index(records: bytes | bytearray, n_records: int, tombstones: list[str],
                 sources: list[str] | None = None) -> bytes:
    """The seal record's data; ``records`` is a concatenation of ``encode_record_entry``;
    ``sources`` (compaction): where each record was first put, in their order. It ends with
    the trailer holding the tombstone section's CRC (``_TOMB_TRAILER``)."""
    tomb = _encode_strings(tombstones)
    head = _INDEX_HEAD.pack(len(tombstones), n_records, len(tomb))
    out = head + tomb + bytes(records)
    if sources:
        assert len(sources) == n_records
        out += _SOURCES_MAGIC + _encode_strings(sources)
    return out + _TOMB_TRAILER.pack(_TOMB_MAGIC, crc32(tomb, crc32(head)))


def encode_record_entry(data_offset: int, length: int, key: bytes) -> bytes:
    return _REC_ENTRY.pack(data_offset, length, len(key)) + key


class DamagedSeal(ValueError):
    """A segment's footer is intact but its seal's index fails its CRC or does not decode."""


def tombstone_location(data: bytes) -> str | None:
    """The location a tombstone record's data names; None when it names none (not UTF-8)."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _decode_tombstones(raw: bytes, count: int) -> list[str]:
    out: list[str] = []
    pos = 0
    for _ in range(count):
        (n,) = _TOMB_ENTRY.unpack_from(raw, pos)
        if pos + 2 + n > len(raw):
            raise DamagedSeal("index section cut short")
        out.append(raw[pos + 2 : pos + 2 + n].decode())
        pos += 2 + n
    return out


def _decode_records(raw: bytes, count: int) -> tuple[list[tuple[int, int, str]], int]:
    out: list[tuple[int, int, str]] = []
    pos = 0
    for _ in range(count):
        off, length, n = _REC_ENTRY.unpack_from(raw, pos)
        pos += _REC_ENTRY.size
        out.append((off, length, raw[pos : pos + n].decode("utf-8", "surrogatepass")))
        pos += n
    return out, pos


def decode_records(raw: bytes, count: int) -> list[tuple[int, int, str]]:
    return _decode_records(raw, count)[0]


def _decode_strings(raw: bytes, count: int) -> list[str]:
    """``count`` strings encoded by ``_encode_strings`` (a fast path for plain ASCII)."""
    if not raw.isascii():
        out = _decode_tombstones(raw, count)
    else:
        text = raw.decode("ascii")  # the same positions as the bytes
        out = []
        add = out.append
        pos = 0
        for _ in range(count):
            n = raw[pos] | raw[pos + 1] << 8
            pos += 2
            add(text[pos : pos + n])
            pos += n
        if pos > len(raw):
            raise DamagedSeal("index section cut short")
    return out


def _source_section(raw: bytes) -> bytes:
    """The sources section that may follow the record entries (``raw``: what follows them),
    without its magic; b"" when there is none."""
    return raw[len(_SOURCES_MAGIC) :] if raw.startswith(_SOURCES_MAGIC) else b""


def pack_footer(seal_offset: int) -> bytes:
    head = struct.pack("<Q4s", seal_offset, _FOOTER_MAGIC)
    return head + _CRC.pack(crc32(head))


def read_sealed_index(fd: int, size: int, records: bool = True) -> SegmentIndex | None:
    """The index of a sealed segment from its footer; None when it is not (validly) sealed.

    With ``records=False`` only the tombstone section is read and decoded (cheap: run for every
    segment at every open); its own CRC, in the index's trailer, is checked, since a tombstone
    damaged into another location would kill a live blob (seals written before that trailer
    have none: their tombstones are only decoded). Raises DamagedSeal when footer and seal
    header are whole but the index fails a CRC or does not decode: walk the records instead.
    """
    if size < HEADER_SIZE + FOOTER_SIZE:
        return None
    raw = os.pread(fd, FOOTER_SIZE, size - FOOTER_SIZE)
    seal_offset, magic, crc = _FOOTER.unpack(raw)
    if magic != _FOOTER_MAGIC or crc != crc32(raw[:12]):
        return None
    head = read_header(fd, seal_offset)
    if head is None or head.kind != KIND_SEAL or head.end + FOOTER_SIZE != size:
        return None
    if head.data_len < _INDEX_HEAD.size:
        raise DamagedSeal(f"seal index of {head.data_len} bytes is too short")
    index_head = os.pread(fd, _INDEX_HEAD.size, head.data_offset)
    n_tomb, n_rec, tomb_len = _INDEX_HEAD.unpack(index_head)
    if not records:
        if n_tomb == tomb_len == 0:
            return SegmentIndex(sealed=True, end=size)  # nothing to decode, nothing to trust
        return SegmentIndex(tombstones=_read_tombstones(fd, head, index_head), sealed=True,
                            end=size)
    rest = os.pread(fd, head.data_len - _INDEX_HEAD.size, head.data_offset + _INDEX_HEAD.size)
    if crc32(rest, crc32(index_head)) != head.data_crc:
        raise DamagedSeal("seal index fails its CRC")
    try:
        index = SegmentIndex(tombstones=_decode_tombstones(rest[:tomb_len], n_tomb),
                             sealed=True, end=size)
        index.records, used = _decode_records(rest[tomb_len:], n_rec)
        tail = rest[tomb_len + used :]
        if _has_trailer(tail, crc32(rest[:tomb_len], crc32(index_head))):
            tail = tail[: -_TOMB_TRAILER.size]
        index.source_section = _source_section(tail)
        return index
    except (struct.error, UnicodeDecodeError) as exc:
        raise DamagedSeal(f"seal index does not decode: {exc}") from exc


def _has_trailer(raw: bytes, crc: int) -> bool:
    """Whether ``raw`` (the end of an index) ends with the trailer of a tombstone section whose
    CRC (with the index head) is ``crc``."""
    return (len(raw) >= _TOMB_TRAILER.size
            and _TOMB_TRAILER.unpack_from(raw, len(raw) - _TOMB_TRAILER.size)
            == (_TOMB_MAGIC, crc))


def _read_tombstones(fd: int, head: Header, index_head: bytes) -> list[str]:
    """The tombstones of a seal's index, checked against the trailer's CRC when it has one."""
    n_tomb, _n_rec, tomb_len = _INDEX_HEAD.unpack(index_head)
    if tomb_len > head.data_len - _INDEX_HEAD.size:
        raise DamagedSeal(f"tombstone section of {tomb_len} bytes runs past the index")
    tomb = os.pread(fd, tomb_len, head.data_offset + _INDEX_HEAD.size)
    if len(tomb) != tomb_len:
        raise DamagedSeal("tombstone section cut short")
    end = head.data_offset + head.data_len
    if head.data_len >= _INDEX_HEAD.size + tomb_len + _TOMB_TRAILER.size:
        trailer = os.pread(fd, _TOMB_TRAILER.size, end - _TOMB_TRAILER.size)
        magic, crc = _TOMB_TRAILER.unpack(trailer)
        if magic == _TOMB_MAGIC and crc != crc32(tomb, crc32(index_head)):
            # Damaged, or a seal written before trailers whose index happens to end alike:
            # the whole index's CRC tells (it covers the trailer too).
            rest = os.pread(fd, head.data_len - _INDEX_HEAD.size,
                            head.data_offset + _INDEX_HEAD.size)
            if crc32(rest, crc32(index_head)) != head.data_crc:
                raise DamagedSeal("seal index fails its CRC (its tombstone section's too)")
    try:
        return _decode_tombstones(tomb, n_tomb)
    except (struct.error, UnicodeDecodeError) as exc:
        raise DamagedSeal(f"tombstone section does not decode: {exc}") from exc


def dead_in(index: SegmentIndex, locations: list[str]) -> list[int]:
    """Positions in ``index.records`` of the records that ``locations`` (in its segment) name.
    Records are in file order: each is looked up by its data offset (a full search only for
    one not found so)."""
    records = index.records
    out = []
    for location in locations:
        parsed = parse_location(location)
        if parsed is None:
            continue
        entry = parsed[1:]
        i = bisect.bisect_left(records, entry[0], key=operator.itemgetter(0))
        if i < len(records) and records[i][:2] == entry:
            out.append(i)
        else:
            out.extend(j for j, rec in enumerate(records) if rec[:2] == entry)
    return out


def by_segment(locations: Iterable[str]) -> dict[str, list[str]]:
    """Segment name -> the ``locations`` in it."""
    out: dict[str, list[str]] = {}
    for location in locations:
        out.setdefault(location.partition(":")[0], []).append(location)
    return out


def dead_origins(compact: Mapping[str, SegmentIndex], sources: Mapping[str, list[str]],
                 dead: set[str]) -> set[str]:
    """The origins of dead groups: those ``dead`` names, and those of the copies it names, in
    the ``compact`` segments whose decoded ``sources`` are given."""
    pointing = by_segment(dead)
    origins: set[str] = set()
    for name, named in sources.items():
        origins.update(dead.intersection(named))
        if name in pointing:
            origins.update(named[i] for i in dead_in(compact[name], pointing[name]))
    return origins


def copy_groups(indexes: Mapping[str, SegmentIndex], dead: set[str]) -> dict[str, list[str]]:
    """Location -> every location holding a copy of the same record (one put that compaction
    copied, maybe again and again) and its origin, itself included; only for the records with
    copies one of which, or whose origin, ``dead`` names (a tombstone covers them all).

    Every copy names the origin (where the record was first put): the key of its group. So the
    first pass collects the origins of the dead copies and the dead origins, the second the
    copies of those; locations are formatted only in segments ``dead`` points into and for the
    members of a dead group."""
    compact = {name: index for name, index in indexes.items() if index.source_section}
    if not compact or not dead:  # no compact segment (or only ones written before origins)
        return {}
    sources = {name: index.sources() for name, index in compact.items()}  # while it runs only
    origins = dead_origins(compact, sources, dead)
    if not origins:
        return {}
    groups: dict[str, list[str]] = {origin: [origin] for origin in origins}
    for name, named in sources.items():
        if origins.isdisjoint(named):
            continue
        records = compact[name].records
        for i in [i for i, source in enumerate(named) if source in origins]:
            data_offset, length, _key = records[i]
            groups[named[i]].append(format_location(name, data_offset, length))
    return {location: members for members in groups.values() for location in members}


def seal_bytes(offset: int, index: bytes) -> bytes:
    """Seal record (at ``offset``) + footer: appended as one write, then fdatasync'd."""
    return pack_header(KIND_SEAL, b"", len(index), crc32(index)) + index + pack_footer(offset)


# -- scanning -------------------------------------------------------------------------------------


def walk(fd: int, size: int, start: int = 0) -> Iterator[Header]:
    """Headers from ``start`` on, trusting lengths; stops at the first invalid or cut record.

    No data checksums: for segments other processes are appending to (their tail may be half
    written, which just ends the walk) and for listing. Recovery uses ``validate`` instead.
    """
    offset = start
    while offset + HEADER_SIZE <= size:
        head = read_header(fd, offset)
        if head is None or head.end > size:
            return
        yield head
        if head.kind == KIND_SEAL:
            return
        offset = head.end


def resync(fd: int, start: int, size: int) -> int | None:
    """Offset of the next valid header after ``start`` (searching for the magic), or None."""
    pos = start + 1
    while pos + HEADER_SIZE <= size:
        chunk = os.pread(fd, min(CHUNK + HEADER_SIZE, size - pos), pos)
        i = chunk.find(MAGIC)
        while i >= 0:
            head = read_header(fd, pos + i)
            if head is not None and head.end <= size:
                return pos + i
            i = chunk.find(MAGIC, i + 1)
        pos += CHUNK
    return None


@dataclass(slots=True)
class Validation:
    """What ``validate`` found in one segment."""

    records: list[Header] = field(default_factory=list)  # header and data checksums verified
    good_end: int = 0  # end of the last verified record: a torn tail starts here
    corrupt: list[tuple[int, int]] = field(default_factory=list)  # (offset, end) skipped ranges
    sealed: bool = False


def validate(fd: int, size: int) -> Validation:
    """Check every record (header and data crc); note the ranges that fail.

    A record whose header is intact but whose data fails its crc is skipped by its length; an
    invalid header is skipped by searching for the next valid one. An intact header whose
    record runs past the end of the file is the torn tail: the scan stops there (searching on
    would read the torn record's own data, where a blob may hold what looks like a record).
    Whatever follows the last verified record is the torn tail; ranges before it are
    corruption (kept, never truncated).
    """
    out = Validation()
    offset = 0
    while offset < size:
        head = read_header(fd, offset) if offset + HEADER_SIZE <= size else None
        if head is not None and head.end > size:
            break  # a record cut by a crash: nothing after its header is a record of ours
        if head is not None:
            if crc_range(fd, head.data_offset, head.data_len) == head.data_crc:
                out.records.append(head)
                out.good_end = head.end
                if head.kind == KIND_SEAL:
                    out.sealed = True
                    return out
            else:
                out.corrupt.append((offset, head.end))
            offset = head.end
            continue
        nxt = resync(fd, offset, size)
        out.corrupt.append((offset, nxt if nxt is not None else size))
        if nxt is None:
            break
        offset = nxt
    # Damage after the last verified record is the torn tail, not corruption.
    out.corrupt = [(a, b) for a, b in out.corrupt if a < out.good_end]
    return out


# -- I/O helpers ----------------------------------------------------------------------------------


def digest_file(fd: int, size: int, digest: Digest, crc: int) -> int:
    """Feed a spooled file to the digest and return the running crc32 (1 MiB chunks)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view[: min(CHUNK, size - offset)]], offset)
        if n == 0:
            raise OSError(f"spooled file shorter than its {size} bytes")
        digest.update(view[:n])
        crc = crc32(view[:n], crc)
        offset += n
    return crc


def pwrite_all(fd: int, views: Sequence[memoryview | bytes], offset: int) -> int:
    """Write all of ``views`` at ``offset`` (retrying short writes); the end offset."""
    pending = [memoryview(v) for v in views if len(v)]
    while pending:
        n = os.pwritev(fd, pending[:1024], offset)  # IOV_MAX is 1024 on Linux
        offset += n
        while n and pending:
            if n >= len(pending[0]):
                n -= len(pending.pop(0))
            else:
                pending[0] = pending[0][n:]
                n = 0
    return offset


def pread_all(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    chunks = [data]
    got = len(data)
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            raise OSError("segment ends inside a blob")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
