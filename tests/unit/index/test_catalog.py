"""Catalog: records, counts at every level, duplicates, moves, deletes, reopen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.errors import CatalogError
from pacs.index.catalog import (
    PATIENT_INSTANCES,
    PATIENT_SERIES,
    PATIENT_STUDIES,
    SERIES_INSTANCES,
    STUDY_INSTANCES,
    STUDY_SERIES,
    Catalog,
    patient_key,
)
from tests.unit.index._records import check_consistent, hierarchy, make_record


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog(tmp_path / "db", map_size=1 << 26)
    yield cat
    cat.close()


def pk(pid: str) -> str:
    return patient_key({"PatientID": pid})


def test_counts_at_every_level(catalog: Catalog) -> None:
    records = hierarchy()  # 2 patients x 2 studies x 2 series x 3 instances
    outcomes = catalog.store_batch(records, on_duplicate="keep")
    assert [o.kind for o in outcomes] == ["stored"] * 24
    assert all(o.obsolete_location is None for o in outcomes)
    assert catalog.statistics() == {
        "patients": 2,
        "studies": 4,
        "series": 8,
        "instances": 24,
        "total_size": 8 * (10 + 11 + 12),
    }
    for p in range(2):
        patient = catalog.get_patient(pk(f"P{p}"))
        assert patient is not None
        assert (patient[PATIENT_STUDIES], patient[PATIENT_SERIES], patient[PATIENT_INSTANCES]) == (
            2,
            4,
            12,
        )
        assert patient["PatientName"] == f"Name^P{p}"
        assert catalog.studies_of_patient(pk(f"P{p}")) == [f"1.{p}.0", f"1.{p}.1"]
        for st in range(2):
            study = catalog.get_study(f"1.{p}.{st}")
            assert study is not None
            assert (study[STUDY_SERIES], study[STUDY_INSTANCES]) == (2, 6)
            assert catalog.series_of_study(f"1.{p}.{st}") == [f"1.{p}.{st}.0", f"1.{p}.{st}.1"]
            for se in range(2):
                series = catalog.get_series(f"1.{p}.{st}.{se}")
                assert series is not None and series[SERIES_INSTANCES] == 3
                assert series["Modality"] == "CT"
                assert catalog.instances_of_series(f"1.{p}.{st}.{se}") == [
                    f"1.{p}.{st}.{se}.{i}" for i in range(3)
                ]
    check_consistent(catalog)


def test_instance_record_round_trip(catalog: Catalog) -> None:
    record = make_record("P", "1.1", "1.1.1", "1.1.1.1", PatientName="Müller^Jörg")
    record.attributes["IssuerOfPatientID"] = "HOSP"  # not an index keyword: kept anyway
    record.extra["note"] = "x"
    catalog.store_batch([record])
    assert catalog.get_instance("1.1.1.1") == record
    assert catalog.get_instance("9.9") is None
    assert catalog.get_series("9.9") is None and catalog.get_study("9.9") is None
    assert catalog.get_patient(patient_key({"PatientID": "P", "IssuerOfPatientID": "HOSP"}))


def test_duplicate_keep(catalog: Catalog) -> None:
    catalog.store_batch(hierarchy())
    before = catalog.statistics()
    again = make_record("P0", "1.0.0", "1.0.0.0", "1.0.0.0.1", location="new/blob", size=999)
    (outcome,) = catalog.store_batch([again], on_duplicate="keep")
    assert (outcome.kind, outcome.location, outcome.obsolete_location) == (
        "duplicate_kept",
        "loc/1.0.0.0.1",
        "new/blob",
    )
    assert catalog.statistics() == before
    instance = catalog.get_instance("1.0.0.0.1")
    assert instance is not None and instance.location == "loc/1.0.0.0.1"
    check_consistent(catalog)


def test_duplicate_replace(catalog: Catalog) -> None:
    catalog.store_batch(hierarchy())
    before = catalog.statistics()
    again = make_record("P0", "1.0.0", "1.0.0.0", "1.0.0.0.1", location="new/blob", size=111)
    (outcome,) = catalog.store_batch([again], on_duplicate="replace")
    assert (outcome.kind, outcome.location, outcome.obsolete_location) == (
        "replaced",
        "new/blob",
        "loc/1.0.0.0.1",
    )
    after = catalog.statistics()
    assert after == {**before, "total_size": before["total_size"] - 11 + 111}
    instance = catalog.get_instance("1.0.0.0.1")
    assert instance is not None and (instance.location, instance.size) == ("new/blob", 111)
    check_consistent(catalog)


def test_replace_with_same_location_reports_nothing_to_delete(catalog: Catalog) -> None:
    record = make_record("P", "1.1", "1.1.1", "1.1.1.1")
    catalog.store_batch([record])
    (kept,) = catalog.store_batch([record], on_duplicate="keep")
    (replaced,) = catalog.store_batch([record], on_duplicate="replace")
    assert kept.obsolete_location is None and replaced.obsolete_location is None


def test_duplicates_within_one_batch(catalog: Catalog) -> None:
    a = make_record("P", "1.1", "1.1.1", "1.1.1.1", location="a")
    b = make_record("P", "1.1", "1.1.1", "1.1.1.1", location="b")
    c = make_record("P", "1.1", "1.1.1", "1.1.1.1", location="c")
    outcomes = catalog.store_items([(a, "keep"), (b, "keep"), (c, "replace")])
    assert [(o.kind, o.obsolete_location) for o in outcomes] == [
        ("stored", None),
        ("duplicate_kept", "b"),
        ("replaced", "a"),
    ]
    assert catalog.statistics()["instances"] == 1
    check_consistent(catalog)


def test_replace_moves_instance_to_other_study(catalog: Catalog) -> None:
    catalog.store_batch(hierarchy(1, 1, 1, 2))  # P0 / 1.0.0 / 1.0.0.0 / two instances
    moved = make_record("P1", "2.0", "2.0.0", "1.0.0.0.0")
    catalog.store_batch([moved], on_duplicate="replace")
    assert catalog.get_series("1.0.0.0")[SERIES_INSTANCES] == 1  # type: ignore[index]
    assert catalog.get_series("2.0.0")[SERIES_INSTANCES] == 1  # type: ignore[index]
    assert catalog.statistics()["patients"] == 2
    check_consistent(catalog)
    # Moving the last instance away empties (and removes) the old series, study and patient.
    catalog.store_batch([make_record("P1", "2.0", "2.0.0", "1.0.0.0.1")], "replace")
    assert catalog.get_series("1.0.0.0") is None and catalog.get_study("1.0.0") is None
    assert catalog.get_patient(pk("P0")) is None
    assert catalog.statistics()["instances"] == 2
    check_consistent(catalog)


def test_latest_upper_level_values_win_and_move_series(catalog: Catalog) -> None:
    catalog.store_batch(hierarchy(1, 2, 1, 2))  # study 1.0.0 has series 1.0.0.0, 1.0.1 has 1.0.1.0
    # A new instance says series 1.0.0.0 belongs to study 1.0.1, with a new description.
    catalog.store_batch([make_record("P0", "1.0.1", "1.0.0.0", "new", SeriesDescription="latest")])
    series = catalog.get_series("1.0.0.0")
    assert series is not None
    assert series["StudyInstanceUID"] == "1.0.1" and series["SeriesDescription"] == "latest"
    assert series[SERIES_INSTANCES] == 3
    assert catalog.get_study("1.0.0") is None  # left without series
    study = catalog.get_study("1.0.1")
    assert study is not None and (study[STUDY_SERIES], study[STUDY_INSTANCES]) == (2, 5)
    check_consistent(catalog)


def test_study_moves_to_new_patient(catalog: Catalog) -> None:
    catalog.store_batch(hierarchy(1, 2, 1, 2))
    catalog.store_batch([make_record("P9", "1.0.0", "1.0.0.0", "new", PatientName="Fixed^Name")])
    assert catalog.studies_of_patient(pk("P0")) == ["1.0.1"]
    assert catalog.studies_of_patient(pk("P9")) == ["1.0.0"]
    patient = catalog.get_patient(pk("P9"))
    assert patient is not None and patient["PatientName"] == "Fixed^Name"
    assert patient[PATIENT_INSTANCES] == 3
    check_consistent(catalog)


def test_delete_instance_cascades(catalog: Catalog) -> None:
    catalog.store_batch(hierarchy())
    gone = catalog.delete_instance("1.0.0.0.0")
    assert gone is not None and gone.location == "loc/1.0.0.0.0"
    assert catalog.get_instance("1.0.0.0.0") is None
    assert catalog.delete_instance("1.0.0.0.0") is None
    check_consistent(catalog)
    for i in (1, 2):
        catalog.delete_instance(f"1.0.0.0.{i}")
    assert catalog.get_series("1.0.0.0") is None
    assert catalog.series_of_study("1.0.0") == ["1.0.0.1"]
    check_consistent(catalog)
    for record in hierarchy():
        if record.attributes["PatientID"] == "P0":
            catalog.delete_instance(record.sop_instance_uid)
    assert catalog.get_patient(pk("P0")) is None and catalog.studies_of_patient(pk("P0")) == []
    assert catalog.statistics()["patients"] == 1
    check_consistent(catalog)


def test_empty_patient_id_does_not_merge_studies(catalog: Catalog) -> None:
    catalog.store_batch(
        [make_record("", "1.1", "1.1.1", "a"), make_record("", "1.2", "1.2.1", "b")]
    )
    assert catalog.statistics()["patients"] == 2
    check_consistent(catalog)


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    with Catalog(tmp_path / "db", map_size=1 << 24) as catalog:
        catalog.store_batch(hierarchy())
        stats = catalog.statistics()
    with Catalog(tmp_path / "db", map_size=1 << 24) as catalog:
        assert catalog.statistics() == stats
        check_consistent(catalog)
    with Catalog(tmp_path / "db", readonly=True) as ro:
        assert ro.statistics() == stats
        with pytest.raises(CatalogError, match="read-only"):
            ro.store_batch(hierarchy())


def test_readonly_missing_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError):
        Catalog(tmp_path / "none", readonly=True)


def test_clear(catalog: Catalog) -> None:
    catalog.store_batch(hierarchy())
    catalog.clear()
    assert catalog.statistics() == dict.fromkeys(
        ("patients", "studies", "series", "instances", "total_size"), 0
    )
    assert catalog.series_of_study("1.0.0") == []
    catalog.store_batch(hierarchy(1, 1, 1, 1))
    check_consistent(catalog)


def test_iter_instances_in_chunks(catalog: Catalog) -> None:
    records = hierarchy()
    catalog.store_batch(records)
    uids = [r.sop_instance_uid for r in catalog.iter_instances(chunk=5)]
    assert uids == sorted(r.sop_instance_uid for r in records)


def test_invalid_record_stores_nothing(catalog: Catalog) -> None:
    bad = make_record("P", "1.1", "", "1.1.1.1")
    with pytest.raises(CatalogError, match="SeriesInstanceUID"):
        catalog.store_batch([make_record("P", "1.1", "1.1.1", "ok"), bad])
    assert catalog.statistics()["instances"] == 0


def test_long_keys_are_hashed_but_listed(catalog: Catalog) -> None:
    long_uid = "1." + "9" * 400
    catalog.store_batch([make_record("P" * 300, "1.1", "1.1.1", long_uid)])
    assert catalog.instances_of_series("1.1.1") == [long_uid]
    assert catalog.get_instance(long_uid) is not None
    check_consistent(catalog)


def test_map_grows_when_full(tmp_path: Path) -> None:
    with Catalog(tmp_path / "db", map_size=1 << 16) as catalog:
        start = catalog.map_size
        catalog.store_batch(hierarchy(2, 5, 5, 20))  # ~1,000 records: far more than 64 KiB
        assert catalog.map_size > start
        assert catalog.statistics()["instances"] == 1000


def test_relocate_moves_only_current_locations(tmp_path: Path) -> None:
    with Catalog(tmp_path / "db", map_size=1 << 26) as catalog:
        a = make_record("P", "ST", "SE", "A", location="seg1:0:10")
        b = make_record("P", "ST", "SE", "B", location="seg1:10:10")
        catalog.store_batch([a, b])
        stale = catalog.relocate({"A": ("seg1:0:10", "seg2:0:10"),
                                  "B": ("seg0:99:10", "seg2:10:10"),  # B is elsewhere now
                                  "C": ("seg1:20:10", "seg2:20:10")})  # C is not indexed
        assert sorted(stale) == ["B", "C"]
        record_a, record_b = catalog.get_instance("A"), catalog.get_instance("B")
        assert record_a is not None and record_a.location == "seg2:0:10"
        assert record_b is not None and record_b.location == "seg1:10:10"
        assert catalog.statistics()["instances"] == 2


def test_secondary_indexes_equal_a_rebuild_after_updates(tmp_path: Path) -> None:
    """Incremental index maintenance (which skips records whose indexed values did not change)
    leaves exactly what a full rebuild makes: new instances in existing series, a renamed
    patient, a changed accession number, a series whose modality changes, a deletion."""
    from pacs.index import secondary

    cat = Catalog(tmp_path / "index")
    base = {"PatientName": "DOE^J", "AccessionNumber": "A1", "StudyDate": "20240101",
            "Modality": "CT"}
    cat.store_batch([make_record("P1", "1.1", "1.1.1", f"1.1.1.{i}", **base) for i in range(3)])
    cat.store_batch([make_record("P1", "1.1", "1.1.1", "1.1.1.9", **base)])  # counts only
    cat.store_batch([make_record("P1", "1.1", "1.1.2", "1.1.2.1", **{**base, "Modality": "MR"}),
                     make_record("P2", "2.1", "2.1.1", "2.1.1.1", **base)])
    cat.store_batch([make_record("P1", "1.1", "1.1.1", "1.1.1.7", **{**base, "Modality": "US"})])
    cat.store_batch([make_record("P1", "1.1", "1.1.1", "1.1.1.8",
                                 **{**base, "PatientName": "ROE^J", "AccessionNumber": "A2"})])
    cat.delete_instance("2.1.1.1")

    def contents() -> dict[str, list[tuple[bytes, bytes]]]:
        with cat.reader() as txn:
            return {n: list(txn.cursor(db=cat.database(n))) for n in ("sx", "sx_counts")}

    incremental = contents()
    assert any(k.startswith(b"pn\0ROE^J") for k, _ in incremental["sx"])
    assert not any(k.startswith(b"pn\0DOE^J") for k, _ in incremental["sx"])
    dbs = {n: cat.database(n) for n in (*secondary.DB_NAMES, "patients", "studies", "series",
                                        "instances", "meta")}
    cat._write(lambda t: secondary.rebuild(t.txn, dbs))
    assert contents() == incremental


def test_change_log_is_trimmed_in_bulk_and_keeps_what_readers_need(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The column cache's change log keeps at least LOG_KEEP generations; the older ones go
    every LOG_TRIM_EVERY commits, not one per commit."""
    from pacs.index import secondary

    monkeypatch.setattr(secondary, "LOG_KEEP", 10)
    monkeypatch.setattr(secondary, "LOG_TRIM_EVERY", 4)
    cat = Catalog(tmp_path / "db", map_size=1 << 26)
    dbs = {n: cat.database(n) for n in (*secondary.DB_NAMES, "meta")}
    sizes = []
    for i, record in enumerate(hierarchy(1, 5, 1, 8)):  # 40 commits of one instance
        cat.store_batch([record])
        with cat.reader() as txn:
            _, gen = secondary.state(txn, dbs) or ("", 0)
            keys = [int.from_bytes(k, "big") for k, _ in txn.cursor(db=dbs["sx_log"])]
        assert gen == i  # the first commit builds the indexes (generation 0)
        if not gen:
            continue
        assert keys[-1] == gen
        assert 10 <= len(keys) <= 14 or len(keys) == gen  # LOG_KEEP, + at most LOG_TRIM_EVERY
        assert keys == list(range(keys[0], gen + 1))  # contiguous: nothing missing inside
        sizes.append(len(keys))
        with cat.reader() as txn:
            assert secondary.changed_since(txn, dbs, max(gen - 10, 0), gen) is not None
    assert 14 in sizes and 11 in sizes  # it grew, then was cut back in one go
    cat.close()
