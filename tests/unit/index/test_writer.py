"""CatalogWriter: group commit from many threads, ordering, errors, close."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from pacs.errors import CatalogError, StorageError
from pacs.index.catalog import Catalog, PreparedStores, StoreOutcome
from pacs.index.records import InstanceRecord
from pacs.index.writer import CatalogWriter
from pacs.store.segments import SegmentStore
from tests.unit.index._records import check_consistent, hierarchy, make_record


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog(tmp_path / "db", map_size=1 << 26)
    yield cat
    cat.close()


# The loop group's two ways of indexing a batch: after its fdatasync, or applied during it.
DURING = pytest.mark.parametrize("during_sync", [False, True], ids=["after_sync", "during_sync"])


def hold(writer: CatalogWriter) -> threading.Event:
    """Pause the writer until the returned event is set (so that submissions queue up)."""
    writer.pause()
    release = threading.Event()

    def resume_on_release() -> None:
        if release.wait(10):
            writer.resume()

    threading.Thread(target=resume_on_release, daemon=True).start()
    return release


def record_commit_threads(catalog: Catalog) -> list[str]:
    """Make ``catalog`` note the thread of every store transaction in the returned list."""
    commit_threads: list[str] = []
    real_store_items = catalog.store_items

    def spy(*args: object, **kwargs: object) -> list[StoreOutcome]:
        commit_threads.append(threading.current_thread().name)
        return real_store_items(*args, **kwargs)  # type: ignore[arg-type]

    catalog.store_items = spy  # type: ignore[method-assign]
    return commit_threads


def test_many_threads_group_commit(catalog: Catalog) -> None:
    records = hierarchy(4, 5, 4, 5)  # 400 records
    futures: list[Future[StoreOutcome]] = []
    lock = threading.Lock()
    with CatalogWriter(catalog, batch_size=64) as writer:

        def submit(part: int) -> None:
            for record in records[part::8]:
                future = writer.submit(record)
                with lock:
                    futures.append(future)

        threads = [threading.Thread(target=submit, args=(p,)) for p in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        outcomes = [f.result(timeout=30) for f in futures]
    assert len(outcomes) == 400 and {o.kind for o in outcomes} == {"stored"}
    assert writer.records_committed == 400
    assert writer.batches_committed < 400  # fsync-bound commits make the queue build up
    assert catalog.statistics()["instances"] == 400
    check_consistent(catalog)


def test_queued_records_share_one_transaction(catalog: Catalog) -> None:
    writer = CatalogWriter(catalog, batch_size=256)
    release = hold(writer)
    futures = [writer.submit(r) for r in hierarchy(2, 2, 2, 25)]  # 200 records
    assert not any(f.done() for f in futures)
    release.set()
    assert all(f.result(timeout=10).kind == "stored" for f in futures)
    writer.close()
    assert writer.batches_committed == 1 and writer.largest_batch == 200


def test_batch_size_is_respected(catalog: Catalog) -> None:
    writer = CatalogWriter(catalog, batch_size=16)
    release = hold(writer)
    futures = [writer.submit(r) for r in hierarchy(1, 1, 1, 40)]
    release.set()
    writer.close()
    assert all(f.result().kind == "stored" for f in futures)
    assert (writer.batches_committed, writer.largest_batch) == (3, 16)


def test_duplicate_outcomes_through_writer(catalog: Catalog) -> None:
    with CatalogWriter(catalog) as writer:
        first = writer.submit(make_record("P", "1", "1.1", "1.1.1", location="a"))
        kept = writer.submit(make_record("P", "1", "1.1", "1.1.1", location="b"), "keep")
        replaced = writer.submit(make_record("P", "1", "1.1", "1.1.1", location="c"), "replace")
        assert first.result(5).kind == "stored"
        assert (kept.result(5).kind, kept.result().obsolete_location) == ("duplicate_kept", "b")
        assert (replaced.result(5).kind, replaced.result().obsolete_location) == ("replaced", "a")


def test_bad_record_fails_alone(catalog: Catalog) -> None:
    writer = CatalogWriter(catalog)
    release = hold(writer)
    good1 = writer.submit(make_record("P", "1", "1.1", "a"))
    bad = writer.submit(make_record("P", "1", "", "b"))
    good2 = writer.submit(make_record("P", "1", "1.1", "c"))
    release.set()
    assert good1.result(5).kind == good2.result(5).kind == "stored"
    with pytest.raises(CatalogError):
        bad.result(5)
    # The thread survived: later work still runs.
    assert writer.submit(make_record("P", "1", "1.1", "d")).result(5).kind == "stored"
    writer.close()
    assert catalog.statistics()["instances"] == 3


def test_run_in_writer_thread_keeps_order(catalog: Catalog) -> None:
    with CatalogWriter(catalog) as writer:
        writer.submit(make_record("P", "1", "1.1", "a"))
        deleted = writer.run(lambda: catalog.delete_instance("a"))
        names = writer.run(lambda: threading.current_thread().name)
        boom = writer.run(lambda: 1 // 0)
        record = deleted.result(5)
        assert record is not None and record.sop_instance_uid == "a"
        assert names.result(5) == "catalog-writer"
        with pytest.raises(ZeroDivisionError):
            boom.result(5)
    assert catalog.statistics()["instances"] == 0


def test_close_commits_queued_then_refuses(catalog: Catalog) -> None:
    writer = CatalogWriter(catalog, batch_size=8)
    futures = [writer.submit(r) for r in hierarchy(2, 2, 2, 5)]
    writer.close()
    assert all(f.done() and f.result().kind == "stored" for f in futures)
    assert catalog.statistics()["instances"] == 40
    with pytest.raises(CatalogError):
        writer.submit(make_record("P", "1", "1.1", "late"))
    writer.close()  # idempotent


def test_writer_grows_a_full_map(tmp_path: Path) -> None:
    with Catalog(tmp_path / "db", map_size=1 << 16) as catalog:
        with CatalogWriter(catalog) as writer:
            futures = [writer.submit(r) for r in hierarchy(2, 5, 5, 10)]
            assert all(f.result(30).kind == "stored" for f in futures)
        assert catalog.map_size > 1 << 16
        assert catalog.statistics()["instances"] == 500


def test_before_commit_runs_once_per_batch_before_the_transaction(catalog: Catalog) -> None:
    seen: list[int] = []  # instances in the catalog each time the hook ran
    writer = CatalogWriter(catalog, before_commit=lambda: seen.append(
        catalog.statistics()["instances"]))
    release = hold(writer)
    futures = [writer.submit(r) for r in hierarchy(1, 1, 2, 5)]  # 10 records, queued
    release.set()
    for f in futures:
        f.result(10)
    writer.close()
    assert seen == [0]  # one flush, before the one commit that added all ten


def test_failing_before_commit_refuses_the_batch(catalog: Catalog) -> None:
    def broken_flush() -> None:
        raise OSError("disk gone")

    writer = CatalogWriter(catalog, before_commit=broken_flush)
    future = writer.submit(make_record("P", "S", "SE", "I"))
    with pytest.raises(StorageError, match="disk gone"):
        future.result(10)
    writer.close()
    assert catalog.statistics()["instances"] == 0


def test_submit_async_commits_and_answers_on_the_loop(catalog: Catalog) -> None:
    """Stores of a coroutine are indexed on its event loop (the thread that awaits them), in
    batches, and answered there; a bad record fails alone."""
    import asyncio

    commit_threads = record_commit_threads(catalog)
    records = hierarchy(1, 2, 2, 5)
    bad = make_record("P9", "9.1", "9.1.1", "9.1.1.1")
    del bad.attributes["StudyInstanceUID"]
    writer = CatalogWriter(catalog, before_commit=lambda: None)

    async def main() -> list[object]:
        release = hold(writer)  # the first batch gathers everything
        futures = [writer.submit_async(r) for r in records[:10]]
        futures.append(writer.submit_async(bad))
        futures += [writer.submit_async(r) for r in records[10:]]
        release.set()
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(main())
    writer.close()
    assert isinstance(results[10], CatalogError)
    outcomes = [r for i, r in enumerate(results) if i != 10]
    assert all(isinstance(o, StoreOutcome) and o.kind == "stored" for o in outcomes)
    assert set(commit_threads) == {"MainThread"}  # the loop's thread, not the committer
    assert len(commit_threads) <= 2 + len(records)  # one batch, then one by one after the bad
    del catalog.store_items  # the class's method again
    check_consistent(catalog)
    assert all(catalog.has_instance(r.sop_instance_uid) for r in records)


def test_close_commits_batches_whose_loop_no_longer_runs(catalog: Catalog) -> None:
    """close() called on the loop itself (its callbacks cannot run meanwhile) still indexes
    what was flushed for that loop, before the last checkpoint."""
    import asyncio

    order: list[str] = []
    flushed = threading.Event()

    def flush() -> None:
        order.append("flush")
        flushed.set()

    records = hierarchy(1, 1, 1, 3)
    writer = CatalogWriter(catalog, before_commit=flush,
                           checkpoint=lambda: order.append(f"checkpoint {len(list_all())}"))

    def list_all() -> list[str]:
        return [r.sop_instance_uid for r in records if catalog.has_instance(r.sop_instance_uid)]

    async def main() -> None:
        futures = [writer.submit_async(r) for r in records]
        assert flushed.wait(10)
        writer.close()  # blocks the loop: the batch's loop callback has not run
        for future in futures:
            assert (await asyncio.wait_for(future, 10)).kind == "stored"

    asyncio.run(main())
    assert list_all() == [r.sop_instance_uid for r in records]
    assert order[-1] == "checkpoint 3"


# -- small blobs appended by their event loop (segment store): pacs.index.writer._LoopGroup ----


@pytest.fixture
def segments(tmp_path: Path) -> Iterator[SegmentStore]:
    store = SegmentStore(tmp_path / "segments", "w0")
    yield store
    store.close()


def blob_of(record: object) -> bytes:
    return f"DICM data set of {record}".encode() * 20


def assert_indexed_and_readable(
        catalog: Catalog, segments: SegmentStore, records: list[InstanceRecord]) -> None:
    """Each record indexed, its blob (``blob_of``) read back whole; the catalog consistent."""
    for record in records:
        stored = catalog.get_instance(record.sop_instance_uid)
        assert stored is not None
        assert segments.get(stored.location) == blob_of(record.sop_instance_uid)
    check_consistent(catalog)


@DURING
def test_loop_appends_blobs_and_commits_them_in_groups(
        catalog: Catalog, segments: SegmentStore, during_sync: bool) -> None:
    import asyncio

    commit_threads = record_commit_threads(catalog)
    records = hierarchy(1, 2, 2, 10)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=during_sync)

    async def main() -> list[StoreOutcome]:
        futures = [writer.submit_async(r, blob=[blob_of(r.sop_instance_uid)]) for r in records]
        return list(await asyncio.gather(*futures))

    outcomes = asyncio.run(main())
    writer.close()
    assert [o.kind for o in outcomes] == ["stored"] * len(records)
    # Indexed on the loop: applied during the fdatasync, or committed with store_items after.
    assert set(commit_threads) == (set() if during_sync else {"MainThread"})
    assert writer.prepared_batches == (1 if during_sync else 0)
    # All 40 were taken in one loop iteration: one fdatasync (asked at its end) for them all.
    assert writer.batches_committed == 1 and writer.largest_batch == len(records)
    assert_indexed_and_readable(catalog, segments, records)


def test_blobs_written_by_the_caller_are_made_durable_by_the_loop_group(
        catalog: Catalog, segments: SegmentStore) -> None:
    """Large blobs written on an I/O thread (submit_async with the failure count read before
    the write): the loop's sync thread makes them durable and the loop commits them; the flush
    thread is not involved. One whose count moved since its write is refused."""
    import asyncio
    import errno

    commit_threads = record_commit_threads(catalog)
    flushes: list[int] = []

    def flush() -> None:
        flushes.append(1)
        segments.flush()

    writer = CatalogWriter(catalog, before_commit=flush, blob_store=segments)
    records = hierarchy(1, 1, 2, 6)

    def write(record: InstanceRecord, fail_after: bool = False) -> int:
        epoch = segments.failures
        info = segments.put(record.sop_instance_uid, [b"L" * 300_000], durable=False)
        record.location, record.size, record.digest = info.location, info.size, info.digest
        if fail_after:  # another descriptor's fdatasync failed after this write
            segments.note_sync_failure(OSError(errno.EIO, "Input/output error"))
        return epoch

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        futures = []
        for record in records[:-1]:
            epoch = await loop.run_in_executor(None, write, record)
            futures.append(writer.submit_async(record, epoch=epoch))
        stored = await asyncio.gather(*futures, return_exceptions=True)
        # The last one: a failure is counted after its write, before its fdatasync.
        epoch = await loop.run_in_executor(None, write, records[-1], True)
        last = await asyncio.gather(writer.submit_async(records[-1], epoch=epoch),
                                    return_exceptions=True)
        return [*stored, *last]

    outcomes = asyncio.run(main())
    writer.close()
    assert [getattr(o, "kind", None) for o in outcomes[:-1]] == ["stored"] * (len(records) - 1)
    assert isinstance(outcomes[-1], StorageError)
    assert not flushes and set(commit_threads) == {"MainThread"}
    for record in records[:-1]:
        stored = catalog.get_instance(record.sop_instance_uid)
        assert stored is not None and segments.get(stored.location) == b"L" * 300_000
    assert not catalog.has_instance(records[-1].sop_instance_uid)
    check_consistent(catalog)


@DURING
def test_loop_group_waits_while_paused(
        catalog: Catalog, segments: SegmentStore, during_sync: bool) -> None:
    import asyncio

    records = hierarchy(1, 1, 1, 12)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=during_sync)

    async def main() -> None:
        writer.pause()
        futures = [writer.submit_async(r, blob=[b"x" * 100]) for r in records]
        await asyncio.sleep(0.2)
        assert not any(f.done() for f in futures)
        assert catalog.statistics()["instances"] == 0
        writer.resume()
        for future in futures:
            assert (await asyncio.wait_for(future, 10)).kind == "stored"

    asyncio.run(main())
    writer.close()
    assert (writer.batches_committed, writer.largest_batch) == (1, 12)


@DURING
def test_failed_fdatasync_refuses_the_group_and_indexes_nothing(
        catalog: Catalog, segments: SegmentStore, monkeypatch: pytest.MonkeyPatch,
        during_sync: bool) -> None:
    """A disk that fails fdatasync (EIO answered by the sync thread): every store of the group
    fails with a StorageError, nothing of it is indexed, and the writer keeps working."""
    import asyncio
    import errno

    answers = iter([errno.EIO])
    fake_sync_thread(monkeypatch, lambda: next(answers, 0))
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=during_sync)
    first, later = hierarchy(1, 1, 1, 4)[:2], hierarchy(1, 1, 1, 4)[2:]

    async def main() -> list[object]:
        # Both are appended before the failed fdatasync's answer is read: both are refused
        # (the second one's pages may have been in the failed write-back).
        refused = await asyncio.gather(
            *[writer.submit_async(r, blob=[b"a" * 64]) for r in first], return_exceptions=True)
        kept = await asyncio.gather(*[writer.submit_async(r, blob=[b"b" * 64]) for r in later])
        return [*refused, *kept]

    results = asyncio.run(main())
    writer.close()
    assert all(isinstance(r, StorageError) and "Input/output error" in str(r)
               for r in results[:2])
    assert [getattr(r, "kind", None) for r in results[2:]] == ["stored", "stored"]
    assert [catalog.has_instance(r.sop_instance_uid) for r in first + later] == [
        False, False, True, True]


def test_busy_segment_sends_the_store_through_the_flush_thread(
        catalog: Catalog, segments: SegmentStore) -> None:
    """While another thread appends (a large instance being copied in), the loop does not wait
    for the segment: the store goes the flush thread's way and is stored all the same."""
    import asyncio

    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments)
    record = make_record("P", "1", "1.1", "1.1.1")
    locked, release = threading.Event(), threading.Event()

    def hold_segment() -> None:
        with segments._wlock:
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_segment)
    holder.start()
    assert locked.wait(10)

    async def main() -> StoreOutcome:
        future = writer.submit_async(record, blob=[b"c" * 64])
        await asyncio.sleep(0.1)
        assert not future.done()  # queued for the flush thread, which waits for the lock
        release.set()
        return await asyncio.wait_for(future, 10)

    outcome = asyncio.run(main())
    holder.join()
    writer.close()
    assert outcome.kind == "stored"
    stored = catalog.get_instance(record.sop_instance_uid)
    assert stored is not None and segments.get(stored.location) == b"c" * 64


@DURING
def test_close_from_another_thread_finishes_the_loop_groups(
        catalog: Catalog, segments: SegmentStore, during_sync: bool) -> None:
    """Archive.close runs in an executor while the loop still runs: stores appended but not yet
    synced (here: the writer is paused) are made durable, indexed and answered."""
    import asyncio

    records = hierarchy(1, 1, 1, 5)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=during_sync)

    async def main() -> list[StoreOutcome]:
        writer.pause()
        futures = [writer.submit_async(r, blob=[b"d" * 64]) for r in records]
        await asyncio.get_running_loop().run_in_executor(None, writer.close)
        return list(await asyncio.wait_for(asyncio.gather(*futures), 10))

    outcomes = asyncio.run(main())
    assert [o.kind for o in outcomes] == ["stored"] * 5
    assert catalog.statistics()["instances"] == 5
    with pytest.raises(CatalogError):
        writer.submit(make_record("P", "1", "1.1", "late"))


@DURING
def test_a_failed_seal_refuses_the_loop_stores_written_before_it(
        catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        during_sync: bool) -> None:
    """Loop stores appended to a segment whose seal then fails (EIO, seen by the flush thread's
    put and flush, not by the loop's own later fdatasync of the next segment) are refused: the
    store's failure count moved after they were written. Later stores are accepted."""
    import asyncio
    import errno

    segments = SegmentStore(tmp_path / "seg", "w0", segment_size=64 * 1024, prefill=0)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=during_sync)
    records = hierarchy(1, 1, 1, 7)

    def failing_seal(fd: int, offset: int, index: bytes) -> int:
        raise OSError(errno.EIO, "Input/output error")

    def roll_with_a_failing_seal() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(SegmentStore, "_write_seal", staticmethod(failing_seal))
            with pytest.raises(StorageError):
                segments.put("big", [b"y" * 70_000], durable=False)  # rolls: the seal fails
        with pytest.raises(StorageError):
            segments.flush()  # the one-shot error goes to whoever flushes first

    async def main() -> tuple[list[object], list[object]]:
        writer.pause()
        early = [writer.submit_async(r, blob=[b"x" * 1000]) for r in records[:5]]
        await asyncio.get_running_loop().run_in_executor(None, roll_with_a_failing_seal)
        writer.resume()
        refused = await asyncio.gather(*early, return_exceptions=True)
        later = await asyncio.gather(
            *[writer.submit_async(r, blob=[b"z" * 1000]) for r in records[5:]],
            return_exceptions=True)
        return list(refused), list(later)

    refused, later = asyncio.run(main())
    writer.close()
    assert all(isinstance(r, StorageError) for r in refused), refused
    assert [getattr(r, "kind", r) for r in later] == ["stored", "stored"]
    assert [catalog.has_instance(r.sop_instance_uid) for r in records] == [False] * 5 + [True] * 2
    assert segments.failures == 1
    segments.close()


def test_a_failure_counted_between_write_and_flush_refuses_the_batch(
        catalog: Catalog, segments: SegmentStore) -> None:
    """The flush thread's batch: its fdatasync succeeds, but a failed fdatasync through another
    descriptor of the segment (the loop's sync thread, a zero fill) was counted after its blobs
    were written, and may have taken their pages: refused."""
    import errno

    calls = []

    def flush() -> None:
        if not calls:  # the first batch: another descriptor's fdatasync fails meanwhile
            segments.note_sync_failure(OSError(errno.EIO, "Input/output error"))
        calls.append(1)
        segments.flush()

    writer = CatalogWriter(catalog, before_commit=flush, blob_store=segments)
    first = writer.submit(make_record("P", "1", "1.1", "a"), blob=[b"a" * 100])
    with pytest.raises(StorageError):
        first.result(10)
    second = writer.submit(make_record("P", "1", "1.1", "b"), blob=[b"b" * 100])
    assert second.result(10).kind == "stored"
    writer.close()
    assert not catalog.has_instance("a") and catalog.has_instance("b")


@DURING
def test_a_loop_that_ended_gives_its_sync_thread_back(
        catalog: Catalog, segments: SegmentStore, during_sync: bool) -> None:
    import asyncio

    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=during_sync)
    records = hierarchy(1, 1, 1, 4)

    async def store(part: list[InstanceRecord]) -> None:
        for record in part:
            assert (await writer.submit_async(record, blob=[b"e" * 64])).kind == "stored"

    def sync_threads() -> int:
        return sum(t.name == "catalog-writer-sync" for t in threading.enumerate())

    before = sync_threads()
    asyncio.run(store(records[:2]))
    assert sync_threads() == before + 1
    asyncio.run(store(records[2:]))  # a second loop: the first one's group is dropped
    assert sync_threads() == before + 1 and len(writer._groups) == 1
    writer.close()
    assert sync_threads() == before
    assert catalog.statistics()["instances"] == 4


def test_large_stores_laid_out_on_the_loop_are_indexed_and_readable(
        catalog: Catalog, segments: SegmentStore) -> None:
    """submit_direct_async: the loop lays the record out, its sync thread writes the middle,
    then one fdatasync covers it; stored, indexed, readable byte for byte."""
    import asyncio
    import os

    records = hierarchy(1, 1, 2, 3)
    datasets = {r.sop_instance_uid: bytearray(os.urandom(300_000 + 4097 * i))
                for i, r in enumerate(records)}
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments)
    assert writer.direct_possible

    async def main() -> list[StoreOutcome]:
        futures = [writer.submit_direct_async(r, b"META", datasets[r.sop_instance_uid])
                   for r in records]
        assert all(f is not None for f in futures)
        return list(await asyncio.gather(*futures))  # type: ignore[arg-type]

    outcomes = asyncio.run(main())
    writer.close()
    assert [o.kind for o in outcomes] == ["stored"] * len(records)
    for record in records:
        stored = catalog.get_instance(record.sop_instance_uid)
        assert stored is not None
        assert segments.get(stored.location) == b"META" + datasets[record.sop_instance_uid]
    queue = segments._direct_queue
    # Two or three writes a record (head, middle, tail), all answered, their memory let go.
    assert queue is not None and 2 * len(records) <= queue.writes_done <= 3 * len(records)
    assert queue.writes_done == queue.writes_asked and not queue._kept


def test_a_failed_direct_write_refuses_its_store_and_the_writer_goes_on(
        catalog: Catalog, segments: SegmentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync thread answers a large record's write with EIO: that store fails with a
    StorageError and is not indexed; the next one goes into a new segment and is stored."""
    import asyncio
    import errno
    import os
    import struct

    from pacs.store import syncer

    real = syncer._SERVE
    failed = threading.Event()

    def failing_first_write(request_fd: int, answer_fd: int, counter: bytearray) -> None:
        # Let the real thread serve, but turn the first write's answer into EIO.
        inner_r, inner_w = os.pipe()
        def serve() -> None:
            real(request_fd, inner_w, counter)
            os.close(inner_w)  # ends the relay below

        thread = threading.Thread(target=serve)
        thread.start()
        pending = b""
        while chunk := os.read(inner_r, 4096):
            pending += chunk
            while len(pending) >= 16:
                tag, code = struct.unpack_from("<qq", pending)
                pending = pending[16:]
                if tag == syncer.WRITE and not failed.is_set():
                    failed.set()
                    code = errno.EIO  # and counted as the thread counts its failures
                    struct.pack_into("<q", counter, 8, struct.unpack_from("<q", counter, 8)[0] + 1)
                os.write(answer_fd, struct.pack("<qq", tag, code))
        thread.join()
        os.close(inner_r)

    monkeypatch.setattr(syncer, "_SERVE", failing_first_write)
    first, second = hierarchy(1, 1, 1, 2)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments)

    async def main() -> list[object]:
        refused = writer.submit_direct_async(first, b"M", bytearray(os.urandom(400_000)))
        assert refused is not None
        results: list[object] = list(await asyncio.gather(refused, return_exceptions=True))
        kept = writer.submit_direct_async(second, b"M", bytearray(400_000))
        if kept is None:  # the segment with the torn record takes no more: the blocking way
            kept = writer.submit_async(second, blob=[b"M", bytes(400_000)])
        results.append(await kept)
        return results

    results = asyncio.run(main())
    writer.close()
    assert isinstance(results[0], StorageError)
    assert getattr(results[1], "kind", None) == "stored"
    assert not catalog.has_instance(first.sop_instance_uid)
    stored = catalog.get_instance(second.sop_instance_uid)
    assert stored is not None and segments.get(stored.location) == b"M" + bytes(400_000)
    assert segments.failures == 1


@pytest.mark.parametrize("spin", [0.0, 0.2])
def test_loop_group_polls_after_an_fdatasync_only_with_sync_spin(
        catalog: Catalog, tmp_path: Path, spin: float) -> None:
    """With ``sync_spin`` the loop keeps turning (its polling callback runs again and again
    while a coroutine sleeps) for that long after an fdatasync answered, then sleeps again;
    without, it never polls."""
    import asyncio

    # No zero filler: a store arriving while it writes would go the flush thread's way.
    segments = SegmentStore(tmp_path / "spin-segments", "w0", prefill=0)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           sync_spin=spin)
    record = make_record("P", "1", "1.1", "spin")
    turns = 0

    async def turns_while_sleeping(seconds: float) -> int:
        before = turns
        await asyncio.sleep(seconds)
        return turns - before

    async def main() -> tuple[bool, int, bool, int]:
        nonlocal turns
        assert (await writer.submit_async(record, blob=[b"s" * 64])).kind == "stored"
        group = writer._groups[asyncio.get_running_loop()]
        polling = group.spinning
        turn = group._spin

        def counted() -> None:
            nonlocal turns
            turns += 1
            turn()

        group._spin = counted  # type: ignore[method-assign]  # it schedules self._spin
        busy = await turns_while_sleeping(0.05)
        await asyncio.sleep(spin)
        return polling, busy, group.spinning, await turns_while_sleeping(0.05)

    polling, busy, still_polling, idle = asyncio.run(main())
    writer.close()
    segments.close()
    assert catalog.has_instance("spin")
    assert not still_polling and idle == 0
    if spin:
        assert polling and busy > 5  # turns in 0.05 s: thousands on an idle machine
    else:
        assert not polling and busy == 0


def test_loop_group_answers_a_group_before_its_polling_yields(
        catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The coroutines waiting for a group run before the polling turn queued ahead of them
    hands the core away (``sched_yield``): a client would otherwise run before its response
    is written. The turns after them yield again."""
    import asyncio
    import os

    segments = SegmentStore(tmp_path / "yield-segments", "w0", prefill=0)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           sync_spin=0.2)
    records = [make_record("P", "1", "1.1", f"yield-{i}") for i in range(3)]
    log: list[str] = []
    real_yield = os.sched_yield

    def logged_yield() -> None:
        log.append("yield")
        real_yield()

    monkeypatch.setattr(os, "sched_yield", logged_yield)

    async def store(record: InstanceRecord) -> None:
        assert (await writer.submit_async(record, blob=[b"y" * 64])).kind == "stored"
        log.append("resumed")

    async def main() -> None:
        await store(records[0])  # makes the loop's group
        group = writer._groups[asyncio.get_running_loop()]
        answered = group._sync_answered

        def noted(code: int) -> None:
            answered(code)
            log.append("answered")

        group._sync_answered = noted  # type: ignore[method-assign]
        for record in records[1:]:  # one at a time: each group's answer is awaited alone
            await store(record)
        await asyncio.sleep(0.01)  # the polling goes on, yielding, after the last answer

    asyncio.run(main())
    writer.close()
    segments.close()
    assert all(catalog.has_instance(r.sop_instance_uid) for r in records)
    answers = [i for i, entry in enumerate(log) if entry == "answered"]
    assert len(answers) == 2  # the first store made the group: its answer was not noted
    for i in answers:
        assert log[i + 1] == "resumed", log[i - 3:i + 4]
    assert "yield" in log[answers[-1]:]


def fake_sync_thread(monkeypatch: pytest.MonkeyPatch, answer: Callable[[], int]) -> None:
    """Replace the sync thread's loop (pure Python): each fdatasync request gets ``answer()``
    (an errno; 0: the fdatasync is done) before its answer is written."""
    import os
    import struct

    from pacs.store import syncer

    def serve(request_fd: int, answer_fd: int, counter: object = None) -> None:
        while True:
            raw = os.read(request_fd, 8)
            if len(raw) < 8 or struct.unpack("<q", raw)[0] < 0:
                return
            fd = struct.unpack("<q", raw)[0]
            code = answer()
            if not code:
                os.fdatasync(fd)
            os.write(answer_fd, struct.pack("<qq", fd, code))

    monkeypatch.setattr(syncer, "_SERVE", serve)


class HeldSync:
    """A sync thread whose first fdatasync waits until ``release`` (``held`` is set once the
    request arrived): the window in which a batch's transaction is applied but not committed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.held = threading.Event()
        self.release = threading.Event()
        fake_sync_thread(monkeypatch, self._answer)

    def _answer(self) -> int:
        if not self.held.is_set():
            self.held.set()
            self.release.wait(10)
        return 0


async def until_prepared(catalog: Catalog) -> None:
    """Let the loop turn until its batch's transaction is applied (10 s at most)."""
    import asyncio

    deadline = time.monotonic() + 10
    while catalog._prepared is None:
        assert time.monotonic() < deadline, "no transaction was prepared"
        await asyncio.sleep(0.001)


def test_a_batch_applied_during_its_fdatasync_is_committed_only_when_that_answers(
        catalog: Catalog, segments: SegmentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """``index_during_sync``: while the fdatasync is held, the batch's transaction is applied
    (LMDB's writer lock taken) but nothing of it is visible and no store is answered; once it
    answers, the batch is committed and answered. The order stays blob durable, index
    committed, response."""
    import asyncio

    sync = HeldSync(monkeypatch)
    records = hierarchy(1, 1, 2, 3)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=True)
    seen: dict[str, object] = {}

    def look() -> None:  # another thread, while the fdatasync is held
        assert sync.held.wait(10)
        deadline = time.monotonic() + 10
        while catalog._prepared is None and time.monotonic() < deadline:
            time.sleep(0.005)
        seen["prepared"] = catalog._prepared is not None
        seen["visible"] = [catalog.has_instance(r.sop_instance_uid) for r in records]

    async def main() -> list[StoreOutcome]:
        futures = [writer.submit_async(r, blob=[blob_of(r.sop_instance_uid)]) for r in records]
        try:
            await asyncio.get_running_loop().run_in_executor(None, look)
            await asyncio.sleep(0.05)  # the loop turns while the fdatasync is still held
            seen["answered early"] = any(f.done() for f in futures)
        finally:
            sync.release.set()
        return list(await asyncio.wait_for(asyncio.gather(*futures), 10))

    outcomes = asyncio.run(main())
    writer.close()
    assert seen == {"prepared": True, "visible": [False] * len(records), "answered early": False}
    assert [o.kind for o in outcomes] == ["stored"] * len(records)
    assert (writer.prepared_batches, writer.batches_committed) == (1, 1)
    assert_indexed_and_readable(catalog, segments, records)


def test_a_write_on_the_loop_during_the_fdatasync_sends_the_batch_the_usual_way(
        catalog: Catalog, segments: SegmentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another write transaction begun on the loop's thread while the batch's transaction is
    applied (it would wait for itself) aborts that one: the batch is indexed after its
    fdatasync as usual, nothing is lost or indexed twice."""
    import asyncio

    sync = HeldSync(monkeypatch)
    records = hierarchy(1, 1, 1, 4)
    other = make_record("Q", "2", "2.1", "2.1.1")
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=True)

    async def main() -> list[StoreOutcome]:
        futures = [writer.submit_async(r, blob=[b"w" * 64]) for r in records]
        try:
            await until_prepared(catalog)
            catalog.store_items([(other, "keep")])  # on the loop's thread
            assert catalog._prepared is None  # aborted, not waited for
        finally:
            sync.release.set()
        return list(await asyncio.wait_for(asyncio.gather(*futures), 10))

    outcomes = asyncio.run(main())
    writer.close()
    assert [o.kind for o in outcomes] == ["stored"] * len(records)
    assert (writer.prepared_batches, writer.batches_committed) == (0, 1)
    assert catalog.statistics()["instances"] == len(records) + 1
    check_consistent(catalog)


def test_closing_during_the_fdatasync_aborts_the_transaction_and_indexes_the_batch(
        catalog: Catalog, segments: SegmentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Archive.close in an executor while a batch's transaction is applied and its fdatasync
    still runs: the loop aborts the transaction, close waits for the fdatasync and indexes
    the batch itself; every store is answered."""
    import asyncio

    sync = HeldSync(monkeypatch)
    records = hierarchy(1, 1, 2, 3)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=True)

    async def main() -> list[StoreOutcome]:
        futures = [writer.submit_async(r, blob=[b"c" * 64]) for r in records]
        await until_prepared(catalog)
        # close() waits for the fdatasync in flight: released a little later.
        threading.Timer(0.2, sync.release.set).start()
        await asyncio.get_running_loop().run_in_executor(None, writer.close)
        return list(await asyncio.wait_for(asyncio.gather(*futures), 10))

    outcomes = asyncio.run(main())
    assert [o.kind for o in outcomes] == ["stored"] * len(records)
    assert writer.prepared_batches == 0 and catalog._prepared is None
    assert catalog.statistics()["instances"] == len(records)
    check_consistent(catalog)


def test_a_store_refused_in_a_prepared_batch_aborts_it_and_the_rest_is_indexed(
        catalog: Catalog, segments: SegmentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """One store of the batch is refused (a failed fdatasync was counted after its blob was
    written) while the batch's transaction was applied with it: that transaction is aborted
    and the others are indexed the usual way."""
    import asyncio
    import errno

    aborted: list[bool] = []
    real_abort = catalog.abort_prepared

    def spy(prepared: PreparedStores) -> bool:
        aborted.append(prepared.txn is not None)
        return real_abort(prepared)

    monkeypatch.setattr(catalog, "abort_prepared", spy)
    records = hierarchy(1, 1, 1, 3)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=True)

    def write(record: InstanceRecord) -> int:
        epoch = segments.failures
        info = segments.put(record.sop_instance_uid, [b"R" * 300], durable=False)
        record.location, record.size, record.digest = info.location, info.size, info.digest
        return epoch

    async def main() -> list[object]:
        epochs = [write(records[0])]
        segments.note_sync_failure(OSError(errno.EIO, "Input/output error"))  # after the first
        epochs += [write(r) for r in records[1:]]
        futures = [writer.submit_async(r, epoch=e) for r, e in zip(records, epochs, strict=True)]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    results = asyncio.run(main())
    writer.close()
    assert isinstance(results[0], StorageError)
    assert [getattr(r, "kind", None) for r in results[1:]] == ["stored", "stored"]
    assert aborted == [True] and writer.prepared_batches == 0
    assert [catalog.has_instance(r.sop_instance_uid) for r in records] == [False, True, True]
    check_consistent(catalog)


def test_a_loop_in_another_thread_does_not_prepare(
        catalog: Catalog, segments: SegmentStore) -> None:
    """Only a loop on the main thread holds a transaction across its turns: one run in
    another thread may stop, or its thread end, with it open (LMDB's writer lock is that
    thread's). Its stores are indexed after their fdatasync."""
    import asyncio

    records = hierarchy(1, 1, 1, 6)
    writer = CatalogWriter(catalog, before_commit=segments.flush, blob_store=segments,
                           index_during_sync=True)

    async def main() -> list[StoreOutcome]:
        return list(await asyncio.gather(
            *[writer.submit_async(r, blob=[b"t" * 64]) for r in records]))

    box: list[list[StoreOutcome]] = []
    thread = threading.Thread(target=lambda: box.append(asyncio.run(main())))
    thread.start()
    thread.join(30)
    writer.close()
    assert [o.kind for o in box[0]] == ["stored"] * len(records)
    assert writer.prepared_batches == 0 and writer.batches_committed >= 1
    check_consistent(catalog)
