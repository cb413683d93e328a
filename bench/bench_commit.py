"""CPU of the index commit of small stores (not a test): ``python -m bench.bench_commit``.

What the event loop runs for each fdatasync group of a durable C-STORE (``Catalog.store_items``:
one LMDB write transaction), for records made the way ingest makes them (the bench's 64x64 CT
instances, scanned with the compiled scanner), studies of 100 instances in series of 50, in
transactions of 1, 2 and 4 stores. Each is measured twice in the same process: back to back
(the baseline: code and data stay in the CPU's caches), and with 8 MiB of memory and some
unrelated Python touched between transactions, as in a worker that receives, scans and answers
in between: on this machine the second took about twice as long, like the commits measured
inside a worker (107 us a transaction of 1.8 stores against 50 us back to back).

Reports ``time.thread_time`` per store and per transaction (median of ``--repeat`` runs) and the
ratio of the two conditions; then the floor: the LMDB gets, puts and deletes of the same
transactions (recorded from a real run through a wrapper of the catalog's environment) replayed
alone into a catalog of the same settings, in both conditions. What lies between the floor and
the whole is the index logic in Python (records decoded, updated and encoded, the secondary
indexes worked out): what a faster implementation of that logic could save at most.

``--streams 4`` interleaves four studies, as four associations storing at once do: each
transaction of 2 then rewrites two series, studies and patients, like the worker's.

Usage: ``python -m bench.bench_commit [-n 6000] [--repeat 3] [--streams 1]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb
from pydicom import Dataset

from pacs.index.catalog import Catalog
from pacs.index.records import InstanceRecord

EXPLICIT = "1.2.840.10008.1.2.1"
STUDY_SIZE = 100
SERIES_SIZE = 50
POLLUTION = 8 << 20  # bytes touched between transactions in the polluted runs
T = TypeVar("T")


def records(n: int, streams: int = 1) -> list[InstanceRecord]:
    """``n`` records as ingest makes them: the data set scanned, located, sized, digested.

    ``streams``: that many studies arrive interleaved, one record of each in turn, as from as
    many concurrent associations (a transaction of 2 then touches two series, studies and
    patients, as in the ingest bench's rounds)."""
    from pydicom.uid import generate_uid

    from pacs.ingest import read_attributes
    from tests.dicomgen import dataset_bytes, make_ct

    out = []
    studies = [""] * streams
    series = [""] * streams
    for i in range(n):
        stream, j = i % streams, i // streams  # the j-th record of its stream
        if j % STUDY_SIZE == 0:
            studies[stream] = generate_uid()
        if j % SERIES_SIZE == 0:
            series[stream] = generate_uid()
        ds = make_ct(patient_id=f"P{stream}-{j // STUDY_SIZE}", study_uid=studies[stream],
                     series_uid=series[stream], instance_number=j % SERIES_SIZE + 1)
        attributes = read_attributes(dataset_bytes(ds), EXPLICIT, None)
        record = InstanceRecord.from_attributes(attributes, EXPLICIT, source_aet="BENCH",
                                                received_at=time.time())
        record.location = f"w0-00000001.seg:{i * 9_000}:9000"
        record.size, record.digest = 9_000, "x3:" + "0" * 32
        out.append(record)
    return out


def _pollute(buffer: bytearray, junk: list[Any]) -> None:
    """Touch every cache line of ``buffer`` and run some unrelated Python (pydicom, json)."""
    buffer[::64] = b"\1" * len(range(0, len(buffer), 64))
    for ds in junk:
        ds.PatientName = "Doe^Jane"
        json.dumps({"a": [1, 2, 3]})


def run(folder: Path, all_records: list[InstanceRecord], batch: int, polluted: bool) -> float:
    """Thread CPU seconds a transaction, committing ``all_records`` ``batch`` at a time."""
    catalog = Catalog(folder, durable_commits=False)
    try:
        batches = [[(r, "keep") for r in all_records[i:i + batch]]
                   for i in range(0, len(all_records), batch)]
        return _timed(batches, catalog.store_items, polluted)  # type: ignore[arg-type]
    finally:
        catalog.close()


def _timed(transactions: Sequence[T], commit: Callable[[T], object], polluted: bool) -> float:
    """Thread CPU seconds a transaction for the last two thirds of ``transactions`` (the first
    third builds the index up), with the caches polluted before each when asked."""
    warm = len(transactions) // 3
    for txn in transactions[:warm]:
        commit(txn)
    buffer = bytearray(POLLUTION)
    junk = [Dataset() for _ in range(200)]
    spent = 0.0
    for txn in transactions[warm:]:
        if polluted:
            _pollute(buffer, junk)
        started = time.thread_time()
        commit(txn)
        spent += time.thread_time() - started
    return spent / (len(transactions) - warm)


Op = tuple[str, str, bytes, bytes]  # "get", "put" or "delete"; database name; key; value


class _Recording:
    """A write transaction that notes the gets, puts and deletes asked of it."""

    def __init__(self, txn: lmdb.Transaction, names: dict[int, str], log: list[Op]) -> None:
        self.txn, self.names, self.log = txn, names, log

    def get(self, k: bytes, default: Any = None, db: Any = None) -> Any:
        self.log.append(("get", self.names[id(db)], bytes(k), b""))
        return self.txn.get(k, default, db=db)

    def put(self, k: bytes, value: bytes, db: Any = None, **flags: Any) -> bool:
        self.log.append(("put", self.names[id(db)], bytes(k), bytes(value)))
        return bool(self.txn.put(k, value, db=db, **flags))

    def delete(self, k: bytes, value: bytes = b"", db: Any = None) -> bool:
        self.log.append(("delete", self.names[id(db)], bytes(k), b""))
        return bool(self.txn.delete(k, value, db=db))

    def __getattr__(self, name: str) -> Any:  # cursor, drop, commit, abort
        return getattr(self.txn, name)


class _RecordingEnv:
    """The catalog's environment, handing out recording write transactions; each committed
    transaction's operations end up in ``committed``."""

    def __init__(self, env: lmdb.Environment, names: dict[int, str]) -> None:
        self.env, self.names = env, names
        self.committed: list[list[Op]] = []

    def begin(self, write: bool = False, **options: Any) -> Any:
        txn = self.env.begin(write=write, **options)
        if not write:
            return txn
        log: list[Op] = []
        recording = _Recording(txn, self.names, log)

        def commit() -> None:
            txn.commit()
            self.committed.append(log)

        recording.commit = commit  # type: ignore[method-assign]
        return recording

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def operations(folder: Path, all_records: list[InstanceRecord], batch: int) -> list[list[Op]]:
    """The LMDB operations of each transaction ``run`` commits (recorded by a real run)."""
    catalog = Catalog(folder, durable_commits=False)
    # The bench reaches under the catalog on purpose: its environment, its databases' names.
    env = catalog._env
    names = {id(catalog.database(name)): name for name in catalog._dbs}
    recording = _RecordingEnv(env, names)
    catalog._env = recording  # type: ignore[assignment]
    try:
        for i in range(0, len(all_records), batch):
            catalog.store_items([(r, "keep") for r in all_records[i:i + batch]])
    finally:
        catalog._env = env
        catalog.close()
    return recording.committed


def floor(folder: Path, transactions: list[list[Op]], polluted: bool) -> float:
    """Thread CPU seconds a transaction for its LMDB operations alone, replayed in a catalog
    of the same settings: what any faster index logic would still spend."""
    catalog = Catalog(folder, durable_commits=False)
    env = catalog._env
    dbs = {name: catalog.database(name) for name in {op[1] for txn in transactions for op in txn}}

    def replay(ops: list[Op]) -> None:
        with env.begin(write=True) as txn:
            for what, name, k, value in ops:
                if what == "get":
                    txn.get(k, db=dbs[name])
                elif what == "put":
                    txn.put(k, value, db=dbs[name])
                else:
                    txn.delete(k, db=dbs[name])

    try:
        return _timed(transactions, replay, polluted)
    finally:
        catalog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1,
                        help="studies arriving interleaved (as from concurrent associations)")
    args = parser.parse_args()
    made = records(args.count, args.streams)
    print(f"{args.count} records, {len(made[0].attributes)} attributes each, "
          f"{args.streams} interleaved studies; thread CPU, median of {args.repeat} runs")
    with tempfile.TemporaryDirectory(prefix="pacs-bench-commit-") as tmp:
        for batch in (1, 2, 4):
            ops = operations(Path(tmp) / f"b{batch}-recorded", made, batch)
            counted = ops[len(ops) // 3:]
            per_op = {what: sum(op[0] == what for txn in counted for op in txn) / len(counted)
                      for what in ("get", "put", "delete")}
            whole: dict[bool, float] = {}
            alone: dict[bool, float] = {}
            for polluted in (False, True):
                runs, floors = [], []
                for r in range(args.repeat):
                    runs.append(run(Path(tmp) / f"b{batch}-{polluted}-{r}", made, batch, polluted))
                    floors.append(floor(Path(tmp) / f"b{batch}-{polluted}-{r}-floor", ops,
                                        polluted))
                whole[polluted] = statistics.median(runs)
                alone[polluted] = statistics.median(floors)
            clean, dirty = whole[False], whole[True]
            print(f"  {batch} a transaction: back to back {clean * 1e6:6.1f} us "
                  f"({clean / batch * 1e6:5.1f} a store), caches polluted "
                  f"{dirty * 1e6:6.1f} us ({dirty / batch * 1e6:5.1f} a store): "
                  f"{dirty / clean:.2f}x", flush=True)
            print(f"      its LMDB operations alone ({per_op['get']:.1f} gets, "
                  f"{per_op['put']:.1f} puts, {per_op['delete']:.1f} deletes): "
                  f"{alone[False] * 1e6:6.1f} us back to back ({alone[False] / clean:.2f} of the "
                  f"whole), {alone[True] * 1e6:6.1f} us polluted ({alone[True] / dirty:.2f})",
                  flush=True)


if __name__ == "__main__":
    main()
