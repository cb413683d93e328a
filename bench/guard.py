"""Hot-path guard: ratios against in-run baselines must stay above their floors.

``python -m bench.guard`` (``make bench-guard``, run by ``.ci/run`` after the tests) measures
each registered check in this one process: the hot path and its baseline run in alternation,
``REPEATS`` times, each for about ``SLICE`` seconds, and the ratio is the median of the
per-repeat ratios (baseline time / hot-path time). A ratio measured this way is stable on a
noisy machine where absolute times are not. Exit status 1 when a ratio is below its floor or
a check cannot run (e.g. the compiled scanner is not built: CI always builds it).

Floors sit well under the goals (the scanner's goal: >= 50x pydicom, >= 10x the pure twin).
Later hot paths add their checks with :func:`register`; ``RatioCheck`` measures a ratio whole
(the ingest check runs two servers under the same load, three times, and takes the median).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

REPEATS = 7
SLICE = 0.02  # seconds per measurement


@dataclass(frozen=True)
class Check:
    """``subject`` must be at least ``floor`` times faster than ``baseline``."""

    name: str
    subject: Callable[[], object]
    baseline_name: str
    baseline: Callable[[], object]
    floor: float


@dataclass(frozen=True)
class RatioCheck:
    """A ratio measured whole by ``measure`` (e.g. two servers under the same load)."""

    name: str
    baseline_name: str
    measure: Callable[[], float]
    floor: float


class Unavailable(Exception):
    """A check that cannot run here (the guard then fails)."""


CheckFactory = Callable[[], list[Check | RatioCheck]]
REGISTRY: list[CheckFactory] = []


def register(factory: CheckFactory) -> CheckFactory:
    """Add a factory of checks (called when the guard runs; may raise :class:`Unavailable`)."""
    REGISTRY.append(factory)
    return factory


def _per_call(fn: Callable[[], object], loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - start) / loops


def _loops(fn: Callable[[], object]) -> int:
    """Calls that take about SLICE seconds (after a warm-up call)."""
    fn()
    once = _per_call(fn, 3)
    return max(1, int(SLICE / max(once, 1e-9)))


def measure(check: Check) -> float:
    """Median over REPEATS of (baseline time / subject time), measured in alternation."""
    subject_loops, baseline_loops = _loops(check.subject), _loops(check.baseline)
    ratios = []
    for _ in range(REPEATS):
        baseline = _per_call(check.baseline, baseline_loops)
        subject = _per_call(check.subject, subject_loops)
        ratios.append(baseline / subject)
    return statistics.median(ratios)


# -- the tag scanner ------------------------------------------------------------------------


@register
def scanner_checks() -> list[Check]:
    """Index record of the benchmark's CT header (about 3 KB before 512 KB of pixels)."""
    from bench import bench_scan

    if bench_scan._cscan is None:
        raise Unavailable(
            "compiled scanner not built (run: .venv/bin/python setup.py build_ext --inplace)"
        )
    instance = bench_scan.ct_instance(bench_scan.SYNTAXES["explicit"])
    dataset, syntax = bench_scan.dataset_of(instance)
    expected = bench_scan.pydicom_index(instance)
    if not bench_scan.compiled_index(dataset, syntax) == expected == bench_scan.pure_index(
        dataset, syntax
    ):
        raise Unavailable("the readers disagree on the CT header")
    from pacs.dicom import scan as scan_mod

    if scan_mod.IMPLEMENTATION != "cython":
        raise Unavailable(f"the public API runs the {scan_mod.IMPLEMENTATION} twin")
    read, whole = scan_mod.read_index_attributes, 0x100000000

    def compiled() -> object:
        return read(dataset, syntax)

    def compiled_whole() -> object:
        return read(dataset, syntax, stop_tag=whole)

    return [
        Check("scan+index CT (compiled)", compiled, "pydicom dcmread+attributes",
              lambda: bench_scan.pydicom_index(instance), 20.0),
        Check("scan+index CT (compiled)", compiled, "pure twin",
              lambda: bench_scan.pure_index(dataset, syntax), 5.0),
        Check("whole-dataset CT, ingest (compiled)", compiled_whole, "pure twin",
              lambda: bench_scan.pure_index(dataset, syntax, whole), 5.0),
    ]


# -- ingest over the wire ---------------------------------------------------------------------


@register
def ingest_checks() -> list[Check | RatioCheck]:
    """Durable ingest as a fraction of dcmtk's ``storescp --ignore`` (which writes nothing)
    under the same 4 storescu associations: small instances (the issue's goal is 0.7) and
    512x512 CT ones (the large-record path: laid out on the loop, written by its sync thread)."""
    import shutil
    import tempfile
    from pathlib import Path

    from bench import ingest

    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        raise Unavailable("dcmtk is not installed (make system-deps)")

    def ratio(count: int, size: int) -> Callable[[], float]:
        def measure() -> float:
            with tempfile.TemporaryDirectory(prefix="pacs-guard-") as tmp:
                work = Path(tmp)
                dirs = ingest.generate(work / "files", count, size, 4, ingest.STUDY_SIZE)
                ratios = []
                for _ in range(3):
                    ceiling = ingest.run_receiver("storescp", work, dirs)
                    ours = ingest.run_receiver("pacs", work, dirs)
                    ratios.append(ceiling / ours)
                return statistics.median(ratios)

        return measure

    # Median of 3: 0.37-0.46 before the loop's group commit (session 3), 0.57 after it.
    # Large: 0.35-0.40 with the I/O-thread writes, ~0.46 once laid out on the loop (session 8).
    return [RatioCheck("durable ingest, 800 x 9 KiB, 4 assoc.", "storescp --ignore (ceiling)",
                       ratio(800, 64), 0.25),
            RatioCheck("durable ingest, 300 x 513 KiB, 4 assoc.", "storescp --ignore (ceiling)",
                       ratio(300, 512), 0.2)]


# -- C-FIND query engine ----------------------------------------------------------------------


@register
def query_checks() -> list[Check]:
    """The query engine (``QueryEngine.run``, rows of the 13 usual STUDY keys) against a brute
    force that walks every study record, decodes it and its patient, and matches in Python, on
    a 20,000-instance synthetic index (2,000 studies, bench.bench_query's generator) in a temp
    folder: an exact PatientID and a PatientName prefix (both secondary-index plans)."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from bench.bench_query import STUDY_KEYS, build, open_catalog
    from pacs.index.catalog import PATIENT_KEY
    from pacs.index.codec import decode_dict, key
    from pacs.index.query import QueryEngine, parse_identifier

    tmp = Path(tempfile.mkdtemp(prefix="pacs-guard-query-"))
    atexit.register(shutil.rmtree, tmp, True)
    catalog = open_catalog(tmp / "index")
    atexit.register(catalog.close)  # runs before the rmtree (last registered, first run)
    build(catalog, 20_000)
    engine = QueryEngine(catalog)
    studies_db, patients_db = catalog.database("studies"), catalog.database("patients")

    def brute(match: Callable[[dict[str, object]], bool]) -> set[str]:
        found = set()
        patients: dict[str, dict[str, object]] = {}
        with catalog.reader() as txn:
            for _, raw in txn.cursor(db=studies_db):
                study = decode_dict(raw)
                pk = str(study[PATIENT_KEY])
                patient = patients.get(pk)
                if patient is None:
                    patient = patients[pk] = decode_dict(txn.get(key(pk), db=patients_db))
                if match(patient):
                    found.add(str(study["StudyInstanceUID"]))
        return found

    def engine_uids(ident: dict[str, str]) -> set[str]:
        q = parse_identifier("STUDY", "STUDY", {**dict.fromkeys(STUDY_KEYS, ""), **ident})
        return {row["StudyInstanceUID"] for row in engine.run(q)}

    pid = "PID0000500"
    cases = [
        ("exact PatientID", {"PatientID": pid}, lambda p: p.get("PatientID") == pid),
        ("PatientName prefix SMI*", {"PatientName": "SMI*"},
         lambda p: str(p.get("PatientName", "")).upper().startswith("SMI")),
    ]
    checks = []
    for name, ident, match in cases:
        expected = brute(match)
        if not expected or engine_uids(ident) != expected:
            raise Unavailable(f"{name}: the engine and the brute-force scan disagree")
        checks.append(Check(
            f"C-FIND {name} (engine)",
            lambda ident=ident: engine_uids(ident),
            "brute-force scan, 2k studies",
            lambda match=match: brute(match),
            FLOORS[name],
        ))
    return checks


#: About a third of the ratios measured on the 2-core dev machine (143-176x and 39-48x).
FLOORS = {"exact PatientID": 45.0, "PatientName prefix SMI*": 12.0}


@register
def identifier_checks() -> list[Check]:
    """C-FIND identifiers of a long listing encoded column-wise from Arrow
    (``encode_identifier_table``) against the row path it replaced (a dict per row, then
    ``encode_identifiers``), on 2,048 rows of the 13 usual STUDY keys, non-ASCII names
    included; the bytes must be equal before anything is timed."""
    import random

    import pyarrow as pa

    from bench.bench_query import STUDY_KEYS
    from pacs.dicom import uids
    from pacs.dicom.identifier import encode_identifiers
    from pacs.dicom.identifier_table import encode_identifier_table, rows_of_table

    rng = random.Random(7)
    n = 2048
    names = ["SMITH^JOHN", "MÜLLER^JÖRG", "DOE^J", "O'NEIL^ANN"]
    values = {k: [f"{k[:3]}{rng.randrange(10**rng.randrange(1, 9))}" for _ in range(n)]
              for k in STUDY_KEYS}
    values["PatientName"] = [rng.choice(names) for _ in range(n)]
    values["ModalitiesInStudy"] = [rng.choice(["CT", "CT\\MR", "US"]) for _ in range(n)]
    table = pa.table(values)
    syntax = uids.EXPLICIT_VR_LITTLE_ENDIAN

    def columns() -> list[bytes]:
        return encode_identifier_table(table, STUDY_KEYS, "STUDY", syntax)

    def rows() -> list[bytes]:
        return encode_identifiers(rows_of_table(table, STUDY_KEYS, "STUDY"), syntax)

    if columns() != rows():
        raise Unavailable("the column-wise identifiers differ from the row encoder's")
    # Measured 4.6-4.8x on the 2-core dev machine; the floor is well under it.
    return [Check("C-FIND identifiers, 2,048 rows (column-wise)", columns,
                  "a dict per row + row encoder", rows, 1.8)]


# -- runner ---------------------------------------------------------------------------------


def run(factories: list[CheckFactory]) -> Iterator[tuple[str, bool]]:
    """(report line, passed) per check, in registration order."""
    for factory in factories:
        try:
            checks = factory()
        except Unavailable as exc:
            yield f"  FAIL {factory.__name__}: cannot run: {exc}", False
            continue
        for check in checks:
            ratio = check.measure() if isinstance(check, RatioCheck) else measure(check)
            ok = ratio >= check.floor
            label = f"{check.name} vs {check.baseline_name}"
            yield (
                f"  {'ok  ' if ok else 'FAIL'} {label:64s} {ratio:8.{1 if ratio >= 10 else 2}f}x"
                f"  (floor {check.floor:g}x)",
                ok,
            )


def main() -> int:
    start = time.perf_counter()
    print(f"hot-path guard: median of {REPEATS} in-process ratios (baseline / hot path)")
    passed = True
    for line, ok in run(REGISTRY):
        print(line, flush=True)
        passed &= ok
    verdict = "passed" if passed else "FAILED (a ratio below its floor or a check that cannot run)"
    print(f"guard {verdict} ({time.perf_counter() - start:.1f} s)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
