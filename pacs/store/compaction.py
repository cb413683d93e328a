"""Compaction of the segment store: rewrite mostly-dead sealed segments, reclaim their space.

One compaction runs at a time per root (``compact.lock``, flock). Candidates are sealed segments
that are not the highest-numbered of their owner (that one is, or may become, a writer's active
segment; never deleting it also means a segment name is never reused). Live records (not
tombstoned, and ``is_live(location)`` per the catalog) of a group of candidates are copied by the
kernel, header and all, into a new segment ``compact-<seq>.seg``. ``is_live`` may also answer
None: "undecided", a record that may yet be committed at that very location (a store in flight
between its write and its catalog commit); its segment is then left as it is this time (copying
the record would not do: the commit would still name the old location, unlinked by then). Each
group goes through:

1. write ``compact-<seq>.seg.tmp``: live records; the tombstones of the group that point into
   a segment that still exists (also one of the group: step 4 may be cut short), and one for
   each other copy of a tombstoned record of the group (see below); the seal, whose index
   also names, for each record, the location where it was first put (its origin); fdatasync
2. rename it to ``compact-<seq>.seg``; fsync the folder
3. ``relocate({old location: new location})``: the caller updates its catalog in one transaction
   and makes it durable; called even with nothing to move, since what made the old records dead
   (deletes, replacements) must not be undone by a power cut once they are gone. If it raises,
   nothing is unlinked (the new segment is then garbage, the old ones stay as they were)
4. unlink the old segments; fsync the folder

A crash anywhere loses nothing: before 3 the new segment is an orphan whose records no catalog
entry points to (a later compaction finds it all dead and removes it); after 3 the old segments
are all dead garbage, removed by a later compaction. Either way a record then exists twice,
with identical bytes (``iter_records`` may show its key twice), and a delete or a replacement
made meanwhile tombstones only the copy the catalog points at. The origin each copy names ties
the copies of one put together, and a tombstone of any copy covers them all (``scan_all``), so
``pacs reindex`` brings back neither a deleted instance nor a replaced version. That tie lives
in the compact segments' seals: hence the tombstones of step 1 for the other copies of a dead
record, and tombstones kept while any copy they cover remains. (Compact segments written
before origins were recorded tie nothing.) A leftover ``.tmp`` is removed at the start of the
next compaction. Readers holding an old location get ``BlobNotFound`` once the old segment is
unlinked and should look the instance up again.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pacs.errors import StorageError
from pacs.store import segment_format as fmt
from pacs.store.crc import crc32
from pacs.store.files import _copy_file, fsync_dir

if TYPE_CHECKING:
    from pacs.store.segments import SegmentStore

log = logging.getLogger(__name__)

_LOCK = "compact.lock"
_TMP = ".tmp"

# Tests set this to raise at a named step ("copied", "sealed", "renamed", "relocated",
# "unlinked") to simulate a crash there.
crash_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if crash_hook is not None:
        crash_hook(name)


@dataclass(slots=True)
class CompactReport:
    """What one compaction did."""

    examined: int = 0  # sealed segments considered
    removed: list[str] = field(default_factory=list)  # segments rewritten and unlinked
    created: list[str] = field(default_factory=list)  # new compact-* segments
    moved: int = 0  # live records copied
    reclaimed: int = 0  # bytes freed on disk
    deferred: list[str] = field(default_factory=list)  # left alone: a record may be in flight


@dataclass(slots=True)
class _Candidate:
    name: str
    size: int
    # (data offset, length, location, origin: where the record was first put, the location
    # every copy of it names as its source)
    live: list[tuple[int, int, str, str]]
    tombstones: list[str]


def compact(
    store: SegmentStore,
    is_live: Callable[[str], bool | None],
    relocate: Callable[[dict[str, str]], None],
    min_dead_fraction: float = 0.5,
) -> CompactReport:
    """Compact ``store``'s root; see the module docstring (``is_live``: True, False or None)."""
    root = store.root
    report = CompactReport()
    try:
        lock_fd = os.open(root / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot lock {root / _LOCK}: {exc}") from exc
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        for leftover in os.listdir(root):
            if leftover.endswith(".seg" + _TMP):
                log.warning("removing unfinished compaction output %s", leftover)
                os.unlink(root / leftover)
        candidates = _candidates(store, is_live, min_dead_fraction, report)
        for group in _groups(candidates, store.segment_size):
            _rewrite(store, group, relocate, report)
    except OSError as exc:
        raise StorageError(f"compaction under {root} failed: {exc}") from exc
    finally:
        os.close(lock_fd)  # releases the flock
    if report.removed:
        log.info(
            "compaction: %d segments rewritten into %d, %d records moved, %d bytes reclaimed",
            len(report.removed),
            len(report.created),
            report.moved,
            report.reclaimed,
        )
    if report.deferred:
        log.info("compaction: %d segments left for now (a store may be in flight there): %s",
                 len(report.deferred), ", ".join(report.deferred[:5]))
    return report


def _candidates(
    store: SegmentStore,
    is_live: Callable[[str], bool | None],
    min_dead_fraction: float,
    report: CompactReport,
) -> list[_Candidate]:
    indexes, dead, copies = store.scan_copies()  # copies: of the dead records only
    highest: dict[str, int] = {}
    for name in indexes:
        owner, seq = fmt.parse_segment_name(name) or ("", 0)
        highest[owner] = max(seq, highest.get(owner, 0))
    out: list[_Candidate] = []
    for name, index in indexes.items():
        owner, seq = fmt.parse_segment_name(name) or ("", 0)
        if not index.sealed or seq == highest[owner]:
            continue
        report.examined += 1
        total = live_bytes = 0
        live: list[tuple[int, int, str, str]] = []
        killed: list[str] = []  # tombstoned records that have copies elsewhere
        undecided = False
        sources = index.sources()
        for i, (data_offset, length, _key) in enumerate(index.records):
            total += fmt.HEADER_SIZE + length
            location = fmt.format_location(name, data_offset, length)
            if location in dead:
                if location in copies:
                    killed.append(location)
                continue
            verdict = is_live(location)
            if verdict is None:
                undecided = True
                break
            if verdict:
                origin = sources[i] if sources else location
                live.append((data_offset, length, location, origin))
                live_bytes += fmt.HEADER_SIZE + length
        if undecided:
            report.deferred.append(name)
            continue
        dead_fraction = 1.0 - live_bytes / total if total else 1.0
        if dead_fraction >= min_dead_fraction:
            # A tombstone covers every copy of its record (see above): keep it while any is,
            # and tombstone the other copies of its dead records, whose seal ties them to the
            # tombstone that killed them only as long as it exists.
            tombs = [c for t in [*index.tombstones, *killed] for c in copies.get(t, [t])]
            out.append(_Candidate(name, index.end, live, list(dict.fromkeys(tombs))))
    return out


def _groups(candidates: list[_Candidate], segment_size: int) -> list[list[_Candidate]]:
    """Candidates in runs whose live data fits one output segment."""
    groups: list[list[_Candidate]] = []
    current: list[_Candidate] = []
    size = 0
    for cand in candidates:
        live = sum(fmt.HEADER_SIZE + n for _o, n, _l, _s in cand.live)
        if current and size + live > segment_size:
            groups.append(current)
            current, size = [], 0
        current.append(cand)
        size += live
    if current:
        groups.append(current)
    return groups


def _next_output(root_names: list[str]) -> int:
    seqs = [
        parsed[1]
        for n in root_names
        if (parsed := fmt.parse_segment_name(n.removesuffix(_TMP)))
        and parsed[0] == fmt.COMPACT_OWNER
    ]
    return max(seqs, default=0) + 1


def _rewrite(
    store: SegmentStore,
    group: list[_Candidate],
    relocate: Callable[[dict[str, str]], None],
    report: CompactReport,
) -> None:
    root = store.root
    # A tombstone still matters while the segment it points into exists, even one of this
    # group: a crash while step 4 unlinks them must not leave a dead record without it.
    keep_tombs = [t for c in group for t in c.tombstones if (root / t.split(":", 1)[0]).exists()]
    mapping: dict[str, str] = {}
    sources: list[str] = []  # where each record of the new segment was first put
    new_size = 0
    if any(c.live for c in group) or keep_tombs:
        name = fmt.segment_name(fmt.COMPACT_OWNER, _next_output(os.listdir(root)))
        tmp = root / (name + _TMP)
        out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            tail = 0
            index = bytearray()
            for cand in group:
                src = os.open(root / cand.name, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    for data_offset, length, location, origin in cand.live:
                        head = fmt.read_header(src, data_offset - fmt.HEADER_SIZE)
                        if head is None or head.data_len != length:
                            raise OSError(f"record header at {location} is damaged")
                        count = fmt.HEADER_SIZE + length
                        os.lseek(src, head.offset, os.SEEK_SET)
                        os.lseek(out, tail, os.SEEK_SET)
                        if _copy_file(src, out, count) != count:
                            raise OSError(f"short copy of {location}")
                        mapping[location] = fmt.format_location(
                            name, tail + fmt.HEADER_SIZE, length
                        )
                        sources.append(origin)
                        index += fmt.encode_record_entry(
                            tail + fmt.HEADER_SIZE, length, fmt.key_bytes(head.key)
                        )
                        tail += count
                finally:
                    os.close(src)
            for tomb in keep_tombs:
                data = tomb.encode()
                header = fmt.pack_header(fmt.KIND_TOMBSTONE, b"", len(data), crc32(data))
                os.pwrite(out, header + data, tail)
                tail += len(header) + len(data)
            _step("copied")
            new_size = store._write_seal(
                out, tail, fmt.encode_index(index, len(mapping), keep_tombs, sources)
            )
            _step("sealed")
        finally:
            os.close(out)
        os.rename(tmp, root / name)
        fsync_dir(root)
        report.created.append(name)
        _step("renamed")
    relocate(mapping)  # also when empty: makes what the candidates were judged by durable
    _step("relocated")
    for cand in group:
        try:
            os.unlink(root / cand.name)
        except FileNotFoundError:
            continue
        store.forget_segment(cand.name)
        report.removed.append(cand.name)
        report.reclaimed += cand.size
        _step("unlinked")
    fsync_dir(root)
    report.reclaimed -= new_size
    report.moved += len(mapping)
