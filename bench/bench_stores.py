"""Blob store throughput (not a test): ``python -m bench.bench_stores [DIR]``.

Segment store with group commit (flush every 50 puts) against the file store, durable puts.
DIR should be on the disk the archive uses (default: a temporary folder).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pacs.store.base import BlobStore
from pacs.store.files import FileStore
from pacs.store.segments import SegmentStore


def run(
    name: str, open_: Callable[[Path], BlobStore], root: Path, n: int, size: int, batch: int
) -> None:
    data = os.urandom(size)
    store = open_(root)
    start = time.perf_counter()
    for i in range(n):
        store.put(f"1.2.{i}", [data], durable=batch == 1)
        if batch > 1 and i % batch == batch - 1:
            store.flush()
    store.flush()
    elapsed = time.perf_counter() - start
    store.close()
    shutil.rmtree(root)
    print(
        f"{name:<28} {n:>6} x {size >> 10:>4} KiB: {n / elapsed:>9,.0f} inst/s "
        f"{n * size / elapsed / 1e6:>8,.1f} MB/s"
    )


def main() -> None:
    base = Path(tempfile.mkdtemp(dir=sys.argv[1] if len(sys.argv) > 1 else None))
    try:
        for n, size in ((20_000, 9 << 10), (500, 512 << 10)):
            run("segments, flush every 50", SegmentStore, base / "seg", n, size, 50)
            run("files, durable=True", FileStore, base / "files", n // 4, size, 1)
            run("files, flush every 50", FileStore, base / "files", n // 4, size, 50)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
