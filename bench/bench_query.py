"""C-FIND query benchmark through the Python API (pacs.index.query).

    python -m bench.bench_query --instances 100000
    python -m bench.bench_query --instances 1000000 --dir /tmp/bq1m   # keeps the index

Builds a synthetic index (10 instances per series, one series per study, two studies per
patient) through ``Catalog.store_batch``, then reports p50/p95 latencies of typical queries,
rows/s of a 10,000-study listing, the build rate and the cold start (open + first scan query,
with the saved column file, and with a full column build from LMDB). The query kinds
(:func:`cases`, :data:`LISTING`) are shared with bench.bench_find_dimse, which runs them over
DIMSE against ``pacs serve`` and prints these API figures next to its own.
"""

from __future__ import annotations

import argparse
import inspect
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pacs.index.catalog import Catalog
from pacs.index.columns import FILE_NAME
from pacs.index.query import Query, QueryEngine, parse_identifier
from pacs.index.records import ALL_KEYWORDS, InstanceRecord

SURNAMES = [f"{a}{b}{c}" for a in ("BR", "K", "L", "M", "P", "T", "W", "ST", "GR", "H")
            for b in ("A", "E", "O", "U", "I") for c in ("NN", "RT", "LD", "SK", "MP", "GG")]
GIVEN = ["JOHN", "ANNA", "PAUL", "MARIA", "LI", "OMAR", "EVA", "IVAN"]
MODALITIES = ["CT", "MR", "US", "CR", "DX", "NM", "XA", "MG"]
SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
STUDY_KEYS = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
              "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "StudyInstanceUID",
              "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]


def study_attrs(s: int, rng: random.Random) -> dict[str, str]:
    p = s // 2
    prng = random.Random(p)
    surname = "SMITH" if prng.random() < 0.01 else prng.choice(SURNAMES)
    day = rng.randrange(3650)
    y, d = divmod(day, 365)
    month, dom = min(d // 30 + 1, 12), d % 28 + 1
    return {
        "PatientID": f"PID{p:07d}",
        "PatientName": f"{surname}^{prng.choice(GIVEN)}",
        "PatientBirthDate": f"19{prng.randrange(30, 99)}0101",
        "PatientSex": prng.choice("MF"),
        "StudyInstanceUID": f"1.2.826.0.1.3680043.9.1.{s}",
        "StudyDate": f"{2015 + y}{month:02d}{dom:02d}",
        "StudyTime": f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}00",
        "AccessionNumber": f"ACC{s:08d}",
        "StudyID": str(s % 10000),
        "StudyDescription": "SYNTHETIC STUDY",
        "ReferringPhysicianName": "",
        "Modality": rng.choice(MODALITIES),
    }


def build(cat: Catalog, n_instances: int, per_series: int = 10, batch: int = 5000) -> float:
    rng = random.Random(42)
    records: list[InstanceRecord] = []
    t0 = time.perf_counter()
    n_studies = n_instances // per_series
    for s in range(n_studies):
        st = study_attrs(s, rng)
        series_uid = st["StudyInstanceUID"] + ".1"
        for i in range(per_series):
            attrs = dict.fromkeys(ALL_KEYWORDS, "")
            attrs.update(st)
            attrs.update(SeriesInstanceUID=series_uid, SeriesNumber="1",
                         SOPInstanceUID=f"{series_uid}.{i}", InstanceNumber=str(i + 1),
                         SOPClassUID=SOP_CLASS.get(st["Modality"], "1.2.840.10008.5.1.4.1.1.7"))
            records.append(InstanceRecord(attrs, "1.2.840.10008.1.2.1", f"seg/{s}/{i}", 1000,
                                          "0" * 32))
        if len(records) >= batch:
            cat.store_batch(records)
            records = []
    if records:
        cat.store_batch(records)
    return time.perf_counter() - t0


def measure(fn: Callable[[int], int], repeat: int, warm_all: bool = False
            ) -> tuple[float, float, int]:
    """p50, p95 (ms) and rows of ``fn(1..repeat)`` after ``fn(0)`` (all of them untimed first
    with ``warm_all``: keyed cases touch other LMDB pages on each repeat)."""
    times, rows = [], 0
    for i in range(repeat + 1 if warm_all else 1):
        fn(i)
    for i in range(repeat):
        t0 = time.perf_counter()
        rows = fn(i + 1)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], rows


@dataclass(frozen=True)
class Case:
    """One query kind: ``identifier(i)`` is the i-th repeat's identifier (keyed cases pick a
    different study each repeat, the same sequence in every run and on every path)."""

    name: str
    level: str
    identifier: Callable[[int], dict[str, str]]
    limit: int | None = None


def study_uid(s: int) -> str:
    return f"1.2.826.0.1.3680043.9.1.{s}"


def cases(n_studies: int) -> list[Case]:
    """The issue's query kinds, shared by this benchmark and bench.bench_find_dimse."""

    def pick(i: int) -> int:
        return random.Random(7000 + i).randrange(n_studies)

    def study(ident: dict[str, str]) -> Callable[[int], dict[str, str]]:
        return lambda i: {**dict.fromkeys(STUDY_KEYS, ""), **ident}

    def keyed(make: Callable[[int], dict[str, str]]) -> Callable[[int], dict[str, str]]:
        return lambda i: {**dict.fromkeys(STUDY_KEYS, ""), **make(pick(i))}

    return [
        Case("exact PatientID", "STUDY", keyed(lambda s: {"PatientID": f"PID{s // 2:07d}"})),
        Case("PatientName prefix SMI*", "STUDY", study({"PatientName": "SMI*"})),
        Case("infix *MIT*", "STUDY", study({"PatientName": "*MIT*"})),
        Case("StudyDate one month", "STUDY", study({"StudyDate": "20200301-20200331"})),
        Case("ModalitiesInStudy=MR + month", "STUDY",
             study({"ModalitiesInStudy": "MR", "StudyDate": "20200301-20200331"})),
        Case("AccessionNumber", "STUDY", keyed(lambda s: {"AccessionNumber": f"ACC{s:08d}"})),
        Case("STUDY unfiltered limit 100", "STUDY", study({}), limit=100),
        Case("all SERIES of one study", "SERIES", lambda i: {
            "StudyInstanceUID": study_uid(pick(i)), "SeriesInstanceUID": "", "Modality": "",
            "SeriesNumber": "", "NumberOfSeriesRelatedInstances": ""}),
        Case("all IMAGEs of one series", "IMAGE", lambda i: {
            "StudyInstanceUID": study_uid(pick(i)),
            "SeriesInstanceUID": study_uid(pick(i)) + ".1", "SOPInstanceUID": "",
            "InstanceNumber": "", "SOPClassUID": ""}),
    ]


#: 10,000 studies at any size >= 100,000 instances (AccessionNumber ACC00000000..ACC00009999).
LISTING = Case("listing 10,000 studies (ACC0000*)", "STUDY",
               lambda i: {**dict.fromkeys(STUDY_KEYS, ""), "AccessionNumber": "ACC0000*"})


def run_case(engine: QueryEngine, case: Case, i: int) -> int:
    q = parse_identifier(case.level, "STUDY", case.identifier(i), limit=case.limit)
    return sum(1 for _ in engine.run(q))


def api_figures(engine: QueryEngine, n_studies: int, repeat: int
                ) -> dict[str, tuple[float, float, int]]:
    """(p50 ms, p95 ms, rows) per case through the Python API, plus the 10,000-study listing."""
    out = {}
    for case in [*cases(n_studies), LISTING]:
        reps = repeat if case is not LISTING else max(3, repeat // 5)
        keyed = case.identifier(1) != case.identifier(2)
        out[case.name] = measure(lambda i, c=case: run_case(engine, c, i),  # type: ignore[misc]
                                 reps, warm_all=keyed)
    return out


def open_catalog(path: Path) -> Catalog:
    if "durable_commits" in inspect.signature(Catalog).parameters:
        return Catalog(path, durable_commits=False)
    return Catalog(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--instances", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=None, help="index folder (kept; reused if built)")
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    tmp = None
    if args.dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_query_"))
        path = tmp / "index"
    else:
        path = args.dir
    n = args.instances
    n_studies = n // 10
    try:
        cat = open_catalog(path)
        if cat.statistics()["instances"] != n:
            cat.clear()
            secs = build(cat, n)
            print(f"build: {n} instances in {secs:.1f} s = {n / secs:,.0f} instances/s "
                  f"(store_batch of 5000, durable_commits off)")
        stats = cat.statistics()
        print(f"index: {stats}")
        cat.close()

        # cold start: open + first scan query, from the saved columns and from LMDB only
        for label, keep_file in (("full column build", False), ("saved columns", True)):
            if not keep_file:
                (path / FILE_NAME).unlink(missing_ok=True)
            t0 = time.perf_counter()
            cat = open_catalog(path)
            engine = QueryEngine(cat)
            q = parse_identifier("STUDY", "STUDY", {"PatientName": "*MIT*",
                                                    "StudyInstanceUID": ""})
            rows = sum(1 for _ in engine.run(q))
            print(f"cold start ({label}): {(time.perf_counter() - t0) * 1000:.0f} ms "
                  f"(open + first infix query, {rows} rows)")
            cat.close()

        cat = open_catalog(path)
        engine = QueryEngine(cat)
        rng = random.Random(7)
        print(f"\n{'query':34} {'p50 ms':>8} {'p95 ms':>8} {'rows':>7}")
        for name, (p50, p95, rows) in api_figures(engine, n_studies, args.repeat).items():
            print(f"{name:34} {p50:8.2f} {p95:8.2f} {rows:7d}")

        listing = min(10_000, n_studies)
        q = Query("STUDY", return_keys=STUDY_KEYS, limit=listing)
        p50, _, rows = measure(lambda i: sum(1 for _ in engine.run(q)), 10)
        print(f"\nlisting {rows} studies (unfiltered, limit): p50 {p50:.1f} ms "
              f"= {rows / p50 * 1000:,.0f} rows/s")

        # freshness cost: a store, then the same scan query (catch-up of the column cache)
        st = study_attrs(n_studies + 1, rng)
        attrs = dict.fromkeys(ALL_KEYWORDS, "")
        attrs.update(st, SeriesInstanceUID=st["StudyInstanceUID"] + ".1",
                     SOPInstanceUID=st["StudyInstanceUID"] + ".1.1")
        times = []
        for i in range(20):
            attrs["SOPInstanceUID"] = st["StudyInstanceUID"] + f".1.{i}"
            cat.store_batch([InstanceRecord(dict(attrs), "1.2.840.10008.1.2.1", "x", 1, "")])
            t0 = time.perf_counter()
            list(engine.run(parse_identifier("STUDY", "STUDY", {"PatientName": "*MIT*"})))
            times.append((time.perf_counter() - t0) * 1000)
        print(f"infix query right after a store: p50 {statistics.median(times):.2f} ms")
        for i in range(20):  # leave the index as built (a reused --dir is not rebuilt)
            cat.delete_instance(st["StudyInstanceUID"] + f".1.{i}")
        cat.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
