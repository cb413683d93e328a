"""DICOMweb benchmark of ``pacs serve`` (issue 7), next to DIMSE figures of the same run and,
when Debian's Orthanc with its DICOMweb plugin is installed, the same figures from Orthanc.

    python -m bench.bench_web                      # 100,000 studies, Orthanc rows if present
    python -m bench.bench_web --studies 10000 --no-orthanc

Orthanc rows need Debian's ``orthanc`` and ``orthanc-dicomweb`` (the plugin at
bench.suite.targets.ORTHANC_DICOMWEB); without them they are skipped with a note.

Per server, one run:

1. the index: ``--studies`` synthetic studies (one instance each, two studies per patient,
   bench.bench_query's generator) built through ``Catalog.store_batch`` into ``DATA/index``
   before ``pacs serve`` starts (their blobs are fake: only queries touch them). Orthanc has
   no bulk index builder: it gets ``--orthanc-studies`` real one-instance studies over STOW-RS
   (same patients' scheme), so its QIDO-RS row is at 10,000 studies, as the issue's figure;
2. STOW-RS: ``-n`` small CT instances (64 x 64 x 16 bit, ~9 KiB, 50 studies) posted by ``-k``
   concurrent clients (one process each, one keep-alive ``http.client`` connection; ``--httpx``
   for httpx, whose ~0.8 ms of CPU a request is taken from the server on 2 cores), ``--per-request``
   instances per multipart body; instances/s and MB/s (each 200 comes after the store is
   durable);
3. a real ``--study-size``-instance study (``--pixels`` square, 16 bit) stored over STOW-RS
   (``-k`` clients, 10 instances per request), the one fetched by 5-8;
4. QIDO-RS exact PatientID, study level, one sequential client: p50/p95 over ``-q`` queries,
   each a different synthetic patient (every query run once untimed first);
5. ``GET /dicom-web/studies/{uid}/metadata`` of the big study: first call, then p50/p95;
6. WADO-RS study retrieval (``multipart/related; type="application/dicom"``, stored syntax):
   MB/s of the median of ``--repeat // 5`` downloads (body fully read);
7. rendered frame (``.../instances/{i}/frames/1/rendered``, image/jpeg): p50/p95, random
   instances of the big study;
8. DIMSE, same server: C-STORE of ``-n`` other small instances over ``-k`` associations
   (bench/suite/client.py's SCU, one process each), C-FIND exact PatientID (study root, the
   same SCU, one association, the same patients as 4) and ``getscu --ignore`` C-GET of the big
   study (MB/s, including getscu's start).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage as CT_IMAGE_STORAGE

from bench.bench_query import STUDY_KEYS, build, open_catalog
from bench.suite import targets
from bench.suite.client import SCU
from pacs.server.find import STUDY_ROOT_FIND
from tests.conftest import free_port
from tests.dicomgen import make_ct, write

BOUNDARY = "benchboundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
GOALS = {"stow": 1152.0, "qido": 2.0, "metadata": 20.0}  # 3 x Orthanc 384/s; ms; ms
CALLING = "BENCH"


def generate(folder: Path, count: int) -> list[bytes]:
    studies = [make_ct().StudyInstanceUID for _ in range(50)]  # one study per patient
    out = []
    for i in range(count):
        ds = make_ct(study_uid=studies[i % 50], instance_number=i + 1,
                     patient_id=f"P{i % 50:03d}")
        out.append(write(ds, folder / f"{i:06d}.dcm").read_bytes())
    return out


def generate_studies(folder: Path, count: int) -> list[bytes]:
    """``count`` one-instance studies (8 x 8 pixels), two per patient as bench.bench_query's
    generator (PatientID ``PID0000000`` ...): Orthanc's index for the QIDO-RS rows."""
    folder.mkdir(exist_ok=True)
    return [write(make_ct(patient_id=f"PID{s // 2:07d}", rows=8, columns=8),
                  folder / f"s{s:06d}.dcm").read_bytes() for s in range(count)]


def generate_study(folder: Path, count: int, pixels: int) -> tuple[str, list[bytes]]:
    """One study, one series, ``count`` instances of ``pixels`` x ``pixels``."""
    first = make_ct(patient_id="BIGSTUDY", rows=pixels, columns=pixels)
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    out = []
    for i in range(count):
        ds = make_ct(patient_id="BIGSTUDY", study_uid=study, series_uid=series,
                     instance_number=i + 1, rows=pixels, columns=pixels)
        out.append(write(ds, folder / f"big{i:06d}.dcm").read_bytes())
    return study, out


def body(parts: list[bytes]) -> bytes:
    head = f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"".join(head + p for p in parts) + f"\r\n--{BOUNDARY}--\r\n".encode()


def _client(url: str, bodies: list[bytes], start: float) -> None:
    """One keep-alive connection posting ``bodies`` in turn. The standard library's client, not
    httpx: httpx costs ~0.8 ms of CPU per request, which on a 2-core machine is taken from the
    server being measured (http.client: ~0.15 ms)."""
    parsed = urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=120)
    try:
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.time() < start:
            time.sleep(0.001)
        for data in bodies:
            conn.request("POST", parsed.path, body=data, headers={"Content-Type": CONTENT_TYPE})
            r = conn.getresponse()
            answer = r.read()
            if r.status != 200:
                raise SystemExit(f"STOW-RS answered {r.status}: {answer[:200]!r}")
    finally:
        conn.close()


def _httpx_client(url: str, bodies: list[bytes], start: float) -> None:
    """As :func:`_client` through httpx (``--httpx``: the client of the earlier figures)."""
    with httpx.Client(timeout=120) as client:
        while time.time() < start:
            time.sleep(0.001)
        for data in bodies:
            r = client.post(url, content=data, headers={"Content-Type": CONTENT_TYPE})
            if r.status_code != 200:
                raise SystemExit(f"STOW-RS answered {r.status_code}: {r.text[:200]}")


USE_HTTPX = False


def stow(web: str, instances: list[bytes], clients: int, per_request: int) -> float:
    bodies = [body(instances[i:i + per_request])
              for i in range(0, len(instances), per_request)]
    shares = [bodies[i::clients] for i in range(clients)]
    start = time.time() + 0.5
    context = multiprocessing.get_context("fork")
    target = _httpx_client if USE_HTTPX else _client
    procs = [context.Process(target=target, args=(f"{web}/studies", share, start))
             for share in shares]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit("a STOW-RS client failed")
    return time.time() - start


def _store_client(target: targets.Target, files: list[bytes], start: float) -> None:
    with SCU(target.host, target.port, target.aet, CALLING, [CT_IMAGE_STORAGE]) as scu:
        while time.time() < start:
            time.sleep(0.001)
        for data in files:
            status = scu.store_file(data)
            if status != 0:
                raise SystemExit(f"C-STORE answered {status:04X}")


def c_store(target: targets.Target, instances: list[bytes], clients: int) -> float:
    """Seconds to C-STORE ``instances`` over ``clients`` associations (one process each)."""
    start = time.time() + 0.5
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_store_client, args=(target, instances[i::clients], start))
             for i in range(clients)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit("a C-STORE client failed")
    return time.time() - start


def pct(values: list[float], q: float) -> float:
    """The q-quantile of seconds, in ms."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def timed(fn: Callable[[int], object], repeat: int, warm: bool = True) -> list[float]:
    """Seconds of ``fn(i)`` for i in range(repeat), each run once untimed first if ``warm``."""
    if warm:
        for i in range(repeat):
            fn(i)
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return times


def check(r: httpx.Response, what: str) -> httpx.Response:
    if r.status_code != 200:
        raise SystemExit(f"{what} answered {r.status_code}: {r.text[:300]}")
    return r


@dataclass
class Result:
    name: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # figure, value, note

    def add(self, figure: str, value: str, note: str = "") -> None:
        self.rows.append((figure, value, note))
        print(f"  {self.name:8} {figure:42} {value:>22}  {note}", flush=True)


def measure(res: Result, target: targets.Target, patients: list[str], n_studies: int,
            args: argparse.Namespace, small: list[bytes], big: list[bytes], big_uid: str,
            dimse_small: list[bytes]) -> dict[str, float]:
    """Every figure against one running server; returns the ones with goals."""
    web, out = target.web, {}
    size = sum(map(len, small))
    secs = stow(web, small, args.k, args.per_request)
    out["stow"] = len(small) / secs
    res.add(f"STOW-RS {args.k} clients, {args.per_request}/request",
            f"{out['stow']:.0f} inst/s", f"{len(small)} x {size / len(small) / 1024:.1f} KiB, "
            f"{size / secs / 1e6:.1f} MB/s")
    big_size = sum(map(len, big))
    secs = stow(web, big, args.k, 10)
    res.add(f"STOW-RS {args.k} clients, 10/request", f"{len(big) / secs:.0f} inst/s",
            f"{len(big)} x {big_size / len(big) / 1024:.0f} KiB, {big_size / secs / 1e6:.1f} MB/s")

    with httpx.Client(timeout=120) as client:
        def qido(i: int) -> None:
            r = check(client.get(f"{web}/studies", params={"PatientID": patients[i]}), "QIDO-RS")
            if not r.json():
                raise SystemExit(f"QIDO-RS: no study for {patients[i]}")

        times = timed(qido, args.q)
        out["qido"] = pct(times, 0.95)
        res.add("QIDO-RS exact PatientID p50 / p95",
                f"{pct(times, 0.5):.2f} / {pct(times, 0.95):.2f} ms",
                f"{n_studies:,} studies, {args.q} queries")

        meta_url = f"{web}/studies/{big_uid}/metadata"
        t0 = time.perf_counter()
        first = check(client.get(meta_url, headers={"Accept": "application/dicom+json"}),
                      "metadata")
        first_ms = (time.perf_counter() - t0) * 1000
        if len(first.json()) != len(big):
            raise SystemExit(f"metadata: {len(first.json())} instances, not {len(big)}")
        times = timed(lambda i: check(client.get(meta_url), "metadata"), args.repeat, warm=False)
        out["metadata"] = pct(times, 0.95)
        res.add(f"study metadata ({len(big)} inst) p50 / p95",
                f"{pct(times, 0.5):.1f} / {pct(times, 0.95):.1f} ms",
                f"first call {first_ms:.0f} ms, {len(first.content) / 1e6:.2f} MB JSON")

        def retrieve(_i: int) -> int:
            received = 0
            with client.stream("GET", f"{web}/studies/{big_uid}", headers={
                    "Accept": 'multipart/related; type="application/dicom"; '
                              'transfer-syntax=*'}) as r:
                if r.status_code != 200:
                    raise SystemExit(f"WADO-RS answered {r.status_code}")
                for chunk in r.iter_raw(1 << 20):
                    received += len(chunk)
            return received

        received = retrieve(0)
        times = timed(retrieve, max(3, args.repeat // 5), warm=False)
        res.add("WADO-RS study retrieval", f"{received / statistics.median(times) / 1e6:.0f} MB/s",
                f"{received / 1e6:.1f} MB in {statistics.median(times) * 1000:.0f} ms (median)")

        rng = random.Random(3)
        series = check(client.get(f"{web}/studies/{big_uid}/series"), "QIDO series").json()
        series_uid = series[0]["0020000E"]["Value"][0]
        sops = [i["00080018"]["Value"][0] for i in check(client.get(
            f"{web}/studies/{big_uid}/series/{series_uid}/instances"), "QIDO instances").json()]
        picks = [rng.choice(sops) for _ in range(args.repeat)]

        def rendered(i: int) -> None:
            r = check(client.get(f"{web}/studies/{big_uid}/series/{series_uid}/instances/"
                                 f"{picks[i]}/frames/1/rendered",
                                 headers={"Accept": "image/jpeg"}), "rendered")
            if not r.content.startswith(b"\xff\xd8"):
                raise SystemExit("rendered: not a JPEG")

        times = timed(rendered, args.repeat)
        res.add("rendered frame (JPEG) p50 / p95",
                f"{pct(times, 0.5):.1f} / {pct(times, 0.95):.1f} ms",
                f"{args.pixels}x{args.pixels} 16-bit CT")

    secs = c_store(target, dimse_small, args.k)
    res.add(f"C-STORE {args.k} associations", f"{len(dimse_small) / secs:.0f} inst/s",
            f"{len(dimse_small)} x {size / len(small) / 1024:.1f} KiB (other UIDs than STOW-RS)")
    with SCU(target.host, target.port, target.aet, CALLING, [STUDY_ROOT_FIND]) as scu:
        def find(i: int) -> None:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            for key in STUDY_KEYS:
                setattr(ds, key, "")
            ds.PatientID = patients[i]
            status, matches = scu.find(STUDY_ROOT_FIND, ds)
            if status != 0 or not matches:
                raise SystemExit(f"C-FIND {patients[i]}: status {status:04X}, {matches} matches")

        times = timed(find, args.q)
        res.add("C-FIND exact PatientID p50 / p95",
                f"{pct(times, 0.5):.2f} / {pct(times, 0.95):.2f} ms", "same patients as QIDO-RS")

    with tempfile.TemporaryDirectory(prefix="bench-web-get-") as sink:
        t0 = time.perf_counter()
        subprocess.run(["getscu", "--ignore", "-aet", CALLING, "-aec", target.aet, "-S",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={big_uid}",
                        target.host, str(target.port)], check=True, capture_output=True,
                       cwd=sink, env=dict(os.environ, TCP_NODELAY="1"))
        secs = time.perf_counter() - t0
    res.add("C-GET study (getscu --ignore)", f"{big_size / secs / 1e6:.0f} MB/s",
            f"{big_size / 1e6:.1f} MB in {secs * 1000:.0f} ms (incl. process start)")
    return out


def start_pacs(stack: ExitStack, data: Path) -> targets.Target:
    port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacs", "serve", "--data-dir", str(data), "--host", "127.0.0.1",
         "--port", str(port), "--http-host", "127.0.0.1", "--http-port", str(http_port),
         "--aet", "PACS", "--log-level", "WARNING"])
    stack.callback(targets._stop, proc)
    targets.wait_port(port, proc, "pacs serve", timeout=120)
    targets.wait_port(http_port, proc, "pacs serve", timeout=120)
    return targets.Target("pacs", "PACS", "127.0.0.1", port,
                          f"http://127.0.0.1:{http_port}/dicom-web")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="small instances to STOW")
    parser.add_argument("-k", type=int, default=4, help="concurrent STOW-RS clients")
    parser.add_argument("--per-request", type=int, default=1, help="instances per request")
    parser.add_argument("-q", type=int, default=300, help="QIDO-RS / C-FIND queries")
    parser.add_argument("--studies", type=int, default=100_000, help="synthetic studies")
    parser.add_argument("--study-size", type=int, default=500, help="instances of the big study")
    parser.add_argument("--pixels", type=int, default=256, help="rows = columns of the big study")
    parser.add_argument("--repeat", type=int, default=50, help="metadata / rendered repeats")
    parser.add_argument("--orthanc-studies", type=int, default=10_000,
                        help="one-instance studies stored into Orthanc before its rows")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc rows")
    parser.add_argument("--httpx", action="store_true",
                        help="STOW-RS clients on httpx (~0.8 ms of client CPU per request)")
    args = parser.parse_args(argv)
    global USE_HTTPX
    USE_HTTPX = args.httpx
    tmp = Path(tempfile.mkdtemp(prefix="bench-web-"))
    results: list[tuple[Result, dict[str, float]]] = []
    try:
        (tmp / "files").mkdir()
        small = generate(tmp / "files", args.n)
        (tmp / "dimse").mkdir()
        dimse_small = generate(tmp / "dimse", args.n)
        big_uid, big = generate_study(tmp / "files", args.study_size, args.pixels)
        data = tmp / "data"
        cat = open_catalog(data / "index")
        secs = build(cat, args.studies, per_series=1)
        cat.close()
        print(f"index: {args.studies:,} synthetic studies built in {secs:.1f} s", flush=True)
        n_patients = args.studies // 2
        rng = random.Random(11)
        patients = [f"PID{rng.randrange(n_patients):07d}" for _ in range(args.q)]
        with ExitStack() as stack:
            target = start_pacs(stack, data)
            res = Result("pacs")
            results.append((res, measure(res, target, patients, args.studies + 51, args,
                                         small, big, big_uid, dimse_small)))
        if args.no_orthanc:
            pass
        elif not shutil.which("Orthanc") or not targets.ORTHANC_DICOMWEB.exists():
            print("note: Orthanc or its DICOMweb plugin (apt-get install orthanc "
                  "orthanc-dicomweb) is missing: Orthanc rows skipped")
        else:
            with ExitStack() as stack:
                target = targets.start_orthanc(stack, tmp / "orthanc", CALLING, "NOBODY",
                                               free_port())
                res = Result("orthanc")
                n = args.orthanc_studies
                if n:
                    secs = stow(target.web, generate_studies(tmp / "orthanc-files", n),
                                args.k, 50)
                    print(f"orthanc: {n:,} one-instance studies stored in {secs:.1f} s "
                          "(STOW-RS, 50/request)", flush=True)
                    picks = [f"PID{rng.randrange(max(1, n // 2)):07d}" for _ in range(args.q)]
                else:
                    picks = [f"P{rng.randrange(50):03d}" for _ in range(args.q)]
                results.append((res, measure(res, target, picks, n + 51, args, small,
                                             big, big_uid, dimse_small)))
        pacs_goals = results[0][1]
        print("\ngoals (pacs):")
        print(f"  STOW-RS >= {GOALS['stow']:.0f} inst/s: {pacs_goals['stow']:.0f} "
              f"{'met' if pacs_goals['stow'] >= GOALS['stow'] else 'MISSED'}")
        for key, label in (("qido", "QIDO-RS exact PatientID p95"),
                           ("metadata", "study metadata p95")):
            ok = pacs_goals[key] <= GOALS[key]
            print(f"  {label} <= {GOALS[key]:.0f} ms: {pacs_goals[key]:.2f} ms "
                  f"{'met' if ok else 'MISSED'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
