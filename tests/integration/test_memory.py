"""Bounded memory: four associations each storing a 200 MB instance at once must not make the
archive's processes grow by more than 300 MB (data sets spool to disk as fragments arrive)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from pacs.index.catalog import Catalog
from tests.conftest import require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import statistics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIDE = 10240  # 10240 x 10240 x 16 bit = 200 MiB of pixel data


def test_four_concurrent_200mb_stores_stay_bounded(archive, tmp_path: Path) -> None:
    files = []
    for i in range(4):
        files.append(write(make_ct(rows=SIDE, columns=SIDE, instance_number=i),
                           tmp_path / f"big{i}.dcm"))
    # Warm up (imports, first association) so the baseline is the serving steady state.
    small = write(make_ct(), tmp_path / "small.dcm")
    storescu = require_tool("storescu")
    subprocess.run([storescu, "-aec", "PACS", "127.0.0.1", str(archive.port), str(small)],
                   check=True, timeout=60)
    baseline = archive.rss_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, archive.rss_bytes())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        senders = [subprocess.Popen([storescu, "-aec", "PACS", "127.0.0.1", str(archive.port),
                                     str(f)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True) for f in files]
        outcomes = [(p.communicate(timeout=300)[1], p.returncode) for p in senders]
        errors = [err for err, code in outcomes if code != 0]
    finally:
        done.set()
        sampler.join()
    assert not errors, errors
    assert statistics(archive.data_dir)["instances"] == 5
    grew = peak - baseline
    print(f"RSS baseline {baseline / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, "
          f"grew {grew / 2**20:.0f} MiB")
    assert grew <= 300 * 2**20, f"RSS grew by {grew / 2**20:.0f} MiB"
    catalog = Catalog(archive.data_dir / "index", readonly=True)
    try:
        for f in files:
            uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
            record = catalog.get_instance(uid)
            assert record is not None and record.size > SIDE * SIDE * 2
    finally:
        catalog.close()
