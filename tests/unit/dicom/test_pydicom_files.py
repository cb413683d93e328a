"""pydicom's own test files: same index values as pydicom; truncation raises only our error."""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.multival import MultiValue

from pacs.dicom import part10
from pacs.dicom import scan as scan_mod
from pacs.errors import DicomFormatError
from tests.unit.dicom.builders import CORES, READERS, pydicom_test_files, read_index

FILES = pydicom_test_files()

# Files pydicom reads although they are truncated inside an element value: our policy rejects
# them (a value running past the end of the buffer is a DicomFormatError).
TRUNCATED = {"rtplan_truncated.dcm"}


def _pydicom_values(ds: pydicom.Dataset) -> dict[str, str]:
    out: dict[str, str] = {}
    for kw in scan_mod.INDEX_KEYWORDS:
        if kw not in ds:
            continue
        try:
            elem = ds.data_element(kw)
            value = elem.value
        except Exception:  # pydicom cannot convert it: nothing to compare
            continue
        if elem is None or elem.VR == "SQ" or isinstance(value, bytes):
            continue
        if value is None:
            value = ""
        out[kw] = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
    return out


def _ours(core, data: bytes) -> dict[str, str]:
    meta, offset = part10.read_file_meta(data)
    syntax = meta.get("TransferSyntaxUID", "")
    table = scan_mod._scan(core, data, syntax, scan_mod.PIXEL_DATA, offset)
    return scan_mod.index_attributes(table)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_index_values_match_pydicom(core, path):
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:
            ds = None
        expected = _pydicom_values(ds) if ds is not None else None
    if expected is None:
        # pydicom rejects it: we reject it too, or agree (documented leniency)
        try:
            _ours(core, data)
        except DicomFormatError:
            pass
        return
    if path.name in TRUNCATED:
        with pytest.raises(DicomFormatError, match="past the end"):
            _ours(core, data)
        return
    assert _ours(core, data) == expected


def _outcome(core, data: bytes, stop: int):
    try:
        meta, offset = part10.read_file_meta(data)
        syntax = meta.get("TransferSyntaxUID", "")
        table = scan_mod._scan(core, data, syntax, stop, offset)
        return table.raw, table.stop_offset, scan_mod.index_attributes(table)
    except DicomFormatError as exc:
        return exc


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_truncation_raises_only_dicom_format_error(path):
    """Cut every file at many offsets: both twins agree and raise nothing but our error."""
    data = path.read_bytes()
    n = len(data)
    cuts = set(range(0, min(n, 600), 7)) | {n * k // 40 for k in range(40)} | {n - 1, n - 2}
    for cut in sorted(c for c in cuts if 0 <= c < n):
        piece = data[:cut]
        results = [_outcome(core, piece, 0x100000000) for core in CORES.values()]
        assert all(r == results[0] for r in results), cut


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_whole_dataset_twins_agree(path):
    data = path.read_bytes()
    results = [_outcome(core, data, 0x100000000) for core in CORES.values()]
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_index_readers_agree(path):
    """The compiled fast path gives the pure twin's record (or error), headers and whole."""
    data = path.read_bytes()
    for stop in (scan_mod.PIXEL_DATA, 0x100000000):
        results = []
        for name in READERS:
            try:
                meta, offset = part10.read_file_meta(data)
                results.append(read_index(name, data, meta.get("TransferSyntaxUID", ""), stop,
                                          offset))
            except DicomFormatError as exc:
                results.append(exc)
        assert all(r == results[0] for r in results)
