"""Ingest load generator: N instances over K concurrent dcmtk ``storescu`` associations.

In one run the same files go to three receivers, so the figures compare like with like:

- ``pacs``: this archive (``pacs serve``, durable: blob fsync + LMDB commit before each response);
- ``pynetdicom``: a plain pynetdicom storage SCP writing one file per instance (Python baseline);
- ``storescp --ignore``: dcmtk's C++ SCP discarding the data (the ceiling). It serves one
  association at a time (the others wait for it in the listen backlog), so its figure with 4
  associations is its one-association rate; ``storescp-fork`` (``--fork``: a child process an
  association) serves them at once, for information (about 1.9x on this 2-core machine);
- ``orthanc``: Orthanc (Debian's package, when ``Orthanc`` is on PATH; skipped with a note
  otherwise), a private server per run (``bench/orthanc.py``). Durability: each file is
  fdatasync-ed (Orthanc's default ``SyncStorageArea``) but its SQLite index commits with WAL +
  ``SYNCHRONOUS=NORMAL`` (no sync per store); ``orthanc-nosync`` also drops the file sync.

Usage: ``python -m bench.ingest [-n 2000] [-k 4] [--size 64] [--cpu] [--rounds R]``
(``make bench``); ``--cpu`` adds the CPU time per instance of the receiver and of the clients.
``--rounds R`` runs the receivers one after the other R times over and reports medians and
the ratios of each round (the same machine state for both sides): on a virtual machine whose
disk and memory speeds move by 2x within an hour, one run of each is not a measurement.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port
from tests.dicomgen import make_ct, write


def generate(folder: Path, count: int, size: int, streams: int,
             per_study: int | None = None, per_series: int = 50) -> list[Path]:
    """``count`` CT instances of ``size`` x ``size`` 16-bit pixels, split in ``streams`` folders.

    As a modality sends them: studies of ``per_study`` instances (None: one study), each of
    one patient, in series of ``per_series`` instances; the folders interleave the instances.
    """
    dirs = [folder / f"stream{i}" for i in range(streams)]
    for d in dirs:
        d.mkdir(parents=True)
    studies: dict[int, str] = {}
    series: dict[tuple[int, int], str] = {}
    for i in range(count):
        study = i // per_study if per_study else 0
        position = i % per_study if per_study else i
        if study not in studies:
            studies[study] = make_ct().StudyInstanceUID
        key = (study, position // per_series)
        if key not in series:
            series[key] = make_ct().SeriesInstanceUID
        ds = make_ct(study_uid=studies[study], series_uid=series[key], rows=size, columns=size,
                     instance_number=position + 1, patient_id=f"P{study:05d}")
        write(ds, dirs[i % streams] / f"{i:06d}.dcm")
    return dirs


STUDY_SIZE = 100  # instances per study in the ingest runs (two series of 50)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("receiver did not start")


def storescu_commands(dirs: list[Path], port: int, aet: str, calling: str) -> list[list[str]]:
    """One storescu command a folder, for :func:`push`."""
    commands = []
    for d in dirs:
        files = sorted(str(f) for f in d.iterdir())
        scan: list[str] = []
        if sum(len(f) + 1 for f in files) > ARG_LIST_LIMIT:
            print(f"  note: {len(files)} files are too many for one command line: storescu "
                  f"sends {d.name} in the directory's order (+sd)")
            scan, files = ["+sd"], [str(d)]
        commands.append(["storescu", "-aec", aet, "-aet", calling, "--max-pdu", "131072",
                         *scan, "127.0.0.1", str(port), *files])
    return commands


# Bytes of file names one storescu command line may take (Linux allows a quarter of the
# stack limit, 2 MiB by default, for arguments and environment together).
ARG_LIST_LIMIT = 1 << 20


def push(dirs: list[Path], port: int, aet: str, calling: str = "BENCH") -> float:
    """Send every folder with its own storescu at once; return the wall time in seconds.

    Each storescu gets its folder's files by name, in order, as a modality sends a series:
    with ``+sd`` (a folder) it sends them in the order the directory lists them, on ext4 a
    hash order, which scattered every association's instances over all the studies (the
    runs before session 19). A list too long for a command line (``ARG_LIST_LIMIT``) falls
    back to the folder.
    """
    env = dict(os.environ, TCP_NODELAY="1")
    commands = storescu_commands(dirs, port, aet, calling)
    start = time.perf_counter()
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for command in commands
    ]
    failed = [f"exit status {p.returncode}: {err.decode()[-2000:]}"
              for p in procs for _, err in [p.communicate()] if p.returncode != 0]
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"storescu failed ({len(failed)} of {len(procs)}): {failed[0]}")
    return elapsed


def run_orthanc(name: str, out: Path, dirs: list[Path]) -> float:
    from bench.orthanc import AET, CALLER, Orthanc

    expected = sum(1 for d in dirs for _ in d.iterdir())
    try:
        with Orthanc(out, sync=name != "orthanc-nosync") as server:
            seconds = push(dirs, server.dicom_port, AET, CALLER)
            stored = server.count_instances()
            if stored != expected:
                raise RuntimeError(f"Orthanc indexed {stored} of {expected} instances: "
                                   f"{server.log_tail()}")
            return seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def pacs_receiver(name: str) -> tuple[str, dict[str, str]]:
    """A ``pacs…`` receiver's ``--workers`` value and the environment it adds: "pacs" uses
    the default worker count, "pacs-w1", "pacs-w2" set it; settings may follow, for A/B runs
    in one process ("pacs-w1+sync_spin=0" sets PACS_SYNC_SPIN=0)."""
    base, *overrides = name.split("+")
    workers = base.removeprefix("pacs").removeprefix("-w") or "0"
    if not workers.isdigit():
        raise ValueError(f"receiver {name!r}: pacs, pacs-wN, then +setting=value")
    env: dict[str, str] = {}
    for override in overrides:
        setting, sep, value = override.partition("=")
        if not sep or not setting:
            raise ValueError(f"receiver {name!r}: {override!r} is not setting=value")
        env[f"PACS_{setting.upper()}"] = value
    return workers, env


def run_receiver(name: str, work: Path, dirs: list[Path]) -> float:
    port = free_port()
    out = work / f"out-{name}"
    if name.startswith("orthanc"):
        return run_orthanc(name, out, dirs)
    env = dict(os.environ, TCP_NODELAY="1")
    if name.startswith("pacs"):
        workers, overrides = pacs_receiver(name)
        env.update(overrides)
        cmd = [sys.executable, "-m", "pacs", "serve", "--data-dir", str(out), "--host",
               "127.0.0.1", "--port", str(port), "--http-port", "0", "--log-level", "WARNING",
               "--workers", workers]
        aet = "PACS"
    elif name == "pynetdicom":
        cmd = [sys.executable, "-m", "bench.pynetdicom_scp", str(port), str(out)]
        aet = "BASELINE"
    elif name in ("storescp", "storescp-fork"):
        fork = ["--fork"] if name == "storescp-fork" else []
        cmd = ["storescp", "--ignore", "--max-pdu", "131072", *fork, str(port)]
        aet = "ANY-SCP"
    else:
        raise ValueError(f"unknown receiver {name!r}")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_port(port, proc)
        server_before = tree_cpu(proc.pid)
        clients_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine_before = machine_cpu()
        seconds = push(dirs, port, aet)
        machine_after = machine_cpu()
        server_after = tree_cpu(proc.pid)
        clients_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        CPU[name] = (server_after[0] - server_before[0], server_after[1] - server_before[1],
                     clients_after.ru_utime + clients_after.ru_stime
                     - clients_before.ru_utime - clients_before.ru_stime,
                     idle_share(machine_before, machine_after))
        return seconds
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(out, ignore_errors=True)


# receiver -> (server user s, server system s, storescu clients s, machine idle share) of its
# last run
CPU: dict[str, tuple[float, float, float, float]] = {}


def machine_cpu(stat: str | None = None) -> tuple[int, int]:
    """(idle, total) clock ticks of all CPUs since boot, from ``/proc/stat`` (or its text):
    idle counts idle and iowait; total every state but guest time, already in user."""
    if stat is None:
        stat = Path("/proc/stat").read_text()
    name, *values = stat.partition("\n")[0].split()
    if name != "cpu" or len(values) < 5:
        raise ValueError("/proc/stat: no aggregate cpu line first")
    fields = [int(v) for v in values[:8]]
    return fields[3] + fields[4], sum(fields)


def idle_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The machine's idle share between two :func:`machine_cpu` readings: near 0 when the
    receiver and its clients used every core (CPU-bound), high when they waited on each other
    (round-trip bound, as ``storescp --ignore`` serving one association at a time)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def tree_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` and its child processes (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
    return user, system


def disk_write_rate(folder: Path, size_mib: int = 1024, direct: bool = False) -> float:
    """Sustained write rate of the disk under ``folder`` in MB/s (dd with a final fdatasync;
    ``direct``: around the page cache, ``oflag=direct``, as the archive writes large records).

    On this kind of VM the buffered figure mostly measures how fast the guest gets fresh
    page-cache pages (it moves 370-1,400 MB/s within hours); the direct one is the device."""
    target = folder / "dd.bin"
    start = time.perf_counter()
    done = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size_mib}",
                           "conv=fdatasync", *(["oflag=direct"] if direct else [])],
                          capture_output=True)
    if done.returncode:
        target.unlink(missing_ok=True)
        if direct:  # a file system without O_DIRECT (tmpfs): no device figure
            return float("nan")
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    elapsed = time.perf_counter() - start
    target.unlink()
    return size_mib * 1024 * 1024 / elapsed / 1e6


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """``median [min-max]`` (just the value for one)."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def matrix(receivers: list[str], rounds: int = 1) -> None:
    """The issue's table: 64x64 and 512x512 CT, 1 and 4 associations, plus the disk rate.

    With ``rounds`` > 1 each cell runs the receivers ``rounds`` times in turn and shows
    medians; the ratios of the 4-association rows are taken round by round (pacs against
    storescp for 64x64, against the disk's rate measured just before the round for 512x512)."""
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        work = Path(tmp)
        print(f"disk: {disk_write_rate(work):.0f} MB/s sustained (dd 1 GiB, conv=fdatasync), "
              f"{disk_write_rate(work, direct=True):.0f} MB/s with oflag=direct")
        print(f"{'size':>9s} {'assoc':>5s} " + " ".join(f"{r:>22s}" for r in receivers))
        ratio_lines: list[str] = []
        for size, count in ((64, 4000), (512, 1000)):
            for streams in (1, 4):
                dirs = generate(work / f"files-{size}-{streams}", count, size, streams, STUDY_SIZE)
                total = sum(f.stat().st_size for d in dirs for f in d.iterdir())
                rates: dict[str, list[float]] = {name: [] for name in receivers}
                disks: list[float] = []
                directs: list[float] = []
                for _ in range(rounds):
                    if size == 512 and streams == 4 and rounds > 1:
                        disks.append(disk_write_rate(work))
                        directs.append(disk_write_rate(work, direct=True))
                    for name in receivers:
                        rates[name].append(count / run_receiver(name, work, dirs))
                cells = [f"{median(r):7.0f}/s {median(r) * total / count / 1e6:7.1f} MB/s"
                         for r in rates.values()]
                row = " ".join(f"{c:>22s}" for c in cells)
                print(f"{size:>4d}x{size:<4d} {streams:>5d} {row}", flush=True)
                if rounds > 1 and streams == 4:
                    for ours in [n for n in receivers if n.startswith("pacs")]:
                        if size == 64 and "storescp" in rates:
                            per_round = [a / b for a, b in zip(rates[ours], rates["storescp"],
                                                               strict=True)]
                            what = "storescp --ignore"
                        elif size == 512 and disks:
                            per_round = [a * total / count / 1e6 / d
                                         for a, d in zip(rates[ours], disks, strict=True)]
                            what = f"the disk ({spread(disks)} MB/s)"
                        else:
                            continue
                        ratio_lines.append(f"  {size}x{size}, 4 assoc.: {ours} / {what}: "
                                           f"{spread(per_round, '{:.2f}')} over {rounds} rounds")
                        if (size == 512 and "storescp" in rates
                                and not any(d != d for d in directs)):  # NaN: no O_DIRECT
                            # The "lower of the two limits" with the device's own rate.
                            limits = [min(d, s * total / count / 1e6) for d, s in
                                      zip(directs, rates["storescp"], strict=True)]
                            lower = [a * total / count / 1e6 / lim
                                     for a, lim in zip(rates[ours], limits, strict=True)]
                            ratio_lines.append(
                                f"  {size}x{size}, 4 assoc.: {ours} / the lower of the direct "
                                f"disk ({spread(directs)} MB/s) and storescp: "
                                f"{spread(lower, '{:.2f}')} over {rounds} rounds")
                shutil.rmtree(work / f"files-{size}-{streams}")
        for line in ratio_lines:
            print(line)


def available_receivers(names: list[str]) -> list[str]:
    """``names`` without the Orthanc ones when Orthanc is not installed (with a printed note)."""
    from bench import orthanc

    if orthanc.available():
        return names
    if any(n.startswith("orthanc") for n in names):
        print(orthanc.SKIP_NOTE)
    return [n for n in names if not n.startswith("orthanc")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=2000)
    parser.add_argument("-k", "--associations", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="rows = columns of each image")
    parser.add_argument("--receivers", default="pacs-w1,pacs-w2,pynetdicom,orthanc,storescp",
                        help="comma-separated: pacs[-wN][+setting=value...], pynetdicom, "
                             "orthanc[-nosync], storescp, storescp-fork (Orthanc ones are "
                             "skipped when it is not installed)")
    parser.add_argument("--cpu", action="store_true",
                        help="also print CPU per instance: the receiver's (user, system; its "
                             "child processes included) and the storescu clients'")
    parser.add_argument("--matrix", action="store_true",
                        help="64x64 and 512x512, 1 and 4 associations, and the disk's rate")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the receivers in turn this many times; medians and the "
                             "ratios of each round")
    args = parser.parse_args()
    receivers = available_receivers(args.receivers.split(","))
    if any(n.startswith("orthanc") for n in receivers):
        from bench.orthanc import version

        print(f"orthanc: {version()}")
    if args.matrix:
        matrix(receivers, max(args.rounds, 1))
        return
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        work = Path(tmp)
        dirs = generate(work / "files", args.count, args.size, args.associations, STUDY_SIZE)
        total = sum(f.stat().st_size for d in dirs for f in d.iterdir())
        print(f"{args.count} instances, {total / args.count / 1024:.1f} KiB each, "
              f"{args.associations} associations (dcmtk storescu)")
        rates: dict[str, list[float]] = {name: [] for name in receivers}
        rounds = max(args.rounds, 1)
        for r in range(rounds):
            if rounds > 1:
                print(f"round {r + 1}")
            for name in receivers:
                seconds = run_receiver(name, work, dirs)
                rates[name].append(args.count / seconds)
                print(f"  {name:14s} {args.count / seconds:9.0f} instances/s "
                      f"{total / seconds / 1e6:8.1f} MB/s  ({seconds:.2f} s)", flush=True)
                if args.cpu and name in CPU:
                    *seconds_used, idle = CPU[name]
                    user, system, clients = (v / args.count * 1e6 for v in seconds_used)
                    print(f"  {'':14s} CPU per instance: receiver {user:.0f} us user + "
                          f"{system:.0f} us system, clients {clients:.0f} us; "
                          f"machine idle {idle:.0%}")
        if rounds > 1:
            print(f"medians [min-max] over {rounds} rounds")
            for name, values in rates.items():
                print(f"  {name:14s} {spread(values)} instances/s")
        for ours in [r for r in rates if r.startswith("pacs")]:
            for other in ("pynetdicom", "orthanc", "orthanc-nosync", "storescp",
                          "storescp-fork"):
                if other in rates:
                    per_round = [a / b for a, b in zip(rates[ours], rates[other], strict=True)]
                    print(f"  {ours} / {other}: {spread(per_round, '{:.2f}')}x")


if __name__ == "__main__":
    main()
