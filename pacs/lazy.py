"""Modules imported on first use: ``pa = lazy_module("pyarrow")`` binds a name at import time
while the module itself loads when an attribute is first read.

pyarrow costs ~33 MiB per worker process, and only column scans use it: a worker that stores
and retrieves never needs it. Type checkers see the real module (import it under
``TYPE_CHECKING`` beside the lazy binding).
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    """Stands for module ``name`` until an attribute is read, then copies the real one's."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_target"] = name

    def __getattr__(self, attribute: str) -> Any:
        module = importlib.import_module(self.__dict__["_lazy_target"])
        # Later reads find the attributes here without calling __getattr__ again.
        self.__dict__.update(module.__dict__)
        return getattr(module, attribute)


def lazy_module(name: str) -> Any:
    """A stand-in for module ``name`` that imports it when first used."""
    return _LazyModule(name)
