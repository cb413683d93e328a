"""Frames read by range from a real FileStore (pacs.web.frames), Accept negotiation of frames
(wado.frame_plan), rendered-image options (render) and the JSON model's binary helpers."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from pacs.store.files import FileStore
from pacs.web import frames
from pacs.web.dicomjson import binary_element, has_pixel_data
from pacs.web.render import JPEG, PNG, Options, choose_media, fit, render_frame
from pacs.web.wado import frame_plan
from tests.dicomgen import make_ct, write


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileStore]:
    s = FileStore(tmp_path / "blobs")
    yield s
    s.close()


def put(store: FileStore, tmp_path: Path, ds: Dataset, syntax: str) -> tuple[str, int]:
    if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
        data = write(ds, tmp_path / "x.dcm", syntax).read_bytes()
    else:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
    info = store.put(ds.SOPInstanceUID, [data])
    return info.location, info.size


def multiframe(count: int, rows: int = 5, columns: int = 3, bits: int = 16) -> Dataset:
    ds = make_ct(rows=rows, columns=columns)
    ds.NumberOfFrames = count
    if bits == 8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = (np.arange(count * rows * columns) % 251).astype(np.uint8).tobytes()
    else:
        ds.PixelData = np.arange(count * rows * columns, dtype=np.uint16).tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_parse_frame_list() -> None:
    assert frames.parse_frame_list("1") == [1]
    assert frames.parse_frame_list("3,1, 2") == [3, 1, 2]
    for bad in ("", "0", "1,", "a", "-1", "1.5", "\u0661", "1;2", "9" * 12):
        with pytest.raises(ValueError):
            frames.parse_frame_list(bad)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    ExplicitVRBigEndian])
def test_native_frames_equal_pydicom(store, tmp_path: Path, syntax: str) -> None:
    ds = multiframe(4)
    expected = ds.pixel_array.astype("<u2")
    location, size = put(store, tmp_path, ds, syntax)
    info = frames.locate(store, location, syntax, size)
    assert (info.rows, info.columns, info.frames, info.bits_allocated) == (5, 3, 4, 16)
    for number in (1, 2, 4):
        assert frames.read_frame(store, location, size, info, number) == \
            expected[number - 1].tobytes()
    for number in (0, 5):
        with pytest.raises(frames.FrameError):
            frames.read_frame(store, location, size, info, number)


def test_odd_sized_8_bit_frames(store, tmp_path: Path) -> None:
    ds = multiframe(3, rows=3, columns=3, bits=8)  # 9 bytes a frame
    location, size = put(store, tmp_path, ds, ExplicitVRLittleEndian)
    info = frames.locate(store, location, ExplicitVRLittleEndian, size)
    got = [frames.read_frame(store, location, size, info, n) for n in (1, 2, 3)]
    assert [len(g) for g in got] == [9, 9, 9]
    assert b"".join(got) == ds.PixelData[:27]


def test_one_bit_frames_not_on_a_byte(store, tmp_path: Path) -> None:
    ds = make_ct(rows=3, columns=3)  # 9 bits a frame: frame 2 starts at bit 9
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.NumberOfFrames = 3
    bits = np.array([1, 0, 1, 1, 0, 0, 1, 1, 1,  0, 1, 1, 0, 1, 0, 0, 0, 1,
                     1, 1, 1, 0, 0, 0, 1, 0, 1], dtype=np.uint8)
    ds.PixelData = np.packbits(bits, bitorder="little").tobytes() + b"\x00"
    location, size = put(store, tmp_path, ds, ExplicitVRLittleEndian)
    info = frames.locate(store, location, ExplicitVRLittleEndian, size)
    for number in (1, 2, 3):
        got = frames.read_frame(store, location, size, info, number)
        want = bits[(number - 1) * 9:number * 9]
        assert np.array_equal(np.unpackbits(np.frombuffer(got, np.uint8),
                                             bitorder="little")[:9], want)


def test_rle_frames_as_stored_and_decoded(store, tmp_path: Path) -> None:
    ds = multiframe(3, rows=8, columns=6)
    expected = ds.pixel_array.copy()
    ds.compress(RLELossless)
    location, size = put(store, tmp_path, ds, RLELossless)
    info = frames.locate(store, location, RLELossless, size)
    assert info.encapsulated and info.frames == 3
    from pydicom.encaps import generate_frames

    stored = list(generate_frames(ds.PixelData, number_of_frames=3))
    data = store.get(location)
    for number in (1, 3):
        assert frames.read_frame(store, location, size, info, number) == stored[number - 1]
        assert frames.decode_frame(data, number) == expected[number - 1].astype("<u2").tobytes()


def test_encapsulated_with_basic_offset_table(store, tmp_path: Path) -> None:
    ds = make_ct(rows=2, columns=2)
    ds.NumberOfFrames = 3
    parts = [b"frame-one!", b"frame-2-longer", b"f3"]
    ds.PixelData = encapsulate(parts, has_bot=True)
    ds["PixelData"].VR = "OB"
    meta = pydicom.dataset.FileMetaDataset()
    meta.TransferSyntaxUID = JPEGLSLossless
    ds.file_meta = meta
    location, size = put(store, tmp_path, ds, JPEGLSLossless)
    info = frames.locate(store, location, JPEGLSLossless, size)
    got = [frames.read_frame(store, location, size, info, n) for n in (1, 2, 3)]
    assert got == parts


def test_no_pixel_data(store, tmp_path: Path) -> None:
    ds = make_ct()
    del ds.PixelData
    location, size = put(store, tmp_path, ds, ExplicitVRLittleEndian)
    with pytest.raises(frames.FrameError):
        frames.locate(store, location, ExplicitVRLittleEndian, size)


def test_large_header_grows_the_head_read(store, tmp_path: Path) -> None:
    ds = multiframe(2)
    ds.ReferencedImageSequence = [Dataset() for _ in range(3 * frames.HEAD // 8)]  # > HEAD
    location, size = put(store, tmp_path, ds, ExplicitVRLittleEndian)
    info = frames.locate(store, location, ExplicitVRLittleEndian, size)
    assert frames.read_frame(store, location, size, info, 2) == \
        ds.pixel_array[1].astype("<u2").tobytes()


RELATED = 'multipart/related; type="{}"'


@pytest.mark.parametrize(("accept", "stored", "plan"), [
    ("", ExplicitVRLittleEndian, (frames.OCTET_STREAM, ExplicitVRLittleEndian)),
    ("*/*", ImplicitVRLittleEndian, (frames.OCTET_STREAM, ExplicitVRLittleEndian)),
    (RELATED.format("image/jpeg"), ExplicitVRLittleEndian, None),
    ("", RLELossless, ("image/dicom-rle", RLELossless)),
    (RELATED.format("image/x-dicom-rle"), RLELossless, ("image/dicom-rle", RLELossless)),
    (RELATED.format("application/octet-stream"), RLELossless,
     (frames.OCTET_STREAM, ExplicitVRLittleEndian)),
    (RELATED.format("application/octet-stream") + "; transfer-syntax=*", RLELossless,
     (frames.OCTET_STREAM, RLELossless)),
    (RELATED.format("image/jls") + f"; transfer-syntax={JPEGLSLossless}", RLELossless, None),
    (RELATED.format("image/jls") + ", " + RELATED.format("application/octet-stream")
     + "; q=0.5", JPEGLSLossless, ("image/jls", JPEGLSLossless)),
    (RELATED.format("application/octet-stream") + "; q=0.5, " + RELATED.format("image/jls"),
     JPEGLSLossless, ("image/jls", JPEGLSLossless)),
    ("application/json", ExplicitVRLittleEndian, None),
])
def test_frame_plan(accept: str, stored: str, plan: tuple[str, str] | None) -> None:
    assert frame_plan(accept, stored) == plan


def test_choose_media_and_fit() -> None:
    assert choose_media("", PNG) == PNG
    assert choose_media("*/*", JPEG) == JPEG
    assert choose_media("image/png, image/jpeg", JPEG) == PNG
    assert choose_media("image/png;q=0.4, image/jpeg", PNG) == JPEG
    assert choose_media("image/gif", PNG) is None
    assert fit((64, 32), (128, 128)) == (128, 64)
    assert fit((64, 64), (100, 50)) == (50, 50)
    assert fit((1000, 1), (10, 10)) == (10, 1)


def test_render_jpeg_viewport_and_region(tmp_path: Path) -> None:
    from PIL import Image

    ds = make_ct(rows=32, columns=64)
    data = write(ds, tmp_path / "ct.dcm").read_bytes()
    jpeg = render_frame(data, 1, None, Options(JPEG, viewport=(32, 32), quality=50))
    image = Image.open(io.BytesIO(jpeg))
    assert (image.format, image.size, image.mode) == ("JPEG", (32, 16), "L")
    png = render_frame(data, 1, (1000, 1, "linear"),
                       Options(PNG, viewport=(16, 16), region=(0, 0, 16, 16)))
    cropped = np.asarray(Image.open(io.BytesIO(png)))
    assert cropped.shape == (16, 16)
    assert np.array_equal(cropped, np.where(ds.pixel_array[:16, :16] >= 1000, 255, 0))


def test_json_binary_helpers() -> None:
    assert has_pixel_data("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    assert not has_pixel_data("1.2.840.10008.5.1.4.1.1.88.22")  # Enhanced SR
    assert not has_pixel_data("")
    small = binary_element("OB", b"\x01\x02", "http://x/bulk")
    assert small == {"vr": "OB", "InlineBinary": base64.b64encode(b"\x01\x02").decode()}
    assert binary_element("OW", b"\x00" * 2000, "http://x/bulk") == {
        "vr": "OW", "BulkDataURI": "http://x/bulk"}
