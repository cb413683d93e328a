"""Worker malloc tuning: received data sets reuse heap memory instead of faulting in new pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = """
import resource, sys
if sys.argv[1] == "tuned":
    from pacs.server.malloc import tune_for_ingest
    assert tune_for_ingest()
def receive():
    data = bytearray(256 << 10)  # a first P-DATA fragment, then the rest appended
    data += bytes(257 << 10)
    return len(data)
for _ in range(20):
    receive()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    receive()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         cwd=REPO, check=True)
    return int(out.stdout)


def test_tuned_workers_reuse_memory_for_data_sets() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt")
    tuned, default = faults("tuned"), faults("default")
    # 200 data sets of 513 KiB: untuned, glibc hands most of them fresh pages (hundreds of
    # faults each); tuned, the heap keeps the memory and faults stay near zero.
    assert tuned < 200 <= default, (tuned, default)
