"""Type stub of the compiled scanner built from ext/scan.pyx (twin of _pyscan.scan_core)."""

from typing import Any

def scan_core(
    buf: Any, explicit: bool, little: bool, stop_tag: int, offset: int
) -> tuple[list[int], int, int, int]: ...
