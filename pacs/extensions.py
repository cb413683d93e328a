"""Which twin runs: the compiled modules built from ``ext/*.pyx``, or their pure-Python twins.

``PACS_NO_EXTENSIONS=1`` (or a build without them) selects the pure twins everywhere.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def compiled(name: str) -> ModuleType | None:
    """The compiled module ``name`` (e.g. ``pacs.store._ccrc``); None when extensions are off
    or the module was not built."""
    if os.environ.get("PACS_NO_EXTENSIONS", "") in ("1", "true", "yes"):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
