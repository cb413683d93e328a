"""Deferred upper levels (``Catalog.store_items(..., defer=True)``, the ingest writer's).

A deferring store transaction writes the instance's record and series link and lists it in the
``pending`` database; the first write that does not defer, or a read, writes the patient, study
and series records, counts, secondary indexes and total size of every pending instance. What any
read sees must be exactly what storing the same sequence without deferral leaves: compared here
database by database, for random sequences of stores, replacements and deletes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import lmdb
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pacs.errors import CatalogError
from pacs.index import catalog as catalog_module
from pacs.index.catalog import PENDING, STUDY_INSTANCES, Catalog, OnDuplicate
from pacs.index.records import InstanceRecord
from pacs.index.writer import CatalogWriter
from tests.unit.index._records import (
    DELETE_OP,
    check_consistent,
    hierarchy,
    make_record,
    store_op,
)

# Databases whose content must not depend on deferral. Not compared: sx_log (one generation per
# transaction that changed upper levels: fewer when deferred), meta's sx/gen and sx/epoch.
_COMPARED = ("instances", "series", "studies", "patients", "patient_studies", "study_series",
             "series_instances", "sx", "sx_counts")


def _pending_entries(catalog: Catalog) -> int:
    """Entries of the pending database, read around the catalog's own reads (which would
    write them first)."""
    with catalog._env.begin() as txn:
        return int(txn.stat(catalog.database(PENDING))["entries"])


def _dump(catalog: Catalog) -> dict[str, Any]:
    with catalog.reader() as txn:  # a read: writes what is pending first
        out: dict[str, Any] = {
            name: {bytes(k): bytes(v) for k, v in txn.cursor(db=catalog.database(name))}
            for name in _COMPARED
        }
        # Absent and 0 read alike (a delta of 0 in all is not written).
        out["total_size"] = txn.get(b"total_size", b"0", db=catalog.database("meta"))
    return out


_op = st.one_of(
    store_op(st.sampled_from(["", "HEAD", "CHEST"])),  # and a study attribute that may change
    DELETE_OP,
    st.tuples(st.just("read"), st.sampled_from(["1.1", "1.2", "1.3"])),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The latest instance's attributes win, also when an earlier one had them too.
@example(batches=[[("keep", "P0", "1.1", "1.1.1", "9.0", 5, "HEAD"),
                   ("keep", "P0", "1.1", "1.1.1", "9.1", 5, "CHEST"),
                   ("keep", "P0", "1.1", "1.1.1", "9.2", 5, "HEAD")]], limit=64)
# A series moving to another study and back, across transactions.
@example(batches=[[("keep", "P0", "1.1", "1.1.1", "9.0", 5, "")],
                  [("keep", "P1", "1.2", "1.1.1", "9.1", 5, "")],
                  [("keep", "P0", "1.1", "1.1.1", "9.2", 5, "")]], limit=64)
@given(batches=st.lists(st.lists(_op, min_size=1, max_size=6), min_size=1, max_size=6),
       limit=st.sampled_from([1, 3, 64]))
def test_deferred_and_immediate_upper_levels_read_the_same(
    batches: list[list[tuple[Any, ...]]], limit: int,
) -> None:
    saved = catalog_module.DEFER_LIMIT
    catalog_module.DEFER_LIMIT = limit
    try:
        with (tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b,
              Catalog(Path(a), map_size=1 << 22) as plain,
              Catalog(Path(b), map_size=1 << 22) as deferring):
            n = 0
            for batch in batches:
                stores: list[tuple[InstanceRecord, OnDuplicate]] = []
                for op in batch:
                    if op[0] in ("delete", "read"):
                        if stores:
                            plain.store_items(stores)
                            deferring.store_items(stores, defer=True)
                            stores = []
                        if op[0] == "delete":
                            assert plain.delete_instance(op[1]) == deferring.delete_instance(op[1])
                        else:
                            assert plain.get_study(op[1]) == deferring.get_study(op[1])
                        continue
                    policy, patient, study, series, sop, size, body = op
                    n += 1
                    record = make_record(patient, study, series, sop, size, f"blob/{n}",
                                         StudyDescription=body)
                    stores.append((record, policy))
                if stores:
                    assert plain.store_items(stores) == deferring.store_items(stores, defer=True)
            assert _dump(deferring) == _dump(plain)
            assert _pending_entries(deferring) == 0
            check_consistent(deferring)
    finally:
        catalog_module.DEFER_LIMIT = saved


def test_a_deferring_store_leaves_upper_levels_pending_until_a_read(tmp_path: Path) -> None:
    records = hierarchy(1, 1, 2, 3)
    with Catalog(tmp_path) as catalog:
        outcomes = catalog.store_items([(r, "keep") for r in records[:4]], defer=True)
        assert [o.kind for o in outcomes] == ["stored"] * 4
        catalog.store_items([(r, "keep") for r in records[4:]], defer=True)
        assert _pending_entries(catalog) == 2  # one entry a transaction
        with catalog._env.begin() as txn:  # underneath the catalog's reads: no study yet
            assert txn.get(b"1.0.0", db=catalog.database("studies")) is None
            assert txn.get(b"1.0.0.0.0", db=catalog.database("instances")) is not None
        study = catalog.get_study("1.0.0")  # a read writes them first
        assert study is not None and study[STUDY_INSTANCES] == 6
        assert _pending_entries(catalog) == 0
        assert catalog.statistics()["total_size"] == sum(r.size for r in records)


def test_a_store_that_does_not_defer_writes_pending_first(tmp_path: Path) -> None:
    first, second = hierarchy(1, 1, 1, 2)
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(first, "keep")], defer=True)
        assert _pending_entries(catalog) == 1
        catalog.store_items([(second, "keep")])
        assert _pending_entries(catalog) == 0
        with catalog._env.begin() as txn:
            assert txn.get(b"1.0.0", db=catalog.database("studies")) is not None
        check_consistent(catalog)


def test_deferring_stops_at_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "DEFER_LIMIT", 4)
    records = hierarchy(1, 1, 1, 6)
    with Catalog(tmp_path) as catalog:
        for record in records[:4]:
            catalog.store_items([(record, "keep")], defer=True)
        assert _pending_entries(catalog) == 4
        catalog.store_items([(records[4], "keep")], defer=True)  # at the limit: writes them
        assert _pending_entries(catalog) == 0
        catalog.store_items([(records[5], "keep")], defer=True)  # and defers again
        assert _pending_entries(catalog) == 1
        check_consistent(catalog)


def test_a_replacement_writes_pending_first(tmp_path: Path) -> None:
    first, second = hierarchy(1, 1, 1, 2)
    moved = make_record("P9", "1.9", "1.9.9", first.sop_instance_uid, 7)
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(first, "keep"), (second, "keep"), (moved, "replace")],
                            defer=True)
        check_consistent(catalog)
        study = catalog.get_study("1.0.0")
        assert study is not None and study[STUDY_INSTANCES] == 1
        assert catalog.get_study("1.9") is not None


def test_a_read_within_a_write_does_not_wait_for_itself(tmp_path: Path) -> None:
    (record,) = hierarchy(1, 1, 1, 1)
    seen: list[Any] = []
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(record, "keep")], defer=True)
        worker = threading.Thread(
            target=lambda: catalog._write(lambda t: seen.append(catalog.get_study("1.0.0")),
                                          defer=True),
            daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "a read inside a write transaction waited for itself"
        assert seen == [None]  # its snapshot, pending still (the write deferred too)
        assert catalog.get_study("1.0.0") is not None


def test_another_process_reads_what_this_one_deferred(tmp_path: Path) -> None:
    records = hierarchy(1, 1, 1, 3)
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(r, "keep") for r in records], defer=True)
        assert _pending_entries(catalog) == 1
        script = (
            "import sys; from pathlib import Path; from pacs.index.catalog import Catalog\n"
            "with Catalog(Path(sys.argv[1])) as c:\n"
            "    print(c.get_study('1.0.0')['NumberOfStudyRelatedInstances'])\n"
        )
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path)],
                              capture_output=True, text=True, timeout=60, check=True)
        assert done.stdout.strip() == "3"
        assert _pending_entries(catalog) == 0  # the other process wrote them


def test_a_read_only_catalog_reads_without_writing(tmp_path: Path) -> None:
    records = hierarchy(1, 1, 1, 2)
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(r, "keep") for r in records], defer=True)
    with Catalog(tmp_path, readonly=True) as readonly:
        assert readonly.get_study("1.0.0") is None  # pending, and it may not write
        assert readonly.get_instance(records[0].sop_instance_uid) is not None
    with Catalog(tmp_path) as catalog:  # reopened writable: a read writes them
        study = catalog.get_study("1.0.0")
        assert study is not None and study[STUDY_INSTANCES] == 2


def test_a_catalog_without_the_pending_database_does_not_defer(tmp_path: Path) -> None:
    records = hierarchy(1, 1, 1, 2)
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(records[0], "keep")])
        with catalog._env.begin(write=True) as txn:  # as an archive of an older version
            txn.drop(catalog.database(PENDING), delete=True)
    with Catalog(tmp_path, readonly=True) as readonly:  # opens without it
        assert readonly.get_study("1.0.0") is not None
    with Catalog(tmp_path) as catalog:  # a writable open creates it again
        catalog.store_items([(records[1], "keep")], defer=True)
        assert _pending_entries(catalog) == 1
        study = catalog.get_study("1.0.0")
        assert study is not None and study[STUDY_INSTANCES] == 2


def test_pending_survives_a_crash_between_store_and_read(tmp_path: Path) -> None:
    # The deferring process ends without writing pending (os._exit: no close, no read).
    script = (
        "import os, sys; from pathlib import Path\n"
        "from pacs.index.catalog import Catalog\n"
        "from tests.unit.index._records import hierarchy\n"
        "c = Catalog(Path(sys.argv[1]), durable_commits=False)\n"
        "c.store_items([(r, 'keep') for r in hierarchy(1, 1, 2, 2)], defer=True)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=60, check=True,
                   cwd=Path(__file__).resolve().parents[3])
    with Catalog(tmp_path, durable_commits=False) as catalog:
        study = catalog.get_study("1.0.0")
        assert study is not None and study[STUDY_INSTANCES] == 4
        check_consistent(catalog)


def test_lmdb_stat_of_pending_is_what_reads_check(tmp_path: Path) -> None:
    # _pending_to_write relies on Transaction.stat(db)["entries"] counting a named database.
    env = lmdb.open(str(tmp_path), max_dbs=2)
    db = env.open_db(b"x")
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=db)
    with env.begin() as txn:
        assert txn.stat(db)["entries"] == 1
    env.close()


def test_a_read_within_a_read_does_not_write(tmp_path: Path) -> None:
    first, second = hierarchy(1, 1, 1, 2)
    with Catalog(tmp_path) as catalog:
        with catalog.reader():  # nothing pending yet: an outer read
            catalog.store_items([(first, "keep")], defer=True)
            assert catalog.get_study("1.0.0") is None  # inner: pending left as it is
            assert _pending_entries(catalog) == 1
        study = catalog.get_study("1.0.0")  # outermost again: writes it first
        assert study is not None and study[STUDY_INSTANCES] == 1
        catalog.store_items([(second, "keep")], defer=True)
        check_consistent(catalog)


def test_write_pending_writes_what_this_process_deferred(tmp_path: Path) -> None:
    (record,) = hierarchy(1, 1, 1, 1)
    with Catalog(tmp_path) as catalog:
        catalog.write_pending()  # nothing deferred: no transaction
        assert catalog._last_write_id == -1
        catalog.store_items([(record, "keep")], defer=True)
        assert _pending_entries(catalog) == 1
        catalog.write_pending()
        assert _pending_entries(catalog) == 0
        with catalog._env.begin() as txn:
            assert txn.get(b"1.0.0", db=catalog.database("studies")) is not None


def test_an_aborted_prepare_leaves_pending_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_module, "DEFER_LIMIT", 2)
    records = hierarchy(1, 1, 1, 3)
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(r, "keep") for r in records[:2]], defer=True)
        prepared = catalog.prepare_items([(records[2], "keep")], defer=True)  # at the limit
        assert prepared is not None and prepared.wrote_pending
        assert catalog.abort_prepared(prepared)
        assert _pending_entries(catalog) == 1  # as it was
        catalog.write_pending()  # still known to this process: writes them
        assert _pending_entries(catalog) == 0
        with catalog._env.begin() as txn:
            assert txn.get(b"1.0.0", db=catalog.database("studies")) is not None


def test_reads_of_instances_outboxes_and_checkpoints_do_not_write(tmp_path: Path) -> None:
    (record,) = hierarchy(1, 1, 1, 1)
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(record, "keep")], defer=True)
        written = catalog._last_write_id
        assert catalog.get_instance(record.sop_instance_uid) is not None
        assert catalog.instances_in_series(["1.0.0.0"]) == [record]
        assert catalog.forwards_due(0.0) == []
        assert catalog.get_checkpoint("x") is None
        assert [r.sop_instance_uid for r in catalog.iter_instances()] == [record.sop_instance_uid]
        with catalog.reader(upper=False):
            pass
        assert catalog._last_write_id == written and _pending_entries(catalog) == 1
        assert catalog.get_series("1.0.0.0") is not None  # an upper level: written first
        assert catalog._last_write_id != written and _pending_entries(catalog) == 0


def test_clear_drops_pending_without_writing_it(tmp_path: Path) -> None:
    (record,) = hierarchy(1, 1, 1, 1)
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(record, "keep")], defer=True)
        catalog.clear()  # what a reindex does first
        assert _pending_entries(catalog) == 0
        assert catalog.statistics()["instances"] == 0
        assert catalog.get_study("1.0.0") is None


@pytest.mark.parametrize("entry", [
    b"not json", b"[]", b'{"a": 1}', b'[1, ["1.0.0.0.0", 1, "a"]]', b'[1, [7]]', b'[1, "x"]',
])
def test_a_damaged_pending_entry_does_not_stop_writes(tmp_path: Path, entry: bytes) -> None:
    first, second = hierarchy(1, 1, 1, 2)
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(first, "keep")], defer=True)
        with catalog._env.begin(write=True) as txn:
            txn.put(b"\xff" * 8, entry, db=catalog.database(PENDING))
        catalog.store_items([(second, "keep")])  # writes pending first, the damaged one too
        assert _pending_entries(catalog) == 0
        check_consistent(catalog)


def test_a_pending_entry_of_another_format_is_read_from_its_instances(tmp_path: Path) -> None:
    records = hierarchy(1, 1, 1, 2)
    with Catalog(tmp_path) as catalog:
        catalog.store_items([(r, "keep") for r in records], defer=True)
        with catalog._env.begin(write=True) as txn:  # as a later version might write it
            db = catalog.database(PENDING)
            ((k, _),) = list(txn.cursor(db=db))
            uids = [[r.sop_instance_uid, "something else"] for r in records]
            txn.put(k, orjson.dumps([99, *uids]), db=db)
        study = catalog.get_study("1.0.0")
        assert study is not None and study[STUDY_INSTANCES] == 2
        check_consistent(catalog)


@pytest.mark.parametrize("error", [CatalogError("disk full"), RuntimeError("bug")])
def test_an_association_ends_whatever_writing_the_deferred_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    with Catalog(tmp_path) as catalog:
        writer = CatalogWriter(catalog, defer_index=True)
        try:
            def fail() -> None:
                raise error

            monkeypatch.setattr(catalog, "write_pending", fail)
            writer.write_deferred()  # logged, not raised
            assert "deferred upper levels" in caplog.text
        finally:
            writer.close()
