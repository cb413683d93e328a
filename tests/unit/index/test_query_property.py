"""Random small archives and random queries: the engine (keyed plans and column scans, before
and after further writes and deletes) returns what a brute-force matcher over plain dicts does."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacs.dicom.identifier_table import rows_of_table
from pacs.index.catalog import Catalog
from pacs.index.query import QueryEngine, compile_query, parse_identifier
from tests.unit.index._records import make_record

NAMES = ["SMITH^JOHN", "Smith^Ann", "SMYTHE^J", "JONES^BOB", "jones^al", "MÜLLER^Ö", "O_X%^Y"]
PIDS = ["P1", "P2", "PX1", "Q9", "p1"]
DATES = ["20240101", "20240115", "20240201", "20231231", ""]
TIMES = ["0800", "101500", "12", "235959.5", ""]
ACCS = ["A1", "A2", "B10", "", "a1"]
MODS = ["CT", "MR", "US", ""]
CLASSES = ["1.2.1", "1.2.2", "1.2.3"]
VR = {"PatientName": "PN", "StudyDate": "DA", "StudyTime": "TM", "PatientBirthDate": "DA"}
UIDS = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID",
        "PATIENT": "PatientID"}


@st.composite
def archives(draw: st.DrawFn) -> list[dict[str, str]]:
    n_pat = draw(st.integers(1, 4))
    names = draw(st.permutations(NAMES))  # spread the names over the examples
    patients = [{"PatientID": PIDS[i], "PatientName": names[i],
                 "PatientBirthDate": draw(st.sampled_from(DATES))} for i in range(n_pat)]
    instances = []
    for s in range(draw(st.integers(1, 6))):
        pat = draw(st.sampled_from(patients))
        study = {**pat, "StudyInstanceUID": f"1.{s}", "StudyDate": draw(st.sampled_from(DATES)),
                 "StudyTime": draw(st.sampled_from(TIMES)),
                 "AccessionNumber": draw(st.sampled_from(ACCS))}
        for se in range(draw(st.integers(1, 3))):
            series = {**study, "SeriesInstanceUID": f"1.{s}.{se}",
                      "Modality": draw(st.sampled_from(MODS))}
            for i in range(draw(st.integers(1, 3))):
                instances.append({**series, "SOPInstanceUID": f"1.{s}.{se}.{i}",
                                  "SOPClassUID": draw(st.sampled_from(CLASSES)),
                                  "InstanceNumber": str(i + 1)})
    return instances


def wildcard(text: str, draw: st.DrawFn) -> str:
    if not text:
        return draw(st.sampled_from(["Z*", "?*"]))
    kind = draw(st.sampled_from(["prefix", "infix", "suffix", "qmark", "exact", "lower"]))
    if kind == "prefix":
        return text[: draw(st.integers(1, len(text)))] + "*"
    if kind == "infix":
        i = draw(st.integers(0, len(text) - 1))
        return "*" + text[i : i + 2] + "*"
    if kind == "suffix":
        return "*" + text[-2:]
    if kind == "qmark":
        i = draw(st.integers(0, len(text) - 1))
        return text[:i] + "?" + text[i + 1 :]
    return text.lower() if kind == "lower" else text


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bool]:
    level = draw(st.sampled_from(["PATIENT", "STUDY", "SERIES", "IMAGE"]))
    model = "PATIENT" if level == "PATIENT" else draw(st.sampled_from(["PATIENT", "STUDY"]))
    depth = ["PATIENT", "STUDY", "SERIES", "IMAGE"].index(level)
    options = {
        "PatientName": lambda: wildcard(draw(st.sampled_from(NAMES)), draw),
        "PatientID": lambda: wildcard(draw(st.sampled_from(PIDS)), draw),
        "PatientBirthDate": lambda: draw(st.sampled_from(DATES[:4])),
    }
    if depth >= 1:
        options.update({
            "StudyInstanceUID": lambda: "\\".join(draw(st.lists(
                st.sampled_from(["1.0", "1.1", "1.2", "1.9"]), min_size=1, max_size=2))),
            "StudyDate": lambda: draw(st.sampled_from(
                ["20240101", "20240101-20240131", "-20240115", "20240115-", "20231231\\20240201",
                 "20240102-20240101"])),
            "StudyTime": lambda: draw(st.sampled_from(["08-12", "1015", "-10", "12-", "120000"])),
            "AccessionNumber": lambda: wildcard(draw(st.sampled_from(ACCS[:3])), draw),
        })
        if depth == 1:
            options["ModalitiesInStudy"] = lambda: "\\".join(draw(st.lists(
                st.sampled_from(MODS[:3]), min_size=1, max_size=2)))
            options["SOPClassesInStudy"] = lambda: draw(st.sampled_from(CLASSES))
    if depth >= 2:
        options["Modality"] = lambda: draw(st.sampled_from(["CT", "MR", "C?", "*R"]))
        options["SeriesInstanceUID"] = lambda: draw(st.sampled_from(["1.0.0", "1.1.1", "1.0.2"]))
    if depth >= 3:
        options["SOPInstanceUID"] = lambda: draw(st.sampled_from(["1.0.0.0", "1.1.0.1"]))
        options["SOPClassUID"] = lambda: draw(st.sampled_from(CLASSES))
        options["InstanceNumber"] = lambda: draw(st.sampled_from(["1", "2"]))
    keys = draw(st.lists(st.sampled_from(sorted(options)), max_size=3, unique=True))
    return level, model, {k: options[k]() for k in keys}, draw(st.booleans())


def _pad(t: str, high: bool) -> str:
    hhmmss, _, frac = t.partition(".")
    hhmmss += ("995959" if high else "000000")[len(hhmmss):]
    return hhmmss + "." + (frac + ("9" if high else "0") * 6)[:6]


def ref_one(vr: str, query: str, stored: str, fold: bool) -> bool:
    if vr in ("DA", "TM") and "-" in query:
        if not stored:
            return False
        lo, hi = query.split("-")
        if vr == "TM":
            stored, lo, hi = _pad(stored, False), lo and _pad(lo, False), hi and _pad(hi, True)
        return (not lo or stored >= lo) and (not hi or stored <= hi)
    if vr == "TM":
        return _pad(stored, False) == _pad(query, False) if stored else False
    if fold and vr == "PN":
        query, stored = query.upper(), stored.upper()
    if "*" in query or "?" in query:
        rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in query)
        return re.fullmatch(rx, stored, re.S) is not None
    return query == stored


def reference(instances: list[dict[str, str]], level: str, filters: dict[str, str],
              fold: bool) -> set[str]:
    unique = UIDS[level]
    studies: dict[str, dict[str, set[str]]] = {}
    for inst in instances:
        agg = studies.setdefault(inst["StudyInstanceUID"], {"m": set(), "c": set()})
        if inst["Modality"]:
            agg["m"].add(inst["Modality"])
        agg["c"].add(inst["SOPClassUID"])
    out = set()
    for inst in instances:
        agg = studies[inst["StudyInstanceUID"]]
        row = {**inst, "ModalitiesInStudy": "\\".join(agg["m"]),
               "SOPClassesInStudy": "\\".join(agg["c"])}
        ok = True
        for kw, q in filters.items():
            stored_values = row[kw].split("\\") if kw.endswith("InStudy") else [row[kw]]
            if not any(ref_one(VR.get(kw, "LO"), a, s, fold)
                       for a in q.split("\\") for s in stored_values):
                ok = False
                break
        if ok:
            out.add(row[unique])
    return out


def store(cat: Catalog, instances: list[dict[str, str]]) -> None:
    records = []
    for i in instances:
        record = make_record(i["PatientID"], i["StudyInstanceUID"], i["SeriesInstanceUID"],
                             i["SOPInstanceUID"])
        record.attributes.update(i)
        records.append(record)
    cat.store_batch(records)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(archives(), st.lists(queries(), min_size=2, max_size=8), st.data())
def test_engine_equals_reference(
    instances: list[dict[str, str]], qs: list[tuple[str, str, dict[str, str], bool]],
    data: st.DataObject,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cat = Catalog(Path(tmp) / "index")
        half = data.draw(st.integers(0, len(instances)))
        store(cat, instances[:half])
        keyed = QueryEngine(cat)
        scan = QueryEngine(cat, columns=keyed.columns)
        scan.force_scan = True
        for engine in (keyed, scan):  # warm the column cache before further writes
            list(engine.run(parse_identifier("STUDY", "STUDY", {"StudyInstanceUID": ""})))
        store(cat, instances[half:])
        live = list(instances)
        for step in range(2):
            for level, model, filters, fold in qs:
                q = parse_identifier(level, model, {**filters, UIDS[level]: filters.get(
                    UIDS[level], "")}, fuzzy_names=fold)
                expected = reference(live, level, filters, fold)
                for engine in (keyed, scan):
                    rows = list(engine.run(q))
                    tables = engine.run_tables(q)
                    if tables is not None:  # the column path gives the same rows
                        assert [r for t in tables for r in rows_of_table(
                            t, compile_query(q).return_keys, q.level)] == rows
                    got = [r[UIDS[level]] for r in rows]
                    assert len(got) == len(set(got)), (level, filters)
                    assert set(got) == expected, (level, model, filters, fold, engine.force_scan)
                    assert engine.count(q) == len(expected)
            if step == 0:
                gone = data.draw(st.lists(st.sampled_from(live), max_size=3, unique_by=lambda
                                          i: i["SOPInstanceUID"]))
                for inst in gone:
                    cat.delete_instance(inst["SOPInstanceUID"])
                live = [i for i in live if i not in gone]
        cat.close()
