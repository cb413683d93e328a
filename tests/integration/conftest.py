"""Fixtures of the integration tests (the shared ones are in ``tests/conftest.py``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect each test's garbage when it ends (~15-30 ms): a socket a test or a client library
    left in a reference cycle (a client thread that died, an exception's traceback) is
    finalized then, so its ResourceWarning fails that test, not whichever later test happens
    to run the collector (a CI run failed once that way, in a test that opens no socket)."""
    yield
    gc.collect()
