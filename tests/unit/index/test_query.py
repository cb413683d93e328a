"""C-FIND matching semantics (PS3.4 C.2.2.2), one row per rule, against a small fixed archive;
bad identifiers; freshness after writes; the column cache's persistence."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pyarrow as pa
import pytest

from pacs.dicom.identifier_table import rows_of_table
from pacs.errors import QueryError
from pacs.index import secondary
from pacs.index.catalog import Catalog
from pacs.index.columns import FILE_NAME, StudyColumns
from pacs.index.query import Query, QueryEngine, compile_query, parse_identifier
from pacs.index.records import InstanceRecord
from tests.unit.index._records import make_record

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SR = "1.2.840.10008.5.1.4.1.1.88.11"

# (patient id, name, birth date, sex), study uid, date, time, accession, series uid, modality,
# SOP class, instances
ARCHIVE = [
    (("P1", "SMITH^JOHN", "19700101", "M"), "1.1", "20240115", "101500", "A1",
     [("1.1.1", "CT", CT, 2), ("1.1.2", "MR", MR, 1)]),
    (("P1", "SMITH^JOHN", "19700101", "M"), "1.2", "20240220", "083000", "A2",
     [("1.2.1", "US", SR, 1)]),
    (("P2", "Smith^Anna", "19850505", "F"), "1.3", "20231231", "235900", "A3",
     [("1.3.1", "CT", CT, 1)]),
    (("P3", "JONES^BOB", "", "M"), "1.4", "20240115", "120000", "XA4",
     [("1.4.1", "MR", MR, 1)]),
    (("P4", "MÜLLER^Jörg", "", "O"), "1.5", "", "", "",
     [("1.5.1", "OT", SR, 1)]),
]


def records() -> list[InstanceRecord]:
    out = []
    for (pid, name, birth, sex), st, date, time, acc, series in ARCHIVE:
        for se, modality, sop_class, n in series:
            for i in range(n):
                out.append(make_record(
                    pid, st, se, f"{se}.{i}", PatientName=name, PatientBirthDate=birth,
                    PatientSex=sex, StudyDate=date, StudyTime=time, AccessionNumber=acc,
                    Modality=modality, SOPClassUID=sop_class, InstanceNumber=str(i + 1),
                    StudyDescription=f"study {st}", SeriesNumber=se[-1],
                ))
    return out


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    cat = Catalog(tmp_path_factory.mktemp("q") / "index")
    cat.store_batch(records())
    return cat


@pytest.fixture(params=["index", "scan"])
def engine(request: pytest.FixtureRequest, catalog: Catalog) -> QueryEngine:
    e = QueryEngine(catalog)
    e.force_scan = request.param == "scan"
    return e


S, P = "STUDY", "PATIENT"
ALL = ["1.1", "1.2", "1.3", "1.4", "1.5"]
# (rule, level, model, identifier, expected values of the level's unique key, sorted)
SEMANTICS = [
    ("universal: empty value", "STUDY", S, {"PatientName": ""}, ALL),
    ("universal: lone *", "STUDY", S, {"PatientName": "*"}, ALL),
    ("single value", "STUDY", S, {"AccessionNumber": "A2"}, ["1.2"]),
    ("single value is case-sensitive (SH)", "STUDY", S, {"AccessionNumber": "a2"}, []),
    ("single value PN case-insensitive", "STUDY", S, {"PatientName": "smith^john"}, ["1.1", "1.2"]),
    ("single value PN non-ASCII", "STUDY", S, {"PatientName": "müller^jörg"}, ["1.5"]),
    ("wildcard * prefix", "STUDY", S, {"PatientName": "SMI*"}, ["1.1", "1.2", "1.3"]),
    ("wildcard * infix", "STUDY", S, {"PatientName": "*MIT*"}, ["1.1", "1.2", "1.3"]),
    ("wildcard * suffix", "STUDY", S, {"PatientName": "*^BOB"}, ["1.4"]),
    ("wildcard ?", "STUDY", S, {"PatientName": "SMITH^JOH?"}, ["1.1", "1.2"]),
    ("wildcard ? is one character", "STUDY", S, {"PatientName": "SMITH^JO?"}, []),
    ("wildcard in SH", "STUDY", S, {"AccessionNumber": "*4"}, ["1.4"]),
    ("wildcard with no match", "STUDY", S, {"PatientName": "ZZ*"}, []),
    ("date single", "STUDY", S, {"StudyDate": "20240115"}, ["1.1", "1.4"]),
    ("date range A-B", "STUDY", S, {"StudyDate": "20240101-20240131"}, ["1.1", "1.4"]),
    ("date range -B", "STUDY", S, {"StudyDate": "-20240115"}, ["1.1", "1.3", "1.4"]),
    ("date range A-", "STUDY", S, {"StudyDate": "20240116-"}, ["1.2"]),
    ("date range excludes empty", "STUDY", S, {"StudyDate": "19000101-"}, ALL[:4]),
    ("date list", "STUDY", S, {"StudyDate": "20240220\\20231231"}, ["1.2", "1.3"]),
    ("time range", "STUDY", S, {"StudyTime": "0800-1100"}, ["1.1", "1.2"]),
    ("time range partial upper bound", "STUDY", S, {"StudyTime": "10-12"}, ["1.1", "1.4"]),
    ("time single", "STUDY", S, {"StudyTime": "1015"}, ["1.1"]),
    ("date and time independent", "STUDY", S,
     {"StudyDate": "20240101-20240131", "StudyTime": "1100-"}, ["1.4"]),
    ("UID single", "STUDY", S, {"StudyInstanceUID": "1.3"}, ["1.3"]),
    ("UID list", "STUDY", S, {"StudyInstanceUID": "1.3\\1.5\\9.9"}, ["1.3", "1.5"]),
    ("ModalitiesInStudy single", "STUDY", S, {"ModalitiesInStudy": "MR"}, ["1.1", "1.4"]),
    ("ModalitiesInStudy multiple", "STUDY", S, {"ModalitiesInStudy": "US\\OT"}, ["1.2", "1.5"]),
    ("SOPClassesInStudy", "STUDY", S, {"SOPClassesInStudy": SR}, ["1.2", "1.5"]),
    ("several keys are ANDed", "STUDY", S, {"PatientName": "SMITH^J*", "ModalitiesInStudy": "CT"},
     ["1.1"]),
    ("patient attribute at study level", "STUDY", S, {"PatientSex": "F"}, ["1.3"]),
    ("empty stored value vs single value", "STUDY", S, {"PatientBirthDate": "19700101"},
     ["1.1", "1.2"]),
    ("patient root STUDY with PatientID", "STUDY", P, {"PatientID": "P1"}, ["1.1", "1.2"]),
    ("PATIENT level", "PATIENT", P, {"PatientName": "S*"}, ["P1", "P2"]),
    ("PATIENT level infix", "PATIENT", P, {"PatientName": "*O*"}, ["P1", "P3"]),
    ("PATIENT level all", "PATIENT", P, {}, ["P1", "P2", "P3", "P4"]),
    ("SERIES of a study", "SERIES", S, {"StudyInstanceUID": "1.1"}, ["1.1.1", "1.1.2"]),
    ("SERIES with Modality", "SERIES", S, {"StudyInstanceUID": "1.1", "Modality": "MR"},
     ["1.1.2"]),
    ("SERIES lenient: no study UID", "SERIES", S, {"Modality": "MR"}, ["1.1.2", "1.4.1"]),
    ("SERIES lenient: upper non-unique key", "SERIES", S, {"PatientName": "jones*"}, ["1.4.1"]),
    ("SERIES patient root", "SERIES", P, {"PatientID": "P1", "StudyInstanceUID": "1.2"},
     ["1.2.1"]),
    ("SERIES wrong parent", "SERIES", S, {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.1.1"},
     []),
    ("IMAGE of a series", "IMAGE", S, {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.1"},
     ["1.1.1.0", "1.1.1.1"]),
    ("IMAGE by SOP UID", "IMAGE", S, {"SOPInstanceUID": "1.1.1.1"}, ["1.1.1.1"]),
    ("IMAGE by InstanceNumber", "IMAGE", S,
     {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.1", "InstanceNumber": "2"},
     ["1.1.1.1"]),
    ("IMAGE by SOPClassUID", "IMAGE", S, {"SOPClassUID": MR}, ["1.1.2.0", "1.4.1.0"]),
]
_UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
           "IMAGE": "SOPInstanceUID"}


@pytest.mark.parametrize(("rule", "level", "model", "identifier", "expected"), SEMANTICS,
                         ids=[row[0] for row in SEMANTICS])
def test_semantics(engine: QueryEngine, rule: str, level: str, model: str,
                   identifier: dict[str, str], expected: list[str]) -> None:
    unique = _UNIQUE[level]
    q = parse_identifier(level, model, {**identifier, unique: identifier.get(unique, "")})
    rows = list(engine.run(q))
    assert sorted(r[unique] for r in rows) == expected
    assert engine.count(q) == len(expected)


def test_strict_person_names(engine: QueryEngine) -> None:
    q = parse_identifier("STUDY", "STUDY", {"PatientName": "smith*", "StudyInstanceUID": ""},
                         fuzzy_names=False)
    assert list(engine.run(q)) == []
    q = parse_identifier("STUDY", "STUDY", {"PatientName": "Smith*", "StudyInstanceUID": ""},
                         fuzzy_names=False)
    assert [r["StudyInstanceUID"] for r in engine.run(q)] == ["1.3"]


def test_combined_date_time(engine: QueryEngine) -> None:
    ident = {"StudyDate": "20240115-20240220", "StudyTime": "1100-0900", "StudyInstanceUID": ""}
    q = parse_identifier("STUDY", "STUDY", ident, combined_datetime=True)
    # from 2024-01-15 11:00 to 2024-02-20 09:00
    assert sorted(r["StudyInstanceUID"] for r in engine.run(q)) == ["1.2", "1.4"]


def test_return_keys_and_computed_values(engine: QueryEngine) -> None:
    keys = ["PatientName", "PatientID", "StudyDate", "StudyInstanceUID", "ModalitiesInStudy",
            "SOPClassesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
            "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances", "StudyDescription", "OtherPatientIDs"]
    q = parse_identifier("STUDY", "STUDY", {**dict.fromkeys(keys, ""), "StudyInstanceUID": "1.1"})
    (row,) = engine.run(q)
    assert row == {
        "QueryRetrieveLevel": "STUDY", "SpecificCharacterSet": "", "PatientName": "SMITH^JOHN",
        "PatientID": "P1", "StudyDate": "20240115", "StudyInstanceUID": "1.1",
        "ModalitiesInStudy": "CT\\MR", "SOPClassesInStudy": f"{CT}\\{MR}",
        "NumberOfStudyRelatedSeries": "2", "NumberOfStudyRelatedInstances": "3",
        "NumberOfPatientRelatedStudies": "2", "NumberOfPatientRelatedSeries": "3",
        "NumberOfPatientRelatedInstances": "4", "StudyDescription": "study 1.1",
        "OtherPatientIDs": "",
    }
    q = parse_identifier("SERIES", "STUDY", {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "",
                                             "NumberOfSeriesRelatedInstances": "",
                                             "PatientName": "", "SeriesNumber": ""})
    rows = sorted(engine.run(q), key=lambda r: r["SeriesInstanceUID"])
    assert [(r["NumberOfSeriesRelatedInstances"], r["PatientName"], r["SeriesNumber"])
            for r in rows] == [("2", "SMITH^JOHN", "1"), ("1", "SMITH^JOHN", "2")]
    q = parse_identifier("PATIENT", "PATIENT", {"PatientID": "P4", "PatientName": ""})
    assert list(engine.run(q)) == [{"QueryRetrieveLevel": "PATIENT", "PatientID": "P4",
                                    "PatientName": "MÜLLER^Jörg",
                                    "SpecificCharacterSet": "ISO_IR 192"}]


def test_limit_offset_order(engine: QueryEngine) -> None:
    base = parse_identifier("STUDY", "STUDY", {"StudyInstanceUID": "", "StudyDate": ""})
    q = Query("STUDY", filters={}, return_keys=base.return_keys, order_by=("-StudyInstanceUID",),
              limit=2, offset=1)
    assert [r["StudyInstanceUID"] for r in engine.run(q)] == ["1.4", "1.3"]
    assert len(list(engine.run(Query("STUDY", return_keys=("StudyInstanceUID",), limit=3)))) == 3
    assert engine.count(Query("IMAGE")) == 7


@pytest.mark.parametrize("limit", [None, 0, 1, 3, 10])
def test_tables_equal_rows(catalog: Catalog, limit: int | None) -> None:
    """The column path (used for C-FIND scans) gives run()'s rows: limits, return keys the
    index does not hold, ModalitiesInStudy joined, non-ASCII names."""
    engine = QueryEngine(catalog)
    keys = {"PatientName": "*^J*", "ModalitiesInStudy": "", "StudyComments": "", "StudyDate": ""}
    q = parse_identifier("STUDY", "STUDY", keys, limit=limit)
    tables = engine.run_tables(q)
    assert tables is not None  # an infix wildcard: no index lookup, a column scan
    got = [r for t in tables for r in rows_of_table(t, compile_query(q).return_keys, "STUDY")]
    assert got == list(engine.run(q))
    assert len(got) == min(3, 10 if limit is None else limit)
    assert {r["ModalitiesInStudy"] for r in got} <= {"CT\\MR", "MR\\CT", "US", "OT"}
    assert "ISO_IR 192" in {r["SpecificCharacterSet"] for r in got} or len(got) < 3
    # Keyed lookups, SERIES level and computed keys the columns lack go row by row.
    for ident, level in (({"PatientID": "P1"}, "STUDY"), ({"Modality": ""}, "SERIES"),
                         ({"NumberOfPatientRelatedStudies": ""}, "STUDY")):
        assert engine.run_tables(parse_identifier(level, "STUDY", ident)) is None


def test_streams_lazily(engine: QueryEngine) -> None:
    rows = engine.run(parse_identifier("IMAGE", "STUDY", {"SOPClassUID": ""}))
    assert next(rows)["QueryRetrieveLevel"] == "IMAGE"
    assert isinstance(rows, Generator)
    rows.close()  # a C-CANCEL: the generator is dropped


BAD = [
    ("no level", None, "STUDY", {}, 0xA900),
    ("unknown level", "SERIESX", "STUDY", {}, 0xA900),
    ("PATIENT level in Study Root", "PATIENT", "STUDY", {}, 0xA900),
    ("unknown model", "STUDY", "WORKLIST", {}, 0xA900),
    ("key below the level", "STUDY", "STUDY", {"Modality": "CT"}, 0xA900),
    ("image key at series level", "SERIES", "STUDY", {"SOPInstanceUID": "1.2"}, 0xA900),
    ("unknown attribute", "STUDY", "STUDY", {"NoSuchKeyword": "x"}, 0xA900),
    ("malformed date", "STUDY", "STUDY", {"StudyDate": "2024-01-01"}, 0xC000),
    ("malformed date range", "STUDY", "STUDY", {"StudyDate": "20240101-202402"}, 0xC000),
    ("range without bounds", "STUDY", "STUDY", {"StudyDate": "-"}, 0xC000),
    ("malformed time", "STUDY", "STUDY", {"StudyTime": "25x"}, 0xC000),
    ("wildcard in a UID", "STUDY", "STUDY", {"StudyInstanceUID": "1.2.*"}, 0xC000),
    ("wildcard in a date", "STUDY", "STUDY", {"StudyDate": "2024*"}, 0xC000),
    ("invalid UID", "STUDY", "STUDY", {"StudyInstanceUID": "abc"}, 0xC000),
    ("empty value in a list", "STUDY", "STUDY", {"ModalitiesInStudy": "CT\\"}, 0xC000),
]


@pytest.mark.parametrize(("rule", "level", "model", "identifier", "status"), BAD,
                         ids=[row[0] for row in BAD])
def test_bad_identifiers(rule: str, level: str | None, model: str,
                         identifier: dict[str, str], status: int) -> None:
    with pytest.raises(QueryError) as info:
        parse_identifier(level, model, identifier)
    assert info.value.status == status and info.value.comment


def test_level_from_elements_and_run_validates(engine: QueryEngine) -> None:
    q = parse_identifier(None, "STUDY", {"QueryRetrieveLevel": "STUDY", "AccessionNumber": "A1"})
    assert [r["AccessionNumber"] for r in engine.run(q)] == ["A1"]
    with pytest.raises(QueryError):
        engine.run(Query("STUDY", filters={"StudyDate": "bad"}))


def test_sees_writes_at_once(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "index")
    engine = QueryEngine(cat, columns=StudyColumns(cat, compact_at=2))
    scan = QueryEngine(cat, columns=engine.columns)
    scan.force_scan = True
    q = parse_identifier("STUDY", "STUDY", {"PatientName": "*OE*", "StudyInstanceUID": "",
                                            "ModalitiesInStudy": ""})
    assert list(scan.run(q)) == []
    for i in range(5):
        cat.store_batch([make_record(f"P{i}", f"2.{i}", f"2.{i}.1", f"2.{i}.1.1",
                                     PatientName="DOE^J", Modality="MR")])
        assert len(list(scan.run(q))) == i + 1  # overlay, then compaction at 2
    # a patient rename (the latest instance wins) reaches every study of the patient
    cat.store_batch([make_record("P0", "2.0", "2.0.1", "2.0.1.2", PatientName="ROE^J")])
    assert sorted(r["PatientName"] for r in scan.run(q)) == ["DOE^J"] * 4 + ["ROE^J"]
    cat.delete_instance("2.1.1.1")
    assert len(list(scan.run(q))) == 4
    assert len(list(engine.run(q))) == 4
    # a series moves to another study: ModalitiesInStudy follows
    cat.store_batch([make_record("P2", "2.2", "2.0.1", "2.0.1.3", Modality="CT",
                                 PatientName="DOE^J")])
    rows = {r["StudyInstanceUID"]: r["ModalitiesInStudy"] for r in scan.run(q)}
    assert rows == {"2.2": "CT\\MR", "2.3": "MR", "2.4": "MR"}


def test_columns_persist_and_rebuild_after_clear(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "index")
    cat.store_batch(records())
    columns = StudyColumns(cat)
    assert columns.snapshot().table.num_rows == 5 and (tmp_path / "index" / FILE_NAME).exists()
    reopened = StudyColumns(cat)
    assert reopened.snapshot().table.num_rows == 5 and reopened.full_builds == 0
    cat.clear()
    cat.store_batch(records()[:1])
    snap = reopened.snapshot()
    assert snap.table.num_rows + len(snap.overlay_rows) == 1


def test_full_column_build_equals_the_study_rows(catalog: Catalog) -> None:
    """The bulk build (cold start) holds exactly what the row path reads from LMDB for each
    study: patient and study attributes, counts as text, ModalitiesInStudy, derived columns."""
    from pacs.index.columns import rows_to_table, study_row

    table = StudyColumns(catalog, persist=False).snapshot().table
    dbs = {n: catalog.database(n) for n in ("studies", "patients", *secondary.DB_NAMES)}
    with catalog.reader() as txn:
        rows = [study_row(txn, dbs, uid) for uid in table.column("StudyInstanceUID").to_pylist()]
    expected = rows_to_table([r for r in rows if r is not None])
    assert table.num_rows == 5
    assert table.to_pylist() == expected.to_pylist()
    assert {tuple(m) for m in table.column("ModalitiesInStudy").to_pylist()} >= {("CT", "MR")}


def test_arrow_and_row_builds_agree(catalog: Catalog) -> None:
    """Arrow's conversion and the Python fallback (taken when a record holds a value of an
    unexpected type) make the same table, UID-less records included."""
    from pacs.index.codec import decode_dict
    from pacs.index.columns import _arrow_build, _row_build

    dbs = {n: catalog.database(n) for n in ("studies", "patients", *secondary.DB_NAMES)}
    with catalog.reader() as txn:
        patients = [decode_dict(raw) for _, raw in txn.cursor(db=dbs["patients"])]
        keys, studies = zip(*[(k, decode_dict(raw)) for k, raw in
                              txn.cursor(db=dbs["studies"])], strict=True)
        mods = secondary.all_study_modalities(txn, dbs)
    studies = [dict(s) for s in studies]
    studies[0].pop("StudyInstanceUID", None)  # taken from the key
    studies[1]["StudyDescription"] = None
    by_arrow = _arrow_build(list(keys), studies, patients, mods)
    assert by_arrow.to_pylist() == _row_build(list(keys), studies, patients, mods).to_pylist()
    assert by_arrow.column("StudyInstanceUID")[0].as_py() == keys[0].decode()
    studies[2]["StudyDescription"] = 42  # not text: Arrow refuses, the rows path copes
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        _arrow_build(list(keys), studies, patients, mods)
    assert _row_build(list(keys), studies, patients, mods).column("StudyDescription")[2].as_py() \
        == "42"
