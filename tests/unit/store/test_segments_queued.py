"""SegmentStore.reserve_direct: large records laid out on the event loop, their middles written
by a queue (the loop's Syncer thread) after the write lock is released."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pacs.store.base import BlobInfo
from pacs.store.segments import SegmentStore
from pacs.store.syncer import WRITE, Syncer

from .test_segments import LARGE_SIZES, direct_io_here

NAME = "w0-00000001.seg"


@pytest.fixture(autouse=True)
def _direct_io(tmp_path: Path) -> None:
    if not direct_io_here(tmp_path):
        pytest.skip("no O_DIRECT on this file system")


class HeldQueue:
    """A queue that writes nothing until told to (``release``): what a busy sync thread is."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, int, int, int, int]] = []
        self.kept: list[object] = []
        self.writes_done = 0
        self.writes_failed = 0

    @property
    def writes_asked(self) -> int:
        return len(self.requests)

    def request_write(self, fd: int, dfd: int, address: int, length: int, offset: int,
                      keep: object = None) -> None:
        self.requests.append((fd, dfd, address, length, offset))
        self.kept.append(keep)

    def release(self, n: int | None = None) -> None:
        """Write the next ``n`` requests (all by default)."""
        end = len(self.requests) if n is None else self.writes_done + n
        for fd, _dfd, address, length, offset in self.requests[self.writes_done:end]:
            os.pwrite(fd, ctypes.string_at(address, length), offset)
        self.writes_done = end


def answers(syncer: Syncer, n: int) -> list[tuple[int, int]]:
    got: list[tuple[int, int]] = []
    while len(got) < n:
        select.select([syncer.done_fd], [], [], 1.0)
        got += syncer.answers()
    return got


def data_of(i: int, size: int) -> bytes:
    return hashlib.sha256(f"Q.{i}".encode()).digest() * (size // 32)


def test_queued_records_equal_buffered_ones(tmp_path: Path) -> None:
    """The same records laid out by reserve_direct (bytearray and read-only bytes data sets)
    and by put give byte-identical segments, every one readable."""
    queued = SegmentStore(tmp_path / "queued", prefill=0)
    buffered = SegmentStore(tmp_path / "buffered", prefill=0, direct_min=0)
    syncer = Syncer()
    written: dict[str, bytes] = {}
    try:
        for i, size in enumerate([100_000, *LARGE_SIZES]):  # from segment_direct_min up
            small = bytes([i]) * (333 + 1000 * i)
            meta = b"M" * (128 + i)
            data = data_of(i, size)
            dataset = bytearray(data) if i % 2 else data
            for store in (queued, buffered):
                store.put(f"Q.s{i}", [small], durable=False)
            info = queued.reserve_direct(f"Q.{i}", meta, dataset, syncer)
            assert info is not None
            assert buffered.put(f"Q.{i}", [meta, data], durable=False) == info
            written[info.location] = meta + data
        syncer.request(queued.sync_target()[1])
        n = syncer.writes_asked  # two or three a record: head, middle, tail
        assert 2 * (len(LARGE_SIZES) + 1) <= n <= 3 * (len(LARGE_SIZES) + 1)
        assert [tag for tag, _ in answers(syncer, n + 1)][:-1] == [WRITE] * n
        assert syncer.writes_done == n and not syncer._kept
        for location, data in written.items():
            assert queued.get(location) == data
    finally:
        syncer.close()
    queued.close()
    buffered.close()
    assert (tmp_path / "queued" / NAME).read_bytes() == (tmp_path / "buffered" / NAME).read_bytes()


def test_reserve_direct_declines_what_must_go_the_blocking_way(tmp_path: Path) -> None:
    """None, and nothing written, for a small record, with direct writes off, while another
    thread holds the write lock, when the record needs a roll, or while another queue's
    writes are outstanding."""
    store = SegmentStore(tmp_path / "s", prefill=0, segment_size=8 << 20)
    queue = HeldQueue()
    big = data_of(0, 600_000)

    def declined(call: Callable[[], object]) -> None:
        tail = store._tail
        assert call() is None
        assert store._tail == tail and queue.writes_asked == 0

    declined(lambda: store.reserve_direct("a", b"M", b"x" * 1000, queue))
    off = SegmentStore(tmp_path / "off", prefill=0, direct_min=0)
    assert off.reserve_direct("a", b"M", big, queue) is None
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._wlock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    declined(lambda: store.reserve_direct("a", b"M", big, queue))
    release.set()
    holder.join()
    store.put("filler", [bytes(7_900_000)], durable=False)
    declined(lambda: store.reserve_direct("a", b"M", big, queue))  # would need a roll
    store.put("rolled", [bytes(600_000)])  # the blocking way rolls: a new segment with room
    assert store.reserve_direct("a", b"M", big, queue) is not None
    other = HeldQueue()
    assert store.reserve_direct("b", b"M", big, other) is None  # ``queue`` still owes a write
    queue.release()
    assert store.reserve_direct("b", b"M", big, other) is not None
    other.release()
    store.close()
    off.close()


@pytest.mark.parametrize("action", ["flush", "durable put", "roll", "delete", "close"])
def test_what_syncs_or_seals_waits_for_queued_writes(tmp_path: Path, action: str) -> None:
    """A record whose middle is still queued must not end up torn behind one made durable (or
    a seal): flush, a durable put, a roll, a tombstone and close wait for the queue."""
    store = SegmentStore(tmp_path, prefill=0, segment_size=2 << 20)
    queue = HeldQueue()
    data = data_of(1, 1_000_000)
    kept = store.put("kept", [b"k" * 5000], durable=False)
    info = store.reserve_direct("q", b"M" * 200, data, queue)
    assert info is not None
    actions: dict[str, Callable[[], object]] = {
        "flush": store.flush,
        "durable put": lambda: store.put("d", [b"d" * 100]),
        "roll": lambda: store.put("big", [bytes(1_500_000)], durable=False),
        "delete": lambda: store.delete(kept.location),
        "close": store.close,
    }
    done = threading.Event()
    runner = threading.Thread(target=lambda: (actions[action](), done.set()))
    runner.start()
    assert not done.wait(0.3), f"{action} did not wait for the queued write"
    queue.release()
    assert done.wait(10)
    runner.join()
    if action == "close":
        store = SegmentStore(tmp_path, prefill=0, segment_size=2 << 20)
    assert store.get(info.location) == b"M" * 200 + data
    store.close()


def test_a_failed_queued_write_is_counted_and_the_segment_takes_no_more(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, prefill=0)
    queue = HeldQueue()
    info = store.reserve_direct("q", b"M", data_of(2, 600_000), queue)
    assert info is not None
    queue.writes_failed, queue.writes_done = 1, len(queue.requests)  # answered, one failed
    failures = store.failures
    store.direct_answered(errno.EIO, False)
    store.direct_answered(errno.EIO, False)  # told twice (the loop, then close): counted once
    assert store.failures == failures + 1
    assert store.reserve_direct("r", b"M", data_of(3, 600_000), queue) is None  # needs a roll
    after = store.put("after", [b"a" * 100])
    assert after.location.split(":")[0] != info.location.split(":")[0]
    assert store.get(after.location) == b"a" * 100
    store.close()


def test_a_refused_direct_write_turns_direct_writes_off(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, prefill=0)
    store.direct_answered(0, True)
    assert store.direct_min == 0
    assert store.reserve_direct("q", b"M", data_of(4, 600_000), HeldQueue()) is None
    store.close()


def test_a_record_laid_out_but_never_written_is_a_torn_tail(tmp_path: Path) -> None:
    """The process dies before the queue wrote the middle: the next start cuts the record off
    (its header and partial blocks are there, its middle is not) and keeps what came before."""
    store = SegmentStore(tmp_path, prefill=0)
    before = store.put("before", [b"b" * 3000])
    queue = HeldQueue()
    assert store.reserve_direct("q", b"M", data_of(5, 600_000), queue) is not None
    os.fdatasync(store._wfd)  # the laid-out parts reach the disk; the middle never does
    os.close(store._wfd)  # a crash: no seal, no close
    store._wfd = -1
    reopened = SegmentStore(tmp_path, prefill=0)
    assert reopened.get(before.location) == b"b" * 3000
    assert [key for _, key in reopened.iter_records()] == ["before"]
    assert reopened._tail == int(before.location.split(":")[1]) + 3000
    assert os.path.getsize(tmp_path / NAME) == reopened._tail
    reopened.close()


def test_a_small_put_waits_in_the_queue_behind_its_writes(tmp_path: Path) -> None:
    """While the loop's queue still has a record's writes to make (its direct write holds the
    file's lock), a small record the loop appends is queued behind them instead of written
    from the loop; once the queue has caught up, small records are written at once again, and
    always when the put names no queue or another one."""
    store = SegmentStore(tmp_path, prefill=0)
    queue = HeldQueue()
    info = store.reserve_direct("q", b"M", data_of(10, 600_000), queue)
    assert info is not None
    asked = queue.writes_asked

    def on_disk(location: str) -> bytes:
        with open(tmp_path / NAME, "rb") as fh:
            fh.seek(int(location.split(":")[1]))
            return fh.read(3000)

    assert not on_disk(info.location).strip(b"\0")  # all of the record is queued, even its head

    queued = store.try_put("s", [b"s" * 3000], queue)
    assert queued is not None and queue.writes_asked == asked + 1
    assert b"s" not in on_disk(queued.location)  # not written yet
    others = [store.try_put("n", [b"n" * 3000]), store.try_put("o", [b"o" * 3000], HeldQueue())]
    assert queue.writes_asked == asked + 1
    assert [on_disk(o.location) for o in others if o is not None] == [b"n" * 3000, b"o" * 3000]
    queue.release()
    assert store.get(queued.location) == b"s" * 3000
    later = store.try_put("t", [b"t" * 3000], queue)
    assert later is not None and queue.writes_asked == asked + 1  # written at once
    assert on_disk(later.location) == b"t" * 3000
    store.flush()
    store.close()
    reopened = SegmentStore(tmp_path, prefill=0)
    assert [key for _, key in reopened.iter_records()] == ["q", "s", "n", "o", "t"]
    reopened.close()


def _crash_and_reopen(tmp_path: Path, store: SegmentStore, caplog: pytest.LogCaptureFixture,
                      before: BlobInfo, after: BlobInfo, leftover: bool) -> None:
    """Crash (no seal, no close) and start again: the records ``before`` and ``after`` the
    unfinished one are kept and readable, and it is logged as a crash's leftover (WARNING,
    ``leftover``) or as damage (ERROR)."""
    os.fdatasync(store._wfd)
    os.close(store._wfd)
    store._wfd = -1
    with caplog.at_level(logging.INFO, logger="pacs.store.segments"):
        reopened = SegmentStore(tmp_path, prefill=0)
    assert reopened.get(before.location) == b"b" * 3000
    assert reopened.get(after.location) == b"a" * 3000
    assert [key for _, key in reopened.iter_records()] == ["before", "after"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    unwritten = [r for r in caplog.records if "never written" in r.getMessage()]
    if leftover:
        assert not errors and [r.levelno for r in unwritten] == [logging.WARNING]
    else:
        assert not unwritten and ["corrupt bytes" in r.getMessage() for r in errors] == [True]
    reopened.close()


@pytest.mark.parametrize("written", ["nothing", "head", "all, then damaged"])
def test_a_record_never_written_between_others_is_kept_and_told_apart_from_damage(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, written: str) -> None:
    """The loop appended a small record after one whose writes its queue never made (or only
    the first, its header), then the process died: both neighbours are kept and readable, and
    the unwritten record is logged as a crash's leftover (WARNING), not as damage (ERROR),
    which written bytes that fail their checksum still are."""
    from pacs.dicom import part10

    store = SegmentStore(tmp_path, prefill=0)
    before = store.put("before", [b"b" * 3000])
    meta = part10.file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1", "Q")
    queue = HeldQueue()
    info = store.reserve_direct("q", meta, data_of(6, 600_000), queue)
    assert info is not None
    after = store.try_put("after", [b"a" * 3000])
    assert after is not None
    if written == "head":
        queue.release(1)
    elif written == "all, then damaged":  # a block of it lost
        queue.release()
        offset = int(info.location.split(":")[1]) + 300_000
        os.pwrite(store._wfd, b"x" * 4096, offset)
    _crash_and_reopen(tmp_path, store, caplog, before, after,
                      leftover=written != "all, then damaged")


@pytest.mark.parametrize("left", ["the last of three chunks", "a block of the last chunk"])
def test_a_large_record_whose_chunks_stopped_is_a_crash_leftover_not_damage(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, left: str) -> None:
    """The sync thread writes a middle over 2 MiB in chunks of ``DIRECT_CHUNK``, in order, and
    the partial block after it last: a crash between two chunks leaves the record zero from a
    chunk's start to its end, logged as never written (WARNING) like a record none of whose
    middle was written. Zeros from anywhere else in the last chunk are damage (ERROR)."""
    from pacs.dicom import part10
    from pacs.store.syncer import DIRECT_CHUNK

    store = SegmentStore(tmp_path, prefill=0)
    before = store.put("before", [b"b" * 3000])
    meta = part10.file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1", "Q")
    data = data_of(8, 5 * DIRECT_CHUNK // 2 + 1000)  # a middle of three chunks, then a tail
    queue = HeldQueue()
    info = store.reserve_direct("q", meta, data, queue)
    assert info is not None
    after = store.try_put("after", [b"a" * 3000])
    assert after is not None
    queue.release()  # all of it written, then what the crash did not write is zeroed
    _, offset, size = info.location.split(":")
    end = int(offset) + int(size)
    first = -(-(int(offset) + len(meta)) // 4096) * 4096  # where the direct middle starts
    last_chunk = first + 2 * DIRECT_CHUNK
    assert last_chunk < end // 4096 * 4096 < end
    if left == "the last of three chunks":
        os.pwrite(store._wfd, bytes(end - last_chunk), last_chunk)
    else:
        os.pwrite(store._wfd, bytes(4096), last_chunk + 4096)
    _crash_and_reopen(tmp_path, store, caplog, before, after,
                      leftover=left == "the last of three chunks")


def test_a_failed_write_nobody_read_the_answer_of_is_counted_before_a_flush(
        tmp_path: Path) -> None:
    """The loop never read the failed write's answer (it stopped, or was too busy at close):
    the flush that waits for the queue hears of the failure from the queue's own count, so
    the stores it makes durable are refused and the segment takes no more."""
    store = SegmentStore(tmp_path, prefill=0)
    queue = HeldQueue()
    assert store.reserve_direct("q", b"M", data_of(6, 600_000), queue) is not None
    queue.writes_failed, queue.writes_done = 1, len(queue.requests)  # one failed, never read
    failures = store.failures
    store.flush()
    assert store.failures == failures + 1
    assert store.reserve_direct("r", b"M", data_of(7, 600_000), queue) is None  # needs a roll
    store.close()


def test_a_failure_of_the_previous_queue_is_counted_when_another_takes_over(
        tmp_path: Path) -> None:
    """Two loops on one store: the first one's write failed and it has not read the answer
    when the second lays out a record; the failure is counted then, not lost with the switch."""
    store = SegmentStore(tmp_path, prefill=0)
    first, second = HeldQueue(), HeldQueue()
    assert store.reserve_direct("q", b"M", data_of(8, 600_000), first) is not None
    first.writes_failed, first.writes_done = 1, len(first.requests)
    failures = store.failures
    # Counted before laying out: the segment with the torn record takes no more.
    assert store.reserve_direct("r", b"M", data_of(9, 600_000), second) is None
    assert store.failures == failures + 1
    store.direct_answered(errno.EIO, False)  # the first loop's late answer: not twice
    assert store.failures == failures + 1
    second.release()
    store.close()
