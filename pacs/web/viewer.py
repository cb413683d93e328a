"""A minimal study viewer: ``/viewer?StudyInstanceUID=...``.

One HTML page with plain JavaScript over our own DICOMweb: QIDO-RS lists the study's series and
their instances (sorted by InstanceNumber), a canvas shows each slice as a rendered PNG, the
mouse wheel and the arrow keys scroll through the slices, and a window/level field re-renders.
"""

from __future__ import annotations

import asyncio
import html

from aiohttp import web

from pacs import metrics
from pacs.index.catalog import PATIENT_KEY
from pacs.web.context import WebContext, bad_request

__all__ = ["PAGE", "routes"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Study __STUDY__</title>
<style>
body{margin:0;font:14px sans-serif;background:#111;color:#ddd;display:flex;height:100vh}
#series{width:240px;overflow:auto;border-right:1px solid #333}
#series div{padding:8px;cursor:pointer;border-bottom:1px solid #222}
#series div.on{background:#2a4a7a}
#main{flex:1;display:flex;flex-direction:column;align-items:center;justify-content:center}
canvas{background:#000;max-width:100%;max-height:88vh}
#bar{padding:6px}
input{width:110px}
</style></head><body>
<div id="series"></div>
<div id="main"><canvas id="view" width="512" height="512"></canvas>
<div id="bar"><span id="info">loading…</span>
 &nbsp; window <input id="win" placeholder="center,width"></div></div>
<script>
const study = "__STUDY__";
const base = "/dicom-web/studies/" + encodeURIComponent(study);
const tag = (o, t) => (o[t] && o[t].Value && o[t].Value.length) ? o[t].Value[0] : "";
let slices = [], index = 0, series = "", cache = new Map(), shown = 0;
const canvas = document.getElementById("view"), ctx = canvas.getContext("2d");
async function json(url) {
  const r = await fetch(url, {headers: {Accept: "application/dicom+json"}});
  if (r.status === 204) return [];
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}
function frameUrl(uid) {
  const w = document.getElementById("win").value.trim();
  return base + "/series/" + series + "/instances/" + uid + "/rendered" +
    (w ? "?window=" + encodeURIComponent(w) : "");
}
function show() {
  if (!slices.length) return;
  index = Math.max(0, Math.min(slices.length - 1, index));
  const url = frameUrl(slices[index]);
  let img = cache.get(url);
  if (!img) { img = new Image(); img.src = url; cache.set(url, img); }
  const ticket = ++shown;  // a slow frame arriving after a later one must not be drawn
  const draw = () => { if (ticket !== shown) return;
                       canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
                       ctx.drawImage(img, 0, 0); };
  if (img.complete && img.naturalWidth) draw(); else img.onload = draw;
  document.getElementById("info").textContent =
    "slice " + (index + 1) + " / " + slices.length;
}
async function openSeries(uid, el) {
  document.querySelectorAll("#series div").forEach(d => d.classList.remove("on"));
  el.classList.add("on");
  series = uid;
  const rows = await json(base + "/series/" + uid + "/instances?includefield=InstanceNumber");
  rows.sort((a, b) => (+tag(a, "00200013") || 0) - (+tag(b, "00200013") || 0));
  slices = rows.map(r => tag(r, "00080018"));
  index = 0; cache = new Map(); show();
}
async function main() {
  const rows = await json(base + "/series");
  rows.sort((a, b) => (+tag(a, "00200011") || 0) - (+tag(b, "00200011") || 0));
  const list = document.getElementById("series");
  if (!rows.length) { document.getElementById("info").textContent = "no such study"; return; }
  for (const r of rows) {
    const el = document.createElement("div");
    el.textContent = "#" + tag(r, "00200011") + " " + tag(r, "00080060") + " " +
      tag(r, "0008103E") + " (" + tag(r, "00201209") + ")";
    el.onclick = () => openSeries(tag(r, "0020000E"), el);
    list.appendChild(el);
  }
  list.firstChild.click();
}
canvas.addEventListener("wheel", e => { e.preventDefault(); if (!e.deltaY) return;
  index += e.deltaY > 0 ? 1 : -1; show(); }, {passive: false});
document.addEventListener("keydown", e => {
  if (e.target.tagName === "INPUT") { if (e.key === "Enter") { cache = new Map(); show(); }
    return; }
  if (e.key === "ArrowDown" || e.key === "ArrowRight") { index++; show(); }
  if (e.key === "ArrowUp" || e.key === "ArrowLeft") { index--; show(); }
});
main().catch(e => { document.getElementById("info").textContent = e.message; });
</script></body></html>
"""


def page(study: str) -> str:
    # A UID is digits and dots; anything else is refused before it reaches the page.
    return PAGE.replace("__STUDY__", html.escape(study, quote=True))


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
        if not study or len(study) > 64 or not all(c.isdigit() or c == "." for c in study):
            raise bad_request("StudyInstanceUID=<a UID> is required")
        patient_id = await asyncio.get_running_loop().run_in_executor(
            ctx.archive.executor, patient_of_study, ctx, study)
        metrics.audit_http(ctx.archive.audit, request, "view",
                           "success" if patient_id is not None else "failure",
                           patient_id=patient_id or "", study_uid=study, operation="viewer")
        return web.Response(text=page(study), content_type="text/html")

    return [web.get("/viewer", viewer)]
