"""Fuzz harness shared by the two twin targets: any exception but DicomFormatError is a crash.

Each input is scanned whole under every transfer syntax (to Pixel Data and to the end), then
once more as chosen by its first byte (syntax, stop tag, offset), and raw-deflated under the
Deflated syntax. For each run the twin's element table, its index record and its index reader
(the compiled fast path for the compiled twin) must agree, and the compiled twin must give the
pure twin's outcome. ``check`` is also what tests/unit/dicom/test_fuzz_vectors.py replays.
"""

from __future__ import annotations

import zlib
from typing import Any

from pacs.dicom import _pyscan
from pacs.dicom import scan as scan_mod
from pacs.errors import DicomFormatError

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG2000 = "1.2.840.10008.1.2.4.90"
SYNTAXES = (IMPLICIT, EXPLICIT, BIG, DEFLATED, JPEG2000)
WHOLE = 0x100000000
STOPS = (scan_mod.PIXEL_DATA, WHOLE, 0x00100000, 0x00080020)


def twin(name: str) -> tuple[Any, Any]:
    """(scan core, index core) of a twin; the compiled one must be built."""
    if name == "python":
        return _pyscan.scan_core, None
    from pacs.dicom import _cscan  # ImportError when not built: the target must not pass

    return _cscan.scan_core, _cscan.index_core


def outcome(cores: tuple[Any, Any], data: bytes, syntax: str, stop: int, offset: int) -> Any:
    core, index_core = cores
    try:
        record: Any = scan_mod._read_index(core, index_core, data, syntax, stop, offset)
    except DicomFormatError as exc:
        record = exc
    try:
        table = scan_mod._scan(core, data, syntax, stop, offset)
    except DicomFormatError as exc:
        if record != exc:
            raise AssertionError(f"index reader {record!r} != table error {exc!r}") from None
        return exc
    size = len(table.buffer)
    for element in table:
        end = element.value_offset + (0 if element.length == 0xFFFFFFFF else element.length)
        if not offset <= element.value_offset <= end <= size:
            raise AssertionError(f"element outside the buffer: {element}")
    attributes = scan_mod.index_attributes(table)
    if record != attributes:
        raise AssertionError(f"index reader {record!r} != index_attributes {attributes!r}")
    if not all(isinstance(v, str) for v in attributes.values()):
        raise AssertionError("non-string index value")
    return table.raw, table.stop_offset, attributes


def runs(data: bytes) -> list[tuple[bytes, str, int, int]]:
    """The (buffer, syntax, stop tag, offset) runs made of one fuzz input."""
    out = [(data, syntax, stop, 0) for syntax in SYNTAXES for stop in STOPS[:2]]
    if data:
        selector, body = data[0], data[1:]
        offset = min((selector >> 2) & 7, len(body))
        out.append((body, SYNTAXES[(selector >> 5) % len(SYNTAXES)], STOPS[selector & 3], offset))
        compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
        deflated = compressor.compress(body) + compressor.flush()
        out.append((deflated, DEFLATED, STOPS[selector & 3], 0))
    return out


def check(data: bytes, name: str, pure: tuple[Any, Any] | None = None) -> None:
    """Run every run of ``data`` on twin ``name``; with ``pure``, compare with the pure twin."""
    cores = twin(name)
    for buffer, syntax, stop, offset in runs(data):
        result = outcome(cores, buffer, syntax, stop, offset)
        if pure is not None and name != "python":
            expected = outcome(pure, buffer, syntax, stop, offset)
            if result != expected:
                raise AssertionError(f"twins differ ({syntax}, stop {stop:#x}, offset {offset})")


def main(name: str) -> None:
    """atheris entry point: ``python -m tests.fuzz.fuzz_<twin> [libFuzzer options] [corpus]``."""
    import sys

    import atheris

    pure = twin("python")
    twin(name)  # fail now, not on the first input, when the compiled twin is not built

    def one_input(data: bytes) -> None:
        check(data, name, pure)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
