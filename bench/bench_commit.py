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
ratio of the two conditions.

Usage: ``python -m bench.bench_commit [-n 6000] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom import Dataset

from pacs.index.catalog import Catalog
from pacs.index.records import InstanceRecord

EXPLICIT = "1.2.840.10008.1.2.1"
STUDY_SIZE = 100
SERIES_SIZE = 50
POLLUTION = 8 << 20  # bytes touched between transactions in the polluted runs


def records(n: int) -> list[InstanceRecord]:
    """``n`` records as ingest makes them: the data set scanned, located, sized, digested."""
    from pydicom.uid import generate_uid

    from pacs.ingest import read_attributes
    from tests.dicomgen import dataset_bytes, make_ct

    out = []
    study = series = ""
    for i in range(n):
        if i % STUDY_SIZE == 0:
            study = generate_uid()
        if i % SERIES_SIZE == 0:
            series = generate_uid()
        ds = make_ct(patient_id=f"P{i // STUDY_SIZE}", study_uid=study, series_uid=series,
                     instance_number=i % SERIES_SIZE + 1)
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
        batches = [all_records[i:i + batch] for i in range(0, len(all_records), batch)]
        warm = len(batches) // 3  # the first third builds the index up (not counted)
        for group in batches[:warm]:
            catalog.store_items([(r, "keep") for r in group])
        buffer = bytearray(POLLUTION)
        junk = [Dataset() for _ in range(200)]
        spent = 0.0
        for group in batches[warm:]:
            if polluted:
                _pollute(buffer, junk)
            started = time.thread_time()
            catalog.store_items([(r, "keep") for r in group])
            spent += time.thread_time() - started
        return spent / (len(batches) - warm)
    finally:
        catalog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    made = records(args.count)
    print(f"{args.count} records, {len(made[0].attributes)} attributes each; thread CPU, "
          f"median of {args.repeat} runs")
    with tempfile.TemporaryDirectory(prefix="pacs-bench-commit-") as tmp:
        for batch in (1, 2, 4):
            per_txn = {}
            for polluted in (False, True):
                values = []
                for r in range(args.repeat):
                    folder = Path(tmp) / f"b{batch}-{polluted}-{r}"
                    values.append(run(folder, made, batch, polluted))
                per_txn[polluted] = statistics.median(values)
            clean, dirty = per_txn[False], per_txn[True]
            print(f"  {batch} a transaction: back to back {clean * 1e6:6.1f} us "
                  f"({clean / batch * 1e6:5.1f} a store), caches polluted "
                  f"{dirty * 1e6:6.1f} us ({dirty / batch * 1e6:5.1f} a store): "
                  f"{dirty / clean:.2f}x", flush=True)


if __name__ == "__main__":
    main()
