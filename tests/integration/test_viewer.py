"""The web viewer in a real browser: Debian's headless Chromium driven by Playwright opens the
launch URL of a stored CT study and the test reads the canvas back, pixel by pixel.

A CT series of five slices whose pixels differ per slice (a gradient shifted by InstanceNumber)
is stored with storescu, sent out of order; a second series of two slices and a third series of
one multi-frame instance (four frames) sit beside it, and another patient's study elsewhere.
Each drawn canvas must equal the archive's own rendered PNG of the frame the viewer says it
shows; zoom and pan are checked on screenshots, image pixel by image pixel. Screenshots are kept
under the test's tmp_path and copied to build/test-artifacts/viewer-*.png.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

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
FRAMES = 4  # of the multi-frame instance (series 3)
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


class Stored(NamedTuple):
    base: str  # HTTP base URL
    study: str  # the CT study's StudyInstanceUID
    series: list[str]  # its Series Instance UIDs by SeriesNumber (the third: multi-frame)
    uids: list[list[str]]  # SOP Instance UIDs per series in InstanceNumber order
    other_study: str  # another patient's study


@pytest.fixture
def study(archive_factory, tmp_path: Path) -> Iterator[Stored]:
    http_port = free_port()
    archive = archive_factory("--http-port", str(http_port), "--workers", "1")
    base = f"http://127.0.0.1:{http_port}"
    wait_http(archive, base)
    first = make_ct()
    study_uid = first.StudyInstanceUID
    series_uids = [first.SeriesInstanceUID, make_ct().SeriesInstanceUID,
                   make_ct().SeriesInstanceUID]
    counts = [SLICES, 2, 1]
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
            if series == 3:  # one instance of FRAMES frames, each different
                ds.NumberOfFrames = FRAMES
                ds.PixelData = b"".join(slice_pixels(f, 3).tobytes()
                                        for f in range(1, FRAMES + 1))
            else:
                ds.PixelData = slice_pixels(number, series).tobytes()
            per_series.append(ds.SOPInstanceUID)
            files.append(write(ds, tmp_path / f"s{series}-{number}.dcm"))
        uids.append(per_series)
    other = make_ct(patient_id="OTHER", patient_name="Other^Otto", rows=ROWS, columns=COLUMNS)
    files.append(write(other, tmp_path / "other.dcm"))
    # InstanceNumbers 3 1 5 2 . 4 .: unsorted; then the multi-frame and the other study.
    order = [files[i] for i in (2, 0, 4, 1, 6, 3, 5, 7, 8)]
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), *map(str, order)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    yield Stored(base, study_uid, series_uids, uids, other.StudyInstanceUID)


def rendered(base: str, study: str, series: str, instance: str, frame: int | None = None,
             window: str | None = None, viewport: str | None = None) -> np.ndarray:
    """The archive's rendered PNG of one instance (or frame), as a (rows, columns) uint8 array."""
    url = f"{base}/dicom-web/studies/{study}/series/{series}/instances/{instance}"
    url += f"/frames/{frame}/rendered" if frame else "/rendered"
    params = {k: v for k, v in (("window", window), ("viewport", viewport)) if v}
    response = httpx.get(url, params=params, timeout=10)
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
    base, study_uid, (ct_series, other_series, _), uids, _ = study
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
            assert items.count() == 3
            assert items.nth(0).inner_text() == f"#1 CT Series 1 ({SLICES})"
            assert items.nth(1).inner_text() == "#2 CT Series 2 (2)"
            assert items.nth(2).inner_text() == "#3 CT Series 3 (1)"
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
    return rendered(base, study, series, instance, window=window)


@contextmanager
def viewer_page(errors: list[str]) -> Iterator[Page]:
    """A page in headless Chromium; page errors and failed requests go to ``errors``."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is not installed (make test installs Debian's chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
            yield page
        finally:
            browser.close()


def box_of(page: Page, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return dict(box)


def check_display(page: Page, expected: np.ndarray) -> dict[str, float]:
    """On a screenshot, the centre of every image pixel the stage shows has its expected grey
    (zoomed pixels stay square and unsmoothed); returns the image's box on the page."""
    settle(page)
    box, stage = box_of(page, "#view"), box_of(page, "#stage")
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
    sx, sy = box["width"] / COLUMNS, box["height"] / ROWS
    assert abs(sx - sy) < 0.01 * sx, "pixels are not square"
    assert sx >= 2, "the image is not magnified to the stage"
    rows, cols = np.mgrid[0:ROWS, 0:COLUMNS]
    x = np.floor(box["x"] + (cols + 0.5) * sx).astype(int)
    y = np.floor(box["y"] + (rows + 0.5) * sy).astype(int)
    inside = ((x >= stage["x"]) & (x < stage["x"] + stage["width"] - 1)
              & (y >= stage["y"]) & (y < stage["y"] + stage["height"] - 1))
    assert inside.sum() >= ROWS * COLUMNS // 4, "most of the image is off the stage"
    got = shot[y[inside], x[inside]].astype(int)
    assert (got[:, 0] == got[:, 1]).all() and (got[:, 0] == got[:, 2]).all()
    wrong = int((got[:, 0] != expected[inside]).sum())
    assert wrong == 0, f"{wrong} of {int(inside.sum())} displayed pixels differ"
    return box


def test_viewer_window_level_zoom_and_pan(study: Stored, tmp_path: Path) -> None:
    base, study_uid, series, uids = study.base, study.study, study.series, study.uids
    expected = rendered(base, study_uid, series[0], uids[0][0])
    errors: list[str] = []
    with viewer_page(errors) as page:
        page.goto(f"{base}/viewer?StudyInstanceUID={study_uid}", timeout=TIMEOUT_MS)
        wait_slice(page, 1, SLICES, expected)
        fitted = check_display(page, expected)
        stage = box_of(page, "#stage")
        # Fitted: the whole image on the stage, centred, as large as the stage allows.
        assert fitted["x"] >= stage["x"] - 1 and fitted["y"] >= stage["y"] - 1
        assert (abs(fitted["width"] - stage["width"]) <= 1
                or abs(fitted["height"] - stage["height"]) <= 1)

        # Window/level by dragging with the left button: right widens, up lowers the center.
        cx, cy = stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx - 64, cy + 48, steps=8)
        page.mouse.up()
        window = page.input_value("#win")
        center, width = (float(v) for v in window.split(","))
        assert center > 2048 and 1 <= width < 4096, window
        leveled = rendered(base, study_uid, series[0], uids[0][0], window=window)
        assert not np.array_equal(leveled, expected)
        drawn = wait_slice(page, 1, SLICES, leveled)
        # A higher center darkens: more pixels go black.
        assert len(np.unique(drawn)) > 50 and (drawn == 0).sum() > (expected == 0).sum()
        check_display(page, leveled)
        screenshot(page, tmp_path, "window")

        # Zoom: "+" and ctrl+wheel magnify by 1.25 each (about the centre, the pointer).
        page.keyboard.press("+")
        page.wait_for_function("() => document.getElementById('zoom').textContent === '125%'",
                               timeout=TIMEOUT_MS)
        zoomed = check_display(page, leveled)
        assert abs(zoomed["width"] - fitted["width"] * 1.25) <= 1.5
        assert abs((zoomed["x"] + zoomed["width"] / 2) - (fitted["x"] + fitted["width"] / 2)) <= 1
        page.mouse.move(cx, cy)
        page.keyboard.down("Control")
        page.mouse.wheel(0, -120)
        page.keyboard.up("Control")
        page.wait_for_function("() => document.getElementById('zoom').textContent === '156%'",
                               timeout=TIMEOUT_MS)
        zoomed = check_display(page, leveled)
        assert abs(zoomed["width"] - fitted["width"] * 1.5625) <= 1.5
        assert page.locator("#info").inner_text() == f"slice 1 / {SLICES}"  # not scrolled
        screenshot(page, tmp_path, "zoom")

        # Pan: drag with the right button moves the image by the drag, window unchanged.
        page.mouse.move(cx, cy)
        page.mouse.down(button="right")
        page.mouse.move(cx + 40, cy + 25, steps=5)
        page.mouse.up(button="right")
        panned = check_display(page, leveled)
        assert abs(panned["x"] - zoomed["x"] - 40) <= 1 and abs(panned["y"] - zoomed["y"] - 25) <= 1
        assert abs(panned["width"] - zoomed["width"]) <= 0.5
        assert page.input_value("#win") == window
        # Shift+drag pans too.
        page.keyboard.down("Shift")
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx - 30, cy, steps=3)
        page.mouse.up()
        page.keyboard.up("Shift")
        shifted = check_display(page, leveled)
        assert abs(shifted["x"] - panned["x"] + 30) <= 1 and abs(shifted["y"] - panned["y"]) <= 1
        screenshot(page, tmp_path, "pan")

        # "0" resets zoom and pan; the next slice keeps the window.
        page.keyboard.press("0")
        reset = check_display(page, leveled)
        assert all(abs(reset[k] - fitted[k]) <= 1 for k in ("x", "y", "width", "height"))
        page.keyboard.press("ArrowDown")
        wait_slice(page, 2, SLICES, rendered(base, study_uid, series[0], uids[0][1],
                                             window=window))
    assert not errors, errors


def test_viewer_scrolls_the_frames_of_a_multiframe_instance(study: Stored,
                                                            tmp_path: Path) -> None:
    base, study_uid, series, uids = study.base, study.study, study.series, study.uids
    frames = [rendered(base, study_uid, series[2], uids[2][0], frame=f)
              for f in range(1, FRAMES + 1)]
    for a in range(FRAMES):
        for b in range(a):
            assert not np.array_equal(frames[a], frames[b])
    errors: list[str] = []
    with viewer_page(errors) as page:
        page.goto(f"{base}/viewer?StudyInstanceUID={study_uid}", timeout=TIMEOUT_MS)
        page.wait_for_selector("#series div.on", timeout=TIMEOUT_MS)
        page.locator("#series div").nth(2).click()
        first = wait_slice(page, 1, FRAMES, frames[0])
        assert page.locator("#frame").inner_text() == f"image #1, frame 1 / {FRAMES}"
        page.keyboard.press("ArrowDown")
        second = wait_slice(page, 2, FRAMES, frames[1])
        assert not np.array_equal(first, second)
        box = box_of(page, "#view")
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, 120)
        wait_slice(page, 3, FRAMES, frames[2])
        page.keyboard.press("ArrowDown")
        wait_slice(page, 4, FRAMES, frames[3])
        assert page.locator("#frame").inner_text() == f"image #1, frame {FRAMES} / {FRAMES}"
        page.keyboard.press("ArrowDown")  # clamped at the last frame
        wait_slice(page, 4, FRAMES, frames[3])
        check_display(page, frames[3])
        screenshot(page, tmp_path, "multiframe")
        page.locator("#series div").nth(0).click()  # back to single-frame slices
        wait_slice(page, 1, SLICES, rendered(base, study_uid, series[0], uids[0][0]))
        assert page.locator("#frame").inner_text() == ""
    assert not errors, errors


def test_viewer_series_thumbnails(study: Stored, tmp_path: Path) -> None:
    base, study_uid, series, uids = study.base, study.study, study.series, study.uids
    errors: list[str] = []
    with viewer_page(errors) as page:
        page.goto(f"{base}/viewer?StudyInstanceUID={study_uid}", timeout=TIMEOUT_MS)
        page.wait_for_selector("#series div.on", timeout=TIMEOUT_MS)
        page.wait_for_function("() => { const t = document.querySelectorAll('#series img.thumb');"
                               " return t.length === 3 && [...t].every(i => i.complete"
                               " && i.naturalWidth > 0); }", timeout=TIMEOUT_MS)
        thumbs = page.locator("#series div img.thumb")
        assert page.locator("#series div").count() == thumbs.count() == 3  # one per series
        # 96 x 80 scaled to fit the 128 x 128 viewport asked for.
        size = (128, round(ROWS * 128 / COLUMNS))
        for n, thumb in enumerate(thumbs.all()):
            src = thumb.get_attribute("src") or ""
            assert src.endswith(f"/series/{series[n]}/thumbnail?viewport=128,128"), src
            got: Any = thumb.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            assert got == list(size)
            shown = box_of(page, f"#series div:nth-child({n + 1}) img.thumb")
            assert shown["width"] <= 64 and shown["height"] <= 64
        # The thumbnail of series 1 (JPEG, as the browser decoded it) shows its middle slice,
        # slice 3, and no other.
        pixels: Any = thumbs.nth(0).evaluate("""i => { const c = document.createElement('canvas');
            c.width = i.naturalWidth; c.height = i.naturalHeight;
            const x = c.getContext('2d'); x.drawImage(i, 0, 0);
            return Array.from(x.getImageData(0, 0, c.width, c.height).data); }""")
        gray = np.array(pixels, dtype=np.uint8).reshape(size[1], size[0], 4)[..., 0]
        distance = [np.abs(gray.astype(int) - rendered(base, study_uid, series[0], uid,
                                                       viewport="128,128")).mean()
                    for uid in uids[0]]
        assert distance[(SLICES - 1) // 2] < 3, distance
        assert all(d > 10 for n, d in enumerate(distance) if n != (SLICES - 1) // 2), distance
        screenshot(page, tmp_path, "thumbnails")
    assert not errors, errors


def test_viewer_study_list_search(study: Stored, tmp_path: Path) -> None:
    base = study.base
    errors: list[str] = []

    def listed(page: Page, count: int, query: str = "") -> list[str]:
        """The studies listed once the search for ``query`` has answered."""
        page.wait_for_function("([n, q]) => document.getElementById('studies').dataset.query"
                               " === q && document.querySelectorAll('#studies div').length === n"
                               " && document.getElementById('found').textContent"
                               " === n + ' studies'", arg=[count, query], timeout=TIMEOUT_MS)
        return page.locator("#studies div").all_inner_texts()

    with viewer_page(errors) as page:
        page.goto(f"{base}/viewer", timeout=TIMEOUT_MS)  # no study: the list alone
        assert page.locator("#info").inner_text() == "choose a study"
        everything = listed(page, 2)
        assert any("VIEWER" in t for t in everything) and any("OTHER" in t for t in everything)
        page.fill("#search", "vera")  # a part of the name, any case
        page.press("#search", "Enter")
        (found,) = listed(page, 1, "vera")
        assert found.startswith("Viewer^Vera · VIEWER · 20260102 · Chest (3 series)"), found
        page.fill("#search", "OTH")  # a part of the Patient ID
        page.press("#search", "Enter")
        (found,) = listed(page, 1, "OTH")
        assert "Other^Otto · OTHER" in found
        page.fill("#search", "nobody")
        page.click("#go")
        listed(page, 0, "nobody")
        page.fill("#search", "otto")
        page.press("#search", "Enter")
        listed(page, 1, "otto")
        screenshot(page, tmp_path, "studies")
        # A click opens the study at its launch URL, the study marked in the list.
        page.locator("#studies div").nth(0).click()
        page.wait_for_url(f"{base}/viewer?StudyInstanceUID={study.other_study}",
                          timeout=TIMEOUT_MS)
        page.wait_for_selector("#studies div.on", timeout=TIMEOUT_MS)
        assert "OTHER" in page.locator("#studies div.on").inner_text()
        page.wait_for_function("() => document.getElementById('info').textContent"
                               " === 'slice 1 / 1'", timeout=TIMEOUT_MS)
    assert not errors, errors


def test_viewer_series_summary(study: Stored) -> None:
    """/viewer/series: the instances of a series in order, with frame counts and windows."""
    base, study_uid, series, uids = study.base, study.study, study.series, study.uids
    url = f"{base}/viewer/series"
    got = httpx.get(url, params={"StudyInstanceUID": study_uid,
                                 "SeriesInstanceUID": series[0]}, timeout=10)
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/json")
    assert [(i["uid"], i["number"], i["frames"], i["window"]) for i in got.json()] == [
        (uid, n, 1, [2048, 4096]) for n, uid in enumerate(uids[0], start=1)]
    got = httpx.get(url, params={"StudyInstanceUID": study_uid,
                                 "SeriesInstanceUID": series[2]}, timeout=10)
    assert got.json() == [{"uid": uids[2][0], "number": 1, "frames": FRAMES,
                           "window": [2048, 4096]}]
    assert httpx.get(url, params={"StudyInstanceUID": study.other_study,
                                  "SeriesInstanceUID": series[0]}).status_code == 404
    assert httpx.get(url, params={"StudyInstanceUID": study_uid}).status_code == 400
    assert httpx.get(f"{base}/viewer").status_code == 200  # the study list alone
    assert httpx.get(f"{base}/viewer", params={"StudyInstanceUID": ""}).status_code == 400
