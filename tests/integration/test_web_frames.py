"""WADO-RS frames, bulk data, rendered images and thumbnails over a real ``pacs serve``:
dicomweb-client where it has the call, httpx for media types and errors."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from tests.conftest import ArchiveProcess, free_port
from tests.dicomgen import make_ct
from tests.integration.test_web import part10_bytes, stow, wado_parts, wait_http

pytestmark = pytest.mark.integration

OCTET = 'multipart/related; type="application/octet-stream"'


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("frames")
    http_port = free_port()
    archive = ArchiveProcess(tmp / "data", free_port(), extra_args=["--http-port", str(http_port)])
    archive.start()
    yield wait_http(archive, http_port)
    archive.stop()


@pytest.fixture
def client(server: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{server}/dicom-web")


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multiframe_mr(frames: int = 4, rows: int = 6, columns: int = 5) -> Dataset:
    ds = make_ct(patient_id="WEB-MF", rows=rows, columns=columns)
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.NumberOfFrames = frames
    pixels = (np.arange(frames * rows * columns, dtype=np.uint16) * 7 % 4096)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def url_of(base: str, ds: Dataset) -> str:
    return (f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def test_native_ct_frame_is_pixel_bytes(server: str, client, tmp_path: Path) -> None:
    ds = make_ct(patient_id="WEB-FR1", rows=33, columns=17)
    assert stow(server, [part10_bytes(ds, tmp_path)]).status_code == 200
    [frame] = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                              ds.SOPInstanceUID, [1])
    assert frame == ds.pixel_array.astype("<u2").tobytes()
    response = httpx.get(f"{url_of(server, ds)}/frames/1", headers={"Accept": OCTET})
    [(ctype, body)] = wado_parts(response)
    assert ctype == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    assert body == frame


def test_multiframe_frames_and_errors(server: str, client) -> None:
    ds = multiframe_mr()
    assert stow(server, [encoded(ds)]).status_code == 200
    expected = ds.pixel_array
    got = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                          ds.SOPInstanceUID, [2, 3])
    assert got == [expected[1].tobytes(), expected[2].tobytes()]
    url = url_of(server, ds)
    [(_, last)] = wado_parts(httpx.get(f"{url}/frames/4"))
    assert last == expected[3].tobytes()
    assert httpx.get(f"{url}/frames/5").status_code == 404
    assert httpx.get(f"{url}/frames/2,5").status_code == 404
    for bad in ("0", "x", "1,,2", "-1"):
        assert httpx.get(f"{url}/frames/{bad}").status_code == 400, bad
    not_acceptable = httpx.get(f"{url}/frames/1",
                               headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert not_acceptable.status_code == 406
    assert httpx.get(f"{server}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                     f"{ds.SeriesInstanceUID}/instances/1.2.3.4/frames/1").status_code == 404

    # the Pixel Data BulkDataURI of the index-only metadata resolves to the whole value
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                             ds.SOPInstanceUID)
    pixel = meta["7FE00010"]
    assert pixel["vr"] == "OW" and "Value" not in pixel
    # dicomweb-client sends "Host: 127.0.0.1" without the port: the URI has the host it named
    assert pixel["BulkDataURI"] == f"{url}/bulkdata/7FE00010".replace(
        server, server.rsplit(":", 1)[0])
    assert httpx.get(f"{url}/metadata").json()[0]["7FE00010"]["BulkDataURI"] == \
        f"{url}/bulkdata/7FE00010"
    [value] = client.retrieve_bulkdata(f"{url}/bulkdata/7FE00010")
    assert value == ds.PixelData
    [rows] = client.retrieve_bulkdata(f"{url}/bulkdata/00280010")
    assert rows == (6).to_bytes(2, "little")
    assert httpx.get(f"{url}/bulkdata/00091010").status_code == 404
    assert httpx.get(f"{url}/bulkdata/zz").status_code == 400


def test_rle_frames_as_stored_and_decoded(server: str, client) -> None:
    ds = multiframe_mr(frames=3, rows=16, columns=12)
    expected = ds.pixel_array.copy()
    ds.compress(RLELossless)
    assert stow(server, [encoded(ds)]).status_code == 200
    stored = list(generate_frames(ds.PixelData, number_of_frames=3))
    url = url_of(server, ds)

    as_stored = httpx.get(f"{url}/frames/3,1")
    assert as_stored.status_code == 200
    assert wado_parts(as_stored) == [
        (f"image/dicom-rle; transfer-syntax={RLELossless}", stored[2]),
        (f"image/dicom-rle; transfer-syntax={RLELossless}", stored[0])]
    got = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                          ds.SOPInstanceUID, [2],
                                          media_types=(("image/x-dicom-rle", RLELossless),))
    assert got == [stored[1]]

    decoded = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1, 3],
        media_types=(("application/octet-stream", ExplicitVRLittleEndian),))
    assert decoded == [expected[0].astype("<u2").tobytes(), expected[2].astype("<u2").tobytes()]
    jls = httpx.get(f"{url}/frames/1", headers={
        "Accept": f'multipart/related; type="image/jls"; transfer-syntax={JPEGLSLossless}'})
    assert jls.status_code == 406

    # Pixel Data bulk data of encapsulated pixel data: the frames, as stored
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                             ds.SOPInstanceUID)
    assert meta["7FE00010"]["vr"] == "OB"
    assert meta["7FE00010"]["BulkDataURI"].endswith(f"{ds.SOPInstanceUID}/bulkdata/7FE00010")
    assert client.retrieve_bulkdata(f"{url}/bulkdata/7FE00010") == stored


def test_rendered_jpeg_viewport_quality(server: str, client, tmp_path: Path) -> None:
    from PIL import Image

    ds = make_ct(patient_id="WEB-REN", rows=40, columns=80)
    assert stow(server, [part10_bytes(ds, tmp_path)]).status_code == 200
    jpeg = client.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("image/jpeg",),
        params={"viewport": "40,40", "quality": "80", "window": "2048,4096,linear-exact"})
    image = Image.open(io.BytesIO(jpeg))
    assert (image.format, image.size) == ("JPEG", (40, 20))
    url = url_of(server, ds)
    png = httpx.get(f"{url}/rendered", params={"viewport": "20,100"},
                    headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (20, 10)
    for params in ({"viewport": "0,10"}, {"viewport": "10"}, {"quality": "101"},
                   {"window": "1,1,cubic"}):
        assert httpx.get(f"{url}/rendered", params=params).status_code == 400, params


def test_thumbnails(server: str, tmp_path: Path) -> None:
    from PIL import Image

    study = generate_uid()
    first, second = generate_uid(), generate_uid()
    datasets = []
    for number in (1, 2, 3):  # the middle one of the first series shows: a brighter image
        ds = make_ct(patient_id="WEB-TN", study_uid=study, series_uid=first, rows=32,
                     columns=64, instance_number=number)
        ds.PixelData = np.full((32, 64), 1000 * number, dtype=np.uint16).tobytes()
        datasets.append(ds)
    later = make_ct(patient_id="WEB-TN", study_uid=study, series_uid=second)
    later.SeriesNumber = 2
    assert stow(server, [part10_bytes(d, tmp_path) for d in [later, *datasets]]).status_code \
        == 200
    base = f"{server}/dicom-web/studies/{study}"
    window = {"window": "2000,1000"}  # instance 1: black, 2: grey, 3: white
    for url in (f"{base}/thumbnail", f"{base}/series/{first}/thumbnail",
                f"{url_of(server, datasets[1])}/thumbnail"):
        response = httpx.get(url, params=window)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(response.content))
        assert (image.format, image.size) == ("JPEG", (128, 64))
        assert abs(float(np.asarray(image).mean()) - 127.5) < 3  # the middle instance: grey
    png = httpx.get(f"{base}/thumbnail", params={"viewport": "32,32"},
                    headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(png.content)).size == (32, 16)
    assert httpx.get(f"{server}/dicom-web/studies/1.2.3.999/thumbnail").status_code == 404
    assert httpx.get(f"{base}/series/1.2.3.999/thumbnail").status_code == 404
    assert httpx.get(f"{base}/thumbnail", headers={"Accept": "image/gif"}).status_code == 406


def test_jpeg_baseline_frame_as_stored_and_decoded(server: str, client) -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")
    ds = pydicom.dcmread(path)
    with open(path, "rb") as f:
        assert stow(server, [f.read()]).status_code == 200
    [compressed] = list(generate_frames(ds.PixelData, number_of_frames=1))
    url = url_of(server, ds)
    [(ctype, body)] = wado_parts(httpx.get(f"{url}/frames/1"))
    assert ctype == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert body == compressed
    [decoded] = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1],
        media_types=(("application/octet-stream", ExplicitVRLittleEndian),))
    assert decoded == ds.pixel_array.tobytes()  # RGB, interleaved, as pydicom decodes it
    assert len(decoded) == 100 * 100 * 3


def test_multiframe_rendered_frames_differ(server: str) -> None:
    from PIL import Image

    ds = multiframe_mr(frames=3, rows=8, columns=8)
    ds.PixelData = np.repeat(np.array([0, 2000, 4000], dtype=np.uint16), 64).tobytes()
    assert stow(server, [encoded(ds)]).status_code == 200
    url = url_of(server, ds)
    means = []
    for number in (1, 2, 3):
        response = httpx.get(f"{url}/frames/{number}/rendered", params={"window": "2000,4000"})
        assert response.status_code == 200
        means.append(float(np.asarray(Image.open(io.BytesIO(response.content))).mean()))
    assert means[0] < means[1] < means[2]
    assert httpx.get(f"{url}/frames/4/rendered").status_code == 404
