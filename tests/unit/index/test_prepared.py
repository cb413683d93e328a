"""Catalog.prepare_items: a batch's write transaction applied now, committed later."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from pacs.index.catalog import Catalog
from tests.unit.index._records import check_consistent, hierarchy, make_record


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog(tmp_path / "db", map_size=1 << 26)
    yield cat
    cat.close()


def dump(catalog: Catalog) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every key and value of every database of the catalog, bytes as stored (but the
    secondary indexes' epoch: random per catalog)."""
    out = {}
    with catalog._env.begin() as txn:
        for name, db in catalog._dbs.items():
            out[name] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)
                         if bytes(k) != b"sx/epoch"]
    return out


@pytest.mark.parametrize("durable_commits", [True, False], ids=["durable", "writemap"])
def test_prepared_then_committed_writes_what_store_items_writes(
        tmp_path: Path, durable_commits: bool) -> None:
    records = hierarchy(2, 2, 2, 3)
    batches = [records[:5], records[5:6], records[6:]]
    a = Catalog(tmp_path / "a", map_size=1 << 26, durable_commits=durable_commits)
    b = Catalog(tmp_path / "b", map_size=1 << 26, durable_commits=durable_commits)
    try:
        for batch in batches:
            items = [(r, "keep") for r in batch]
            expected = a.store_items(items)
            prepared = b.prepare_items(items)
            assert prepared is not None
            assert b.commit_prepared(prepared) == expected
        # A duplicate in both ways too.
        again = [(records[0], "keep"), (records[1], "replace")]
        expected = a.store_items(again)
        prepared = b.prepare_items(again)
        assert prepared is not None and b.commit_prepared(prepared) == expected
        assert [o.kind for o in expected] == ["duplicate_kept", "replaced"]
        assert dump(a) == dump(b)
        check_consistent(b)
    finally:
        a.close()
        b.close()


def test_nothing_is_visible_before_the_commit_and_an_abort_leaves_nothing(
        catalog: Catalog) -> None:
    first, second = hierarchy(1, 1, 1, 4)[:2], hierarchy(1, 1, 1, 4)[2:]
    prepared = catalog.prepare_items([(r, "keep") for r in first])
    assert prepared is not None
    seen: list[bool] = []
    reader = threading.Thread(
        target=lambda: seen.append(catalog.has_instance(first[0].sop_instance_uid)))
    reader.start()
    reader.join(10)
    assert seen == [False]  # another thread reads the last committed state
    catalog.abort_prepared(prepared)
    assert catalog.commit_prepared(prepared) is None
    assert catalog.statistics()["instances"] == 0
    prepared = catalog.prepare_items([(r, "keep") for r in second])
    assert prepared is not None
    assert [o.kind for o in catalog.commit_prepared(prepared) or []] == ["stored", "stored"]
    assert [catalog.has_instance(r.sop_instance_uid) for r in first + second] == [
        False, False, True, True]
    check_consistent(catalog)


def test_a_write_on_the_same_thread_aborts_the_prepared_transaction(catalog: Catalog) -> None:
    """LMDB's writer lock is not recursive: the write would wait for itself. It aborts the
    prepared transaction instead, whose owner then finds it gone."""
    records = hierarchy(1, 1, 1, 3)
    prepared = catalog.prepare_items([(records[0], "keep")])
    assert prepared is not None
    done: list[object] = []

    def write() -> None:
        done.append(catalog.store_items([(records[1], "keep")]))

    # Run on this thread, with a watchdog: a deadlock fails the test instead of hanging it.
    watchdog = threading.Timer(10, lambda: catalog.abort_prepared(prepared))
    watchdog.start()
    try:
        write()
    finally:
        watchdog.cancel()
    assert done and catalog.commit_prepared(prepared) is None
    assert [catalog.has_instance(r.sop_instance_uid) for r in records[:2]] == [False, True]
    # The thread can prepare again afterwards.
    again = catalog.prepare_items([(records[2], "keep")])
    assert again is not None and catalog.commit_prepared(again) is not None
    check_consistent(catalog)


def test_another_threads_write_waits_for_the_commit(catalog: Catalog) -> None:
    records = hierarchy(1, 1, 1, 2)
    prepared = catalog.prepare_items([(records[0], "keep")])
    assert prepared is not None
    order: list[str] = []

    def write() -> None:
        catalog.store_items([(records[1], "keep")])
        order.append("other thread's write")

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.2)
    assert order == []  # waiting for LMDB's writer lock, not holding the GIL
    order.append("prepared commit")
    assert catalog.commit_prepared(prepared) is not None
    writer.join(10)
    assert order == ["prepared commit", "other thread's write"]
    check_consistent(catalog)


def test_a_map_growth_on_another_thread_does_not_stop_this_threads_reads(
        catalog: Catalog) -> None:
    """The grower waits for the prepared transaction to end; meanwhile the thread holding it
    still reads (the event loop's duplicate checks) instead of waiting for the grower."""
    records = hierarchy(1, 1, 1, 2)
    prepared = catalog.prepare_items([(records[0], "keep")])
    assert prepared is not None
    size = catalog.map_size
    grower = threading.Thread(target=catalog._grow)
    grower.start()
    time.sleep(0.2)
    assert grower.is_alive()  # waiting for the prepared transaction
    result: list[bool] = []
    reader = threading.Thread(target=lambda: result.append(catalog.has_instance("x")))
    reader.start()
    assert not catalog.has_instance(records[1].sop_instance_uid)  # this thread: no wait
    assert catalog.commit_prepared(prepared) is not None
    grower.join(10)
    reader.join(10)
    assert not grower.is_alive() and result == [False]
    assert catalog.map_size == 2 * size
    assert catalog.has_instance(records[0].sop_instance_uid)


def test_prepare_declines_without_leaving_anything_open(catalog: Catalog) -> None:
    good = make_record("P", "1.2", "1.2.3", "1.2.3.4")
    bad = make_record("P", "1.2", "1.2.3", "1.2.3.5")
    del bad.attributes["StudyInstanceUID"]
    assert catalog.prepare_items([(good, "keep"), (bad, "keep")]) is None
    assert catalog.prepare_items([(good, "sometimes")]) is None  # type: ignore[list-item]
    prepared = catalog.prepare_items([(good, "keep")])
    assert prepared is not None
    assert catalog.prepare_items([(bad, "keep")]) is None  # one at a time
    assert catalog.commit_prepared(prepared) is not None
    # Nothing held: an ordinary write goes through at once.
    catalog.store_items([(make_record("P", "1.2", "1.2.3", "1.2.3.6"), "keep")])
    assert catalog.statistics()["instances"] == 2


def test_prepare_declines_while_another_process_writes_too(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker storing at the same time would stall on a transaction held open for a
    whole fdatasync: once two writes of another process show up within
    ``FOREIGN_WRITE_QUIET`` seconds, batches are not prepared until it has been quiet that
    long. A lone foreign write (a start-up, a background task) changes nothing."""
    import subprocess
    import sys

    from pacs.index import catalog as catalog_module

    other = (
        "import sys; from pacs.index.catalog import Catalog; "
        "from tests.unit.index._records import make_record; "
        "c = Catalog(sys.argv[1], map_size=1 << 26); "
        "c.store_items([(make_record('Q', '2.1', '2.1.1', sys.argv[2]), 'keep')]); c.close()"
    )

    def write_from_another_process(uid: str) -> None:
        subprocess.run([sys.executable, "-c", other, str(catalog.path), uid], check=True,
                       timeout=60)

    def prepared_and_committed(uid: str) -> bool:
        prepared = catalog.prepare_items([(make_record("P", "1.2", "1.2.3", uid), "keep")])
        if prepared is None:
            catalog.store_items([(make_record("P", "1.2", "1.2.3", uid), "keep")])
            return False
        assert catalog.commit_prepared(prepared) is not None
        return True

    assert prepared_and_committed("1.2.3.1")
    write_from_another_process("2.1.1.1")
    assert prepared_and_committed("1.2.3.2")  # one foreign write: prepared all the same
    write_from_another_process("2.1.1.2")
    assert not prepared_and_committed("1.2.3.3")  # a second one within the quiet time
    assert not prepared_and_committed("1.2.3.4")  # nothing held: the usual way, at once
    monkeypatch.setattr(catalog_module, "FOREIGN_WRITE_QUIET", 0.1)
    time.sleep(0.15)
    assert prepared_and_committed("1.2.3.5")  # quiet again
    assert catalog.statistics()["instances"] == 7
    check_consistent(catalog)


def test_a_full_map_declines_and_store_items_grows_it(tmp_path: Path) -> None:
    """A batch that does not fit the map (as the workers' writable map, which starts small):
    nothing is prepared or left held, and the usual way grows the map and stores it."""
    with Catalog(tmp_path / "db", map_size=1 << 16) as catalog:
        items = [(r, "keep") for r in hierarchy(2, 5, 5, 10)]
        assert catalog.prepare_items(items) is None
        assert len(catalog.store_items(items)) == 500
        assert catalog.map_size > 1 << 16
        catalog._grow()  # room for one more: prepared once the map has it
        more = catalog.prepare_items([(make_record("Z", "9", "9.1", "9.1.1"), "keep")])
        assert more is not None and catalog.commit_prepared(more) is not None
        assert catalog.statistics()["instances"] == 501


def test_only_the_thread_that_began_it_may_abort_it_while_that_thread_lives(
        catalog: Catalog) -> None:
    """LMDB's writer lock can only be given back by its thread: an abort from another thread
    is refused while that thread lives, and done once it has ended (the next writer then
    recovers the lock)."""
    records = hierarchy(1, 1, 1, 3)
    box: list[object] = []
    ended = threading.Event()
    keep_alive = threading.Event()

    def owner() -> None:
        box.append(catalog.prepare_items([(records[0], "keep")]))
        ended.set()
        keep_alive.wait(10)

    thread = threading.Thread(target=owner)
    thread.start()
    assert ended.wait(10)
    prepared = box[0]
    assert prepared is not None
    assert catalog.abort_prepared(prepared) is False  # type: ignore[arg-type]
    keep_alive.set()
    thread.join(10)
    assert catalog.abort_prepared(prepared) is True  # type: ignore[arg-type]
    catalog.store_items([(records[1], "keep")])  # the lock is usable again
    assert [catalog.has_instance(r.sop_instance_uid) for r in records[:2]] == [False, True]


class _FailingCommit:
    """A prepared transaction whose commit fails as LMDB's does (aborted, then raised)."""

    def __init__(self, txn: lmdb.Transaction, error: lmdb.Error) -> None:
        self.txn = txn
        self.error = error

    def id(self) -> int:
        return int(self.txn.id())

    def commit(self) -> None:
        self.txn.abort()
        raise self.error

    def abort(self) -> None:
        self.txn.abort()


@pytest.mark.parametrize(("error", "level"), [
    (lmdb.MapFullError("mdb_txn_commit", "MDB_MAP_FULL: Environment mapsize limit reached"),
     logging.INFO),
    (lmdb.DiskError("mdb_txn_commit", "Input/output error"), logging.WARNING),
], ids=["map-full", "disk-error"])
def test_a_failed_prepared_commit_leaves_the_batch_to_the_usual_way(
        catalog: Catalog, caplog: pytest.LogCaptureFixture, error: lmdb.Error,
        level: int) -> None:
    """A full writable map is routine (the usual way grows it): logged as information, not
    as a warning like any other failure; either way nothing of the batch is in the index, the
    writer's lock is free again, and the usual way stores it."""
    records = hierarchy(1, 1, 1, 2)
    items = [(r, "keep") for r in records]
    prepared = catalog.prepare_items(items)
    assert prepared is not None
    prepared.txn = _FailingCommit(prepared.txn, error)  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="pacs.index.catalog"):
        assert catalog.commit_prepared(prepared) is None
    failed = [r for r in caplog.records if "prepared index commit failed" in r.getMessage()]
    assert [r.levelno for r in failed] == [level]
    assert catalog.statistics()["instances"] == 0
    assert [o.kind for o in catalog.store_items(items)] == ["stored", "stored"]
    check_consistent(catalog)
