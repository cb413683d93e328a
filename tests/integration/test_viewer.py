"""The web viewer in a real browser: Debian's headless Chromium driven by Playwright opens the
launch URL of a stored CT study and the test reads the canvas back, pixel by pixel.

A CT series of five slices whose pixels differ per slice (a gradient shifted by InstanceNumber)
is stored with storescu, sent out of order; a second series of two slices sits beside it. Each
drawn canvas must equal the archive's own rendered PNG of the slice the viewer says it shows.
Screenshots are kept under the test's tmp_path and copied to build/test-artifacts/viewer-*.png.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, Route, sync_playwright

from tests.conftest import REPO, ArchiveProcess, free_port, require_tool
from tests.dicomgen import make_ct, write

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "build" / "test-artifacts"
ROWS, COLUMNS = 80, 96  # not square: a transposed canvas would not match
SLICES = 5
TIMEOUT_MS = 10_000


def slice_pixels(number: int, series: int = 1) -> np.ndarray:
    """12-bit pixels of slice ``number``: a diagonal gradient shifted per slice (and series)."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS]
    ramp = (x * 8 + y * 4 + number * 160 + (series - 1) * 512) % 1024
    return (ramp * 4).astype(np.uint16)


def wait_http(archive: ArchiveProcess, base: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/system", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"HTTP did not come up:\n{archive.log()}")


@pytest.fixture
def study(archive_factory, tmp_path: Path) -> Iterator[tuple[str, str, list[str], list[list[str]]]]:
    """(HTTP base, StudyInstanceUID, Series Instance UIDs by SeriesNumber, SOP Instance UIDs
    per series in InstanceNumber order)."""
    http_port = free_port()
    archive = archive_factory("--http-port", str(http_port), "--workers", "1")
    base = f"http://127.0.0.1:{http_port}"
    wait_http(archive, base)
    first = make_ct()
    study_uid = first.StudyInstanceUID
    series_uids = [first.SeriesInstanceUID, make_ct().SeriesInstanceUID]
    counts = [SLICES, 2]
    files, uids = [], []
    for series, (series_uid, n) in enumerate(zip(series_uids, counts, strict=True), start=1):
        per_series = []
        for number in range(1, n + 1):
            ds = make_ct(patient_id="VIEWER", patient_name="Viewer^Vera", study_uid=study_uid,
                         series_uid=series_uid, rows=ROWS, columns=COLUMNS,
                         instance_number=number)
            ds.SeriesNumber = series
            ds.SeriesDescription = f"Series {series}"
            ds.WindowCenter, ds.WindowWidth = 2048, 4096
            ds.PixelData = slice_pixels(number, series).tobytes()
            per_series.append(ds.SOPInstanceUID)
            files.append(write(ds, tmp_path / f"s{series}-{number}.dcm"))
        uids.append(per_series)
    order = [files[i] for i in (2, 0, 4, 1, 6, 3, 5)]  # InstanceNumbers 3 1 5 2 . 4 .: unsorted
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), *map(str, order)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    yield base, study_uid, series_uids, uids


def rendered(base: str, study: str, series: str, instance: str) -> np.ndarray:
    """The archive's rendered PNG of one instance, as a (rows, columns) uint8 array."""
    url = f"{base}/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered"
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("L"))


def canvas_pixels(page: Page) -> np.ndarray:
    """The viewer canvas as drawn: (height, width, 4) RGBA."""
    got = page.evaluate("""() => {
        const c = document.getElementById("view");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height);
        return {width: c.width, height: c.height, data: Array.from(d.data)};
    }""")
    return np.array(got["data"], dtype=np.uint8).reshape(got["height"], got["width"], 4)


def settle(page: Page) -> None:
    """Let pending load events and their draws run (two animation frames)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def wait_slice(page: Page, number: int, total: int, expected: np.ndarray) -> np.ndarray:
    """Wait until the viewer says it shows ``number`` and the canvas holds ``expected``."""
    page.wait_for_function("([label, w, h]) => document.getElementById('info').textContent"
                           " === label && document.getElementById('view').width === w"
                           " && document.getElementById('view').height === h",
                           arg=[f"slice {number} / {total}", COLUMNS, ROWS], timeout=TIMEOUT_MS)
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        settle(page)
        pixels = canvas_pixels(page)
        gray = pixels[..., 0]
        if (np.array_equal(gray, expected) or time.monotonic() > deadline):
            break
        time.sleep(0.05)
    assert pixels.shape == (ROWS, COLUMNS, 4)
    assert (pixels[..., 3] == 255).all(), "canvas is not fully painted"
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert np.array_equal(pixels[..., 0], pixels[..., 2]), "a grayscale slice is drawn in colour"
    assert np.array_equal(gray, expected), (
        f"canvas for slice {number} differs from its rendered PNG in "
        f"{int((gray != expected).sum())} pixels")
    return gray


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"viewer-{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / path.name)
    return path


def test_viewer_shows_and_scrolls_a_ct_series(study, tmp_path: Path) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is not installed (make test installs Debian's chromium)")
    base, study_uid, (ct_series, other_series), uids = study
    expected = [rendered(base, study_uid, ct_series, uid) for uid in uids[0]]
    for a in range(SLICES):  # the data set is good for the test: every slice is different
        assert len(np.unique(expected[a])) > 50
        for b in range(a):
            assert not np.array_equal(expected[a], expected[b])
    errors: list[str] = []  # page errors and failed requests (the favicon aside)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
            page.goto(f"{base}/viewer?StudyInstanceUID={study_uid}", timeout=TIMEOUT_MS)

            # The launch URL: the series list, the first series (by SeriesNumber) opened at
            # its first slice (by InstanceNumber, although slice 3 was stored first).
            page.wait_for_selector("#series div.on", timeout=TIMEOUT_MS)
            items = page.locator("#series div")
            assert items.count() == 2
            assert items.nth(0).inner_text() == f"#1 CT Series 1 ({SLICES})"
            assert items.nth(1).inner_text() == "#2 CT Series 2 (2)"
            first = wait_slice(page, 1, SLICES, expected[0])
            assert len(np.unique(first)) > 50, "the canvas is blank"
            screenshot(page, tmp_path, "slice1")

            # ArrowDown: the next slice, a different picture.
            page.keyboard.press("ArrowDown")
            second = wait_slice(page, 2, SLICES, expected[1])
            assert not np.array_equal(first, second)
            shot = screenshot(page, tmp_path, "slice2")

            # The mouse wheel over the canvas, down then up; up again comes from the cache.
            box = page.locator("#view").bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, 120)
            wait_slice(page, 3, SLICES, expected[2])
            page.mouse.wheel(0, -120)
            wait_slice(page, 2, SLICES, expected[1])
            page.mouse.wheel(120, 0)  # a sideways wheel does not scroll slices
            settle(page)
            wait_slice(page, 2, SLICES, expected[1])
            page.keyboard.press("ArrowUp")
            wait_slice(page, 1, SLICES, expected[0])
            page.keyboard.press("ArrowUp")  # clamped at the first slice
            wait_slice(page, 1, SLICES, expected[0])

            # A slow frame must not overwrite a later one: hold slice 4's PNG back, scroll
            # past it to slice 5, then let it arrive.
            held: list[Route] = []
            page.route(f"**/instances/{uids[0][3]}/rendered*", lambda route: held.append(route))
            for _ in range(3):
                page.keyboard.press("ArrowDown")
            page.wait_for_function("() => document.getElementById('info').textContent"
                                   " === 'slice 4 / 5'", timeout=TIMEOUT_MS)
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            while not held and time.monotonic() < deadline:
                page.wait_for_timeout(20)
            assert held, "the viewer did not request slice 4"
            page.keyboard.press("ArrowDown")
            wait_slice(page, 5, SLICES, expected[4])
            held[0].continue_()
            page.wait_for_function("uid => performance.getEntriesByType('resource')"
                                   ".some(e => e.name.includes(uid) && e.responseEnd > 0)",
                                   arg=uids[0][3], timeout=TIMEOUT_MS)
            page.unroute(f"**/instances/{uids[0][3]}/rendered*")
            settle(page)
            wait_slice(page, 5, SLICES, expected[4])
            page.keyboard.press("ArrowDown")  # clamped at the last slice
            wait_slice(page, 5, SLICES, expected[4])
            screenshot(page, tmp_path, "slice5")

            # The window field re-renders the current slice through the archive.
            page.fill("#win", "2048,1")
            page.press("#win", "Enter")
            binary = rendered_window(base, study_uid, ct_series, uids[0][4], "2048,1")
            assert set(np.unique(binary)) == {0, 255}
            wait_slice(page, 5, SLICES, binary)
            page.fill("#win", "")
            page.press("#win", "Enter")
            wait_slice(page, 5, SLICES, expected[4])

            # The other series: its first slice.
            items.nth(1).click()
            other = rendered(base, study_uid, other_series, uids[1][0])
            wait_slice(page, 1, 2, other)
            assert page.locator("#series div.on").inner_text() == "#2 CT Series 2 (2)"
        finally:
            browser.close()
    assert not errors, errors
    assert (ARTIFACTS / "viewer-slice2.png").read_bytes() == shot.read_bytes()


def rendered_window(base: str, study: str, series: str, instance: str,
                    window: str) -> np.ndarray:
    url = f"{base}/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered"
    response = httpx.get(url, params={"window": window}, timeout=10)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("L"))
