"""The default blob store: append-only segment files with group commit (Haystack-style).

Many processes share one ``root``; each writes through its own ``writer_id`` into its own active
segment ``<writer_id>-<seq:08d>.seg`` (format: ``segment_format``), and reads any segment. Puts
append a record (header + Part-10 bytes); ``durable=False`` puts are made durable together by one
``flush`` (one fdatasync per batch instead of one fsync per file, see DESIGN.md). A location is
``<segment>:<data offset>:<length>``: self-contained, so a read needs no lookup.

Rolling: when a record would carry the active segment past ``segment_size``, the next segment is
created (and its folder fsynced) first, then the old one is sealed (index record + footer,
fdatasync), so a writer's highest-numbered segment is always its active one and no name is
ever reused. Only sealed segments are compacted (``compaction``).

Recovery at open touches only this writer's segments: the last one is validated record by
record (header and data crc32) and a torn tail after the last verified record is truncated and
logged; corruption before it is logged and kept (the segment is then sealed, never truncated
into acknowledged data). An unsealed older segment (a crash between creating the next one and
sealing) is validated and sealed.

Zero-filled space ahead of the tail: small puts (``try_put``, an event loop's) keep up to
``prefill`` bytes past the tail written with zeros and fdatasync'd by a short-lived thread, so
that they overwrite blocks the file system has already allocated and recorded: their fdatasync
then writes the data without a journal commit for a new size and extents (measured here:
fdatasync of 18 KiB 0.46 -> 0.15 ms, a 9 KiB pwrite 10 -> 5.5 us). Large puts simply append past
it. Zeros after the last record read as a torn tail, so recovery drops them (logged as
zero-filled space), and a roll or a clean close cuts them off first. A fill writes from a point
past the tail chosen under the write lock; a put that would reach that point while the fill
runs waits for it (``try_put`` returns None instead), so zeros never land on a record.

Large records of an event loop (``reserve_direct``): the loop lays the record out under the
write lock without waiting and hands all its writes to its sync thread (``pacs.store.syncer``):
the header, Part-10 header and partial first and last blocks through the page cache, the
block-aligned middle with ``O_DIRECT``; the thread writes and fdatasyncs in the order asked, so
an fdatasync asked after a write covers it. While such writes are outstanding the loop's small
records are queued behind them too (``try_put`` with the queue): a page-cache write from the
loop would wait for the file's lock, which a direct write holds until the disk is done with it
(0.3-1.2 ms measured). So a record may be laid out but not yet written while later ones are
appended; every other path that fdatasyncs, seals, cuts or closes the segment first waits
for the queued writes (``_await_direct``), so (one event loop per store, as ``pacs serve``
runs) no synced record ever sits behind a torn one, and after a failed write the segment
takes no more records (the next put rolls; its torn record stays listed, unindexed, and
replay and reindex check every record's CRC-32). A crash before the writes leaves a torn
record: a torn tail, cut at the next open, or, when the loop had appended small records after
it (none of them acknowledged: their fdatasync comes after the writes), a range that recovery
keeps, indexing the intact records around it; one all zero, or whose middle is, is logged as
such a leftover (WARNING), not as damage (ERROR).

Deletes append a fdatasync'd tombstone. Live/dead accounting survives restarts because it is
recomputed from the segments: sealed ones carry their index (records and tombstones) in the
seal record, unsealed ones (one per writer) are walked header by header. Each store loads every
tombstone at open; a delete made by another process after that is seen by ``locations`` and
``compact`` (which rescan) but not by ``get`` (the catalog is the authority on what is live).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from pacs.errors import BlobNotFound, StorageError
from pacs.store import digest as blob_digest
from pacs.store import external, fastio
from pacs.store import segment_format as fmt
from pacs.store.base import BlobInfo, BlobPart
from pacs.store.compaction import CompactReport, compact
from pacs.store.crc import crc32
from pacs.store.files import _copy_file, fsync_dir
from pacs.store.syncer import DIRECT_CHUNK, DIRECT_REFUSED

log = logging.getLogger(__name__)

_MAX_READ_FDS = 256  # cached read descriptors (one per segment); older ones are closed
PREFILL = 8 << 20  # zero-filled bytes kept ahead of the tail for small puts
DIRECT_MIN = 64 << 10  # records at least this large bypass the page cache (O_DIRECT)
# O_DIRECT alignment of offsets, lengths and buffer: any device's block divides it, and a page:
# with 64 KiB pages a smaller block would share a cached page with the buffered head or tail.
_BLOCK = max(4096, mmap.PAGESIZE)
_ZEROS = bytes(1 << 20)


class DirectQueue(Protocol):
    """Who writes ``reserve_direct`` records, in order (``Syncer``), keeping ``keep`` (what
    the write reads from) alive until then."""

    @property
    def writes_asked(self) -> int: ...

    @property
    def writes_done(self) -> int: ...

    @property
    def writes_failed(self) -> int: ...

    def request_write(self, fd: int, dfd: int, address: int, length: int,
                      offset: int, keep: object = None) -> None: ...


def _address(view: memoryview) -> int:
    """The address of ``view``'s first byte (bytes or bytearray: read only is fine)."""
    if view.readonly:
        assert type(view.obj) is bytes and view.nbytes == len(view.obj)
        return ctypes.cast(ctypes.c_char_p(view.obj), ctypes.c_void_p).value or 0
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class _ReadHandle:
    """A cached read descriptor, closed only when retired and no read is using it."""

    __slots__ = ("fd", "refs", "retired")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 0
        self.retired = False


@dataclass(frozen=True, slots=True)
class SegmentStat:
    """Space accounting of one segment (from its records and every tombstone in the root)."""

    name: str
    sealed: bool
    size: int  # bytes on disk
    blob_bytes: int  # data bytes of all blob records
    dead_bytes: int  # data bytes of tombstoned blob records


class SegmentStore:
    """A BlobStore appending whole instances to segment files under ``root``."""

    def __init__(self, root: Path, writer_id: str = "w0", segment_size: int = 1 << 30,
                 prefill: int = PREFILL, direct_min: int = DIRECT_MIN) -> None:
        if not fmt.WRITER_ID.fullmatch(writer_id) or writer_id == fmt.COMPACT_OWNER:
            raise ValueError(f"writer_id must match [A-Za-z0-9_]{{1,32}}, not {writer_id!r}")
        if segment_size < 4096:
            raise ValueError("segment_size must be at least 4096 bytes")
        self.root = Path(root)
        self.writer_id = writer_id
        self.segment_size = segment_size
        self._wlock = threading.RLock()
        self._rlock = threading.Lock()
        # Guards the active segment's name and descriptor while they change, the flush error
        # and the failure count: what an event loop reads without waiting for the write lock
        # (held during fdatasyncs and large copies).
        self._slock = threading.Lock()
        self.prefill = max(0, prefill)
        self._zeroed_end = 0  # the active segment holds durable zeros from the tail up to here
        # Held from the start of a fill (by the put that starts it) until the filler is done.
        self._fill_lock = threading.Lock()
        self._fill_start = 0  # where the running fill writes next: nothing else may go there
        self._fill_stop = False  # asks the running fill to stop after its current chunk
        self._fill_paused_until = 0.0  # after a failed fill (e.g. ENOSPC)
        # Direct writes of large records (see _append_direct): 0 turns them off, and so does a
        # file system that refuses O_DIRECT.
        self.direct_min = max(0, direct_min)
        self._dfd = -1  # an O_DIRECT descriptor of the active segment, opened at first use
        # Records laid out by ``reserve_direct`` (and small ones queued behind them) that a
        # queue (an event loop's Syncer thread) writes after the write lock is released:
        # every path that fdatasyncs, seals, cuts or closes the segment first waits until the
        # queue has written them
        # (``_await_direct``); after a failed one the segment takes no more records (a roll).
        self._direct_queue: DirectQueue | None = None
        self._direct_asked = 0  # the queue's ``writes_asked`` after our last request
        self._direct_failed = 0  # the queue's ``writes_failed`` counted so far
        self._direct_broken = False
        self._dbuf: mmap.mmap | None = None  # page-aligned, reused: its pages stay mapped
        self._readers: OrderedDict[str, _ReadHandle] = OrderedDict()
        self._not_segments: set[str] = set()  # named like segments, skipped (warned once)
        self._dead: set[str] = set()  # tombstoned locations known to this process
        self._closed = False
        self._external = external.Journal(self.root)
        self._wfd = -1
        # Linux reports a write-back error once per open file (not per descriptor): when two
        # fdatasyncs of one open file overlap, the one that hears of the error may note it
        # only after the other returned success and its stores were answered. So each path
        # that fdatasyncs the active segment while others may (the event loops' sync threads,
        # ``flush``, the filler) has an open file of its own, opened before the segment's
        # first record: each hears of every error in it. Writes, seals and durable puts use
        # ``_wfd`` under the write lock.
        self._loop_sync_fd = -1
        self._flush_sync_fd = -1
        # What ``sync_target`` hands out: the active segment, except while a roll seals the
        # segment it left. Until that seal's fdatasync has succeeded (or its failure is
        # counted) the loops keep syncing the old segment: a sync of the new one would not
        # make their stores appended to the old one durable.
        self._sync_segment = ""
        self._next_loop_sync: tuple[str, int] | None = None  # the new segment's, meanwhile
        self._flush_lock = threading.Lock()  # one ``flush`` fdatasync at a time
        self._dirty = False
        self._flush_error: OSError | None = None
        # Failed fdatasyncs (or seals) of this writer's segments so far: after one, Linux may
        # mark the lost pages clean, so a later fdatasync can succeed without them. A writer
        # compares the count from before its puts with the count after its own successful
        # fdatasync, and refuses its stores if it moved.
        self._failures = 0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._open_writer()
            self._load_tombstones()
        except OSError as exc:
            self._close_fds()
            raise StorageError(f"cannot open segment store at {self.root}: {exc}") from exc
        except BaseException:  # a StorageError naming a segment
            self._close_fds()
            raise

    # -- opening and recovery ----------------------------------------------------------------

    def segments(self) -> list[str]:
        """Every segment file name in the root, ordered by owner and sequence number; other
        entries named like one (a folder, a FIFO, a dangling link) are skipped, with a
        warning the first time: opening them would fail, or block."""
        names = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not fmt.parse_segment_name(entry.name):
                    continue
                try:
                    regular = entry.is_file()  # follows a symbolic link
                except OSError:
                    regular = False
                if regular:
                    names.append(entry.name)
                elif entry.name not in self._not_segments:
                    self._not_segments.add(entry.name)
                    log.warning("%s is named like a segment but is no regular file: skipped",
                                self.root / entry.name)
        return sorted(names, key=lambda n: fmt.parse_segment_name(n) or ("", 0))

    def _own_segments(self) -> list[str]:
        return [n for n in self.segments() if n.startswith(self.writer_id + "-")]

    def _open_writer(self) -> None:
        own = self._own_segments()
        for name in own[:-1]:
            self._seal_if_unsealed(name)
        if not own:
            self._start_segment(1)
            return
        last = own[-1]
        fd = os.open(self.root / last, os.O_RDWR | os.O_CLOEXEC)
        try:
            state = self._recover(fd, last)
        except BaseException:
            os.close(fd)
            raise
        seq = fmt.parse_segment_name(last)
        assert seq is not None
        if state.sealed:
            os.close(fd)
            self._start_segment(seq[1] + 1)
            return
        try:
            sync_fds = self._open_sync_files(self.root / last)
        except BaseException:
            os.close(fd)
            raise
        self._switch_to(fd, last, state.good_end, sync_fds)
        self._zeroed_end = state.good_end
        self._index = bytearray()
        self._n_records = 0
        self._tombs: list[str] = []
        for head in state.records:
            self._note_record(head)
        if state.corrupt:
            # Never append after damage we keep: start a clean segment.
            self._roll()

    def _recover(self, fd: int, name: str) -> fmt.Validation:
        """Validate a segment of ours; cut a torn tail and repair a torn footer."""
        size = os.fstat(fd).st_size
        try:
            if fmt.read_sealed_index(fd, size, records=False) is not None:
                return fmt.Validation(sealed=True, good_end=size)
        except fmt.DamagedSeal as exc:
            # Its records are checked one by one below; the seal is written again from them.
            log.error("segment %s: %s: validating its records instead", name, exc)
        state = fmt.validate(fd, size)
        for start, end in state.corrupt:
            if _never_written(fd, start, end):
                # What an ordinary crash leaves of a record still queued, not damage.
                log.warning(
                    "segment %s: %d bytes at %d were never written (all zero, or a record's "
                    "middle: what a crash leaves of a record whose writes were still queued): "
                    "kept as they are, not indexed", name, end - start, start,
                )
            else:
                log.error(
                    "segment %s: %d corrupt bytes at %d kept as they are", name, end - start,
                    start,
                )
        if state.sealed:
            # The seal record is whole but its footer is not: write the footer again.
            seal = state.records[-1]
            os.ftruncate(fd, seal.end)
            os.pwrite(fd, fmt.pack_footer(seal.offset), seal.end)
            os.fdatasync(fd)
            state.good_end = seal.end + fmt.FOOTER_SIZE
        elif state.good_end < size:
            if _all_zero(fd, state.good_end, size):
                log.info("segment %s: dropped %d bytes of zero-filled space at offset %d",
                         name, size - state.good_end, state.good_end)
            else:
                log.warning(
                    "segment %s: cut a torn tail of %d bytes at offset %d",
                    name,
                    size - state.good_end,
                    state.good_end,
                )
            os.ftruncate(fd, state.good_end)
            os.fdatasync(fd)
        return state

    def _seal_if_unsealed(self, name: str) -> None:
        fd = os.open(self.root / name, os.O_RDWR | os.O_CLOEXEC)
        try:
            state = self._recover(fd, name)
            if state.sealed:
                return
            log.warning("segment %s was left unsealed by a crash: sealing it", name)
            os.fdatasync(fd)  # the records validated above durable before the seal (see _roll)
            index = bytearray()
            tombs: list[str] = []
            n = 0
            for head in state.records:
                if head.kind == fmt.KIND_BLOB:
                    index += fmt.encode_record_entry(
                        head.data_offset, head.data_len, fmt.key_bytes(head.key)
                    )
                    n += 1
                elif head.kind == fmt.KIND_TOMBSTONE:
                    tomb = fmt.tombstone_location(os.pread(fd, head.data_len, head.data_offset))
                    if tomb is not None:
                        tombs.append(tomb)
            self._write_seal(fd, state.good_end, fmt.encode_index(index, n, tombs))
        finally:
            os.close(fd)

    def _note_record(self, head: fmt.Header) -> None:
        """Add a record of the active segment to the index its seal will carry."""
        if head.kind == fmt.KIND_BLOB:
            key = fmt.key_bytes(head.key)
            self._index += fmt.encode_record_entry(head.data_offset, head.data_len, key)
            self._n_records += 1
        elif head.kind == fmt.KIND_TOMBSTONE:
            tomb = fmt.tombstone_location(os.pread(self._wfd, head.data_len, head.data_offset))
            if tomb is not None:
                self._tombs.append(tomb)

    def _start_segment(self, seq: int, rolling: bool = False) -> None:
        """Create the next segment and make it the active one; ``rolling``: the loops' sync
        target moves to it only at ``_end_roll``, once the old one is sealed."""
        name = fmt.segment_name(self.writer_id, seq)
        path = self.root / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        sync_fds: tuple[int, int] | None = None
        try:
            sync_fds = self._open_sync_files(path)
            # The new name must be durable before any put into it is acknowledged.
            fsync_dir(self.root)
        except BaseException:
            for unused in (fd, *(sync_fds or ())):
                os.close(unused)
            try:
                path.unlink()  # empty: the next roll may create it again
            except OSError:
                pass
            raise
        self._switch_to(fd, name, 0, sync_fds, rolling)
        self._close_direct()
        self._direct_broken = False
        self._zeroed_end = 0
        self._index = bytearray()
        self._n_records = 0
        self._tombs = []

    @staticmethod
    def _open_sync_files(path: Path) -> tuple[int, int]:
        """Open files of their own for the loops' and ``flush``'s fdatasyncs of a segment
        about to become the active one (before its first record)."""
        loop_fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            return loop_fd, os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(loop_fd)
            raise

    def _switch_to(self, fd: int, name: str, tail: int, sync_fds: tuple[int, int],
                   rolling: bool = False) -> None:
        """Make ``name`` the active segment, with its descriptor and sync files in one step
        (``sync_target`` must never pair a name with another segment's file). The old
        segment's sync files are closed: a loop's sync target and a running flush hold dups.
        ``rolling``: the loops' sync file of the old segment stays until ``_end_roll``."""
        loop_fd, flush_fd = sync_fds
        with self._slock:
            old = [self._flush_sync_fd]
            self._wfd, self._active, self._tail = fd, name, tail
            self._flush_sync_fd = flush_fd
            if rolling:
                self._next_loop_sync = (name, loop_fd)
            else:
                old.append(self._loop_sync_fd)
                self._sync_segment, self._loop_sync_fd = name, loop_fd
        for unused in old:
            if unused >= 0:
                os.close(unused)

    def _end_roll(self) -> None:
        """The old segment's seal is durable (or its failure counted): the loops' sync target
        moves to the new segment."""
        with self._slock:
            if self._next_loop_sync is None:
                return
            old = self._loop_sync_fd
            (self._sync_segment, self._loop_sync_fd), self._next_loop_sync = (
                self._next_loop_sync, None)
        if old >= 0:
            os.close(old)

    @staticmethod
    def _write_seal(fd: int, offset: int, index: bytes) -> int:
        data = fmt.seal_bytes(offset, index)
        fmt.pwrite_all(fd, [data], offset)
        os.fdatasync(fd)
        return offset + len(data)

    def _roll(self) -> None:
        """Start the next segment, then seal the old one (see the module docstring)."""
        self._await_direct()  # its records complete before it is cut, synced and sealed
        self._stop_fill()  # no filler writes into the segment we leave
        old_fd, old_tail = self._wfd, self._tail
        if self._zeroed_end > old_tail:
            os.ftruncate(old_fd, old_tail)  # the seal's footer ends the file
            self._zeroed_end = old_tail  # still so if the new segment cannot be started
        index = fmt.encode_index(self._index, self._n_records, self._tombs)
        seq = fmt.parse_segment_name(self._active)
        assert seq is not None
        self._start_segment(seq[1] + 1, rolling=True)
        try:
            # Its records durable first, then the seal: recovery trusts a sealed segment's
            # records without reading them, so a power cut must never leave the seal on disk
            # without every record before it.
            os.fdatasync(old_fd)
            self._write_seal(old_fd, old_tail, index)
        except OSError as exc:
            # Puts not yet flushed may be lost with the old segment: the next flush must fail.
            self.note_sync_failure(exc, f"sealing {seq[0]}-{seq[1]:08d}")
            if self._dirty:
                with self._slock:
                    self._flush_error = exc
            raise
        finally:
            os.close(old_fd)
            self._end_roll()  # after the failure, if any, is counted
        self._dirty = False

    def _load_tombstones(self) -> None:
        for name in self.segments():
            index = self._scan(name, records=False)
            if index is not None:
                self._dead.update(index.tombstones)

    # -- writing -------------------------------------------------------------------------------

    def put(self, key: str, parts: Sequence[BlobPart], *, durable: bool = True) -> BlobInfo:
        """Append one record; durable on return, or at the next ``flush`` if not ``durable``."""
        info = self._put(key, parts, durable, blocking=True)
        assert info is not None
        return info

    def try_put(self, key: str, parts: Sequence[BlobPart],
                queue: DirectQueue | None = None) -> BlobInfo | None:
        """``put(durable=False)`` unless it would have to wait (another thread appending or
        flushing, a running fill in the way) or roll the segment: None then, at once. For an
        event loop, which must never block on the write lock. With ``queue`` (the loop's, as
        for ``reserve_direct``): while it still has writes to make, the record is queued
        behind them instead of written here (not durable before an fdatasync asked of it)."""
        for part in parts:
            if type(part) is not bytes and type(part) is not bytearray:
                return self._put(key, parts, False, blocking=False)
        return self._try_put_bytes(key, cast("Sequence[bytes | bytearray]", parts), queue)

    def _try_put_bytes(self, key: str, parts: Sequence[bytes | bytearray],
                       queue: DirectQueue | None = None) -> BlobInfo | None:
        """``try_put`` of parts in memory (every small C-STORE): the record ``_put`` writes,
        in one pwritev, with a third of its Python (~8 -> ~3 us a call)."""
        if self._closed:
            self._check_open()
        kb = fmt.key_bytes(key)
        digest = blob_digest.new()
        crc = 0
        size = 0
        for part in parts:
            digest.update(part)
            crc = crc32(part, crc)
            size += len(part)
        header = fmt.pack_header(fmt.KIND_BLOB, kb, size, crc)
        total = fmt.HEADER_SIZE + size
        if not self._wlock.acquire(False):
            return None
        try:
            self._check_open()
            if not self._make_room(total, False):
                return None
            start = self._tail
            if (queue is not None and queue is self._direct_queue
                    and queue.writes_done < self._direct_asked):
                # Its direct write in flight holds the file's lock: a write from here would
                # stall the loop until the disk is done with it (0.3-1.2 ms). Queued behind it.
                record = b"".join([header, *parts])
                self._queue_writes(key, queue, [
                    (-1, _address(memoryview(record)), total, start, record)])
            else:
                try:
                    n = os.pwritev(self._wfd, [header, *parts], start)
                    if n < total:  # short write (a signal, a nearly full disk): write the rest
                        rest = memoryview(b"".join([header, *parts]))[n:]
                        fmt.pwrite_all(self._wfd, [rest], start + n)
                except OSError as exc:
                    self._undo(start)  # under the lock: nobody appended after us
                    raise StorageError(f"cannot write blob {key!r} under {self.root}: {exc}"
                                       ) from exc
            self._tail = start + total
            self._dirty = True
            location = self._record(kb, size)
            self._maybe_prefill()
        finally:
            self._wlock.release()
        return BlobInfo(location=location, size=size, digest=digest.hexdigest())

    def reserve_direct(self, key: str, meta: bytes, dataset: bytes | bytearray,
                       queue: DirectQueue) -> BlobInfo | None:
        """On an event loop: lay out a large record and ask ``queue`` to write it (header,
        Part-10 header and the partial first and last blocks through the page cache, the
        block-aligned middle with ``O_DIRECT``): the loop never waits for the disk, nor for the
        file's lock a direct write holds. None (nothing written) when this must go
        the blocking way (``put``): lock busy, a roll or a fill in the way, direct writes off,
        or another queue's writes still outstanding.

        Not durable (nor complete) on return: an fdatasync asked of ``queue`` after this call
        covers it (the queue serves requests in order). ``dataset`` must not change until the
        queue has answered its writes (the queue keeps a view of it until then)."""
        if not self.direct_min or self._closed or type(dataset) not in (bytes, bytearray):
            return None
        size = len(meta) + len(dataset)
        total = fmt.HEADER_SIZE + size
        if total < self.direct_min:
            return None
        kb = fmt.key_bytes(key)
        digest = blob_digest.new()
        digest.update(meta)
        digest.update(dataset)
        crc = crc32(dataset, crc32(meta))
        header = fmt.pack_header(fmt.KIND_BLOB, kb, size, crc)
        if not self._wlock.acquire(False):
            return None
        try:
            previous = self._direct_queue
            if self._closed or (previous is not None and previous is not queue
                                and previous.writes_done < self._direct_asked):
                return None
            if previous is not None and previous is not queue:
                # Its writes are all answered: count its failures now (its loop may not have
                # read them yet), before this record could follow a torn one.
                self._count_direct_failures()
            if not self._make_room(total, False):
                return None
            start = self._tail
            end = start + total
            # The middle starts inside the data set: one source range for the queue.
            skip = start + fmt.HEADER_SIZE + len(meta)
            span = _direct_span(skip, end)
            if span is None:
                return None
            first, last = span
            dfd = self._direct_fd()
            if dfd < 0:
                return None
            view = memoryview(dataset)
            head = b"".join([header, meta, view[:first - skip]])
            base = _address(view) - skip
            if previous is not queue:
                self._direct_queue, self._direct_failed = queue, queue.writes_failed
            # Every part goes through the queue, in order, the partial blocks through the page
            # cache: a page-cache write from here would wait for the file's lock while the
            # queue's direct write of the record before holds it (~0.3 ms, the loop stalled).
            writes = [(-1, _address(memoryview(head)), len(head), start, head),
                      (dfd, base + first, last - first, first, view)]
            if end > last:
                writes.append((-1, base + last, end - last, last, view))
            self._queue_writes(key, queue, writes)
            self._tail = end
            location = self._record(kb, size)
            self._dirty = True
        finally:
            self._wlock.release()
        return BlobInfo(location=location, size=size, digest=digest.hexdigest())

    def _queue_writes(self, key: str, queue: DirectQueue,
                      writes: Sequence[tuple[int, int, int, int, object]]) -> None:
        """Under the write lock: ask ``queue`` for ``writes`` (direct descriptor or -1,
        address, length, offset, what to keep alive), in order, through this segment."""
        try:
            for dfd, address, length, offset, keep in writes:
                queue.request_write(self._wfd, dfd, address, length, offset, keep)
        except OSError as exc:  # the queue is gone (its pipe): the segment takes no more
            self._direct_broken = True
            raise StorageError(f"cannot queue blob {key!r} under {self.root}: {exc}") from exc
        finally:
            self._direct_asked = queue.writes_asked

    def direct_answered(self, code: int, buffered: bool) -> None:
        """On the loop, for each answer of its queue to a ``reserve_direct`` write (before
        the answers after it): ``buffered``, the file system refused ``O_DIRECT`` (the queue
        wrote through the page cache); a failure is counted (``_count_direct_failures``)."""
        if buffered:
            log.warning("segment store %s: direct writes refused; writing through the page "
                        "cache", self.root)
            self.direct_min = 0
        if code:
            self._count_direct_failures(OSError(code, os.strerror(code)))

    def _count_direct_failures(self, exc: OSError | None = None) -> None:
        """Count the queue's failed writes not counted yet, once whoever sees them first (the
        loop reading the answers, or a path in ``_await_direct``): a failed write leaves a
        torn record, so every store written before it is refused (``failures``) and the
        segment takes no more (the next put rolls)."""
        queue = self._direct_queue
        if queue is None:
            return
        with self._wlock:
            new = queue.writes_failed - self._direct_failed
            if new <= 0:
                return
            self._direct_failed += new
            self._direct_broken = True
        for _ in range(new):
            self.note_sync_failure(exc or OSError(errno.EIO, "a queued direct write failed"),
                                   "direct write")

    def _await_direct(self, timeout: float = 600.0) -> None:
        """Wait until the queue has written every record ``reserve_direct`` laid out (before
        an fdatasync, cut, seal or close of the segment, or a close of the descriptors the
        queue writes through: no synced record may sit behind one still being written).
        ETIMEDOUT after ``timeout`` (a dead sync thread): the caller fails."""
        queue = self._direct_queue
        if queue is None:
            return
        deadline = time.monotonic() + timeout
        while queue.writes_done < self._direct_asked:
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, "queued direct writes did not complete")
            time.sleep(0.0002)
        # Heard here first when the loop has not read the answers (yet, or any more).
        self._count_direct_failures()

    def sync_target(self) -> tuple[str, int]:
        """The segment to fdatasync and a new descriptor of it (the caller closes it): the
        active one, whose fdatasync makes every earlier non-durable put durable since a roll
        seals (and syncs) the segment it leaves; while that seal runs, the segment left (its
        puts are not durable before the seal is)."""
        with self._slock:
            self._check_open()
            return self._sync_segment, os.dup(self._loop_sync_fd)

    @property
    def failures(self) -> int:
        """How many fdatasyncs of this writer's segments failed so far (see ``__init__``)."""
        return self._failures

    def note_sync_failure(self, exc: OSError, what: str = "fdatasync") -> None:
        """Count a failed fdatasync made through a descriptor of ours (e.g. a sync thread's)."""
        with self._slock:
            self._failures += 1
        log.error("segment store %s: %s failed (%s): puts made before it are not durable",
                  self.root, what, exc)

    def _put(
        self, key: str, parts: Sequence[BlobPart], durable: bool, blocking: bool
    ) -> BlobInfo | None:
        self._check_open()
        kb = fmt.key_bytes(key)
        digest = blob_digest.new()
        crc = 0
        size = 0
        items: list[memoryview | tuple[int, int]] = []  # bytes, or (spool fd, length)
        start: int | None = None  # set once the record's first byte may be written
        try:
            try:
                # Hash outside the write lock: hashlib releases the GIL on large buffers.
                for part in parts:
                    if isinstance(part, Path):
                        src = os.open(part, os.O_RDONLY | os.O_CLOEXEC)
                        items.append((src, 0))  # listed at once, so it is closed below
                        n = os.fstat(src).st_size
                        items[-1] = (src, n)
                        crc = fmt.digest_file(src, n, digest, crc)
                    else:
                        n = len(view := memoryview(part).cast("B"))
                        digest.update(view)
                        crc = crc32(view, crc)
                        items.append(view)
                    size += n
                header = fmt.pack_header(fmt.KIND_BLOB, kb, size, crc)
                if not self._wlock.acquire(blocking):
                    return None
                try:
                    self._check_open()
                    try:
                        if not self._make_room(fmt.HEADER_SIZE + size, blocking):
                            return None
                        start = self._tail
                        self._append(header, items)
                        self._sync(durable)
                    except OSError:
                        self._undo(start)  # under the lock: nobody appended after us
                        raise
                    location = self._record(kb, size)
                    if not blocking:
                        self._maybe_prefill()
                finally:
                    self._wlock.release()
            finally:
                for item in items:
                    if isinstance(item, tuple):
                        os.close(item[0])
        except OSError as exc:
            raise StorageError(f"cannot write blob {key!r} under {self.root}: {exc}") from exc
        return BlobInfo(location=location, size=size, digest=digest.hexdigest())

    def _record(self, kb: bytes, size: int) -> str:
        """Under the write lock, once a blob record of ``size`` data bytes ends at the tail:
        list it in the segment's index; its location."""
        data_offset = self._tail - size
        self._index += fmt.encode_record_entry(data_offset, size, kb)
        self._n_records += 1
        return fmt.format_location(self._active, data_offset, size)

    def _make_room(self, record_size: int, blocking: bool = True) -> bool:
        """Under the write lock, before an append: roll if the record does not fit, and stop a
        running fill it would reach (False instead of waiting when not ``blocking``)."""
        # A record bigger than a whole segment goes alone into one; a segment where a queued
        # direct write failed has a torn record in it: nothing more may follow it there.
        roll = ((self._tail > 0 and self._tail + record_size > self.segment_size)
                or self._direct_broken)
        if roll and not blocking:
            return False  # a roll creates, syncs and seals files: not on an event loop
        if self._fill_lock.locked() and (roll or self._tail + record_size > self._fill_start):
            # The filler is writing zeros from _fill_start on: nothing else may go there.
            if not blocking:
                return False
            self._stop_fill()
        if roll:
            self._roll()
        return True

    def _stop_fill(self) -> None:
        """Wait for a running fill to stop after the chunk it is writing (a page-cache write
        of at most 1 MiB, never its fdatasync)."""
        self._fill_stop = True
        with self._fill_lock:
            pass

    def _maybe_prefill(self) -> None:
        """Under the write lock, after a small put: keep zero-filled space ahead of the tail."""
        if (not self.prefill or self._zeroed_end - self._tail >= self.prefill // 2
                or self._fill_lock.locked() or self._tail >= self.segment_size):
            return
        now = time.monotonic()
        if now < self._fill_paused_until:
            return
        # Starting a little past the tail lets small puts go on appending while the fill runs.
        start = max(self._zeroed_end, self._tail + self.prefill // 8)
        end = min(start + self.prefill, self.segment_size)
        if end <= start:
            return
        self._fill_lock.acquire()  # free: checked above, under the write lock
        self._fill_start, self._fill_stop = start, False
        try:
            # An open file of its own: its fdatasync must not take the report of a write-back
            # error from a durable put's or a seal's (see ``_loop_sync_fd``).
            fd = os.open(self.root / self._active, os.O_WRONLY | os.O_CLOEXEC)
            try:
                threading.Thread(target=self._fill, args=(fd, self._active, start, end),
                                 name="segment-prefill", daemon=True).start()
            except BaseException:
                os.close(fd)
                raise
        except Exception as exc:  # no fill, but the put that asked for it stands
            self._fill_lock.release()
            log.warning("segment %s: cannot start a zero fill (%s)", self._active, exc)
            self._fill_paused_until = now + 30.0

    def _fill(self, fd: int, segment: str, start: int, end: int) -> None:
        """Write zeros over [start, end) of ``segment``, 1 MiB at a time, then fdatasync them
        (filler thread). Puts may use each chunk once it is written (``_fill_start`` moves on);
        one that would reach the chunk being written stops the fill after it."""
        offset = start
        try:
            try:
                while offset < end and not self._fill_stop:
                    offset += os.pwrite(fd, memoryview(_ZEROS)[: min(len(_ZEROS), end - offset)],
                                        offset)
                    self._fill_start = offset
            finally:
                if self._active == segment and offset > self._zeroed_end:
                    self._zeroed_end = offset  # a roll away from it waits for this release
                self._fill_lock.release()
            # Outside the lock: puts go on meanwhile; until it returns, their own fdatasync
            # records the new size and extents for the zeros too.
            try:
                os.fdatasync(fd)
            except OSError as exc:
                # It wrote back the puts' pages too: their own fdatasync may not hear of it.
                self.note_sync_failure(exc, f"fdatasync of the zeros of {segment}")
                raise
        except OSError as exc:
            log.warning("segment %s: cannot zero-fill ahead of the tail (%s); appending "
                        "without it for a while", segment, exc)
            self._fill_paused_until = time.monotonic() + 30.0
        finally:
            os.close(fd)

    def _append(self, header: bytes, items: Sequence[memoryview | tuple[int, int]]) -> None:
        """Write header + items at the tail: bytes with pwritev (large records mostly around the
        page cache, ``_append_direct``), spooled files by the kernel."""
        if self.direct_min:
            pieces: list[_Piece] = [memoryview(header), *items]
            if sum(map(_piece_len, pieces)) >= self.direct_min and self._append_direct(pieces):
                return
        pos = self._tail
        batch: list[memoryview] = [memoryview(header)]
        for item in items:
            if isinstance(item, memoryview):
                batch.append(item)
                continue
            pos = fmt.pwrite_all(self._wfd, batch, pos)
            batch = []
            src, n = item
            os.lseek(src, 0, os.SEEK_SET)
            os.lseek(self._wfd, pos, os.SEEK_SET)  # _copy_file writes at the file position
            if _copy_file(src, self._wfd, n) != n:
                raise OSError(f"spooled file shrank while being copied ({n} bytes expected)")
            pos += n
        self._tail = fmt.pwrite_all(self._wfd, batch, pos)

    def _append_direct(self, pieces: list[_Piece]) -> bool:
        """Write a large record at the tail with its whole 4 KiB blocks through an O_DIRECT
        descriptor and only the partial first and last block through the page cache; False
        (nothing written) when direct I/O is not available here. ``pieces`` are bytes, or
        spooled files as (descriptor, length), read into the aligned buffer chunk by chunk.

        Why: a buffered write copies every byte into page-cache pages and the kernel writes
        them back later; on this kind of VM a fresh page costs far more than the copy (measured
        here: 513 KiB records with an fdatasync per 4, buffered 380-1,736 MB/s at 155-1,104 us
        of CPU a record depending on how new the guest's pages are, direct 1,573-1,628 MB/s at
        120 us). Bulk ingest also no longer evicts the index's pages. The group's fdatasync
        covers direct writes like buffered ones (it flushes the device's cache), and no cached
        page overlaps a direct range: partial blocks (shared with the neighbour records) stay
        buffered, and the kernel writes back and drops any zero-fill pages in the range first.
        """
        start = self._tail
        end = start + sum(map(_piece_len, pieces))
        # The record's header always goes through the page cache with the records before it:
        # a direct block reaches the disk at once, and a header found intact after a power cut
        # behind earlier records' unwritten pages would read as corruption, not a torn tail.
        span = _direct_span(start + fmt.HEADER_SIZE, end)
        if span is None:
            return False
        first, last = span
        dfd = self._direct_fd()
        if dfd < 0:
            return False
        assert self._dbuf is not None
        buf = memoryview(self._dbuf)
        _pwrite_small(self._wfd, _read_range(pieces, 0, first - start), start)
        pos = first
        while pos < last:
            n = min(len(buf), last - pos)
            _read_into(buf, pieces, pos - start, pos - start + n)
            done = 0
            if dfd >= 0:
                try:
                    done = os.pwrite(dfd, buf[:n], pos)
                except OSError as exc:
                    if exc.errno not in DIRECT_REFUSED:
                        raise
                    # Alignment (or direct I/O) this file system does not take: buffered
                    # from here on.
                    log.warning("segment store %s: direct writes refused (%s); writing "
                                "through the page cache", self.root, exc)
                    self.direct_min = 0
                    self._await_direct()  # queued writes still use the descriptor
                    self._close_direct()
                    dfd = -1
            if done < n:  # a short direct write (a nearly full disk): the rest buffered
                fmt.pwrite_all(self._wfd, [buf[done:n]], pos + done)
            pos += n
        self._tail = _pwrite_small(self._wfd, _read_range(pieces, last - start, end - start),
                                   last)
        return True

    def _direct_fd(self) -> int:
        """The active segment's O_DIRECT descriptor (and the aligned buffer); -1 (and direct
        writes off) where the file system does not support them (e.g. an older tmpfs)."""
        if self._dfd < 0:
            try:
                if self._dbuf is None:
                    # Private: a process forked later must not share the bytes in flight.
                    self._dbuf = mmap.mmap(-1, DIRECT_CHUNK, flags=mmap.MAP_PRIVATE)
                self._dfd = os.open(self.root / self._active,
                                    os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno in DIRECT_REFUSED:
                    log.info("segment store %s: no direct I/O here (%s); large records go "
                             "through the page cache", self.root, exc)
                    self.direct_min = 0
                else:  # out of descriptors or memory for now: this record goes buffered
                    log.warning("segment store %s: cannot open for direct writes (%s)",
                                self.root, exc)
        return self._dfd

    def _close_direct(self) -> None:
        if self._dfd >= 0:
            os.close(self._dfd)
            self._dfd = -1

    def _sync(self, durable: bool) -> None:
        if durable:
            self._await_direct()
            try:
                os.fdatasync(self._wfd)
            except OSError as exc:
                self.note_sync_failure(exc)
                raise
            self._dirty = False
        else:
            self._dirty = True

    def _undo(self, start: int | None) -> None:
        """Cut a half-written record so the next one starts on a boundary."""
        if start is None:
            return
        try:
            if self._wfd >= 0:
                os.ftruncate(self._wfd, start)
                self._tail = start
                self._zeroed_end = min(self._zeroed_end, start)
        except OSError:
            log.exception("segment %s: cannot cut a failed write at %d", self._active, start)

    def flush(self) -> None:
        """One fdatasync of the active segment makes every earlier put durable.

        The fdatasync runs outside the write lock, on a descriptor of its own: puts go on
        appending meanwhile (the next flush covers them), so the disk writes one batch while
        the next one is copied into the page cache. Holding the lock serialised the two: 512x512
        instances over 4 associations waited for each batch's fdatasync before writing the next
        one. A roll meanwhile seals (and syncs) the segment being synced itself."""
        self._check_open()
        with self._wlock:
            with self._slock:
                exc, self._flush_error = self._flush_error, None
            if exc is not None:
                raise StorageError(f"earlier puts may be lost: {exc}") from exc
            if not self._dirty:
                failures = self._failures
                fd = -1
            else:
                self._await_direct()
                fd = os.dup(self._flush_sync_fd)
                segment = self._active
                self._dirty = False
        if fd < 0:
            # Nothing new, but another flush may still be syncing what was appended before
            # this call: it is durable only once that fdatasync returned, and did not fail.
            with self._flush_lock:
                pass
            if self._failures != failures:
                raise StorageError(f"an fdatasync of segment {self._active} failed")
            return
        try:
            with self._flush_lock:  # noted before another flush of this open file may return
                try:
                    os.fdatasync(fd)
                except OSError as err:
                    # Counted: every store written before it is refused (see ``failures``).
                    self.note_sync_failure(err)
                    with self._wlock:
                        self._dirty = True
                    raise StorageError(f"cannot flush segment {segment}: {err}") from err
        finally:
            os.close(fd)

    def delete(self, location: str, uid: str = "") -> None:
        """Append a tombstone (fdatasync'd: deletes are rare); BlobNotFound when not live.

        An in-place file (``ext:``) is only dropped from the journal, never touched."""
        if external.is_external(location):
            self._check_open()
            self._external.remove(location, uid)
            return
        with self._reading(location) as (_fd, head, _parsed):
            key = head.key
        data = location.encode()
        with self._wlock:
            if location in self._dead:
                raise BlobNotFound(f"blob already deleted: {location}")
            start: int | None = None
            try:
                self._make_room(fmt.HEADER_SIZE + len(data))
                start = self._tail
                header = fmt.pack_header(
                    fmt.KIND_TOMBSTONE, fmt.key_bytes(key), len(data), crc32(data)
                )
                self._append(header, [memoryview(data)])
                self._sync(True)
            except OSError as exc:
                self._undo(start)
                raise StorageError(f"cannot delete {location}: {exc}") from exc
            self._tombs.append(location)
            self._dead.add(location)

    # -- reading -------------------------------------------------------------------------------

    def _acquire(self, segment: str) -> _ReadHandle:
        with self._rlock:
            handle = self._readers.get(segment)
            if handle is not None:
                self._readers.move_to_end(segment)
                handle.refs += 1
                return handle
        try:
            fd = os.open(self.root / segment, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise BlobNotFound(f"no segment {segment} (deleted or compacted)") from exc
        except OSError as exc:
            raise StorageError(f"cannot open segment {segment}: {exc}") from exc
        with self._rlock:
            handle = self._readers.get(segment)
            if handle is not None:  # another thread opened it meanwhile
                os.close(fd)
            else:
                handle = self._readers[segment] = _ReadHandle(fd)
                while len(self._readers) > _MAX_READ_FDS:
                    _, old = self._readers.popitem(last=False)
                    self._retire(old)
            handle.refs += 1
            return handle

    def _release(self, handle: _ReadHandle) -> None:
        with self._rlock:
            handle.refs -= 1
            if handle.retired and handle.refs == 0:
                os.close(handle.fd)

    def _retire(self, handle: _ReadHandle) -> None:
        """Drop from the cache (caller holds _rlock); closed once no read uses it."""
        handle.retired = True
        if handle.refs == 0:
            os.close(handle.fd)

    def _reading(self, location: str) -> _Reading:
        self._check_open()
        parsed = fmt.parse_location(location)
        if parsed is None:
            raise BlobNotFound(f"not a segment store location: {location!r}")
        if location in self._dead:
            raise BlobNotFound(f"blob deleted: {location}")
        return _Reading(self, location, parsed)

    def get(self, location: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read ``length`` bytes (to the end when None) from ``offset``; short at the end."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if external.is_external(location):
            return external.get(location, offset, length)
        with self._reading(location) as (fd, _head, (_seg, data_offset, size)):
            end = size if length is None else min(size, offset + length)
            if offset >= end:
                return b""
            try:
                return fmt.pread_all(fd, end - offset, data_offset + offset)
            except OSError as exc:
                raise StorageError(f"cannot read {location}: {exc}") from exc

    def iter_chunks(self, location: str, chunk_size: int = fmt.CHUNK) -> Iterator[bytes]:
        """Stream a blob; BlobNotFound is raised here, not at the first ``next``."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if external.is_external(location):
            return external.iter_chunks(location, chunk_size)
        reading = self._reading(location)
        reading.__enter__()
        return self._chunks(reading, chunk_size)

    @staticmethod
    def _chunks(reading: _Reading, chunk_size: int) -> Iterator[bytes]:
        try:
            fd, (_seg, pos, size) = reading.fd, reading.parsed
            end = pos + size
            while pos < end:
                try:
                    chunk = os.pread(fd, min(chunk_size, end - pos), pos)
                except OSError as exc:
                    raise StorageError(f"cannot read {reading.location}: {exc}") from exc
                if not chunk:
                    raise StorageError(f"segment ends inside {reading.location}")
                pos += len(chunk)
                yield chunk
        finally:
            reading.__exit__(None, None, None)

    def data_crc(self, location: str) -> int | None:
        """The CRC-32 its record's header holds for a blob's bytes (None: an in-place file)."""
        if external.is_external(location):
            return None
        with self._reading(location) as (_fd, head, _parsed):
            return head.data_crc

    def size(self, location: str) -> int:
        """Size in bytes of a stored blob."""
        if external.is_external(location):
            return external.size(location)
        with self._reading(location) as (_fd, head, _parsed):
            return head.data_len

    # -- listing -------------------------------------------------------------------------------

    def _scan(self, name: str, records: bool = True) -> fmt.SegmentIndex | None:
        """Index of one segment (sealed: its seal record; else a header walk); None if gone."""
        if name == self._active and not self._closed:
            with self._wlock:
                if name == self._active:
                    entries = fmt.decode_records(bytes(self._index), self._n_records)
                    return fmt.SegmentIndex(entries, list(self._tombs), False, self._tail)
        try:
            # O_NONBLOCK: a FIFO put there since the listing must not block the open.
            fd = os.open(self.root / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot open segment {self.root / name}: {exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced since it was listed
                log.warning("%s is no regular file: skipped", self.root / name)
                return None
            size = st.st_size
            try:
                index = fmt.read_sealed_index(fd, size, records=records)
            except fmt.DamagedSeal as exc:
                log.warning("segment %s: %s: walking its records instead", name, exc)
                index = None
            if index is not None:
                return index
            index = fmt.SegmentIndex()
            for head in fmt.walk(fd, size):
                if head.kind == fmt.KIND_BLOB:
                    index.records.append((head.data_offset, head.data_len, head.key))
                elif head.kind == fmt.KIND_TOMBSTONE:
                    self._walked_tombstone(fd, name, head, index.tombstones)
                index.end = head.end
            return index
        except (OSError, ValueError, struct.error) as exc:  # ValueError: a damaged file
            raise StorageError(f"cannot read segment {self.root / name}: {exc}") from exc
        finally:
            os.close(fd)

    @staticmethod
    def _walked_tombstone(fd: int, name: str, head: fmt.Header, out: list[str]) -> None:
        """Add a tombstone record met by a walk, unless its data fails its CRC (a walk trusts
        lengths only: a damaged tombstone could name a live blob) or names no location."""
        data = os.pread(fd, head.data_len, head.data_offset)
        tomb = fmt.tombstone_location(data) if crc32(data) == head.data_crc else None
        if tomb is None:
            log.warning("segment %s: the tombstone at %d is damaged: ignored", name, head.offset)
        else:
            out.append(tomb)

    def scan_all(self) -> tuple[dict[str, fmt.SegmentIndex], set[str]]:
        """Every segment's index, and every tombstoned location (all writers)."""
        indexes, dead, _copies = self.scan_copies()
        return indexes, dead

    def scan_copies(
        self,
    ) -> tuple[dict[str, fmt.SegmentIndex], set[str], dict[str, list[str]]]:
        """``scan_all``, and for each dead record that has copies (or is one) the locations of
        all of them and of its origin (``fmt.copy_groups``; compaction needs them)."""
        try:
            indexes = {n: i for n in self.segments() if (i := self._scan(n)) is not None}
        except OSError as exc:
            raise StorageError(f"cannot scan segments under {self.root}: {exc}") from exc
        dead = set(self._dead)
        for index in indexes.values():
            dead.update(index.tombstones)
        # A tombstone names one copy of a record that compaction copied (a crash may leave
        # both, and the catalog pointed at either): it covers every copy. Every copy names the
        # same origin, the key of the group: only the groups with a dead member are built.
        copies = fmt.copy_groups(indexes, dead)
        dead.update(copies)
        return indexes, dead, copies

    def iter_records(self) -> Iterator[tuple[str, str]]:
        """(location, key) of every live blob, scanning the self-describing segments.

        After a crash in compaction one key may appear twice (identical bytes): keep one. A
        tombstone of one copy covers the others (``compaction``).
        """
        self._check_open()
        indexes, dead = self.scan_all()
        for name, index in indexes.items():
            for data_offset, length, key in index.records:
                location = fmt.format_location(name, data_offset, length)
                if location not in dead:
                    yield location, key

    @property
    def active_segment(self) -> str:
        """The segment this writer appends to now (names only grow: a position in time)."""
        return self._active

    def iter_own_records(self, from_segment: str | None = None) -> Iterator[tuple[str, str]]:
        """(location, key) of this writer's live blobs in write order, from ``from_segment`` on
        (all when None): what an index replay after a crash must look at."""
        self._check_open()
        start = fmt.parse_segment_name(from_segment) if from_segment else None
        # A record compaction copied is dead when any copy is (a crash between relocate and
        # unlink, then a delete of the copy): our records are origins, named by their copies.
        killed = self._origins_of_dead_copies(set(self._dead))
        known_dead = self._dead | killed  # once, not per segment
        for name in self._own_segments():
            parsed = fmt.parse_segment_name(name)
            if start is not None and parsed is not None and parsed[1] < start[1]:
                continue
            try:
                index = self._scan(name)
            except OSError as exc:
                raise StorageError(f"cannot scan segment {name}: {exc}") from exc
            if index is None:
                continue
            tombstones = set(index.tombstones)
            for data_offset, length, key in index.records:
                location = fmt.format_location(name, data_offset, length)
                if location not in known_dead and location not in tombstones:
                    yield location, key

    def _origins_of_dead_copies(self, dead: set[str]) -> set[str]:
        """The origins named by the copies ``dead`` names (reads only the compact segments it
        points into)."""
        compact: dict[str, fmt.SegmentIndex] = {}
        for name in sorted(fmt.by_segment(dead)):
            parsed = fmt.parse_segment_name(name)
            if parsed is None or parsed[0] != fmt.COMPACT_OWNER:
                continue
            try:
                index = self._scan(name)
            except OSError as exc:
                raise StorageError(f"cannot scan segment {name}: {exc}") from exc
            if index is not None and index.source_section:
                compact[name] = index
        sources = {name: index.sources() for name, index in compact.items()}
        return fmt.dead_origins(compact, sources, dead)

    def locations(self) -> Iterator[str]:
        """Every live blob's location (for ``pacs reindex`` and ``pacs verify``), then every
        in-place file's."""
        for location, _key in self.iter_records():
            yield location
        yield from self.in_place_locations()

    def in_place_locations(self) -> Iterator[str]:
        """Every in-place file's location (``pacs import --in-place``), from its journal."""
        return self._external.locations()

    def segment_stats(self) -> list[SegmentStat]:
        """Per segment: size, blob bytes and tombstoned bytes (for a compaction threshold)."""
        indexes, dead = self.scan_all()
        out = []
        for name, index in indexes.items():
            total = sum(n for _o, n, _k in index.records)
            gone = sum(n for o, n, _k in index.records if fmt.format_location(name, o, n) in dead)
            out.append(SegmentStat(name, index.sealed, index.end, total, gone))
        return out

    def compact(
        self,
        is_live: Callable[[str], bool | None],
        relocate: Callable[[dict[str, str]], None],
        min_dead_fraction: float = 0.5,
    ) -> CompactReport:
        """Rewrite sealed segments whose dead fraction is at least ``min_dead_fraction``.

        See ``pacs.store.compaction``: live means not tombstoned and ``is_live(location)`` (the
        catalog's word; None: undecided, the segment is left alone); ``relocate`` gets
        {old: new} for each rewritten group, after the new segment is durable and before the
        old ones are unlinked.
        """
        self._check_open()
        return compact(self, is_live, relocate, min_dead_fraction)

    def forget_segment(self, name: str) -> None:
        """Stop reading a segment that compaction removed (fds are closed once unused)."""
        with self._rlock:
            handle = self._readers.pop(name, None)
            if handle is not None:
                self._retire(handle)

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush, then release every descriptor; later calls raise StorageError."""
        if self._closed:
            return
        with self._wlock:
            try:
                self._await_direct()
            except OSError as exc:
                # Never close descriptors a queued write may still use: leaked instead.
                self._closed = True
                raise StorageError(f"segment store {self.root}: queued writes did not "
                                   f"complete ({exc}); its descriptors stay open") from exc
            try:
                self._stop_fill()
                if self._wfd >= 0 and self._zeroed_end > self._tail:
                    os.ftruncate(self._wfd, self._tail)  # the zeros are of no use to anyone
                    self._dirty = True
                if self._dirty and self._wfd >= 0:
                    os.fdatasync(self._wfd)
            finally:
                self._closed = True
                self._close_fds()

    def _close_fds(self) -> None:
        self._close_direct()
        if self._dbuf is not None:
            try:
                self._dbuf.close()
            except BufferError:  # a view kept alive by a traceback: the collector frees it
                pass
            self._dbuf = None
        with self._slock:
            pending = self._next_loop_sync[1] if self._next_loop_sync is not None else -1
            for fd in (self._wfd, self._loop_sync_fd, self._flush_sync_fd, pending):
                if fd >= 0:
                    os.close(fd)
            self._wfd = self._loop_sync_fd = self._flush_sync_fd = -1
            self._next_loop_sync = None
        with self._rlock:
            for handle in self._readers.values():
                self._retire(handle)
            self._readers.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"segment store at {self.root} is closed")


class _Reading:
    """A verified blob record held open for reading: ``with`` yields (fd, header, parsed)."""

    def __init__(self, store: SegmentStore, location: str, parsed: tuple[str, int, int]) -> None:
        self.store = store
        self.location = location
        self.parsed = parsed
        self.fd = -1
        self._handle: _ReadHandle | None = None

    def __enter__(self) -> tuple[int, fmt.Header, tuple[str, int, int]]:
        segment, data_offset, size = self.parsed
        handle = self.store._acquire(segment)
        try:
            st = os.fstat(handle.fd)
            if st.st_nlink == 0:  # compaction unlinked it: the location is stale
                self.store.forget_segment(segment)
                raise BlobNotFound(f"segment {segment} was compacted away")
            head = None
            if data_offset + size <= st.st_size:
                head = fmt.read_header(handle.fd, data_offset - fmt.HEADER_SIZE)
            if head is None or head.kind != fmt.KIND_BLOB or head.data_len != size:
                raise BlobNotFound(f"no blob at {self.location}")
        except OSError as exc:
            self.store._release(handle)
            raise StorageError(f"cannot read {self.location}: {exc}") from exc
        except BaseException:
            self.store._release(handle)
            raise
        self._handle, self.fd = handle, handle.fd
        return handle.fd, head, self.parsed

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self.store._release(self._handle)
            self._handle = None


_Piece = memoryview | tuple[int, int]  # bytes, or a spooled file: (descriptor, length)


def _direct_span(head_end: int, end: int) -> tuple[int, int] | None:
    """The whole blocks of a record written with ``O_DIRECT``: from the first block boundary
    at or after ``head_end`` (what must go through the page cache) to the last one at or
    before ``end``; None when that is not even one block."""
    first = -(-head_end // _BLOCK) * _BLOCK
    last = end // _BLOCK * _BLOCK
    return (first, last) if last - first >= _BLOCK else None


def _piece_len(piece: _Piece) -> int:
    return len(piece) if isinstance(piece, memoryview) else piece[1]


def _spans(pieces: Sequence[_Piece], lo: int, hi: int) -> Iterator[tuple[_Piece, int, int]]:
    """Bytes [lo, hi) of the concatenation of ``pieces``: (piece, start, end) within each."""
    pos = 0
    for piece in pieces:
        n = _piece_len(piece)
        if pos + n > lo and pos < hi:
            yield piece, max(lo - pos, 0), min(hi - pos, n)
        pos += n
        if pos >= hi:
            break


def _read_range(pieces: Sequence[_Piece], lo: int, hi: int) -> list[memoryview]:
    """Bytes [lo, hi) of the pieces as views (read from spooled files: at most a block)."""
    out: list[memoryview] = []
    for piece, a, b in _spans(pieces, lo, hi):
        if isinstance(piece, memoryview):
            out.append(piece[a:b])
        else:
            data = bytearray(b - a)
            _read_into(memoryview(data), [piece], a, b)
            out.append(memoryview(data))
    return out


def _pwrite_small(fd: int, views: list[memoryview], offset: int) -> int:
    """Write a record's partial first or last block (a few KiB) at ``offset``; the end offset.
    Keeps the GIL (``fastio``): giving it up for a page-cache write costs more than the write."""
    data = views[0] if len(views) == 1 else b"".join(views)
    view = memoryview(data)
    while view:
        n = fastio.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    return offset


def _read_into(buf: memoryview, pieces: Sequence[_Piece], lo: int, hi: int) -> None:
    """Copy bytes [lo, hi) of the pieces to the start of ``buf``."""
    at = 0
    for piece, a, b in _spans(pieces, lo, hi):
        if isinstance(piece, memoryview):
            buf[at:at + b - a] = piece[a:b]
            at += b - a
            continue
        fd, offset = piece[0], a
        while offset < b:
            got = os.preadv(fd, [buf[at:at + b - offset]], offset)
            if got == 0:
                raise OSError(f"spooled file shrank while being copied ({piece[1]} bytes "
                              "expected)")
            at += got
            offset += got


def _never_written(fd: int, start: int, end: int) -> bool:
    """Whether the corrupt range [start, end) is a record an event loop laid out
    (``reserve_direct``) whose queued writes a crash kept its sync thread from making, or from
    finishing: all zero, or its header there and its block-aligned middle all zero from the
    start of one of the chunks the sync thread writes it in, in order (``DIRECT_CHUNK``), to
    the record's end (the partial block after the middle is written last). Such a record was
    never acknowledged (its fdatasync is asked after the writes); a disk that lost writes it
    had confirmed would look the same, so the log says what the bytes show, not more."""
    if _all_zero(fd, start, end):
        return True
    head = fmt.read_header(fd, start)
    if head is None or head.kind != fmt.KIND_BLOB or head.end != end:
        return False
    # The loop writes the Part-10 header through the page cache: the middle starts at the
    # first block boundary after it (after the record's header if it cannot be read).
    span = _direct_span(head.data_offset + _part10_header_len(fd, head.data_offset), end)
    if span is None:
        return False
    first, last = span
    # Zero from an earlier chunk on means zero from the last one on: that one is checked.
    last_chunk = first + (last - first - 1) // DIRECT_CHUNK * DIRECT_CHUNK
    return _all_zero(fd, last_chunk, end)


def _part10_header_len(fd: int, offset: int) -> int:
    """The length of the Part-10 header (preamble, DICM, group 2) of the blob at ``offset``;
    0 when it does not start with one."""
    head = os.pread(fd, 144, offset)
    # 128-byte preamble, b"DICM", then (0002,0000) UL with the group's length.
    if len(head) < 144 or head[128:140] != b"DICM\x02\x00\x00\x00UL\x04\x00":
        return 0
    return 144 + int.from_bytes(head[140:144], "little")


def _all_zero(fd: int, start: int, end: int) -> bool:
    """Whether bytes [start, end) of ``fd`` are all zero (a zero-filled tail, not a torn one)."""
    offset = start
    while offset < end:
        chunk = os.pread(fd, min(len(_ZEROS), end - offset), offset)
        if not chunk:
            return True
        if chunk.count(0) != len(chunk):
            return False
        offset += len(chunk)
    return True
