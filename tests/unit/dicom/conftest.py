from __future__ import annotations

import pytest

from tests.unit.dicom.builders import CORES


@pytest.fixture(params=sorted(CORES))
def core(request):
    """Each available scanner twin (the compiled one only when built and not disabled)."""
    return CORES[request.param]
