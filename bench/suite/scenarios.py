"""The standard scenarios: each measures one thing against one target and checks its answers.

Every scenario returns a :class:`Result`: operations done, wall seconds, items and bytes moved,
per-operation latencies, and the errors it saw (a wrong match count is an error, not a figure).
DIMSE clients: a lean blocking SCU (``client.py``) for requests whose latency is measured one
by one, dcmtk for bulk transfer (``storescu`` in K processes, ``getscu``), so that the client is
not what is measured.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset

from bench.suite.client import SCU
from bench.suite.dataset import BenchData, Study
from bench.suite.targets import MoveDestination, Target
from pacs.dicom.part10 import read_file_meta

VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
_DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")


@dataclass
class Result:
    scenario: str
    target: str
    operations: int = 0
    seconds: float = 0.0
    items: int = 0  # instances moved or matches returned
    bytes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies_ms")
        data.update(items_per_second=round(self.items_per_second, 1),
                    mb_per_second=round(self.mb_per_second, 2),
                    p50_ms=round(self.percentile(50), 3), p90_ms=round(self.percentile(90), 3),
                    p99_ms=round(self.percentile(99), 3),
                    mean_ms=round(statistics.fmean(self.latencies_ms), 3)
                    if self.latencies_ms else 0.0)
        return data


@dataclass
class Options:
    calling_aet: str = "BENCH"
    associations: int = 4  # parallel storescu processes / HTTP clients
    repeat: int = 20  # requests per query shape / echo count
    stow_per_request: int = 10


def _scu(target: Target, options: Options, abstract_syntaxes: list[str]) -> SCU:
    return SCU(target.host, target.port, target.aet, options.calling_aet, abstract_syntaxes)


def echo(target: Target, options: Options) -> Result:
    result = Result("C-ECHO latency", target.name)
    with _scu(target, options, [VERIFICATION]) as scu:
        started = time.perf_counter()
        for _ in range(options.repeat * 5):
            t0 = time.perf_counter()
            status = scu.echo()
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if status != 0:
                result.errors.append(f"C-ECHO status 0x{status:04X}")
        result.seconds = time.perf_counter() - started
    result.operations = result.items = len(result.latencies_ms)
    return result


def store_latency(target: Target, options: Options, study: Study) -> Result:
    """One association, one C-STORE at a time: per-instance round trips."""
    result = Result("C-STORE latency (1 assoc.)", target.name)
    files = [path.read_bytes() for path in study.files]
    sop_classes = sorted({read_file_meta(data)[0]["MediaStorageSOPClassUID"] for data in files})
    with _scu(target, options, sop_classes) as scu:
        started = time.perf_counter()
        for data, path in zip(files, study.files, strict=True):
            t0 = time.perf_counter()
            status = scu.store_file(data)
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if status != 0 and status & 0xF000 != 0xB000:
                result.errors.append(f"C-STORE {path.name}: status 0x{status:04X}")
            result.bytes += len(data)
        result.seconds = time.perf_counter() - started
    result.operations = result.items = len(files)
    return result


def store_bulk(target: Target, options: Options, files: list[Path]) -> Result:
    """K dcmtk ``storescu`` processes at once, each over its own association."""
    result = Result(f"C-STORE ingest ({options.associations} assoc.)", target.name)
    parts = [files[i::options.associations] for i in range(options.associations)]
    started = time.perf_counter()
    # Files as arguments (Debian's storescu 3.6.7 has no --read-from-file-list).
    procs = [subprocess.Popen(
        ["storescu", "-aet", options.calling_aet, "-aec", target.aet, "--max-pdu", "131072",
         target.host, str(target.port), *map(str, part)],
        env=_DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for part in parts if part]
    for proc in procs:
        _out, err = proc.communicate()
        if proc.returncode != 0:
            result.errors.append(f"storescu exit {proc.returncode}: {err.decode()[-300:]}")
    result.seconds = time.perf_counter() - started
    result.operations = result.items = len(files)
    result.bytes = sum(path.stat().st_size for path in files)
    return result


def _find_shapes(data: BenchData) -> list[tuple[str, Dataset, int]]:
    """(shape, identifier, expected matches) for the data this run stored."""
    studies = data.dimse
    first, last = studies[0], studies[-1]
    series_uid, files = next(iter(first.series.items()))

    def ident(level: str, **keys: str) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate",
                        "ModalitiesInStudy", "NumberOfStudyRelatedInstances"):
            if level == "STUDY":
                setattr(ds, keyword, keys.get(keyword, ""))
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        return ds

    year = first.study_date[:4]
    in_year = sum(1 for s in studies if s.study_date.startswith(year))
    surname = first.patient_name.split("^")[0][:3]
    by_name = sum(1 for s in studies if s.patient_name.startswith(surname))
    return [
        ("study by PatientID", ident("STUDY", PatientID=last.patient_id), 1),
        ("study by StudyInstanceUID", ident("STUDY", StudyInstanceUID=first.study_uid), 1),
        (f"studies in {year} (date range)",
         ident("STUDY", StudyDate=f"{year}0101-{year}1231"), in_year),
        (f"studies by name {surname}*", ident("STUDY", PatientName=f"{surname}*"), by_name),
        ("series of a study", ident("SERIES", StudyInstanceUID=first.study_uid,
                                    SeriesInstanceUID="", Modality=""), len(first.series)),
        ("instances of a series", ident("IMAGE", StudyInstanceUID=first.study_uid,
                                        SeriesInstanceUID=series_uid, SOPInstanceUID=""),
         len(files)),
    ]


def find(target: Target, options: Options, data: BenchData) -> list[Result]:
    results = []
    with _scu(target, options, [STUDY_ROOT_FIND]) as scu:
        for shape, identifier, expected in _find_shapes(data):
            result = Result(f"C-FIND {shape}", target.name)
            started = time.perf_counter()
            for _ in range(options.repeat):
                t0 = time.perf_counter()
                status, matches = scu.find(STUDY_ROOT_FIND, identifier)
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)
                if status != 0:
                    result.errors.append(f"final status 0x{status:04X}")
                result.items += matches
                if matches < expected:
                    result.errors.append(f"{matches} matches, expected {expected}")
            result.seconds = time.perf_counter() - started
            result.operations = options.repeat
            results.append(result)
    return results


def move(target: Target, options: Options, data: BenchData, dest: MoveDestination) -> Result:
    """C-MOVE every stored study, one after another, to the suite's ``storescp``."""
    result = Result("C-MOVE (study by study)", target.name)
    dest.clear()
    expected = sum(len(s.files) for s in data.dimse)
    with _scu(target, options, [STUDY_ROOT_MOVE]) as scu:
        started = time.perf_counter()
        for study in data.dimse:
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = study.study_uid
            t0 = time.perf_counter()
            status, _completed = scu.move(STUDY_ROOT_MOVE, identifier, dest.aet)
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if status != 0:
                result.errors.append(f"C-MOVE {study.study_uid}: status 0x{status:04X}")
        result.seconds = time.perf_counter() - started
    result.operations = len(data.dimse)
    result.items = dest.received()
    result.bytes = sum(path.stat().st_size for path in dest.folder.iterdir())
    if result.items != expected:
        result.errors.append(f"destination received {result.items} of {expected}")
    return result


def get(target: Target, options: Options, data: BenchData, work: Path) -> Result:
    """dcmtk ``getscu`` of every stored study (C-STORE sub-operations on the same association)."""
    result = Result("C-GET (study by study)", target.name)
    out = work / f"get-{target.name}"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for study in data.dimse:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["getscu", "-aet", options.calling_aet, "-aec", target.aet, "--max-pdu", "131072",
             "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}",
             "-od", str(out), target.host, str(target.port)],
            env=_DCMTK_ENV, capture_output=True, text=True)
        result.latencies_ms.append((time.perf_counter() - t0) * 1000)
        if proc.returncode != 0:
            result.errors.append(f"getscu {study.study_uid}: {proc.stderr[-300:]}")
    result.seconds = time.perf_counter() - started
    received = list(out.iterdir())
    result.operations = len(data.dimse)
    result.items = len(received)
    result.bytes = sum(path.stat().st_size for path in received)
    expected = sum(len(s.files) for s in data.dimse)
    if result.items != expected:
        result.errors.append(f"received {result.items} of {expected}")
    return result


def _multipart(files: list[Path], boundary: str) -> bytes:
    parts = []
    for path in files:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                     + path.read_bytes() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def stow(target: Target, options: Options, data: BenchData) -> Result:
    result = Result(f"STOW-RS ({options.associations} clients, "
                    f"{options.stow_per_request}/request)", target.name)
    files = data.stow_files
    batches = [files[i:i + options.stow_per_request]
               for i in range(0, len(files), options.stow_per_request)]
    boundary = "benchboundary0123456789"
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                               f'boundary={boundary}', "Accept": "application/dicom+json"}
    bodies = [_multipart(batch, boundary) for batch in batches]
    lock = threading.Lock()

    def send(body: bytes, client: httpx.Client) -> None:
        t0 = time.perf_counter()
        response = client.post(f"{target.web}/studies", content=body, headers=headers)
        elapsed = (time.perf_counter() - t0) * 1000
        with lock:
            result.latencies_ms.append(elapsed)
            if response.status_code != 200:
                result.errors.append(f"STOW-RS {response.status_code}")

    with httpx.Client(timeout=300) as client, \
            ThreadPoolExecutor(options.associations) as pool:
        started = time.perf_counter()
        list(pool.map(lambda body: send(body, client), bodies))
        result.seconds = time.perf_counter() - started
    result.operations = len(bodies)
    result.items = len(files)
    result.bytes = sum(len(body) for body in bodies)
    return result


def qido(target: Target, options: Options, data: BenchData) -> list[Result]:
    first = data.dimse[0]
    series_uid, files = next(iter(first.series.items()))
    shapes: list[tuple[str, str, dict[str, str], int]] = [
        ("studies by PatientID", "/studies", {"PatientID": data.dimse[-1].patient_id}, 1),
        ("series of a study", f"/studies/{first.study_uid}/series", {}, len(first.series)),
        ("instances of a series", f"/studies/{first.study_uid}/series/{series_uid}/instances",
         {}, len(files)),
    ]
    results = []
    with httpx.Client(timeout=60) as client:
        for shape, path, params, expected in shapes:
            result = Result(f"QIDO-RS {shape}", target.name)
            started = time.perf_counter()
            for _ in range(options.repeat):
                t0 = time.perf_counter()
                response = client.get(f"{target.web}{path}", params=params,
                                      headers={"Accept": "application/dicom+json"})
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)
                matches = len(response.json()) if response.status_code == 200 else 0
                result.items += matches
                result.bytes += len(response.content)
                if matches != expected:
                    result.errors.append(f"{response.status_code}: {matches} of {expected}")
            result.seconds = time.perf_counter() - started
            result.operations = options.repeat
            results.append(result)
    return results


def wado(target: Target, options: Options, data: BenchData) -> Result:
    """WADO-RS of every stored study as multipart/related application/dicom."""
    result = Result("WADO-RS (study by study)", target.name)
    with httpx.Client(timeout=300) as client:
        started = time.perf_counter()
        for study in data.dimse:
            t0 = time.perf_counter()
            response = client.get(
                f"{target.web}/studies/{study.study_uid}",
                headers={"Accept": 'multipart/related; type="application/dicom"'})
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            body = response.content
            boundary = response.headers.get("content-type", "").split("boundary=")[-1]
            parts = body.count(b"--" + boundary.strip('"').encode()) - 1 if boundary else 0
            result.bytes += len(body)
            result.items += max(parts, 0)
            if response.status_code != 200 or parts != len(study.files):
                result.errors.append(f"{response.status_code}: {parts} of {len(study.files)}")
        result.seconds = time.perf_counter() - started
    result.operations = len(data.dimse)
    return result


SCENARIOS = ("echo", "store", "find", "move", "get", "stow", "qido", "wado")


def run_all(target: Target, options: Options, data: BenchData, work: Path,
            dest: MoveDestination | None, selected: tuple[str, ...],
            progress: Callable[[str], None]) -> list[Result]:
    """Every selected scenario against one target, in an order where each finds its data."""
    results: list[Result] = []

    def attempt(name: str, fn: Callable[[], Result | list[Result]]) -> None:
        if name not in selected:
            return
        progress(f"{target.name}: {name}")
        try:
            outcome = fn()
        except Exception as exc:  # a failed scenario is reported, the run goes on
            outcome = Result(name, target.name, errors=[f"{type(exc).__name__}: {exc}"])
        results.extend(outcome if isinstance(outcome, list) else [outcome])

    def skipped(name: str, why: str) -> None:
        if name in selected:
            results.append(Result(name, target.name, skipped=why))

    attempt("echo", lambda: echo(target, options))
    if "store" in selected:
        attempt("store", lambda: store_latency(target, options, data.dimse[0]))
        attempt("store", lambda: store_bulk(
            target, options, [p for s in data.dimse[1:] for p in s.files]))
    attempt("find", lambda: find(target, options, data))
    if dest is None:
        skipped("move", "no --move-dest")
    else:
        attempt("move", lambda: move(target, options, data, dest))
    attempt("get", lambda: get(target, options, data, work))
    if not target.web:
        for name in ("stow", "qido", "wado"):
            skipped(name, "no DICOMweb URL")
    else:
        attempt("stow", lambda: stow(target, options, data))
        attempt("qido", lambda: qido(target, options, data))
        attempt("wado", lambda: wado(target, options, data))
    return results
