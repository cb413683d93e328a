"""Tag scanner target: tests/fuzz/harness.py's checks, compiled twin against the pure one.

Each input is scanned under every transfer syntax (and as its first byte selects); the compiled
twin (pacs.dicom._cscan) must give the pure twin's (pacs/dicom/_pyscan.py) outcome: the same
result, or the same DicomFormatError. Anything else raised is a crash. Crash inputs belong in
tests/unit/dicom/fuzz_vectors/ (replayed by tests/unit/dicom/test_fuzz_vectors.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.fuzz.harness import check as _check
from tests.fuzz.harness import twin

_PURE = twin("python")
twin("cython")  # ImportError now, not at the first input, when the compiled twin is not built


def check(data: bytes) -> None:
    _check(data, "cython", _PURE)


def seeds() -> list[bytes]:
    from tests.fuzz.seed_corpus import write_seeds

    with tempfile.TemporaryDirectory() as tmp:
        write_seeds(Path(tmp))
        return [p.read_bytes() for p in sorted(Path(tmp).iterdir())]
