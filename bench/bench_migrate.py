"""Migration benchmark: ``pacs migrate`` from a private Orthanc into a fresh ``pacs serve``.

Orthanc (Debian's package, ``bench/orthanc.py``) is loaded with ``-n`` generated CT instances
(``--studies`` studies, one StudyDate each) by ``--streams`` dcmtk ``storescu`` at once
(``-aet BENCH``): that ingest rate is printed as context. Then, each into a fresh archive,
``pacs migrate`` with C-MOVE (Orthanc's sub-operations go to ``pacs serve``) and with ``--get``
(the migrate process ingests the C-GET sub-operations itself). Printed per mode: the transfer
rate that ``pacs migrate`` reports (C-MOVE/C-GET phase only) and the whole command's wall rate
(inventory, transfer and reconciliation).

Usage: ``python -m bench.bench_migrate [-n 2000] [--studies 20] [--parallel 4]``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ingest import push
from tests.conftest import ArchiveProcess, free_port
from tests.dicomgen import make_ct, write


def generate(folder: Path, count: int, studies: int, size: int, streams: int) -> list[Path]:
    """``count`` CT instances over ``studies`` studies (2 series each), in ``streams`` folders."""
    dirs = [folder / f"stream{i}" for i in range(streams)]
    for d in dirs:
        d.mkdir(parents=True)
    heads = [make_ct(patient_id=f"MIG{n:03d}") for n in range(studies)]
    series = [[make_ct().SeriesInstanceUID for _ in range(2)] for _ in range(studies)]
    for i in range(count):
        n = i % studies
        ds = make_ct(patient_id=f"MIG{n:03d}", study_uid=heads[n].StudyInstanceUID,
                     series_uid=series[n][i // studies % 2], instance_number=i // studies,
                     rows=size, columns=size)
        ds.StudyDate = f"{2000 + n % 25:04d}{1 + n % 12:02d}{1 + n % 28:02d}"
        write(ds, dirs[i % streams] / f"{i:06d}.dcm")
    return dirs


def run_migrate(orthanc_port: int, archive: ArchiveProcess, report: Path, parallel: int,
                get: bool, since_year: int) -> tuple[float, float, int, str]:
    """(wall seconds, reported instances/s, instances moved, summary line)."""
    from bench.orthanc import AET

    cmd = [sys.executable, "-m", "pacs", "migrate", "--from",
           f"{AET}@127.0.0.1:{orthanc_port}", "--data-dir", str(archive.data_dir), "--port",
           str(archive.port), "--report", str(report), "--parallel", str(parallel),
           "--since-year", str(since_year), "--log-level", "WARNING",
           *(["--get"] if get else [])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"pacs migrate exited {proc.returncode}:\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-2000:]}")
    match = re.search(r"moved (\d+) studies \((\d+) instances, ([\d,.]+) instances/s\)",
                      proc.stdout)
    if match is None:
        raise RuntimeError(f"no summary in the output:\n{proc.stdout}")
    return wall, float(match[3].replace(",", "")), int(match[2]), match[0]


def main() -> None:
    from bench import orthanc as orthanc_mod

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=2000)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="rows = columns of each image")
    parser.add_argument("--streams", type=int, default=4, help="storescu loading Orthanc")
    parser.add_argument("--parallel", type=int, default=4, help="pacs migrate --parallel")
    parser.add_argument("--since-year", type=int, default=2000,
                        help="pacs migrate --since-year (the data spans 2000-2024; 1900, "
                             "the command's default, adds a C-FIND per empty year)")
    args = parser.parse_args()
    if not orthanc_mod.available():
        print(orthanc_mod.SKIP_NOTE)
        return
    with tempfile.TemporaryDirectory(prefix="pacs-bench-migrate-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        dirs = generate(work / "files", args.count, args.studies, args.size, args.streams)
        total = sum(p.stat().st_size for d in dirs for p in d.iterdir())
        print(f"{args.count} instances in {args.studies} studies, "
              f"{total / args.count / 1024:.1f} KiB each (generated in "
              f"{time.perf_counter() - t0:.1f} s); {orthanc_mod.version()}")
        port = free_port()  # every fresh archive listens here, as Orthanc's "PACS" modality
        with orthanc_mod.Orthanc(work / "orthanc", destinations={"PACS": port}) as orthanc:
            seconds = push(dirs, orthanc.dicom_port, orthanc_mod.AET, orthanc_mod.CALLER)
            stored = orthanc.count_instances()
            if stored != args.count:
                raise RuntimeError(f"Orthanc indexed {stored} of {args.count}")
            print(f"  storescu x{args.streams} into Orthanc: {args.count / seconds:8.0f} "
                  f"instances/s ({seconds:.2f} s)")
            for get in (False, True):
                mode = "C-GET (--get)" if get else "C-MOVE"
                archive = ArchiveProcess(work / f"data-{'get' if get else 'move'}", port,
                                         extra_args=[])
                try:
                    archive.start()  # inside: a server that fails to come up is stopped too
                    wall, rate, moved, line = run_migrate(
                        orthanc.dicom_port, archive, work / f"report-{get}.txt",
                        args.parallel, get, args.since_year)
                finally:
                    if archive.proc is not None:
                        archive.stop()
                    shutil.rmtree(archive.data_dir, ignore_errors=True)
                if moved != args.count:
                    raise RuntimeError(f"{mode}: moved {moved} of {args.count}: {line}")
                print(f"  pacs migrate {mode:14s} --parallel {args.parallel}: {rate:8.0f} "
                      f"instances/s transfer, {args.count / wall:6.0f} instances/s whole "
                      f"command ({wall:.2f} s)")


if __name__ == "__main__":
    main()
