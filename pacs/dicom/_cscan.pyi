"""Type stub of the compiled scanner built from ext/scan.pyx (twin of _pyscan.scan_core)."""

from array import array
from collections.abc import Callable, Sequence
from typing import Any

def scan_core(
    buf: Any, explicit: bool, little: bool, stop_tag: int, offset: int
) -> tuple[array[int], int, int, int]: ...

class IndexSpec:
    def __init__(
        self,
        tags: Sequence[int],
        keywords: Sequence[str],
        vrs: Sequence[str],
        string_vrs: Sequence[str],
        decode_value: Callable[[str, bytes, tuple[str, ...]], str],
        charset_info: Callable[[str], tuple[tuple[str, ...], int]],
        default: tuple[tuple[str, ...], int],
        charset_tag: int,
    ) -> None: ...

def index_core(
    buf: Any, explicit: bool, little: bool, stop_tag: int, offset: int, spec: IndexSpec
) -> tuple[dict[str, str] | None, int, int, int]: ...
