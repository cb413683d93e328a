"""Rendered frames and thumbnails (PS3.18 Sections 10.4.1.1.3, 10.4.1.1.4, 8.3.5.1).

``GET .../instances/{i}/rendered`` (first frame), ``.../instances/{i}/frames/{n}/rendered``, and
``GET .../studies/{s}[/series/{se}[/instances/{i}]]/thumbnail``: one frame as ``image/png`` or
``image/jpeg`` per Accept (rendered: PNG for ``*/*`` or no Accept, as the viewer expects;
thumbnail: JPEG). Parameters: ``window=center,width[,function]`` (``linear``, the default,
``linear-exact`` or ``sigmoid``); without it the instance's first WindowCenter/WindowWidth,
else its pixel range. ``viewport=vw,vh[,sx,sy,sw,sh]``: the source region (sx,sy,sw,sh, default
the whole frame) scaled to fit vw x vh keeping its aspect ratio (thumbnail default 128,128).
``quality=1..100`` for JPEG (default 90). Grayscale frames get the Modality LUT (rescale)
first, MONOCHROME1 is inverted; colour frames are sent as RGB, scaled to 8 bits. A thumbnail
shows the middle instance (by InstanceNumber) of the first image series (by SeriesNumber) of a
study, or of a series. Decoding uses pydicom (with numpy and the pylibjpeg plugins; only the
frame asked for is decoded), off the event loop; scaling and JPEG are Pillow's, PNG is written
here with zlib.
"""

from __future__ import annotations

import asyncio
import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pacs import metrics
from pacs.index.records import InstanceRecord
from pacs.web.context import WebContext, bad_request, http_error
from pacs.web.dicomjson import has_pixel_data
from pacs.web.multipart import parse_media_type, split_list
from pacs.web.wado import resolve

__all__ = ["JPEG", "PNG", "Options", "RenderError", "encode_png", "render_frame", "routes"]

PNG = "image/png"
JPEG = "image/jpeg"
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
THUMBNAIL_VIEWPORT = (128, 128)
MAX_VIEWPORT = 8192  # pixels on a side of a rendered image


class RenderError(Exception):
    """The frame cannot be rendered (no pixel data, no such frame, undecodable)."""


@dataclass(frozen=True, slots=True)
class Options:
    """How to render: output media type, window, viewport, JPEG quality."""

    media: str = PNG
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None  # vw, vh: fit inside, keeping the aspect ratio
    region: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh of the source frame
    quality: int = 90
def encode_png(pixels: Any) -> bytes:
    """An 8-bit grayscale (rows, columns) or RGB (rows, columns, 3) array as PNG."""
    import numpy as np

    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = array.shape[:2]
    color_type = 2 if array.ndim == 3 else 0
    rows = array.reshape(height, -1)
    raw = np.zeros((height, rows.shape[1] + 1), dtype=np.uint8)  # filter byte 0 per row
    raw[:, 1:] = rows

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def _window(ds: Any, window: tuple[float, float, str] | None,
            values: Any) -> tuple[float, float, str]:
    if window is not None:
        return window
    try:
        center, width = ds.WindowCenter, ds.WindowWidth
        center = float(center[0] if hasattr(center, "__len__") else center)
        width = float(width[0] if hasattr(width, "__len__") else width)
        if width > 0:
            return center, width, "linear"
    except (AttributeError, TypeError, ValueError, IndexError):
        pass
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0), "linear"


def _render_array(data: bytes, frame: int, window: tuple[float, float, str] | None) -> Any:
    """Blocking: frame ``frame`` (1-based) of a Part-10 file as 8-bit grey or RGB pixels."""
    import numpy as np
    import pydicom
    from pydicom.pixels.processing import apply_modality_lut
    from pydicom.pixels.utils import pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" not in ds:
            raise RenderError("the instance has no pixel data")
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if not 1 <= frame <= frames:
            raise RenderError(f"no frame {frame}: the instance has {frames}")
        pixels = pixel_array(ds, index=frame - 1)  # decodes that frame only
    except RenderError:
        raise
    except Exception as exc:  # pydicom and the decoders raise all sorts
        raise RenderError(f"cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples == 3:
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        scaled = pixels.astype(np.float64) * (255.0 / ((1 << bits) - 1))
        return np.clip(scaled, 0, 255).astype(np.uint8)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    center, width, function = _window(ds, window, values)
    if function == "sigmoid":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "linear-exact":
        out = ((values - center) / width + 0.5) * 255.0
    else:
        out = ((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5) * 255.0
    out = np.clip(out, 0, 255)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255.0 - out
    return out.astype(np.uint8)


def fit(size: tuple[int, int], viewport: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of an image of ``size`` scaled to fit ``viewport``, aspect kept."""
    width, height = size
    scale = min(viewport[0] / width, viewport[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def render_frame(data: bytes, frame: int, window: tuple[float, float, str] | None,
                 options: Options | None = None) -> bytes:
    """Blocking: frame ``frame`` (1-based) of a Part-10 file as PNG (or per ``options``)."""
    import numpy as np

    options = options or Options(window=window)
    pixels = _render_array(data, frame, window if window is not None else options.window)
    if options.region is None and options.viewport is None and options.media == PNG:
        return encode_png(pixels)
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB" if pixels.ndim == 3 else "L")
    if options.region is not None:
        sx, sy, sw, sh = options.region
        if sx >= image.width or sy >= image.height:
            raise RenderError("the viewport region lies outside the frame")
        image = image.crop((sx, sy, min(image.width, sx + sw), min(image.height, sy + sh)))
    if options.viewport is not None:
        size = fit(image.size, options.viewport)
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
    if options.media == PNG:
        return encode_png(np.asarray(image))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def _parse_window(raw: str | None) -> tuple[float, float, str] | None:
    if raw is None:
        return None
    items = [i.strip() for i in raw.split(",")]
    if len(items) not in (2, 3):
        raise bad_request("window must be center,width[,function]")
    try:
        center, width = float(items[0]), float(items[1])
    except ValueError:
        raise bad_request("window center and width must be numbers") from None
    function = items[2].lower() if len(items) == 3 else "linear"
    if not (math.isfinite(center) and math.isfinite(width) and width > 0) \
            or function not in WINDOW_FUNCTIONS:
        raise bad_request("window width must be positive, function linear, linear-exact or "
                          "sigmoid")
    return center, width, function


def _parse_viewport(raw: str | None, default: tuple[int, int] | None) -> \
        tuple[tuple[int, int] | None, tuple[int, int, int, int] | None]:
    """``vw,vh[,sx,sy,sw,sh]`` -> (viewport, source region)."""
    if raw is None:
        return default, None
    items = [i.strip() for i in raw.split(",")]
    if len(items) not in (2, 6) or not all(i.isascii() and i.isdigit() and len(i) < 7
                                           for i in items):
        raise bad_request("viewport must be vw,vh[,sx,sy,sw,sh] of non-negative integers")
    numbers = [int(i) for i in items]
    if not 1 <= numbers[0] <= MAX_VIEWPORT or not 1 <= numbers[1] <= MAX_VIEWPORT:
        raise bad_request(f"viewport width and height must be 1..{MAX_VIEWPORT}")
    if len(numbers) == 2:
        return (numbers[0], numbers[1]), None
    if numbers[4] < 1 or numbers[5] < 1:
        raise bad_request("viewport source width and height must be positive")
    return (numbers[0], numbers[1]), (numbers[2], numbers[3], numbers[4], numbers[5])


def _parse_quality(raw: str | None) -> int:
    if raw is None:
        return 90
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 100):
        raise bad_request("quality must be an integer 1..100")
    return int(raw)


def choose_media(accept: str, default: str) -> str | None:
    """image/jpeg or image/png as the Accept prefers (q, then order); ``default`` for a
    wildcard or no Accept; None when neither is acceptable."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(split_list(accept)):
        media, params = parse_media_type(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            continue
        if q <= 0:
            continue
        if media in (PNG, JPEG):
            ranked.append((-q, position, media))
        elif media in ("image/*", "*/*"):
            ranked.append((-q, position, default))
    if not split_list(accept):
        return default
    return min(ranked)[2] if ranked else None


def _options(request: web.Request, default_media: str,
             default_viewport: tuple[int, int] | None) -> Options:
    media = choose_media(request.headers.get("Accept", ""), default_media)
    if media is None:
        raise http_error(web.HTTPNotAcceptable, "rendered images are offered as image/jpeg "
                                                "and image/png")
    query = request.query
    viewport, region = _parse_viewport(query.get("viewport"), default_viewport)
    return Options(media, _parse_window(query.get("window")), viewport, region,
                   _parse_quality(query.get("quality")))


def _read(ctx: WebContext, record: InstanceRecord) -> bytes:
    return ctx.archive.store.get(record.location)


async def _send(ctx: WebContext, request: web.Request, record: InstanceRecord, frame: int,
                options: Options, detail: str) -> web.Response:
    loop = asyncio.get_running_loop()
    executor = ctx.archive.executor
    data = await loop.run_in_executor(executor, _read, ctx, record)
    try:
        body = await loop.run_in_executor(executor, render_frame, data, frame, options.window,
                                          options)
    except RenderError as exc:
        raise http_error(web.HTTPNotFound, str(exc)) from None
    # A viewer asks for every slice: one audit line per user, source and study, with a count.
    metrics.audit_http_repeated(ctx.archive.audit, request, "view",
                                record.attributes.get("StudyInstanceUID", ""),
                                record.attributes.get("PatientID", ""), detail, len(body))
    metrics.BYTES_SENT.inc((detail,), len(body))
    return web.Response(body=body, content_type=options.media,
                        headers={"Cache-Control": "private, max-age=3600"})


async def rendered(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    options = _options(request, PNG, None)
    info = request.match_info
    raw_frame = info.get("frame", "1")
    if not (raw_frame.isascii() and raw_frame.isdigit() and len(raw_frame) < 10):
        raise bad_request("frame numbers are integers")
    frame = int(raw_frame)
    if frame < 1:  # as /frames/0 answers (frames count from 1)
        raise bad_request("frame numbers start at 1")
    loop = asyncio.get_running_loop()
    records = await loop.run_in_executor(ctx.archive.executor, resolve, ctx, info["study"],
                                         info["series"], info["instance"])
    if not records:
        raise http_error(web.HTTPNotFound, "no such instance")
    return await _send(ctx, request, records[0], frame, options, "rendered")


def _number(value: str, default: int) -> int:
    try:
        return int(value)
    except ValueError:
        return default


def representative(ctx: WebContext, study: str, series: str | None,
                   instance: str | None) -> InstanceRecord | None:
    """Blocking: the instance a thumbnail shows (None when unknown or without images)."""
    if instance is not None:
        records = resolve(ctx, study, series, instance)
        return records[0] if records else None
    catalog = ctx.archive.catalog
    if series is not None:
        found = catalog.get_series(series)
        if found is None or found.get("StudyInstanceUID") != study:
            return None
        candidates = [series]
    else:
        if catalog.get_study(study) is None:
            return None
        rows = [(catalog.get_series(uid) or {}, uid) for uid in catalog.series_of_study(study)]
        candidates = [uid for row, uid in sorted(
            rows, key=lambda r: (_number(str(r[0].get("SeriesNumber") or ""), 1 << 31), r[1]))]
    for uid in candidates:
        images = [r for r in catalog.instances_in_series([uid])
                  if has_pixel_data(r.attributes.get("SOPClassUID", ""))]
        if images:
            images.sort(key=lambda r: (_number(r.attributes.get("InstanceNumber", ""), 0),
                                       r.sop_instance_uid))
            return images[len(images) // 2]
    return None


async def thumbnail(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    options = _options(request, JPEG, THUMBNAIL_VIEWPORT)
    info = request.match_info
    loop = asyncio.get_running_loop()
    record = await loop.run_in_executor(ctx.archive.executor, representative, ctx,
                                        info["study"], info.get("series"), info.get("instance"))
    if record is None:
        raise http_error(web.HTTPNotFound, "no such study, series or instance, or no image")
    return await _send(ctx, request, record, 1, options, "thumbnail")


def routes(ctx: WebContext) -> list[web.RouteDef]:
    async def get(request: web.Request) -> web.StreamResponse:
        return await rendered(ctx, request)

    async def get_thumbnail(request: web.Request) -> web.StreamResponse:
        return await thumbnail(ctx, request)

    study = "/dicom-web/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    return [
        web.get(instance + "/rendered", get),
        web.get(instance + "/frames/{frame}/rendered", get),
        web.get(study + "/thumbnail", get_thumbnail),
        web.get(series + "/thumbnail", get_thumbnail),
        web.get(instance + "/thumbnail", get_thumbnail),
    ]
