"""``pwrite`` for the small writes of the large-record path: the compiled
``pacs.store._cfastio.pwrite`` (``ext/fastio.pyx``) keeps the GIL across the system call, its
twin ``os.pwrite`` releases it; results and errors are the same (tests/unit/store/test_fastio.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pacs.extensions import compiled

_module = compiled("pacs.store._cfastio")
pwrite: Callable[[int, Any, int], int] = os.pwrite if _module is None else _module.pwrite
IMPLEMENTATION = "python" if _module is None else "cython"
