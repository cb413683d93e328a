"""DICOMweb load generator: STOW-RS throughput and QIDO-RS latency against ``pacs serve``.

- STOW-RS: ``-n`` small CT instances (64 x 64 x 16 bit, about 9 KiB) posted by ``-k``
  concurrent httpx clients (one process each, keep-alive), ``--per-request`` instances per
  multipart body; reports instances/s and MB/s (durable: each 200 comes after the commit).
- QIDO-RS: ``-q`` exact PatientID study queries (one client, sequential); p50/p90/p99 latency.

Usage: ``python -m bench.bench_web [-n 2000] [-k 4] [--per-request 1] [-q 300]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.dicomgen import make_ct, write

BOUNDARY = "benchboundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def generate(folder: Path, count: int) -> list[bytes]:
    studies = [make_ct().StudyInstanceUID for _ in range(50)]  # one study per patient
    out = []
    for i in range(count):
        ds = make_ct(study_uid=studies[i % 50], instance_number=i + 1,
                     patient_id=f"P{i % 50:03d}")
        out.append(write(ds, folder / f"{i:06d}.dcm").read_bytes())
    return out


def body(parts: list[bytes]) -> bytes:
    head = f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"".join(head + p for p in parts) + f"\r\n--{BOUNDARY}--\r\n".encode()


def _client(url: str, bodies: list[bytes], start: float) -> None:
    with httpx.Client(timeout=60) as client:
        while time.time() < start:
            time.sleep(0.001)
        for data in bodies:
            r = client.post(url, content=data, headers={"Content-Type": CONTENT_TYPE})
            if r.status_code != 200:
                raise SystemExit(f"STOW-RS answered {r.status_code}: {r.text[:200]}")


def stow(base: str, instances: list[bytes], clients: int, per_request: int) -> float:
    bodies = [body(instances[i:i + per_request])
              for i in range(0, len(instances), per_request)]
    shares = [bodies[i::clients] for i in range(clients)]
    start = time.time() + 0.5
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_client, args=(f"{base}/dicom-web/studies", share, start))
             for share in shares]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit("a STOW-RS client failed")
    return time.time() - start


def qido(base: str, queries: int) -> list[float]:
    times = []
    with httpx.Client(timeout=30) as client:
        for i in range(queries):
            t0 = time.perf_counter()
            r = client.get(f"{base}/dicom-web/studies", params={"PatientID": f"P{i % 50:03d}"})
            times.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise SystemExit(f"QIDO-RS answered {r.status_code}")
    return times


def wait_http(base: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pacs serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/system").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("pacs serve did not start")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="instances to store")
    parser.add_argument("-k", type=int, default=4, help="concurrent clients")
    parser.add_argument("--per-request", type=int, default=1, help="instances per request")
    parser.add_argument("-q", type=int, default=300, help="QIDO-RS queries")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-web-"))
    try:
        (tmp / "files").mkdir()
        instances = generate(tmp / "files", args.n)
        size = sum(map(len, instances))
        port, http_port = free_port(), free_port()
        base = f"http://127.0.0.1:{http_port}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "pacs", "serve", "--data-dir", str(tmp / "data"),
             "--host", "127.0.0.1", "--port", str(port), "--http-port", str(http_port),
             "--log-level", "WARNING"], env=dict(os.environ))
        try:
            wait_http(base, proc)
            elapsed = stow(base, instances, args.k, args.per_request)
            print(f"STOW-RS: {args.n} instances of {size / args.n / 1024:.1f} KiB, "
                  f"{args.k} clients, {args.per_request}/request: {elapsed:.2f} s, "
                  f"{args.n / elapsed:.0f} instances/s, {size / elapsed / 1e6:.1f} MB/s")
            times = qido(base, args.q)
            print(f"QIDO-RS exact PatientID ({args.q} queries; 50 studies, "
                  f"{args.n} instances indexed): p50 {pct(times, 0.5):.2f} ms, "
                  f"p90 {pct(times, 0.9):.2f} ms, p99 {pct(times, 0.99):.2f} ms, "
                  f"mean {statistics.mean(times) * 1000:.2f} ms")
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
