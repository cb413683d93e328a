"""The study viewer: ``/viewer?StudyInstanceUID=...`` (the launch URL an EHR stores).

One HTML page, its script and style inlined from ``pacs/web/static/`` (no CDN, no build step:
a small canvas viewer over the archive's own DICOMweb and rendered frames; see viewer.js for
why not Cornerstone). ``/viewer`` without a study shows the study list and its search.
``/viewer/series`` gives the viewer what the index cannot: the frame count and default window
of each instance of a series, read from the head of each file.
"""

from __future__ import annotations

import asyncio
import html
import io
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from aiohttp import web

from pacs import metrics
from pacs.index.catalog import PATIENT_KEY
from pacs.index.records import InstanceRecord
from pacs.web.context import WebContext, bad_request, http_error
from pacs.web.wado import resolve

__all__ = ["PAGE", "instance_summary", "routes"]

HEAD_BYTES = 64 * 1024  # a file's header almost always fits; else the whole file is read


def _asset(name: str) -> str:
    return (resources.files("pacs.web") / "static" / name).read_text(encoding="utf-8")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
__CSS__</style></head><body data-study="__STUDY__">
<div id="side">
 <div id="find"><input id="search" placeholder="patient name or ID" aria-label="search">
  <button id="go">Search</button></div>
 <div id="found"></div>
 <div id="studies"></div>
 <div id="series"></div>
</div>
<div id="main"><div id="stage"><canvas id="view" width="0" height="0"></canvas></div>
<div id="bar"><span id="info">loading…</span> <span id="frame"></span>
 &nbsp; window <input id="win" placeholder="center,width"> &nbsp; zoom <span id="zoom">100%</span>
 <span id="help">drag: window/level · right-drag or shift-drag: pan · ctrl+wheel or +/-: zoom
 · 0: reset · wheel or arrows: slices (each frame of a multi-frame image)</span></div></div>
<script>
__JS__</script></body></html>
"""


def page(study: str) -> str:
    # A UID is digits and dots; anything else is refused before it reaches the page.
    uid = html.escape(study, quote=True)
    return (PAGE.replace("__CSS__", _asset("viewer.css"))
            .replace("__JS__", _asset("viewer.js"))
            .replace("__TITLE__", f"Study {uid}" if uid else "Studies")
            .replace("__STUDY__", uid))


def _number(value: Any) -> float | None:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0] if len(value) else None  # WindowCenter etc. may be multi-valued
    try:
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def instance_summary(data: bytes) -> dict[str, Any]:
    """Frame count and default window of a Part-10 file (its header suffices)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    if "Rows" not in ds:  # not an image, or a header cut short by HEAD_BYTES
        raise ValueError("no image header")
    frames = int(_number(ds.get("NumberOfFrames", 1)) or 1)
    center, width = _number(ds.get("WindowCenter")), _number(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        # The archive then windows by the pixel range, which only decoding tells; the
        # stored range (through the rescale) is where dragging starts.
        bits = int(_number(ds.get("BitsStored", 16)) or 16)
        slope = _number(ds.get("RescaleSlope", 1)) or 1.0
        intercept = _number(ds.get("RescaleIntercept", 0)) or 0.0
        signed = int(_number(ds.get("PixelRepresentation", 0)) or 0) == 1
        center = intercept + slope * (0 if signed else (1 << (bits - 1)))
        width = abs(slope) * (1 << bits)
    return {"frames": max(frames, 1), "window": [round(center, 3), round(width, 3)]}


def series_summary(ctx: WebContext, records: list[InstanceRecord]) -> list[dict[str, Any]]:
    """Blocking: the instances of a series in InstanceNumber order, with frames and window."""
    store = ctx.archive.store
    out = []
    for record in records:
        a = record.attributes
        try:
            summary = instance_summary(store.get(record.location, 0, HEAD_BYTES))
        except Exception:  # pydicom raises all sorts on a header longer than HEAD_BYTES
            try:
                summary = instance_summary(store.get(record.location))
            except Exception:  # unreadable: shown as one frame, the archive says why
                summary = {"frames": 1, "window": None}
        try:
            number = int(a.get("InstanceNumber") or 0)
        except ValueError:
            number = 0
        out.append({"uid": a.get("SOPInstanceUID", ""), "number": number, **summary})
    out.sort(key=lambda i: (i["number"], i["uid"]))
    return out


def patient_of_study(ctx: WebContext, study: str) -> str | None:
    """Blocking: the PatientID of a study ("" when it has none), None for an unknown study."""
    catalog = ctx.archive.catalog
    found = catalog.get_study(study)
    if found is None:
        return None
    patient = catalog.get_patient(str(found.get(PATIENT_KEY, ""))) or {}
    return str(patient.get("PatientID", "") or "")


def routes(ctx: WebContext) -> list[web.RouteDef]:
    async def viewer(request: web.Request) -> web.Response:
        study = request.query.get("StudyInstanceUID", "").strip()
        if "StudyInstanceUID" not in request.query:
            return web.Response(text=page(""), content_type="text/html")  # the study list
        if not study or len(study) > 64 or not all(c.isdigit() or c == "." for c in study):
            raise bad_request("StudyInstanceUID=<a UID> is required")
        patient_id = await asyncio.get_running_loop().run_in_executor(
            ctx.archive.executor, patient_of_study, ctx, study)
        metrics.audit_http(ctx.archive.audit, request, "view",
                           "success" if patient_id is not None else "failure",
                           patient_id=patient_id or "", study_uid=study, operation="viewer")
        return web.Response(text=page(study), content_type="text/html")

    async def series(request: web.Request) -> web.Response:
        study = request.query.get("StudyInstanceUID", "")
        uid = request.query.get("SeriesInstanceUID", "")
        if not study or not uid:
            raise bad_request("StudyInstanceUID and SeriesInstanceUID are required")
        loop = asyncio.get_running_loop()
        records = await loop.run_in_executor(ctx.archive.executor, resolve, ctx, study, uid)
        if not records:
            raise http_error(web.HTTPNotFound, "no such series")
        body = await loop.run_in_executor(ctx.archive.executor, series_summary, ctx, records)
        metrics.audit_http_repeated(ctx.archive.audit, request, "view", study,
                                    records[0].attributes.get("PatientID", ""),
                                    "viewer series")
        return web.Response(text=json.dumps(body), content_type="application/json")

    return [web.get("/viewer", viewer), web.get("/viewer/series", series)]
