"""C-FIND query benchmark through the Python API (pacs.index.query).

    python -m bench.bench_query --instances 100000
    python -m bench.bench_query --instances 1000000 --dir /tmp/bq1m   # keeps the index

Builds a synthetic index (10 instances per series, one series per study, two studies per
patient) through ``Catalog.store_batch``, then reports p50/p95 latencies of typical queries,
rows/s of a 10,000-study listing, the build rate and the cold start (open + first scan query,
with the saved column file, and with a full column build from LMDB).
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


def measure(fn: Callable[[int], int], repeat: int) -> tuple[float, float, int]:
    times, rows = [], 0
    fn(0)  # warm
    for i in range(repeat):
        t0 = time.perf_counter()
        rows = fn(i + 1)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], rows


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

        def study(ident: dict[str, str], limit: int | None = None) -> Callable[[int], int]:
            def fn(i: int) -> int:
                q = parse_identifier("STUDY", "STUDY",
                                     {**dict.fromkeys(STUDY_KEYS, ""), **ident}, limit=limit)
                return sum(1 for _ in engine.run(q))
            return fn

        def keyed(make: Callable[[int], dict[str, str]], level: str = "STUDY"
                  ) -> Callable[[int], int]:
            def fn(i: int) -> int:
                ident = make(rng.randrange(n_studies))
                if level == "STUDY":
                    ident = {**dict.fromkeys(STUDY_KEYS, ""), **ident}
                q = parse_identifier(level, "STUDY", ident)
                return sum(1 for _ in engine.run(q))
            return fn

        cases: list[tuple[str, Callable[[int], int]]] = [
            ("exact PatientID", keyed(lambda s: {"PatientID": f"PID{s // 2:07d}"})),
            ("PatientName prefix SMI*", study({"PatientName": "SMI*"})),
            ("infix *MIT*", study({"PatientName": "*MIT*"})),
            ("StudyDate one month", study({"StudyDate": "20200301-20200331"})),
            ("ModalitiesInStudy=MR + month", study({"ModalitiesInStudy": "MR",
                                                    "StudyDate": "20200301-20200331"})),
            ("AccessionNumber", keyed(lambda s: {"AccessionNumber": f"ACC{s:08d}"})),
            ("STUDY unfiltered limit 100", study({}, limit=100)),
            ("all SERIES of one study", keyed(lambda s: {
                "StudyInstanceUID": f"1.2.826.0.1.3680043.9.1.{s}", "SeriesInstanceUID": "",
                "Modality": "", "SeriesNumber": "", "NumberOfSeriesRelatedInstances": ""},
                "SERIES")),
            ("all IMAGEs of one series", keyed(lambda s: {
                "StudyInstanceUID": f"1.2.826.0.1.3680043.9.1.{s}",
                "SeriesInstanceUID": f"1.2.826.0.1.3680043.9.1.{s}.1", "SOPInstanceUID": "",
                "InstanceNumber": "", "SOPClassUID": ""}, "IMAGE")),
        ]
        print(f"\n{'query':34} {'p50 ms':>8} {'p95 ms':>8} {'rows':>7}")
        for name, fn in cases:
            p50, p95, rows = measure(fn, args.repeat)
            print(f"{name:34} {p50:8.2f} {p95:8.2f} {rows:7d}")

        listing = min(10_000, n_studies)
        q = Query("STUDY", return_keys=STUDY_KEYS, limit=listing)
        p50, _, rows = measure(lambda i: sum(1 for _ in engine.run(q)), 10)
        print(f"\nlisting {rows} studies: p50 {p50:.1f} ms = {rows / p50 * 1000:,.0f} rows/s")

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
        cat.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
