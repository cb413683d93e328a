"""C-FIND over the real DIMSE path: ``pacs serve`` in a subprocess, a lean SCU on ``pacs.net``.

    python -m bench.bench_find_dimse                                   # 100,000 instances
    python -m bench.bench_find_dimse --sizes 100000,1000000 --dir /tmp/bfd   # keeps DIR/<n>

Per size, the synthetic index of bench.bench_query (10 instances per series, one series per
study, two studies per patient) is built through ``Catalog.store_batch`` into ``DATA/index``
(records point at fake blob locations: C-FIND never reads blobs), or reused when ``DATA``
already holds exactly that many instances. Then:

1. the Python-API figures of bench.bench_query on the same index, in this process (before any
   server runs), for the DIMSE overhead;
2. cold start, twice: time from spawning ``python -m pacs serve --workers 1`` to the first
   answered C-FIND (an infix PatientName query, which needs the study columns): once with the
   saved column file removed (the server rebuilds it from LMDB) and once with it. The OS page
   cache is warm (the index was just built or read): this is a process cold start;
3. on the second server (``max_find_results`` = 0: no cap), over one persistent association,
   p50/p95 of each query kind (C-FIND-RQ until the final response, every pending response
   received; identifiers encoded before the clock starts, responses not decoded; keyed kinds
   pick another study per repeat and run every repeat once untimed first, as the API side);
   the unfiltered limit-100 listing is done as a client would over DIMSE: C-CANCEL-RQ after
   the 100th pending response (rows already on the wire still arrive and are counted);
4. rows/s of the 10,000-study listing (``AccessionNumber=ACC0000*``: 10,000 studies at any size)
   and of the unfiltered listing of every study;
5. the limit-100 listing again on a third server with ``max_find_results`` = 100 (the server's
   own cap, no cancel);
6. dcmtk ``findscu`` once per query kind (repeat 0's identifier): its count of pending responses
   must equal ours.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from bench.bench_query import (
    LISTING,
    STUDY_KEYS,
    Case,
    api_figures,
    build,
    cases,
    open_catalog,
)
from pacs.dicom import uids
from pacs.dicom.identifier import encode_identifier
from pacs.index.columns import FILE_NAME
from pacs.index.query import QueryEngine
from pacs.net import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    Association,
    CommandReceived,
    ConnectionClosed,
    Event,
    ReleaseConfirmed,
    Role,
    dimse,
    propose,
)
from pacs.server.find import STUDY_ROOT_FIND
from tests.conftest import free_port

Figures = tuple[float, float, int]  # p50 ms, p95 ms, rows
COLD_QUERY = {"QueryRetrieveLevel": "STUDY", "PatientName": "*MIT*", "StudyInstanceUID": ""}
ALL_STUDIES = Case("unfiltered listing of every study", "STUDY",
                   lambda i: dict.fromkeys(STUDY_KEYS, ""))


# -- a lean C-FIND SCU ------------------------------------------------------------------------


class FindClient:
    """One association proposing Study Root FIND; :meth:`find` counts pending responses without
    decoding them (the identifier bytes are dropped as they arrive)."""

    def __init__(self, sock: socket.socket, *, max_pdu: int = 262144) -> None:
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.assoc = Association(Role.REQUESTOR, max_pdu_length=max_pdu)
        rq = propose("PACS", "BENCHFIND", [(STUDY_ROOT_FIND, (
            uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN))],
            max_pdu_length=max_pdu)
        sock.sendall(self.assoc.send_associate_rq(rq))
        event = self._wait(AssociateAccepted, AssociateRejected)
        if not isinstance(event, AssociateAccepted):
            raise ConnectionError(f"association refused: {event}")
        (self.context_id, self.transfer_syntax), = [
            (cid, ts) for cid, (abstract, ts) in self.assoc.accepted_contexts.items()
            if abstract == STUDY_ROOT_FIND]
        self.message_id = 0
        self.port = sock.getpeername()[1]

    @classmethod
    def connect(cls, port: int, deadline: float) -> FindClient:
        """Retry until the server listens (the first connection is the association)."""
        while True:
            try:
                return cls(socket.create_connection(("127.0.0.1", port), timeout=60))
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _events(self) -> Iterator[Event]:
        assoc, sock = self.assoc, self.sock
        while True:
            event = assoc.next_event()
            if event is not None:
                if isinstance(event, ConnectionClosed | Aborted):
                    raise ConnectionError(f"association ended: {event}")
                yield event
                continue
            buf = assoc.get_buffer()
            n = sock.recv_into(buf)
            if n:
                assoc.buffer_updated(n)
            else:
                assoc.receive_data(b"")
            if out := assoc.data_to_send():
                sock.sendall(out)

    def _wait(self, *kinds: type) -> Event:
        for event in self._events():
            if isinstance(event, kinds):
                return event
        raise AssertionError("unreachable")

    def encode(self, identifier: dict[str, str]) -> bytes:
        return encode_identifier(identifier, self.transfer_syntax)

    def find(self, identifier: bytes, cancel_after: int = 0) -> tuple[int, int]:
        """(pending responses, final status) of one C-FIND; C-CANCEL after ``cancel_after``."""
        self.message_id += 1
        mid = self.message_id
        rq = dimse.Command({
            dimse.AFFECTED_SOP_CLASS_UID: STUDY_ROOT_FIND, dimse.COMMAND_FIELD: dimse.C_FIND_RQ,
            dimse.MESSAGE_ID: mid, dimse.PRIORITY: dimse.PRIORITY_MEDIUM,
            dimse.COMMAND_DATA_SET_TYPE: dimse.DATA_SET_PRESENT})
        self.sock.sendall(self.assoc.send_command(self.context_id, rq, True)
                          + self.assoc.send_dataset(self.context_id, identifier, last=True))
        rows = 0
        for event in self._events():
            if type(event) is not CommandReceived:
                continue  # DatasetFragment: a pending response's identifier
            status = event.command.status
            if status not in (dimse.PENDING, 0xFF01):
                return rows, status if status is not None else -1
            rows += 1
            if rows == cancel_after:
                cancel = dimse.Command({
                    dimse.COMMAND_FIELD: dimse.C_CANCEL_RQ,
                    dimse.MESSAGE_ID_BEING_RESPONDED_TO: mid,
                    dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATA_SET})
                self.sock.sendall(self.assoc.send_command(self.context_id, cancel, False))
        raise AssertionError("unreachable")

    def release(self) -> None:
        self.sock.sendall(self.assoc.release_request())
        try:
            self._wait(ReleaseConfirmed)
        except ConnectionError:
            pass
        self.sock.close()


# -- the server ---------------------------------------------------------------------------------


@dataclass
class ColdStart:
    listening_ms: float  # spawn -> association accepted
    answered_ms: float  # spawn -> final response of the first C-FIND
    rows: int


@contextmanager
def server(data: Path, max_find_results: int = 0) -> Iterator[tuple[FindClient, ColdStart]]:
    """``pacs serve`` on ``data``; yields an associated client and the cold-start figures."""
    port = free_port()
    env = dict(os.environ, PACS_MAX_FIND_RESULTS=str(max_find_results))
    cmd = [sys.executable, "-m", "pacs", "serve", "--data-dir", str(data), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--log-level", "WARNING",
           "--http-host", "127.0.0.1", "--http-port", str(free_port())]  # 8042 may be taken
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = FindClient.connect(port, time.monotonic() + 60)
        listening = time.perf_counter()
        rows, status = client.find(client.encode(COLD_QUERY))
        answered = time.perf_counter()
        if status != dimse.SUCCESS:
            raise RuntimeError(f"first C-FIND ended with status {status:04X}")
        yield client, ColdStart((listening - t0) * 1000, (answered - t0) * 1000, rows)
        client.release()
    except BaseException:
        proc.kill()
        err = proc.communicate()[1].decode(errors="replace")
        if err:
            print(f"server stderr:\n{err[-3000:]}", file=sys.stderr)
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)


# -- measuring ------------------------------------------------------------------------------------


def dimse_figures(client: FindClient, case: Case, repeat: int, cancel_after: int = 0) -> Figures:
    level = {"QueryRetrieveLevel": case.level}
    encoded = [client.encode({**level, **case.identifier(i)}) for i in range(repeat + 1)]
    # Warm-up: repeat 0, or every repeat when they differ (keyed queries touch other pages).
    for data in encoded if len(set(encoded)) > 1 else encoded[:1]:
        client.find(data, cancel_after)
    times, rows = [], 0
    for data in encoded[1:]:
        t0 = time.perf_counter()
        rows, status = client.find(data, cancel_after)
        times.append((time.perf_counter() - t0) * 1000)
        if status not in (dimse.SUCCESS, dimse.CANCEL):
            raise RuntimeError(f"{case.name}: final status {status:04X}")
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], rows


def findscu_count(port: int, case: Case, cancel_after: int = 0) -> int:
    keys = {"QueryRetrieveLevel": case.level, **case.identifier(0)}
    cmd = ["findscu", "-v", "-S", "-aec", "PACS", "-aet", "BENCHFINDSCU"]
    if cancel_after:
        cmd += ["--cancel", str(cancel_after)]
    for k, v in keys.items():
        cmd += ["-k", f"{k}={v}" if v else k]
    proc = subprocess.run([*cmd, "127.0.0.1", str(port)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"findscu failed: {(proc.stdout + proc.stderr)[-2000:]}")
    return len(re.findall(r"Find Response: \d+ \(Pending", proc.stdout + proc.stderr))


@dataclass
class SizeResult:
    instances: int
    build: str
    api: dict[str, Figures]
    dimse: dict[str, Figures]
    findscu: dict[str, int]
    cold: dict[str, ColdStart]


def run_size(n: int, data: Path, repeat: int, use_findscu: bool,
             full_listing_max: int) -> SizeResult:
    n_studies = n // 10
    cat = open_catalog(data / "index")
    if cat.statistics()["instances"] != n:
        cat.clear()
        secs = build(cat, n)
        build_note = f"{n / secs:,.0f} instances/s ({secs:.1f} s, store_batch of 5000)"
    else:
        build_note = "reused"
    print(f"\n== {n:,} instances ({n_studies:,} studies) in {data}: build {build_note}",
          flush=True)
    engine = QueryEngine(cat)
    api = api_figures(engine, n_studies, repeat)
    full_listing = n_studies <= full_listing_max
    if full_listing:
        api[ALL_STUDIES.name] = api_figures_one(engine, ALL_STUDIES)
    cat.close()

    cold: dict[str, ColdStart] = {}
    (data / "index" / FILE_NAME).unlink(missing_ok=True)
    with server(data) as (_, c):
        cold["full column build"] = c
    with server(data) as (client, c):
        cold["saved columns"] = c
        results: dict[str, Figures] = {}
        counts: dict[str, int] = {}
        for case in cases(n_studies):
            cancel = 100 if case.limit else 0
            name = case.name + (" (C-CANCEL)" if cancel else "")
            results[name] = dimse_figures(client, replace(case, limit=None), repeat, cancel)
            if use_findscu:
                counts[name] = findscu_count(client.port, case, cancel)
            print(f"  {name}: done", flush=True)
        results[LISTING.name] = dimse_figures(client, LISTING, max(3, repeat // 5))
        if use_findscu:
            counts[LISTING.name] = findscu_count(client.port, LISTING)
        if full_listing:
            results[ALL_STUDIES.name] = dimse_figures(client, ALL_STUDIES, 3)
    limit_case = next(c for c in cases(n_studies) if c.limit)
    with server(data, max_find_results=100) as (client, c):
        cold["saved columns, 2nd"] = c
        name = limit_case.name + " (max_find_results)"
        results[name] = dimse_figures(client, replace(limit_case, limit=None), repeat)
        api[name] = api[limit_case.name]
        if use_findscu:
            counts[name] = findscu_count(client.port, limit_case)
    api[limit_case.name + " (C-CANCEL)"] = api[limit_case.name]
    return SizeResult(n, build_note, api, results, counts, cold)


def api_figures_one(engine: QueryEngine, case: Case) -> Figures:
    from bench.bench_query import measure, run_case

    return measure(lambda i: run_case(engine, case, i), 3)


# -- report ---------------------------------------------------------------------------------------


def report(res: SizeResult) -> None:
    print(f"\n{res.instances:,} instances: build {res.build}")
    for label, c in res.cold.items():
        print(f"  cold start ({label}): listening {c.listening_ms:.0f} ms, first C-FIND "
              f"answered {c.answered_ms:.0f} ms ({c.rows} rows)")
    head = (f"  {'query':46} {'API p50':>8} {'API p95':>8} {'DIMSE p50':>9} {'DIMSE p95':>9} "
            f"{'overhead':>8} {'rows':>7} {'findscu':>7}")
    print(head)
    print("  " + "-" * (len(head) - 2))
    for name, (p50, p95, rows) in res.dimse.items():
        a50, a95, arows = res.api.get(name, (float("nan"), float("nan"), -1))
        fs = res.findscu.get(name)
        # After a C-CANCEL both counts include rows already on the wire, which depends on how
        # fast each client reads (findscu prints every row): only their full counts compare.
        flag = "" if fs is None or fs == rows or "C-CANCEL" in name else " MISMATCH (findscu)"
        if arows != rows and "C-CANCEL" not in name:
            flag += f" MISMATCH (API {arows})"
        print(f"  {name:46} {a50:8.2f} {a95:8.2f} {p50:9.2f} {p95:9.2f} {p50 - a50:8.2f} "
              f"{rows:7d} {'' if fs is None else fs:>7}{flag}")
    for name in (LISTING.name, ALL_STUDIES.name):
        if name not in res.dimse:
            continue
        p50, _, rows = res.dimse[name]
        a50, _, _ = res.api[name]
        print(f"  {name}: DIMSE {rows / p50 * 1000:,.0f} rows/s ({p50:.0f} ms), "
              f"API {rows / a50 * 1000:,.0f} rows/s ({a50:.0f} ms)")


KEYED = ("exact PatientID", "AccessionNumber", "all SERIES of one study",
         "all IMAGEs of one series")


def goals(results: list[SizeResult]) -> None:
    by_n = {r.instances: r for r in results}
    print("\ngoals (DIMSE, end to end):")
    big = by_n.get(1_000_000)
    small = by_n.get(100_000)
    if big:
        p = big.dimse["exact PatientID"][0]
        print(f"  exact-key p50 at 1M <= 2 ms: {p:.2f} ms {'ok' if p <= 2 else 'MISSED'}")
    for r in results:
        p = r.dimse[LISTING.name][0]
        print(f"  listing 10,000 studies <= 100 ms at {r.instances:,}: {p:.0f} ms "
              f"{'ok' if p <= 100 else 'MISSED'}")
    if small:
        p = small.dimse["infix *MIT*"][0]
        print(f"  infix over 10k studies (100k instances): {p:.2f} ms")
    if big:
        p = big.dimse["infix *MIT*"][0]
        print(f"  infix wildcard over 100k studies <= 50 ms: {p:.2f} ms "
              f"{'ok' if p <= 50 else 'MISSED'}")
    if big and small:
        for name in KEYED:
            ratio = big.dimse[name][0] / small.dimse[name][0]
            print(f"  {name}: 1M / 100k p50 = {ratio:.2f}x {'ok' if ratio <= 1.5 else 'MISSED'}")
    for r in results:
        c = r.cold["saved columns"].answered_ms
        f = r.cold["full column build"].answered_ms
        print(f"  cold start <= 2 s at {r.instances:,}: {c:.0f} ms with saved columns "
              f"{'ok' if c <= 2000 else 'MISSED'}, {f:.0f} ms rebuilding them "
              f"{'ok' if f <= 2000 else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000", help="comma-separated instance counts")
    ap.add_argument("--dir", type=Path, default=None,
                    help="base folder: DIR/<n> is each size's data dir (kept; reused)")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--full-listing-max", type=int, default=20_000,
                    help="list every study only up to this many studies (slow over DIMSE)")
    ap.add_argument("--no-findscu", action="store_true", help="skip the dcmtk cross-check")
    args = ap.parse_args()
    use_findscu = not args.no_findscu and shutil.which("findscu") is not None
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench_find_"))
    results = []
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            results.append(run_size(n, base / str(n), args.repeat, use_findscu,
                                    args.full_listing_max))
            report(results[-1])
        goals(results)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
