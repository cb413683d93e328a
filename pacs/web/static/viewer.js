/* The archive's study viewer: plain JavaScript over the archive's own DICOMweb, no CDN.
 *
 * Route taken: a small canvas viewer, not Cornerstone3D. Cornerstone3D 5.14 bundled with
 * esbuild (minified) came to 3.1 MB for @cornerstonejs/core alone (it pulls in vtk.js),
 * 4.3 MB with tools, 4.6 MB with the DICOM image loader, and that before the loader's decode
 * web worker and its WASM codecs, which esbuild does not follow; its canvas is sized to the
 * element, not to the frame. The archive already renders frames (window/level, Modality LUT,
 * MONOCHROME1, colour, every transfer syntax its decoders read) at .../rendered, so the
 * browser needs no codecs, workers or WASM, and what is drawn is pixel for pixel what the
 * archive renders. The whole viewer is this file, inlined into the page: offline, no npm.
 *
 * - Study list: QIDO-RS /dicom-web/studies, searched by PatientName (*text*) and PatientID.
 * - Series: QIDO-RS series of the study, a WADO-RS thumbnail per series (its middle
 *   instance); /viewer/series gives the instances in order with their frame counts.
 * - Stack: every frame of every instance (a multi-frame instance scrolls like slices);
 *   wheel or arrow keys scroll. The canvas always holds the frame at its own resolution.
 * - Window/level: drag with the left button (right/left = width, up/down = center), or type
 *   "center,width" in the field; the archive renders the frame in that window.
 * - Zoom (ctrl+wheel, + and -, 0 resets) and pan (drag with the right or middle button, or
 *   shift+drag) transform the canvas on the stage; pixels stay square (no smoothing).
 */
"use strict";
const study = document.body.dataset.study;
const base = "/dicom-web/studies/" + encodeURIComponent(study);
const $ = id => document.getElementById(id);
const tag = (o, t) => (o[t] && o[t].Value && o[t].Value.length) ? o[t].Value[0] : "";
const name = v => (v && typeof v === "object") ? (v.Alphabetic || "") : String(v || "");
const canvas = $("view"), ctx = canvas.getContext("2d"), stage = $("stage");
const THUMB = 128;  // thumbnail viewport, px: sharp at 64 CSS px on a 2x display
const CACHE = 256;  // rendered frames kept (URL -> Image); the oldest goes first

let stack = [], index = 0, series = "", cache = new Map(), shown = 0;
let win = null;  // [center, width] or null: the archive's default (the instance's own window)
let searches = 0, opening = 0;  // tickets: a slow search or series must not overwrite a later one
let zoom = 1, panX = 0, panY = 0, drag = null, busy = false, dirty = false;

async function json(url) {
  const r = await fetch(url, {headers: {Accept: "application/dicom+json, application/json"}});
  if (r.status === 204) return [];
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

/* --- the stack and its frames --- */
function frameUrl(item, window) {
  let url = base + "/series/" + series + "/instances/" + item.uid +
    (item.frames > 1 ? "/frames/" + item.frame + "/rendered" : "/rendered");
  if (window) url += "?window=" + encodeURIComponent(window[0] + "," + window[1]);
  return url;
}
function image(url) {
  let img = cache.get(url);
  if (img) { cache.delete(url); cache.set(url, img); return img; }  // most recently used
  img = new Image(); img.src = url; cache.set(url, img);
  if (cache.size > CACHE) cache.delete(cache.keys().next().value);
  return img;
}
function show() {
  if (!stack.length) return;
  index = Math.max(0, Math.min(stack.length - 1, index));
  const item = stack[index];
  const img = image(frameUrl(item, win));
  const ticket = ++shown;  // a slow frame arriving after a later one must not be drawn
  const done = () => { busy = false; if (dirty) { dirty = false; show(); } };
  const draw = () => {
    if (ticket === shown) {
      if (canvas.width !== img.naturalWidth || canvas.height !== img.naturalHeight) {
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight; place();
      }
      ctx.drawImage(img, 0, 0);
    }
    done();
  };
  busy = true;
  if (img.complete && img.naturalWidth) draw();
  else { img.addEventListener("load", draw, {once: true});
         img.addEventListener("error", done, {once: true}); }
  $("info").textContent = "slice " + (index + 1) + " / " + stack.length;
  $("frame").textContent = item.frames > 1
    ? "image #" + item.number + ", frame " + item.frame + " / " + item.frames : "";
}

/* --- zoom and pan: a CSS transform of the canvas on the stage --- */
function fit() {
  if (!canvas.width || !canvas.height) return 1;
  return Math.min(stage.clientWidth / canvas.width, stage.clientHeight / canvas.height);
}
function place() {
  const s = fit() * zoom;
  const x = Math.round((stage.clientWidth - canvas.width * s) / 2 + panX);
  const y = Math.round((stage.clientHeight - canvas.height * s) / 2 + panY);
  canvas.style.transform = "translate(" + x + "px," + y + "px) scale(" + s + ")";
  $("zoom").textContent = Math.round(zoom * 100) + "%";
}
function zoomBy(factor, cx, cy) {
  // Keep the stage point (cx, cy) over the same image point.
  const next = Math.max(0.1, Math.min(50, zoom * factor));
  const w = stage.clientWidth / 2, h = stage.clientHeight / 2;
  if (cx === undefined) { cx = w; cy = h; }
  panX = cx - w - (cx - w - panX) * next / zoom;
  panY = cy - h - (cy - h - panY) * next / zoom;
  zoom = next; place();
}
function resetView() { zoom = 1; panX = 0; panY = 0; place(); }

/* --- window/level --- */
function setWindow(w) {
  win = w;
  $("win").value = w ? w[0] + "," + w[1] : "";
  if (busy && drag) { dirty = true; return; }  // while dragging: one render in flight at most
  show();
}

/* --- series and studies --- */
async function openSeries(uid, el) {
  document.querySelectorAll("#series div").forEach(d => d.classList.remove("on"));
  el.classList.add("on");
  const ticket = ++opening;
  const q = "?StudyInstanceUID=" + encodeURIComponent(study) +
    "&SeriesInstanceUID=" + encodeURIComponent(uid);
  const r = await fetch("/viewer/series" + q);
  if (!r.ok) throw new Error("series " + uid + ": " + r.status);
  const instances = await r.json();
  if (ticket !== opening) return;
  series = uid;
  stack = [];
  for (const i of instances)
    for (let f = 1; f <= i.frames; f++)
      stack.push({uid: i.uid, number: i.number, frame: f, frames: i.frames,
                  window: i.window});
  index = 0; cache = new Map(); win = null; $("win").value = "";
  resetView(); show();
}
async function loadSeries() {
  const rows = await json(base + "/series");
  rows.sort((a, b) => (+tag(a, "00200011") || 0) - (+tag(b, "00200011") || 0));
  const list = $("series");
  if (!rows.length) { $("info").textContent = "no such study"; return; }
  for (const r of rows) {
    const el = document.createElement("div");
    const img = document.createElement("img");
    img.className = "thumb"; img.alt = "";
    img.onerror = () => { img.style.visibility = "hidden"; };  // e.g. a series without pixels
    el.appendChild(img);
    el.appendChild(document.createTextNode("#" + tag(r, "00200011") + " " +
      tag(r, "00080060") + " " + tag(r, "0008103E") + " (" + tag(r, "00201209") + ")"));
    el.onclick = () => openSeries(tag(r, "0020000E"), el).catch(fail);
    list.appendChild(el);
    // The archive picks the middle instance (by InstanceNumber) and scales it down.
    img.src = base + "/series/" + tag(r, "0020000E") + "/thumbnail?viewport=" + THUMB + "," + THUMB;
  }
  list.firstChild.click();
}
async function findStudies() {
  const text = $("search").value.trim(), ticket = ++searches;
  const root = "/dicom-web/studies?limit=100&orderby=-StudyDate";
  let rows;
  if (!text) rows = await json(root);
  else {
    const esc = encodeURIComponent(text.replace(/[*?\\]/g, ""));
    const found = await Promise.all([json(root + "&fuzzymatching=true&PatientName=*" + esc + "*"),
                                     json(root + "&PatientID=*" + esc + "*")]);
    const seen = new Set();
    rows = found.flat().filter(r => !seen.has(tag(r, "0020000D")) &&
                                    seen.add(tag(r, "0020000D")));
  }
  if (ticket !== searches) return;
  const list = $("studies");
  list.replaceChildren();
  list.dataset.query = text;
  for (const r of rows) {
    const uid = tag(r, "0020000D");
    const el = document.createElement("div");
    el.textContent = name(tag(r, "00100010")) + " · " + tag(r, "00100020") + " · " +
      tag(r, "00080020") + " · " + tag(r, "00081030") + " (" + tag(r, "00201206") + " series)";
    el.dataset.uid = uid;
    if (uid === study) el.classList.add("on");
    el.onclick = () => { location.href = "/viewer?StudyInstanceUID=" + encodeURIComponent(uid); };
    list.appendChild(el);
  }
  $("found").textContent = rows.length + " studies";
}
function fail(e) { $("info").textContent = e.message; }

/* --- input --- */
stage.addEventListener("wheel", e => {
  e.preventDefault();
  if (e.ctrlKey) { if (e.deltaY) { const b = stage.getBoundingClientRect();
    zoomBy(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - b.left, e.clientY - b.top); } return; }
  if (!e.deltaY) return;  // a sideways wheel does not scroll slices
  index += e.deltaY > 0 ? 1 : -1; show();
}, {passive: false});
stage.addEventListener("contextmenu", e => e.preventDefault());
stage.addEventListener("mousedown", e => {
  e.preventDefault();
  const pan = e.button !== 0 || e.shiftKey;
  if (!pan && !stack.length) return;
  const start = win || (stack[index] && stack[index].window) || [2048, 4096];
  drag = {pan, x: e.clientX, y: e.clientY, panX, panY, center: start[0], width: start[1]};
});
window.addEventListener("mousemove", e => {
  if (!drag) return;
  const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
  if (drag.pan) { panX = drag.panX + dx; panY = drag.panY + dy; place(); return; }
  const step = Math.max(drag.width, 2) / 256;  // a full sweep of ~256 px doubles the width
  setWindow([Math.round(drag.center + dy * step),
             Math.max(1, Math.round(drag.width + dx * step))]);
});
window.addEventListener("mouseup", () => {
  if (drag && !drag.pan && dirty) { dirty = false; show(); }
  drag = null;
});
window.addEventListener("resize", place);
document.addEventListener("keydown", e => {
  if (e.target.tagName === "INPUT") {
    if (e.key !== "Enter") return;
    if (e.target.id === "search") { findStudies().catch(fail); return; }
    const parts = e.target.value.split(",").map(Number);
    win = parts.length === 2 && parts.every(Number.isFinite) && parts[1] > 0 ? parts : null;
    if (!win) e.target.value = "";
    show(); return;
  }
  if (e.key === "ArrowDown" || e.key === "ArrowRight") { index++; show(); }
  else if (e.key === "ArrowUp" || e.key === "ArrowLeft") { index--; show(); }
  else if (e.key === "+" || e.key === "=") zoomBy(1.25);
  else if (e.key === "-") zoomBy(0.8);
  else if (e.key === "0") resetView();
});
$("go").onclick = () => findStudies().catch(fail);

findStudies().catch(fail);
if (study) loadSeries().catch(fail);
else $("info").textContent = "choose a study";
