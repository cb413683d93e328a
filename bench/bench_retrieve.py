"""C-MOVE and C-GET of one study, next to the ceiling measured in the same run.

``python -m bench.bench_retrieve [-n 500] [--size 512] [--repeat 3]``: stores N CT instances
in a fresh archive, then times (a) dcmtk ``storescu`` pushing the same files to
``storescp --ignore`` (the ceiling), (b) ``movescu`` of the study to that ``storescp``, (c)
``getscu --ignore`` of the study, and samples the archive's peak RSS (all its processes) during
(b) and (c), and prints the RSS of each of its processes idle after the store. Each is run
``--repeat`` times in turn; a row gives the median rate, the range, and the highest peak RSS
(one run of a loaded two-core machine varies by a third).

When ``Orthanc`` is on PATH (Debian's ``orthanc``; skipped with a printed note otherwise), the
same files are then stored into a private Orthanc (``bench/orthanc.py``, started after the
archive has stopped) and (d) its C-MOVE to the same ``storescp`` and (e) ``getscu --ignore`` from
it are timed the same way, with the ratio ours / Orthanc.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import orthanc
from bench.ingest import generate, wait_port
from tests.conftest import free_port


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its children (the workers)."""
    return sum(rss_each(pid).values())


def rss_each(pid: int) -> dict[int, int]:
    """Resident bytes of ``pid`` and of each of its children, by process id."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) != pid and int(stat[1]) != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found[int(entry.name)] = int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return found


def describe_rss(pid: int) -> str:
    """``total MiB (supervisor a, b, c ...)``: the server process first, then its children."""
    each = rss_each(pid)
    parts = [each.pop(pid, 0)] + [each[child] for child in sorted(each)]
    return (f"{sum(parts) / 2**20:.0f} MiB (supervisor {parts[0] / 2**20:.0f}"
            + "".join(f", {part / 2**20:.0f}" for part in parts[1:]) + ")")


def timed(cmd: list[str], server_pid: int | None = None) -> tuple[float, int]:
    """Wall seconds of ``cmd`` and the server's peak RSS meanwhile."""
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set() and server_pid is not None:
            peak = max(peak, rss(server_pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ,
                                                                         TCP_NODELAY="1"))
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr[-2000:]}")
    return elapsed, peak


Row = tuple[str, list[float], int]  # name, seconds of each run, peak RSS over the runs


def repeated(commands: list[tuple[str, list[str]]], repeat: int,
             server_pid: int | None) -> list[Row]:
    """Each command ``repeat`` times, interleaved (a, b, a, b, ...), so that a passing load
    on the machine does not fall on one row only."""
    seconds: dict[str, list[float]] = {name: [] for name, _ in commands}
    peaks: dict[str, int] = dict.fromkeys(seconds, 0)
    for _ in range(repeat):
        for name, cmd in commands:
            elapsed, peak = timed(cmd, server_pid)
            seconds[name].append(elapsed)
            peaks[name] = max(peaks[name], peak)
    return [(name, seconds[name], peaks[name]) for name, _ in commands]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    args = parser.parse_args()
    repeat = max(1, args.repeat)
    env = dict(os.environ, TCP_NODELAY="1")
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        work = Path(tmp)
        (folder,) = generate(work / "files", args.count, args.size, 1)
        total = sum(f.stat().st_size for f in folder.iterdir())
        dest_port, pacs_port = free_port(), free_port()
        config = work / "pacs.toml"
        config.write_text(f'[remote.SINK]\nhost = "127.0.0.1"\nport = {dest_port}\n')
        sink = subprocess.Popen(["storescp", "--ignore", "-pdu", "131072", str(dest_port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = subprocess.Popen(
            [sys.executable, "-m", "pacs", "serve", "--data-dir", str(work / "data"),
             "--config", str(config), "--host", "127.0.0.1", "--port", str(pacs_port),
             "--http-port", "0",
             "--log-level", "WARNING"], env=env)
        try:
            wait_port(dest_port, sink)
            wait_port(pacs_port, server)
            subprocess.run(["storescu", "-aec", "PACS", "+sd", "127.0.0.1", str(pacs_port),
                            str(folder)], check=True, env=env, capture_output=True)
            idle_rss = describe_rss(server.pid)
            study = _study_uid(folder)
            query = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
            rows: list[Row] = repeated([
                ("storescu -> storescp (ceiling)",
                 ["storescu", "-aec", "SINK", "+sd", "127.0.0.1", str(dest_port), str(folder)]),
            ], repeat, None)
            rows += repeated([
                ("C-MOVE pacs -> storescp", ["movescu", "-aec", "PACS", "-aem", "SINK", "-S",
                                             *query, "127.0.0.1", str(pacs_port)]),
                ("C-GET pacs -> getscu --ignore", ["getscu", "--ignore", "-aec", "PACS", "-S",
                                                   *query, "127.0.0.1", str(pacs_port)]),
            ], repeat, server.pid)  # fmt: skip
            server.terminate()
            server.wait(30)
            if orthanc.available():
                rows += _orthanc_rows(work / "orthanc", folder, study, dest_port, env, repeat)
        finally:
            server.terminate()
            sink.terminate()
            server.wait(30)
            sink.wait(30)
        print(f"{args.count} instances of {args.size}x{args.size}, "
              f"{total / args.count / 1024:.0f} KiB each")
        if orthanc.available():
            print(f"orthanc: {orthanc.version()}, MaximumPduLength 131072")
        else:
            print(orthanc.SKIP_NOTE)
        print(f"server RSS after the store, idle: {idle_rss}")
        print(f"median of {repeat} run(s) each, [slowest-fastest instances/s]")
        ceiling = statistics.median(rows[0][1])
        for name, runs, peak in rows:
            secs = statistics.median(runs)
            extra = f", {ceiling / secs:4.2f} of the ceiling" if peak else ""
            rss_text = f", server peak RSS {peak / 2**20:.0f} MiB" if peak else ""
            spread = f"[{args.count / max(runs):.0f}-{args.count / min(runs):.0f}]"
            print(f"  {name:32s} {args.count / secs:7.0f} instances/s {spread:>11s} "
                  f"{total / secs / 1e6:7.1f} MB/s{extra}{rss_text}")
        seconds_of = {name: statistics.median(runs) for name, runs, _ in rows}
        for ours, theirs in (("C-MOVE pacs -> storescp", "C-MOVE orthanc -> storescp"),
                             ("C-GET pacs -> getscu --ignore",
                              "C-GET orthanc -> getscu --ignore")):
            if theirs in seconds_of:
                print(f"  {ours.split()[0]} ours / Orthanc: "
                      f"{seconds_of[theirs] / seconds_of[ours]:.2f}x")


def _orthanc_rows(work: Path, folder: Path, study: str, dest_port: int,
                  env: dict[str, str], repeat: int) -> list[Row]:
    """Store ``folder`` into a private Orthanc, then time its C-MOVE and C-GET of ``study``."""
    aet, me = orthanc.AET, orthanc.CALLER
    with orthanc.Orthanc(work, destinations={"SINK": dest_port}) as server:
        port = str(server.dicom_port)
        subprocess.run(["storescu", "-aet", me, "-aec", aet, "--max-pdu", "131072", "+sd",
                        "127.0.0.1", port, str(folder)], check=True, env=env, capture_output=True)
        count = sum(1 for _ in folder.iterdir())
        if server.count_instances() != count:
            raise RuntimeError(f"Orthanc indexed {server.count_instances()} of {count}: "
                               f"{server.log_tail()}")
        query = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        return repeated([
            ("C-MOVE orthanc -> storescp", ["movescu", "-aet", me, "-aec", aet, "-aem", "SINK",
                                            "-S", *query, "127.0.0.1", port]),
            ("C-GET orthanc -> getscu --ignore", ["getscu", "--ignore", "-aet", me, "-aec", aet,
                                                  "-S", *query, "127.0.0.1", port]),
        ], repeat, server.pid)  # fmt: skip


def _study_uid(folder: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).StudyInstanceUID)


if __name__ == "__main__":
    main()
