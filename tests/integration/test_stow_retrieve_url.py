"""STOW-RS RetrieveURL of each stored instance (read from the sent data set, or from the index
for a kept duplicate) points at the instance the archive holds, whatever the path taken: one
part or several, explicit or implicit VR, Part-10 with or without its preamble."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from tests.conftest import ArchiveProcess, free_port
from tests.dicomgen import make_ct
from tests.integration.test_web import (
    dataset_part,
    part10_bytes,
    stow,
    values,
    wado_parts,
    wait_http,
)

ACCEPT = {"Accept": "multipart/related; type=application/dicom"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One archive, one worker (every request to the same process and index)."""
    http_port = free_port()
    archive = ArchiveProcess(tmp_path_factory.mktemp("stow-url") / "data", free_port(),
                             extra_args=["--http-port", str(http_port), "--workers", "1"])
    archive.start()
    yield wait_http(archive, http_port)
    archive.stop()


def _expected(base: str, ds: pydicom.Dataset) -> str:
    return (f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def _urls(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {values(item, "00081155")[0]: values(item, "00081190")[0]
            for item in values(response.json(), "00081199")}


def test_retrieve_url_of_one_and_several_parts(base: str, tmp_path: Path) -> None:
    datasets = [make_ct(patient_id="WEB-URL", instance_number=i) for i in range(4)]
    data = [part10_bytes(ds, tmp_path) for ds in datasets]
    urls = _urls(stow(base, data[:1]))
    urls.update(_urls(stow(base, data[1:])))
    assert urls == {ds.SOPInstanceUID: _expected(base, ds) for ds in datasets}
    for ds, sent in zip(datasets, data, strict=True):
        r = httpx.get(urls[ds.SOPInstanceUID], headers=ACCEPT, timeout=30)
        assert r.status_code == 200, r.text
        [(_ctype, got)] = wado_parts(r)
        assert dataset_part(got) == dataset_part(sent)


def test_retrieve_url_implicit_vr_and_without_preamble(base: str, tmp_path: Path) -> None:
    implicit = make_ct(patient_id="WEB-URL-IVR")
    bare = make_ct(patient_id="WEB-URL-BARE")
    bare_data = part10_bytes(bare, tmp_path)[132:]  # group 0002 first, no preamble and DICM
    urls = _urls(stow(base, [part10_bytes(implicit, tmp_path, ImplicitVRLittleEndian)]))
    urls.update(_urls(stow(base, [bare_data])))
    assert urls == {implicit.SOPInstanceUID: _expected(base, implicit),
                    bare.SOPInstanceUID: _expected(base, bare)}


def test_retrieve_url_of_a_kept_duplicate_is_the_stored_one(base: str, tmp_path: Path) -> None:
    first = make_ct(patient_id="WEB-URL-DUP")
    again = make_ct(patient_id="WEB-URL-DUP", sop_uid=first.SOPInstanceUID)
    assert again.SeriesInstanceUID != first.SeriesInstanceUID
    assert _urls(stow(base, [part10_bytes(first, tmp_path)])) == {
        first.SOPInstanceUID: _expected(base, first)}
    # The archive keeps the first data set: the answer names where it is, not the new series.
    assert _urls(stow(base, [part10_bytes(again, tmp_path)])) == {
        first.SOPInstanceUID: _expected(base, first)}
