"""Fuzz regression vectors: each file of fuzz_vectors/ is replayed through the fuzz harness.

A crash input found by ``make fuzz`` (build/fuzz/crash-*) is copied into fuzz_vectors/ under a
descriptive name; from then on every twin must pass the harness's invariants on it (only
DicomFormatError, table / index record / fast path agree, compiled == pure).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.harness import check
from tests.unit.dicom.builders import READERS

VECTORS = sorted((Path(__file__).parent / "fuzz_vectors").iterdir())


@pytest.mark.parametrize("name", sorted(READERS))
@pytest.mark.parametrize("path", VECTORS, ids=[p.name for p in VECTORS])
def test_fuzz_vector(path, name):
    check(path.read_bytes(), name, READERS["python"])
