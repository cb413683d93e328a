"""Bulk import against C-STORE ingest: the same generated files, in the same run.

``python -m bench.bench_import [-n 50000] [--size 16] [--jobs 2] [--cstore-count 4000]``

Files are generated fast: one CT written by pydicom, then copies whose SOP Instance UID (a
fixed-width number) is patched in the bytes. ``pacs import`` runs as a subprocess on a fresh
data directory (files/s and MB/s over its wall time, process start included), then again to
show the re-run (everything skipped). C-STORE ingest is measured with ``bench.ingest``'s helpers
(``pacs serve`` + 4 dcmtk ``storescu`` associations) on the first ``--cstore-count`` files.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.dicomgen import make_ct, write

UID_ROOT = "1.2.826.0.1.3680043.9.7777."  # + 12 digits: fixed length, so patching is in place


def sop_uid(index: int) -> str:
    return f"{UID_ROOT}{index:012d}"


def generate(folder: Path, count: int, size: int = 16, per_folder: int = 1000,
             first: int = 0) -> list[Path]:
    """``count`` small CT files (``size`` x ``size`` pixels) in subfolders of ``per_folder``;
    instance ``i`` has SOP Instance UID ``sop_uid(first + i)``, series per 100 instances."""
    template_path = folder / "template.tmp"
    folder.mkdir(parents=True, exist_ok=True)
    marker = sop_uid(999_999_999_999)
    series_marker = UID_ROOT + "8" * 12
    write(make_ct(sop_uid=marker, series_uid=series_marker, study_uid=UID_ROOT + "1",
                  rows=size, columns=size), template_path)
    template = template_path.read_bytes()
    template_path.unlink()
    paths = []
    for i in range(count):
        n = first + i
        sub = folder / f"d{n // per_folder:04d}"
        if n % per_folder == 0 or i == 0:
            sub.mkdir(exist_ok=True)
        data = template.replace(marker.encode(), sop_uid(n).encode()).replace(
            series_marker.encode(), f"{UID_ROOT}{n // 100 + 500_000_000_000:012d}".encode())
        path = sub / f"{n:08d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def run_import(data_dir: Path, src: Path, jobs: int, report: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pacs", "import", "--data-dir", str(data_dir), "--log-level",
         "WARNING", "--report", str(report), "--jobs", str(jobs), str(src)],
        capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"pacs import exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout.strip().splitlines()[-2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=16, help="rows = columns of each image")
    parser.add_argument("--jobs", type=int, default=2, help="import processes")
    parser.add_argument("--cstore-count", type=int, default=4000,
                        help="files sent by C-STORE for the comparison (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacs-bench-import-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        paths = generate(work / "files", args.count, args.size)
        total = sum(p.stat().st_size for p in paths)
        print(f"{args.count} files, {total / args.count / 1024:.1f} KiB each "
              f"(generated in {time.perf_counter() - t0:.1f} s)")
        seconds, summary = run_import(work / "data", work / "files", args.jobs,
                                      work / "report1.txt")
        print(f"  pacs import --jobs {args.jobs}: {args.count / seconds:8.0f} files/s "
              f"{total / seconds / 1e6:7.1f} MB/s ({seconds:.2f} s wall)\n    {summary}")
        seconds, summary = run_import(work / "data", work / "files", args.jobs,
                                      work / "report2.txt")
        print(f"  re-run (all skipped):  {args.count / seconds:8.0f} files/s "
              f"({seconds:.2f} s wall)\n    {summary}")
        shutil.rmtree(work / "data")
        if args.cstore_count:
            from bench.ingest import run_receiver

            cdirs = [work / f"cstore{i}" for i in range(4)]
            for d in cdirs:
                d.mkdir()
            for i, p in enumerate(paths[: args.cstore_count]):
                shutil.copy(p, cdirs[i % 4] / p.name)
            ctotal = sum(p.stat().st_size for p in paths[: args.cstore_count])
            for name in ("pacs-w2",):
                seconds = run_receiver(name, work, cdirs)
                print(f"  C-STORE {name} (4 storescu, {args.cstore_count} files): "
                      f"{args.cstore_count / seconds:8.0f} files/s "
                      f"{ctotal / seconds / 1e6:7.1f} MB/s ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
