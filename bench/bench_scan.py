"""Tag scanner vs pydicom: index record of a CT and an enhanced MR, per transfer syntax.

Run: ``.venv/bin/pytest bench/bench_scan.py --benchmark-enable`` (after
``.venv/bin/python setup.py build_ext --inplace``). Every (header, syntax) case is measured,
in the same run and on the same instance, for:

* ``pydicom``: ``dcmread(..., stop_before_pixels=True)`` of the Part-10 bytes plus reading the
  index attributes;
* ``python``: the pure twin (``_pyscan`` + ``index_attributes``) on the bare dataset;
* ``cython``: the compiled scanner (``read_index_attributes``' fast path) on the bare dataset.

Headers: ``CT`` is a typical CT header (about 3 KB of attributes) before 512 KB of pixels;
``MR`` an enhanced MR of 400 frames whose functional groups make thousands of elements in
nested undefined-length sequences (64 x 64 pixels per frame). The table printed at the end
gives instances/s and MB/s (of the whole Part-10 instance) and the ratios.
The instances are built here with pydicom (``ct_instance``, ``mr_instance``); ``bench/guard.py``
uses the same CT header.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from pacs.dicom import _pyscan, part10
from pacs.dicom import scan as scan_mod

try:
    from pacs.dicom import _cscan
except ImportError:  # not built
    _cscan = None

SYNTAXES = {
    "implicit": ImplicitVRLittleEndian,
    "explicit": ExplicitVRLittleEndian,
    "big": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "jpeg2000": JPEG2000Lossless,
}
HEADERS = ("CT", "MR")
IMPLS = ("pydicom", "python", "cython")
RESULTS: dict[tuple[str, str, str], float] = {}


# -- instances ------------------------------------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ct_header() -> Dataset:
    """About 3 KB of the attributes a CT scanner writes (pydicom's CT_small, enriched)."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.remove_private_tags()
    del ds.PixelData
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = "A20240117-0042"
    ds.ReferringPhysicianName = "Dupont^Marie^^Dr"
    ds.StudyDescription = "CT THORAX ABDOMEN PELVIS WITH CONTRAST"
    ds.SeriesDescription = "Axial 1.25mm Soft Tissue"
    ds.PatientBirthDate = "19610412"
    ds.BodyPartExamined = "CHEST"
    ds.InstitutionName = "Hôpital Universitaire"
    ds.InstitutionAddress = "1 rue de la Santé, 75014 Paris"
    ds.StationName = "CTSCAN01"
    ds.OperatorsName = ["Tech^One", "Tech^Two"]
    ds.ProcedureCodeSequence = Sequence([_code("CTTAP", "99LOCAL", "CT thorax abdomen pelvis")])
    ds.ReferencedStudySequence = Sequence([Dataset() for _ in range(2)])
    for i, item in enumerate(ds.ReferencedStudySequence):
        item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{1000 + i}"
    ds.SourceImageSequence = Sequence([Dataset() for _ in range(6)])
    for i, item in enumerate(ds.SourceImageSequence):
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77{i}.{i + 4}"
    ds.ContrastBolusAgent = "OMNIPAQUE 350"
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusVolume = "100"
    ds.ImageComments = "Venous phase, 70 s delay. " * 6
    ds.RequestAttributesSequence = Sequence([Dataset()])
    ds.RequestAttributesSequence[0].RequestedProcedureID = "RP-7781"
    ds.RequestAttributesSequence[0].ScheduledProcedureStepID = "SPS-7781-1"
    ds.RequestAttributesSequence[0].ScheduledProtocolCodeSequence = Sequence(
        [_code("CT-TAP-C", "99LOCAL", "Routine TAP with contrast")]
    )
    return ds


def _mr_header(frames: int) -> Dataset:
    """An enhanced MR: per-frame functional groups of ``frames`` frames, all undefined-length."""
    ds = _ct_header()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.Modality = "MR"
    ds.NumberOfFrames = frames
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.9375, 0.9375]
    shared.PixelMeasuresSequence[0].SliceThickness = "3"
    shared.MRTimingAndRelatedParametersSequence = Sequence([Dataset()])
    shared.MRTimingAndRelatedParametersSequence[0].RepetitionTime = "4000"
    shared.MRTimingAndRelatedParametersSequence[0].FlipAngle = "90"
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for i in range(frames):
        group = Dataset()
        content = Dataset()
        content.FrameAcquisitionNumber = i
        content.StackID = "1"
        content.InStackPositionNumber = i + 1
        content.DimensionIndexValues = [1, i + 1]
        content.FrameAcquisitionDateTime = f"20240117101500.{i:06d}"
        group.FrameContentSequence = Sequence([content])
        position = Dataset()
        position.ImagePositionPatient = [-120.0, -120.0, -60.0 + 3.0 * i]
        group.PlanePositionSequence = Sequence([position])
        orientation = Dataset()
        orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        group.PlaneOrientationSequence = Sequence([orientation])
        frame_type = Dataset()
        frame_type.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        frame_type.PixelPresentation = "MONOCHROME"
        frame_type.VolumetricProperties = "VOLUME"
        group.MRImageFrameTypeSequence = Sequence([frame_type])
        echo = Dataset()
        echo.EffectiveEchoTime = 90.0 + i % 3
        group.MREchoSequence = Sequence([echo])
        transform = Dataset()
        transform.RescaleIntercept = "0"
        transform.RescaleSlope = "1"
        transform.RescaleType = "US"
        group.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    _undefined_lengths(ds)
    return ds


def _undefined_lengths(ds: Dataset) -> None:
    for element in ds:
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
                _undefined_lengths(item)


def _with_pixels(ds: Dataset, rows: int, columns: int, frames: int, syntax: str) -> bytes:
    """Part-10 bytes of ``ds`` with 16-bit pixels (encapsulated fragments for JPEG 2000)."""
    fresh = Dataset()  # no original encoding: pydicom writes it in any syntax
    for element in ds:
        fresh.add(element)
    ds = fresh
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 4096, size=rows * columns * frames, dtype=np.uint16)
    if syntax == JPEG2000Lossless:
        # Not a real codestream (nothing here decodes pixels): same size, in 64 KB fragments
        frame_bytes = pixels.tobytes()
        per_frame = len(frame_bytes) // frames
        ds.PixelData = encapsulate(
            [frame_bytes[i * per_frame : (i + 1) * per_frame] for i in range(frames)],
            fragments_per_frame=max(1, per_frame // 65536),
        )
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = pixels.byteswap().tobytes() if syntax == ExplicitVRBigEndian else (
            pixels.tobytes())
        ds["PixelData"].VR = "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True, little_endian=None, implicit_vr=None)
    return out.getvalue()


@functools.cache
def ct_instance(syntax: str) -> bytes:
    """A typical CT (about 3 KB of attributes, 512 x 512 x 16-bit pixels) in ``syntax``."""
    return _with_pixels(_ct_header(), 512, 512, 1, syntax)


@functools.cache
def mr_instance(syntax: str, frames: int = 400) -> bytes:
    """An enhanced MR of ``frames`` 64 x 64 frames in ``syntax``."""
    return _with_pixels(_mr_header(frames), 64, 64, frames, syntax)


def dataset_of(instance: bytes) -> tuple[bytes, str]:
    """(bare dataset, transfer syntax) of a Part-10 instance: what ingest receives."""
    meta, offset = part10.read_file_meta(instance)
    return instance[offset:], meta["TransferSyntaxUID"]


# -- the three readers ----------------------------------------------------------------------


def pydicom_index(instance: bytes) -> dict[str, str]:
    """pydicom's way: dcmread up to the pixels, then the index attributes as strings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(instance), stop_before_pixels=True)
        out = {}
        for kw in scan_mod.INDEX_KEYWORDS:
            if kw in ds:
                v = ds.data_element(kw).value
                out[kw] = "\\".join(map(str, v)) if isinstance(v, MultiValue) else str(v)
    return out


def pure_index(dataset: bytes, syntax: str, stop: int = scan_mod.PIXEL_DATA) -> dict[str, str]:
    return scan_mod._read_index(_pyscan.scan_core, None, dataset, syntax, stop, 0)


def compiled_index(dataset: bytes, syntax: str, stop: int = scan_mod.PIXEL_DATA) -> dict[str, str]:
    if _cscan is None:
        raise RuntimeError("compiled scanner not built")
    return scan_mod._read_index(_cscan.scan_core, _cscan.index_core, dataset, syntax, stop, 0)


def instance_for(header: str, syntax: str) -> bytes:
    return ct_instance(syntax) if header == "CT" else mr_instance(syntax)


# -- benchmarks -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if not RESULTS or reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        for line in table_lines():
            reporter.write_line(line)


def table_lines() -> list[str]:
    lines = [
        "",
        "index record per instance (mean); MB/s of the whole Part-10 instance",
        f"{'header':6} {'syntax':9} {'header KB':>9} {'file MB':>7}  "
        + "  ".join(f"{impl + ' inst/s':>16} {'MB/s':>7}" for impl in IMPLS)
        + f"  {'vs pydicom':>10} {'vs pure':>8}",
    ]
    for header in HEADERS:
        for name, syntax in SYNTAXES.items():
            times = {impl: RESULTS.get((header, name, impl)) for impl in IMPLS}
            if not any(times.values()):
                continue
            instance = instance_for(header, syntax)
            dataset, ts = dataset_of(instance)
            stop = scan_mod.scan(dataset, ts).stop_offset
            size_mb = len(instance) / 1e6
            cells = []
            for impl in IMPLS:
                t = times[impl]
                cells.append(f"{1 / t:16,.0f} {size_mb / t:7,.0f}" if t else f"{'-':>16} {'-':>7}")
            ours, base, pure = times["cython"], times["pydicom"], times["python"]
            ratio_pd = f"{base / ours:9.1f}x" if ours and base else f"{'-':>10}"
            ratio_py = f"{pure / ours:7.1f}x" if ours and pure else f"{'-':>8}"
            lines.append(
                f"{header:6} {name:9} {(stop or 0) / 1e3:9.1f} {size_mb:7.2f}  "
                + "  ".join(cells) + f"  {ratio_pd} {ratio_py}"
            )
    return lines


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("header", HEADERS)
def test_index_record(benchmark, header, syntax, impl):
    instance = instance_for(header, SYNTAXES[syntax])
    dataset, ts = dataset_of(instance)
    benchmark.group = f"index record {header} {syntax}"
    expected = pydicom_index(instance)
    if impl == "pydicom":
        result = benchmark(pydicom_index, instance)
    elif impl == "python":
        result = benchmark(pure_index, dataset, ts)
    else:
        if _cscan is None:
            pytest.skip("compiled scanner not built")
        result = benchmark(compiled_index, dataset, ts)
    assert result == expected
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[(header, syntax, impl)] = stats.stats.mean


@pytest.mark.parametrize("impl", ["python", "cython"])
@pytest.mark.parametrize("syntax", ["explicit", "jpeg2000"])
def test_whole_dataset_validation(benchmark, syntax, impl):
    """Ingest's path: the whole received CT dataset walked (stop tag past every tag)."""
    dataset, ts = dataset_of(ct_instance(SYNTAXES[syntax]))
    benchmark.group = f"whole dataset CT {syntax}"
    if impl == "cython" and _cscan is None:
        pytest.skip("compiled scanner not built")
    reader = compiled_index if impl == "cython" else pure_index
    result = benchmark(reader, dataset, ts, 0x100000000)
    assert result["SOPInstanceUID"]


@pytest.mark.parametrize("impl", ["python", "cython"])
def test_scan_table_only(benchmark, impl):
    """The element table alone (no decoding) of the CT header."""
    if impl == "cython" and _cscan is None:
        pytest.skip("compiled scanner not built")
    core = _cscan.scan_core if impl == "cython" else _pyscan.scan_core
    dataset, ts = dataset_of(ct_instance(ExplicitVRLittleEndian))
    benchmark.group = "table only CT"
    table = benchmark(scan_mod._scan, core, dataset, ts, scan_mod.PIXEL_DATA, 0)
    assert len(table) > 50
