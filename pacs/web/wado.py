"""WADO-RS (PS3.18 Section 10.4): retrieve studies, series and instances as multipart/related
Part-10 files streamed from the blob store, and their metadata from the index.

Accept negotiation: ``multipart/related; type="application/dicom"`` (also ``*/*``,
``multipart/*``, or no Accept), with an optional ``transfer-syntax`` parameter: ``*`` sends each
instance as stored; a UID sends it in that syntax, converting when needed
(:mod:`pacs.dicom.convert`), and 406 when an instance cannot be converted. Without the parameter
the Standard's default, Explicit VR Little Endian, is used where a conversion exists, else the
stored syntax. Every instance's syntax is planned from the index before the first byte goes out.

``/metadata`` answers from the index only: the indexed attributes of each instance, never
opening a blob, and for image instances a ``BulkDataURI`` of Pixel Data (computed from the
instance's URL). Unknown UIDs are 404.

``/frames/{list}`` (PS3.18 10.4.1.1.6) sends frames as multipart/related: native pixel data as
``application/octet-stream`` (Explicit VR Little Endian bytes), compressed pixel data as stored
(``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/jphc``, ``image/dicom-rle`` ... with a
``transfer-syntax`` parameter) when the Accept allows it, else decoded to octet-stream; 406 when
neither is possible, 404 for a frame out of range, 400 for a malformed list. Only the frame's
bytes are read from the blob (:mod:`pacs.web.frames`). ``/bulkdata/{tag}`` sends the value of a
top-level attribute: Pixel Data like all the frames (native: one part with the whole value).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from pacs import metrics
from pacs.dicom import part10, scan
from pacs.dicom.convert import can_convert, plan_syntax
from pacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from pacs.errors import PacsError
from pacs.index.records import (
    INSTANCE_KEYWORDS,
    PATIENT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    InstanceRecord,
)
from pacs.server.payload import instance_payload
from pacs.store.base import BlobStore
from pacs.web import dicomjson, frames
from pacs.web.context import (
    WebContext,
    bad_request,
    headers_only,
    http_error,
    require_json,
)
from pacs.web.multipart import closing, parse_media_type, part_header, split_list

__all__ = ["accepted_syntaxes", "frame_plan", "resolve", "routes"]

log = logging.getLogger("pacs.web.wado")

ANY = "*"
DEFAULT = ""  # no transfer-syntax parameter: the default (Explicit VR LE), else as stored


def accepted_syntaxes(accept: str) -> list[str] | None:
    """Transfer syntaxes acceptable by an Accept header for DICOM instances (ANY: as stored,
    DEFAULT: no preference given); None when no media range allows ``application/dicom``."""
    if not accept.strip():
        return [DEFAULT]
    found: list[str] = []
    for item in split_list(accept):
        media, params = parse_media_type(item)
        try:
            if float(params.get("q", "1")) <= 0:
                continue
        except ValueError:
            continue
        if media == "multipart/related":
            part_type, _ = parse_media_type(params.get("type", "application/dicom"))
            if part_type not in ("application/dicom", "application/*", "*/*"):
                continue
        elif media not in ("*/*", "multipart/*"):
            continue
        found.append(params.get("transfer-syntax", DEFAULT).strip() or DEFAULT)
    return found or None


def plan(record: InstanceRecord, accepted: Sequence[str]) -> str | None:
    """The syntax to send one instance in, None when impossible."""
    stored = record.transfer_syntax_uid
    if ANY in accepted:
        return stored
    explicit = [ts for ts in accepted if ts not in (ANY, DEFAULT)]
    if DEFAULT in accepted:
        explicit.append(EXPLICIT_VR_LITTLE_ENDIAN)
    syntax = plan_syntax(stored, explicit)
    if syntax is None and DEFAULT in accepted:
        return stored  # no preference was given: rather as stored than not at all
    return syntax


def resolve(ctx: WebContext, study: str, series: str | None = None,
            instance: str | None = None) -> list[InstanceRecord] | None:
    """Blocking: the records under a study / series / instance, None when it is unknown."""
    catalog = ctx.archive.catalog
    if instance is not None:
        record = catalog.get_instance(instance)
        if record is None:
            return None
        a = record.attributes
        if a.get("StudyInstanceUID") != study or a.get("SeriesInstanceUID") != series:
            return None
        return [record]
    if series is not None:
        found = catalog.get_series(series)
        if found is None or found.get("StudyInstanceUID") != study:
            return None
        series_uids = [series]
    else:
        if catalog.get_study(study) is None:
            return None
        series_uids = catalog.series_of_study(study)
    return catalog.instances_in_series(series_uids)


async def _records(ctx: WebContext, request: web.Request) -> list[InstanceRecord]:
    info = request.match_info
    loop = asyncio.get_running_loop()
    records = await loop.run_in_executor(
        ctx.archive.executor, resolve, ctx, info["study"], info.get("series"),
        info.get("instance"))
    if records is None:
        raise http_error(web.HTTPNotFound, "no such study, series or instance")
    return records


def audit_view(ctx: WebContext, request: web.Request, records: list[InstanceRecord],
               operation: str) -> None:
    """The audit "view" event of a WADO-RS request (one study: the path names it)."""
    info = request.match_info
    first = records[0].attributes if records else {}
    metrics.audit_http(ctx.archive.audit, request, "view",
                       patient_id=first.get("PatientID", ""), study_uid=info.get("study", ""),
                       operation=operation, series_uid=info.get("series", ""),
                       instance_uid=info.get("instance", ""), count=len(records))


SMALL_BLOB = 1 << 20  # bytes: a blob read whole by WADO-RS (larger ones are streamed)
BATCH_BYTES = 8 << 20  # bytes of small blobs read per executor call


def _stored_datasets(store: BlobStore, records: list[InstanceRecord]) -> list[memoryview]:
    """Blocking: each record's data set as stored (its blob after the Part-10 header)."""
    out = []
    for record in records:
        data = store.get(record.location)
        _meta, offset = part10.read_file_meta(data)
        out.append(memoryview(data)[offset:])
    return out


async def retrieve(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    accepted = accepted_syntaxes(request.headers.get("Accept", ""))
    if accepted is None:
        raise http_error(web.HTTPNotAcceptable,
                         'only multipart/related; type="application/dicom" is offered')
    records = await _records(ctx, request)
    plans: list[tuple[InstanceRecord, str]] = []
    for record in records:
        syntax = plan(record, accepted)
        if syntax is None:
            raise http_error(web.HTTPNotAcceptable,
                             f"instance {record.sop_instance_uid} is stored in "
                             f"{record.transfer_syntax_uid} and cannot be converted to "
                             f"{', '.join(accepted)}")
        plans.append((record, syntax))
    audit_view(ctx, request, records, "WADO-RS")
    boundary = uuid.uuid4().hex
    response = web.StreamResponse(headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    await response.prepare(request)
    if await headers_only(request, response):
        return response
    archive = ctx.archive
    loop = asyncio.get_running_loop()

    def head(record: InstanceRecord, sent: str, first: bool) -> bytes:
        meta = part10.file_meta(record.attributes.get("SOPClassUID", ""),
                                record.sop_instance_uid, sent, record.source_aet)
        return part_header(
            boundary, {"Content-Type": f"application/dicom; transfer-syntax={sent}"},
            first=first) + meta

    index = 0
    while index < len(plans):
        record, syntax = plans[index]
        try:
            if syntax == record.transfer_syntax_uid and 0 < record.size <= SMALL_BLOB:
                # Small instances as stored: whole blobs, several per executor call (one
                # thread hop per batch, not two per instance).
                batch, total = [record], record.size
                while index + len(batch) < len(plans):
                    nxt, nxt_syntax = plans[index + len(batch)]
                    if nxt_syntax != nxt.transfer_syntax_uid or not 0 < nxt.size <= SMALL_BLOB \
                            or total + nxt.size > BATCH_BYTES:
                        break
                    batch.append(nxt)
                    total += nxt.size
                datasets = await loop.run_in_executor(
                    archive.executor, _stored_datasets, archive.store, batch)
                for offset, (one, dataset) in enumerate(zip(batch, datasets, strict=True)):
                    await response.write(head(one, one.transfer_syntax_uid,
                                              index + offset == 0))
                    await response.write(dataset)
                    metrics.BYTES_SENT.inc(("WADO-RS",), len(dataset))
                index += len(batch)
                continue
            sent, chunks = await instance_payload(archive.store, record, [syntax],
                                                  archive.executor)
            await response.write(head(record, sent, index == 0))
            async for chunk in chunks:
                await response.write(chunk)
                metrics.BYTES_SENT.inc(("WADO-RS",), len(chunk))
            index += 1
        except (PacsError, ValueError) as exc:
            # The status is sent already: cut the connection so the client sees a truncated
            # body (no closing delimiter) rather than a silently incomplete study.
            log.error("WADO-RS: cannot send %s: %s", record.sop_instance_uid, exc)
            if request.transport is not None:
                request.transport.abort()
            return response
        except ConnectionError as exc:  # the client went away: one line, no traceback
            log.info("%s: WADO-RS cut off by the client (%s)", request.remote, exc)
            return response
    await response.write(closing(boundary))
    await response.write_eof()
    return response


def _metadata(ctx: WebContext, records: list[InstanceRecord], base: str = "") -> bytes:
    """Blocking: the DICOM JSON of each instance's indexed attributes, the upper levels from
    their records, and a Pixel Data BulkDataURI under ``base`` (scheme://host) for image
    instances."""
    catalog = ctx.archive.catalog
    keys = (*PATIENT_KEYWORDS, *STUDY_KEYWORDS, *SERIES_KEYWORDS, *INSTANCE_KEYWORDS)
    # The patient, study and series values of each (series, study), from their records.
    uppers: dict[tuple[str, str], dict[str, str]] = {}
    study_cache: dict[str, dict[str, Any]] = {}
    out: list[tuple[dict[str, str], list[tuple[str, dict[str, Any]]]]] = []
    for record in records:
        attributes = record.attributes
        ordered = {k: v if isinstance(v := attributes.get(k, ""), str) else "" for k in keys}
        series_uid, study_uid = ordered["SeriesInstanceUID"], ordered["StudyInstanceUID"]
        upper = uppers.get((series_uid, study_uid))
        if upper is None:
            series = catalog.get_series(series_uid) or {}
            if study_uid not in study_cache:
                study = dict(catalog.get_study(study_uid) or {})
                patient = catalog.get_patient(str(study.get("patient_key", ""))) or {}
                study.update({k: patient[k] for k in PATIENT_KEYWORDS if patient.get(k)})
                study_cache[study_uid] = study
            study = study_cache[study_uid]
            upper = {k: str(series[k]) for k in SERIES_KEYWORDS if series.get(k) is not None}
            upper.update({k: str(study[k]) for k in (*PATIENT_KEYWORDS, *STUDY_KEYWORDS)
                          if study.get(k) is not None})
            uppers[(series_uid, study_uid)] = upper
        ordered.update(upper)
        if not "".join(ordered.values()).isascii():
            ordered["SpecificCharacterSet"] = "ISO_IR 192"
        # AvailableTransferSyntaxUID (0008,3002) as a row value: memoized like the others.
        syntax = record.transfer_syntax_uid
        ordered["AvailableTransferSyntaxUID"] = syntax
        extra: list[tuple[str, dict[str, Any]]] = []
        if dicomjson.has_pixel_data(ordered["SOPClassUID"]):
            extra.append(("7FE00010", {
                "vr": "OB" if syntax not in frames.NATIVE_SYNTAXES else "OW",
                "BulkDataURI": f"{base}/dicom-web/studies/{ordered['StudyInstanceUID']}"
                               f"/series/{series_uid}/instances/{record.sop_instance_uid}"
                               "/bulkdata/7FE00010"}))
        out.append((ordered, extra))
    return dicomjson.dumps_datasets(out)


async def metadata(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    require_json(request, "metadata")
    records = await _records(ctx, request)
    audit_view(ctx, request, records, "WADO-RS metadata")
    loop = asyncio.get_running_loop()
    body = await loop.run_in_executor(ctx.archive.executor, _metadata, ctx, records,
                                      ctx.base_url(request))
    return web.Response(body=body, content_type=dicomjson.MEDIA_TYPE)


OCTET_TYPES = (frames.OCTET_STREAM, "application/*", "*/*")


def frame_plan(accept: str, stored: str) -> tuple[str, str] | None:
    """(part media type, transfer syntax) for the frames of an instance stored in ``stored``,
    None when the Accept allows nothing we can send. Octet-stream of a compressed syntax means
    decoded to Explicit VR Little Endian."""
    items: list[tuple[float, int, str, str]] = []
    for position, item in enumerate(split_list(accept) or ["*/*"]):
        media, params = parse_media_type(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            continue
        if q <= 0:
            continue
        if media == "multipart/related":
            part_type = parse_media_type(params.get("type", "*/*"))[0]
        elif media in ("*/*", "multipart/*"):
            part_type = "*/*"
        else:
            continue
        items.append((-q, position, part_type, params.get("transfer-syntax", "").strip()))
    native = stored in frames.NATIVE_SYNTAXES
    compressed = frames.FRAME_MEDIA_TYPES.get(stored, ())
    for _q, _position, part_type, syntax in sorted(items):
        if native:
            if part_type in OCTET_TYPES and syntax in ("", ANY, EXPLICIT_VR_LITTLE_ENDIAN):
                return frames.OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN
            continue
        if compressed and syntax in ("", ANY, stored):
            if part_type in compressed or part_type in ("image/*", "*/*"):
                return compressed[0], stored
            if part_type in OCTET_TYPES and syntax in (ANY, stored):
                return frames.OCTET_STREAM, stored
        if part_type in OCTET_TYPES and syntax in ("", EXPLICIT_VR_LITTLE_ENDIAN) \
                and can_convert(stored, EXPLICIT_VR_LITTLE_ENDIAN):
            return frames.OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN
    return None


async def send_frames(ctx: WebContext, request: web.Request, record: InstanceRecord,
                      numbers: list[int] | None, operation: str) -> web.StreamResponse:
    """Frames ``numbers`` (all when None) of one instance as multipart/related."""
    loop = asyncio.get_running_loop()
    executor, store = ctx.archive.executor, ctx.archive.store
    stored = record.transfer_syntax_uid
    size = record.size or await loop.run_in_executor(executor, store.size, record.location)
    try:
        info = await loop.run_in_executor(executor, frames.locate, store, record.location,
                                          stored, size)
    except frames.FrameError as exc:
        raise http_error(web.HTTPNotFound, str(exc)) from None
    if numbers is None:
        numbers = list(range(1, info.frames + 1))
    outside = [n for n in numbers if n > info.frames]
    if outside:
        raise http_error(web.HTTPNotFound,
                         f"no frame {outside[0]}: the instance has {info.frames}")
    chosen = frame_plan(request.headers.get("Accept", ""), stored)
    if chosen is None:
        raise http_error(web.HTTPNotAcceptable,
                         f"frames of this instance are offered as "
                         f"{', '.join(frames.FRAME_MEDIA_TYPES.get(stored, ()) or ['-'])} "
                         f"(transfer-syntax={stored}) or application/octet-stream"
                         + (" (decoded)" if can_convert(stored, EXPLICIT_VR_LITTLE_ENDIAN)
                            else ""))
    media, syntax = chosen
    decode = syntax != stored and stored not in frames.NATIVE_SYNTAXES
    audit_view(ctx, request, [record], operation)
    blob: bytes | None = None
    if decode:
        blob = await loop.run_in_executor(executor, store.get, record.location)
    boundary = uuid.uuid4().hex
    response = web.StreamResponse(headers={
        "Content-Type": f'multipart/related; type="{media}"; boundary={boundary}'})
    await response.prepare(request)
    if await headers_only(request, response):
        return response
    for index, number in enumerate(numbers):
        try:
            if blob is not None:
                data = await loop.run_in_executor(executor, frames.decode_frame, blob, number)
            else:
                data = await loop.run_in_executor(executor, frames.read_frame, store,
                                                  record.location, size, info, number)
        except (frames.FrameError, PacsError, ValueError) as exc:
            log.error("%s: cannot send frame %d of %s: %s", operation, number,
                      record.sop_instance_uid, exc)
            if request.transport is not None:
                request.transport.abort()  # as in retrieve(): a truncated body, not a lie
            return response
        try:
            await response.write(part_header(
                boundary, {"Content-Type": f"{media}; transfer-syntax={syntax}"},
                first=index == 0) + data)
        except ConnectionError as exc:  # the client went away: one line, no traceback
            log.info("%s: %s cut off by the client (%s)", request.remote, operation, exc)
            return response
        metrics.BYTES_SENT.inc((operation,), len(data))
    await response.write(closing(boundary))
    await response.write_eof()
    return response


async def instance_frames(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    try:
        numbers = frames.parse_frame_list(request.match_info["frames"])
    except ValueError as exc:
        raise bad_request(f"frame list: {exc}") from None
    [record] = await _records(ctx, request)
    return await send_frames(ctx, request, record, numbers, "WADO-RS frames")


_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8, "US": 2, "SS": 2, "UL": 4,
               "SL": 4, "FL": 4, "FD": 8, "AT": 2, "SV": 8, "UV": 8}


def _attribute(ctx: WebContext, record: InstanceRecord, tag: int) -> tuple[str, bytes] | None:
    """Blocking: (VR, value bytes) of a top-level attribute, None when absent; numbers little
    endian whatever the stored syntax."""
    import numpy as np

    data = ctx.archive.store.get(record.location)
    _meta, offset = part10.read_file_meta(data)
    table = scan.scan(data, record.transfer_syntax_uid, 0x100000000, offset)
    found = table.find(tag)
    if found is None or found.vr == "SQ" or found.length == scan.UNDEFINED_LENGTH:
        return None
    value = bytes(table.buffer[found.value_offset:found.value_offset + found.length])
    width = _SWAP_WIDTH.get(found.vr, 1)
    if not table.little_endian and width > 1:
        value = np.frombuffer(value[:len(value) // width * width],
                              dtype=f">u{width}").astype(f"<u{width}").tobytes()
    return found.vr, value


async def bulkdata(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    raw = request.match_info["tag"].replace(",", "")
    if len(raw) != 8 or any(c not in "0123456789abcdefABCDEF" for c in raw):
        raise bad_request("bulk data is addressed by a tag of 8 hex digits (top level only)")
    tag = int(raw, 16)
    [record] = await _records(ctx, request)
    if tag == scan.PIXEL_DATA and record.transfer_syntax_uid not in frames.NATIVE_SYNTAXES:
        return await send_frames(ctx, request, record, None, "WADO-RS bulkdata")
    media = [parse_media_type(m) for m in split_list(request.headers.get("Accept", ""))]
    if media and not any((m == "multipart/related" and parse_media_type(
            p.get("type", "*/*"))[0] in OCTET_TYPES) or m in ("*/*", "multipart/*")
                         for m, p in media):
        raise http_error(web.HTTPNotAcceptable, 'bulk data is offered as multipart/related; '
                                                'type="application/octet-stream"')
    loop = asyncio.get_running_loop()
    try:
        found = await loop.run_in_executor(ctx.archive.executor, _attribute, ctx, record, tag)
    except (PacsError, ValueError) as exc:
        raise http_error(web.HTTPNotFound, f"cannot read the instance: {exc}") from None
    if found is None:
        raise http_error(web.HTTPNotFound, f"no attribute {tag:08X} with a value here")
    audit_view(ctx, request, [record], "WADO-RS bulkdata")
    _vr, value = found
    boundary = uuid.uuid4().hex
    body = (part_header(boundary, {"Content-Type": frames.OCTET_STREAM}, first=True) + value
            + closing(boundary))
    metrics.BYTES_SENT.inc(("WADO-RS bulkdata",), len(value))
    return web.Response(body=body, headers={
        "Content-Type": f'multipart/related; type="{frames.OCTET_STREAM}"; '
                        f"boundary={boundary}"})


def routes(ctx: WebContext) -> list[web.RouteDef]:
    async def get(request: web.Request) -> web.StreamResponse:
        return await retrieve(ctx, request)

    async def get_metadata(request: web.Request) -> web.StreamResponse:
        return await metadata(ctx, request)

    async def get_frames(request: web.Request) -> web.StreamResponse:
        return await instance_frames(ctx, request)

    async def get_bulkdata(request: web.Request) -> web.StreamResponse:
        return await bulkdata(ctx, request)

    study = "/dicom-web/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    return [
        web.get(study, get),
        web.get(series, get),
        web.get(instance, get),
        web.get(study + "/metadata", get_metadata),
        web.get(series + "/metadata", get_metadata),
        web.get(instance + "/metadata", get_metadata),
        web.get(instance + "/frames/{frames}", get_frames),
        web.get(instance + "/bulkdata/{tag}", get_bulkdata),
    ]
