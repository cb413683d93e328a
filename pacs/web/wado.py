"""WADO-RS (PS3.18 Section 10.4): retrieve studies, series and instances as multipart/related
Part-10 files streamed from the blob store, and their metadata from the index.

Accept negotiation: ``multipart/related; type="application/dicom"`` (also ``*/*``,
``multipart/*``, or no Accept), with an optional ``transfer-syntax`` parameter: ``*`` sends each
instance as stored; a UID sends it in that syntax, converting when needed
(:mod:`pacs.dicom.convert`), and 406 when an instance cannot be converted. Without the parameter
the Standard's default, Explicit VR Little Endian, is used where a conversion exists, else the
stored syntax. Every instance's syntax is planned from the index before the first byte goes out.

``/metadata`` answers from the index only: the indexed attributes of each instance, never
opening a blob. Unknown UIDs are 404.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from pacs import metrics
from pacs.dicom import part10
from pacs.dicom.convert import plan_syntax
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
from pacs.web import dicomjson
from pacs.web.context import WebContext, http_error
from pacs.web.multipart import closing, parse_media_type, part_header, split_list

__all__ = ["accepted_syntaxes", "resolve", "routes"]

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
    archive = ctx.archive
    for index, (record, syntax) in enumerate(plans):
        try:
            sent, chunks = await instance_payload(archive.store, record, [syntax],
                                                  archive.executor)
            meta = part10.file_meta(record.attributes.get("SOPClassUID", ""),
                                    record.sop_instance_uid, sent, record.source_aet)
            await response.write(part_header(
                boundary, {"Content-Type": f"application/dicom; transfer-syntax={sent}"},
                first=index == 0) + meta)
            async for chunk in chunks:
                await response.write(chunk)
                metrics.BYTES_SENT.inc(("WADO-RS",), len(chunk))
        except (PacsError, ValueError) as exc:
            # The status is sent already: cut the connection so the client sees a truncated
            # body (no closing delimiter) rather than a silently incomplete study.
            log.error("WADO-RS: cannot send %s: %s", record.sop_instance_uid, exc)
            if request.transport is not None:
                request.transport.abort()
            return response
    await response.write(closing(boundary))
    await response.write_eof()
    return response


def _metadata(ctx: WebContext, records: list[InstanceRecord]) -> list[dict[str, Any]]:
    """Blocking: each instance's indexed attributes, the upper levels from their records."""
    catalog = ctx.archive.catalog
    series_cache: dict[str, dict[str, Any] | None] = {}
    study_cache: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for record in records:
        row = {k: v for k, v in record.attributes.items() if isinstance(v, str)}
        series_uid = row.get("SeriesInstanceUID", "")
        if series_uid not in series_cache:
            series_cache[series_uid] = catalog.get_series(series_uid)
        series = series_cache[series_uid] or {}
        row.update({k: str(series[k]) for k in SERIES_KEYWORDS if series.get(k) is not None})
        study_uid = row.get("StudyInstanceUID", "")
        if study_uid not in study_cache:
            study = dict(catalog.get_study(study_uid) or {})
            patient = catalog.get_patient(str(study.get("patient_key", ""))) or {}
            study.update({k: patient[k] for k in PATIENT_KEYWORDS if patient.get(k)})
            study_cache[study_uid] = study
        study = study_cache[study_uid]
        for k in (*PATIENT_KEYWORDS, *STUDY_KEYWORDS):
            if study.get(k) is not None:
                row[k] = str(study[k])
        keys = (*PATIENT_KEYWORDS, *STUDY_KEYWORDS, *SERIES_KEYWORDS, *INSTANCE_KEYWORDS)
        ordered = {k: row.get(k, "") for k in keys}
        if not all(v.isascii() for v in ordered.values()):
            ordered["SpecificCharacterSet"] = "ISO_IR 192"
        extra = [("00083002", {"vr": "UI", "Value": [record.transfer_syntax_uid]})]
        out.append(dicomjson.to_json(ordered, extra))
    return out


async def metadata(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    media = [parse_media_type(m)[0] for m in split_list(request.headers.get("Accept", ""))]
    if media and not any(m in (dicomjson.MEDIA_TYPE, "application/json", "application/*",
                               "*/*") for m in media):
        raise http_error(web.HTTPNotAcceptable, f"metadata is offered as {dicomjson.MEDIA_TYPE}")
    records = await _records(ctx, request)
    audit_view(ctx, request, records, "WADO-RS metadata")
    loop = asyncio.get_running_loop()
    body = await loop.run_in_executor(ctx.archive.executor, _metadata, ctx, records)
    return web.Response(body=dicomjson.dumps(body), content_type=dicomjson.MEDIA_TYPE)


def routes(ctx: WebContext) -> list[web.RouteDef]:
    async def get(request: web.Request) -> web.StreamResponse:
        return await retrieve(ctx, request)

    async def get_metadata(request: web.Request) -> web.StreamResponse:
        return await metadata(ctx, request)

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
    ]
