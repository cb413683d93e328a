"""Tag scanner vs pydicom: element table + index record of typical CT/MR headers.

Run: ``.venv/bin/pytest bench/bench_scan.py --benchmark-enable`` (after
``.venv/bin/python setup.py build_ext --inplace``). Each case is measured for pydicom
(``dcmread(..., stop_before_pixels=True)`` plus reading the index attributes), the compiled
scanner and the pure-Python twin, on the same bytes; the ratios are printed at the end.
"""

from __future__ import annotations

import io
import os
import warnings

import pydicom
import pytest
from pydicom.multival import MultiValue

from pacs.dicom import _pyscan, part10
from pacs.dicom import scan as scan_mod

try:
    from pacs.dicom import _cscan
except ImportError:  # not built
    _cscan = None

TEST_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
CASES = {
    # typical single-frame CT and MR headers (pydicom's own samples)
    "CT": "CT_small.dcm",
    "MR": "MR_small.dcm",
    "MR-implicit": "MR_small_implicit.dcm",
    "CT-jpeg2000": "JPEG2000.dcm",
}
RESULTS: dict[tuple[str, str], float] = {}


def _load(name: str) -> tuple[bytes, bytes, str, int]:
    with open(os.path.join(TEST_FILES, name), "rb") as f:
        data = f.read()
    meta, offset = part10.read_file_meta(data)
    return data, data[offset:], meta["TransferSyntaxUID"], offset


def _pydicom_index(data: bytes) -> dict[str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    out = {}
    for kw in scan_mod.INDEX_KEYWORDS:
        if kw in ds:
            v = ds.data_element(kw).value
            out[kw] = "\\".join(map(str, v)) if isinstance(v, MultiValue) else str(v)
    return out


def _ours(core):
    def run(dataset: bytes, syntax: str) -> dict[str, str]:
        table = scan_mod._scan(core, dataset, syntax, scan_mod.PIXEL_DATA, 0)
        return scan_mod.index_attributes(table)

    return run


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if not RESULTS or reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        _write_report(reporter)


def _write_report(reporter) -> None:
    reporter.write_line("")
    reporter.write_line("scan + index record, mean per header (ratio = pydicom / ours):")
    for case in CASES:
        base = RESULTS.get((case, "pydicom"))
        if base is None:
            continue
        parts = [f"{case:12s} pydicom {base * 1e6:8.1f} us"]
        for impl in ("cython", "python"):
            t = RESULTS.get((case, impl))
            if t:
                parts.append(f"{impl} {t * 1e6:7.1f} us ({base / t:5.1f}x)")
        reporter.write_line("  ".join(parts))


def _record(benchmark, case: str, impl: str) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[(case, impl)] = stats.stats.mean


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", ["pydicom", "cython", "python"])
def test_scan_index(benchmark, case, impl):
    data, dataset, syntax, _offset = _load(CASES[case])
    benchmark.group = f"scan+index {case}"
    if impl == "pydicom":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = benchmark(_pydicom_index, data)
        assert expected == scan_mod.read_index_attributes(dataset, syntax)
    else:
        core = _cscan.scan_core if impl == "cython" and _cscan else _pyscan.scan_core
        if impl == "cython" and _cscan is None:
            pytest.skip("compiled scanner not built")
        result = benchmark(_ours(core), dataset, syntax)
        assert result["SOPInstanceUID"]
    _record(benchmark, case, impl)


@pytest.mark.parametrize("impl", ["cython", "python"])
def test_scan_table_only(benchmark, impl):
    """The element table alone (no decoding) of the CT header."""
    if impl == "cython" and _cscan is None:
        pytest.skip("compiled scanner not built")
    core = _cscan.scan_core if impl == "cython" else _pyscan.scan_core
    _data, dataset, syntax, _offset = _load(CASES["CT"])
    benchmark.group = "table only CT"
    table = benchmark(scan_mod._scan, core, dataset, syntax, scan_mod.PIXEL_DATA, 0)
    assert len(table) > 100
