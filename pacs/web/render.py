"""Rendered frames (PS3.18 Section 10.4.1.1.3, a subset): one frame of an instance as PNG.

``GET .../instances/{i}/rendered`` (first frame) and ``.../instances/{i}/frames/{n}/rendered``.
Parameters: ``window=center,width[,function]`` (function ``linear``, the default, or
``sigmoid``); without it the instance's first WindowCenter/WindowWidth, else its pixel range.
Grayscale frames get the Modality LUT (rescale) first, MONOCHROME1 is inverted; colour frames
are sent as RGB, scaled to 8 bits. Decoding uses pydicom (with numpy and the pylibjpeg
plugins), off the event loop; PNG is written here with zlib.
"""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from typing import Any

from aiohttp import web

from pacs import metrics
from pacs.index.records import InstanceRecord
from pacs.web.context import WebContext, bad_request, http_error
from pacs.web.multipart import parse_media_type, split_list
from pacs.web.wado import resolve

__all__ = ["encode_png", "render_frame", "routes"]

PNG = "image/png"


class RenderError(Exception):
    """The frame cannot be rendered (no pixel data, no such frame, undecodable)."""


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


def render_frame(data: bytes, frame: int, window: tuple[float, float, str] | None) -> bytes:
    """Blocking: PNG of frame ``frame`` (1-based) of a Part-10 file."""
    import numpy as np
    import pydicom
    from pydicom.pixels.processing import apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" not in ds:
            raise RenderError("the instance has no pixel data")
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if not 1 <= frame <= frames:
            raise RenderError(f"no frame {frame}: the instance has {frames}")
        pixels = ds.pixel_array
    except RenderError:
        raise
    except Exception as exc:  # pydicom and the decoders raise all sorts
        raise RenderError(f"cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[frame - 1]
    if samples == 3:
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        scaled = pixels.astype(np.float64) * (255.0 / ((1 << bits) - 1))
        return encode_png(np.clip(scaled, 0, 255).astype(np.uint8))
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    center, width, function = _window(ds, window, values)
    if function == "sigmoid":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    else:
        out = ((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5) * 255.0
    out = np.clip(out, 0, 255)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255.0 - out
    return encode_png(out.astype(np.uint8))


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
    if width <= 0 or function not in ("linear", "sigmoid"):
        raise bad_request("window width must be positive, function linear or sigmoid")
    return center, width, function


def _read(ctx: WebContext, record: InstanceRecord) -> bytes:
    return ctx.archive.store.get(record.location)


async def rendered(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    accept = [parse_media_type(m)[0] for m in split_list(request.headers.get("Accept", ""))]
    if accept and not any(m in (PNG, "image/*", "*/*") for m in accept):
        raise http_error(web.HTTPNotAcceptable, "rendered frames are offered as image/png")
    window = _parse_window(request.query.get("window"))
    info = request.match_info
    try:
        frame = int(info.get("frame", "1"))
    except ValueError:
        raise bad_request("frame numbers are integers") from None
    loop = asyncio.get_running_loop()
    executor = ctx.archive.executor
    records = await loop.run_in_executor(executor, resolve, ctx, info["study"], info["series"],
                                         info["instance"])
    if not records:
        raise http_error(web.HTTPNotFound, "no such instance")
    data = await loop.run_in_executor(executor, _read, ctx, records[0])
    try:
        png = await loop.run_in_executor(executor, render_frame, data, frame, window)
    except RenderError as exc:
        raise http_error(web.HTTPNotFound, str(exc)) from None
    # A viewer asks for every slice: one audit line per user, source and study, with a count.
    metrics.audit_http_repeated(ctx.archive.audit, request, "view", info["study"],
                                records[0].attributes.get("PatientID", ""), "rendered",
                                len(png))
    metrics.BYTES_SENT.inc(("rendered",), len(png))
    return web.Response(body=png, content_type=PNG,
                        headers={"Cache-Control": "private, max-age=3600"})


def routes(ctx: WebContext) -> list[web.RouteDef]:
    async def get(request: web.Request) -> web.StreamResponse:
        return await rendered(ctx, request)

    instance = "/dicom-web/studies/{study}/series/{series}/instances/{instance}"
    return [
        web.get(instance + "/rendered", get),
        web.get(instance + "/frames/{frame}/rendered", get),
    ]
