"""The Orthanc-style REST API over the archive's index and blob store.

::

    GET    /patients | /studies | /series | /instances        ids (?expand: details; ?limit, ?since)
    GET    /patients/{id} | /studies/{id} | /series/{id} | /instances/{id}   details
    GET    /instances/{id}/file                                the stored Part-10 file
    GET    /instances/{id}/preview                             first frame as PNG
    DELETE /patients/{id} | /studies/{id} | /series/{id} | /instances/{id}
    POST   /tools/find                                         query over pacs.index.query
    /modalities ...                                            (rest_modalities.py)
    GET    /openapi.json                                       (openapi.py)

Resource ids are DICOM identifiers, not Orthanc's hashes: the PatientID of a patient (all
issuers of that PatientID together; a patient without a PatientID is reached through its
studies only), the Study / Series / SOP Instance UID otherwise. Details carry Orthanc's keys
(``ID``, ``Type``, ``MainDicomTags``, ``PatientMainDicomTags``, parents, children) and counts.
Errors: 400 for bad parameters, 404 for unknown ids, each with a JSON body ``{"error": ...}``.
Deletions unindex through the catalog writer thread first, then remove the blobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, cast

from aiohttp import web

from pacs import metrics
from pacs.deletion import delete_instances
from pacs.errors import PacsError, QueryError
from pacs.index.catalog import PATIENT_KEY
from pacs.index.query import UNIQUE_KEYS, Level, Query
from pacs.index.records import (
    INSTANCE_KEYWORDS,
    PATIENT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    InstanceRecord,
)
from pacs.web import dicomjson, openapi, rest_modalities
from pacs.web.context import WebContext, bad_request, count_param, headers_only, http_error
from pacs.web.render import PNG, RenderError, render_frame

__all__ = ["Kind", "collect_instances", "details", "routes"]

log = logging.getLogger("pacs.web.rest")

Kind = Literal["patients", "studies", "series", "instances"]
KINDS: tuple[Kind, ...] = ("patients", "studies", "series", "instances")
_TYPE = {"patients": "Patient", "studies": "Study", "series": "Series", "instances": "Instance"}
_LEVELS: dict[str, Level] = {"patient": "PATIENT", "study": "STUDY", "series": "SERIES",
                             "instance": "IMAGE", "image": "IMAGE"}
_LEVEL_KIND: dict[Level, Kind] = {"PATIENT": "patients", "STUDY": "studies",
                                  "SERIES": "series", "IMAGE": "instances"}
def _not_found(kind: str, ident: str) -> web.HTTPError:
    return http_error(web.HTTPNotFound, f"no such {_TYPE.get(kind, kind).lower()}: {ident!r}")


def _tags(record: Mapping[str, Any], keywords: tuple[str, ...]) -> dict[str, str]:
    return {k: str(record[k]) for k in keywords if record.get(k) not in (None, "")}


def _flag(params: Mapping[str, str], name: str) -> bool:
    if name not in params:
        return False
    raw = params[name].strip().lower()
    if raw in ("", "true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise bad_request(f"{name} must be true or false, not {params[name]!r}")


# -- reading the index (blocking) ----------------------------------------------------------------


def _keys(ctx: WebContext, db: str) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of one catalog database, in chunks of short read transactions."""
    catalog = ctx.archive.catalog
    after: bytes | None = None
    while True:
        rows: list[tuple[bytes, bytes]] = []
        with catalog.reader() as txn:
            cursor = txn.cursor(db=catalog.database(db))
            found = cursor.set_range(after) if after is not None else cursor.first()
            while found and len(rows) < 1000:
                k = bytes(cursor.key())
                if k != after:
                    rows.append((k, bytes(cursor.value())))
                found = cursor.next()
        if not rows:
            return
        after = rows[-1][0]
        yield from rows


def patient_keys(ctx: WebContext, patient_id: str) -> list[str]:
    """The catalog's patient keys of a PatientID (one per issuer)."""
    if not patient_id:
        return []
    catalog = ctx.archive.catalog
    prefix = patient_id.encode() + b"\0"
    out: list[str] = []
    with catalog.reader() as txn:
        cursor = txn.cursor(db=catalog.database("patients"))
        if cursor.set_range(prefix):
            for k in cursor.iternext(keys=True, values=False):
                if not bytes(k).startswith(prefix):
                    break
                out.append(bytes(k).decode())
    return out


def list_ids(ctx: WebContext, kind: Kind) -> list[str]:
    """Blocking: every id of a resource kind, in index order."""
    if kind == "patients":
        ids: dict[str, None] = {}
        for k, _v in _keys(ctx, "patients"):
            pid = k.split(b"\0", 1)[0].decode()
            if pid:
                ids[pid] = None
        return list(ids)
    return [k.decode() for k, _v in _keys(ctx, kind)]


def details(ctx: WebContext, kind: Kind, ident: str) -> dict[str, Any] | None:
    """Blocking: the Orthanc-style description of one resource, None when unknown."""
    catalog = ctx.archive.catalog
    if kind == "patients":
        records = [r for r in (catalog.get_patient(k) for k in patient_keys(ctx, ident)) if r]
        if not records:
            return None
        studies = [s for r in records for s in catalog.studies_of_patient(r[PATIENT_KEY])]
        return {
            "ID": ident, "Type": "Patient",
            "MainDicomTags": _tags(records[0], PATIENT_KEYWORDS),
            "Studies": studies,
            "CountStudies": len(studies),
            "CountSeries": sum(int(r.get("NumberOfPatientRelatedSeries", 0)) for r in records),
            "CountInstances": sum(int(r.get("NumberOfPatientRelatedInstances", 0))
                                  for r in records),
        }
    if kind == "studies":
        study = catalog.get_study(ident)
        if study is None:
            return None
        patient = catalog.get_patient(str(study.get(PATIENT_KEY, ""))) or {}
        series = catalog.series_of_study(ident)
        return {
            "ID": ident, "Type": "Study",
            "ParentPatient": str(patient.get("PatientID", "")),
            "MainDicomTags": _tags(study, STUDY_KEYWORDS),
            "PatientMainDicomTags": _tags(patient, PATIENT_KEYWORDS),
            "Series": series,
            "CountSeries": len(series),
            "CountInstances": int(study.get("NumberOfStudyRelatedInstances", 0)),
        }
    if kind == "series":
        found = catalog.get_series(ident)
        if found is None:
            return None
        instances = catalog.instances_of_series(ident)
        return {
            "ID": ident, "Type": "Series",
            "ParentStudy": str(found.get("StudyInstanceUID", "")),
            "MainDicomTags": _tags(found, SERIES_KEYWORDS),
            "Instances": instances,
            "CountInstances": len(instances),
        }
    record = catalog.get_instance(ident)
    if record is None:
        return None
    a = record.attributes
    return {
        "ID": ident, "Type": "Instance",
        "ParentSeries": a.get("SeriesInstanceUID", ""),
        "ParentStudy": a.get("StudyInstanceUID", ""),
        "MainDicomTags": _tags(a, INSTANCE_KEYWORDS),
        "FileSize": record.size,
        "TransferSyntaxUID": record.transfer_syntax_uid,
        "RemoteAET": record.source_aet,
        "ReceivedAt": record.received_at,
    }


def collect_instances(ctx: WebContext, kind: Kind, ident: str) -> list[InstanceRecord] | None:
    """Blocking: the instance records under a resource, None when it is unknown."""
    catalog = ctx.archive.catalog
    if kind == "instances":
        record = catalog.get_instance(ident)
        return None if record is None else [record]
    if kind == "series":
        if catalog.get_series(ident) is None:
            return None
        series = [ident]
    elif kind == "studies":
        if catalog.get_study(ident) is None:
            return None
        series = catalog.series_of_study(ident)
    else:
        keys = patient_keys(ctx, ident)
        if not keys:
            return None
        series = [s for pk in keys for st in catalog.studies_of_patient(pk)
                  for s in catalog.series_of_study(st)]
    return catalog.instances_in_series(series)


def resolve_any(ctx: WebContext, ident: str) -> list[InstanceRecord] | None:
    """Blocking: instances under an id of any level (instance, series, study, then patient)."""
    order: tuple[Kind, ...] = ("instances", "series", "studies", "patients")
    for kind in order:
        found = collect_instances(ctx, kind, ident)
        if found is not None:
            return found
    return None


# -- handlers ------------------------------------------------------------------------------------


async def _blocking(ctx: WebContext, fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(ctx.archive.executor, fn, *args)


async def list_resources(ctx: WebContext, request: web.Request, kind: Kind) -> web.Response:
    expand = _flag(request.query, "expand")
    limit = count_param(request.query, "limit")
    since = count_param(request.query, "since") or 0
    unknown = set(request.query) - {"expand", "limit", "since"}
    if unknown:
        raise bad_request(f"unknown parameter {sorted(unknown)[0]!r}")
    ids: list[str] = await _blocking(ctx, list_ids, ctx, kind)
    ids = ids[since:] if limit is None else ids[since:since + limit]
    if not expand:
        return web.json_response(ids)

    def expanded() -> list[dict[str, Any]]:
        return [d for d in (details(ctx, kind, i) for i in ids) if d is not None]

    return web.json_response(await _blocking(ctx, expanded))


async def get_resource(ctx: WebContext, request: web.Request, kind: Kind) -> web.Response:
    ident = request.match_info["id"]
    found = await _blocking(ctx, details, ctx, kind, ident)
    if found is None:
        raise _not_found(kind, ident)
    return web.json_response(found)


async def _instance(ctx: WebContext, request: web.Request) -> InstanceRecord:
    ident = request.match_info["id"]
    record = await _blocking(ctx, ctx.archive.catalog.get_instance, ident)
    if record is None:
        raise _not_found("instances", ident)
    return cast(InstanceRecord, record)


async def instance_file(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    """The Part-10 file as stored, streamed from the blob store."""
    record = await _instance(ctx, request)
    store = ctx.archive.store
    loop = asyncio.get_running_loop()
    executor = ctx.archive.executor
    chunks = store.iter_chunks(record.location)
    try:
        first = await loop.run_in_executor(executor, next, chunks, b"")
    except PacsError as exc:
        raise http_error(web.HTTPNotFound, f"the blob of {record.sop_instance_uid} is "
                                           f"missing: {exc}") from None
    response = web.StreamResponse(headers={
        "Content-Type": "application/dicom",
        "Content-Disposition": f'attachment; filename="{record.sop_instance_uid}.dcm"'})
    response.content_length = record.size
    a = record.attributes
    metrics.audit_http(ctx.archive.audit, request, "view", patient_id=a.get("PatientID", ""),
                       study_uid=a.get("StudyInstanceUID", ""), operation="REST file",
                       instance_uid=record.sop_instance_uid)
    await response.prepare(request)
    try:
        if await headers_only(request, response):
            return response
        chunk = first
        while chunk:
            await response.write(chunk)
            metrics.BYTES_SENT.inc(("REST",), len(chunk))
            chunk = await loop.run_in_executor(executor, next, chunks, b"")
    except PacsError as exc:
        log.error("REST: cannot send %s: %s", record.sop_instance_uid, exc)
        if request.transport is not None:
            request.transport.abort()
        return response
    except ConnectionError as exc:  # the client went away: one line, no traceback
        log.info("%s: REST file cut off by the client (%s)", request.remote, exc)
        return response
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # its descriptor now, not at garbage collection
    await response.write_eof()
    return response


async def instance_preview(ctx: WebContext, request: web.Request) -> web.Response:
    record = await _instance(ctx, request)
    try:
        data = await _blocking(ctx, ctx.archive.store.get, record.location)
    except PacsError as exc:
        raise http_error(web.HTTPNotFound, f"the blob is missing: {exc}") from None
    try:
        png = await _blocking(ctx, render_frame, data, 1, None)
    except RenderError as exc:
        raise http_error(web.HTTPUnsupportedMediaType, str(exc)) from None
    a = record.attributes
    metrics.audit_http_repeated(ctx.archive.audit, request, "view",
                                a.get("StudyInstanceUID", ""), a.get("PatientID", ""),
                                "preview", len(png))
    metrics.BYTES_SENT.inc(("rendered",), len(png))
    return web.Response(body=png, content_type=PNG)


def _remaining_ancestor(ctx: WebContext, kind: Kind,
                        first: InstanceRecord) -> dict[str, str] | None:
    """Blocking: the closest parent that still exists after a deletion."""
    catalog = ctx.archive.catalog
    a = first.attributes
    chain: list[tuple[Kind, str, bool]] = [
        ("series", a.get("SeriesInstanceUID", ""), kind == "instances"),
        ("studies", a.get("StudyInstanceUID", ""), kind in ("instances", "series")),
        ("patients", a.get("PatientID", ""), kind != "patients"),
    ]
    for parent, ident, applies in chain:
        if not applies or not ident:
            continue
        exists = (catalog.get_series(ident) if parent == "series" else
                  catalog.get_study(ident) if parent == "studies" else
                  patient_keys(ctx, ident) or None)
        if exists:
            return {"ID": ident, "Type": _TYPE[parent], "Path": f"/{parent}/{ident}"}
    return None


async def delete_resource(ctx: WebContext, request: web.Request, kind: Kind) -> web.Response:
    ident = request.match_info["id"]
    archive = ctx.archive
    records: list[InstanceRecord] | None = await _blocking(ctx, collect_instances, ctx, kind,
                                                           ident)
    if records is None:
        metrics.audit_http(archive.audit, request, "delete", "failure", level=_TYPE[kind],
                           id=ident, detail="not found")
        raise _not_found(kind, ident)
    deleted, size = await _blocking(
        ctx, delete_instances, archive.catalog, archive.store,
        [r.sop_instance_uid for r in records],
        lambda fn: archive.writer.run(fn).result(), "REST")
    log.info("REST: deleted %s %s (%d instances, %d bytes)", _TYPE[kind].lower(), ident,
             deleted, size)
    _audit_delete(ctx, request, kind, ident, records, deleted)
    ancestor = (await _blocking(ctx, _remaining_ancestor, ctx, kind, records[0])
                if records else None)
    return web.json_response({"RemainingAncestor": ancestor, "DeletedInstances": deleted,
                              "DeletedSize": size})


def _audit_delete(ctx: WebContext, request: web.Request, kind: Kind, ident: str,
                  records: list[InstanceRecord], deleted: int) -> None:
    """One audit "delete" event per study touched (a patient's deletion names each study)."""
    studies: dict[str, list[Any]] = {}  # study -> [patient_id, instances]
    for record in records:
        a = record.attributes
        entry = studies.setdefault(a.get("StudyInstanceUID", ""), [a.get("PatientID", ""), 0])
        entry[1] += 1
    for study_uid, (patient_id, count) in (studies or {"": ["", 0]}).items():
        metrics.audit_http(ctx.archive.audit, request, "delete",
                           "success" if deleted == len(records) else "failure",
                           patient_id=ident if kind == "patients" else patient_id,
                           study_uid=study_uid, level=_TYPE[kind], id=ident, count=count)


def _find_query(ctx: WebContext, body: Any) -> tuple[Query, bool]:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    unknown = set(body) - {"Level", "Query", "Expand", "Limit", "Since", "CaseSensitive"}
    if unknown:
        raise bad_request(f"unknown field {sorted(unknown)[0]!r}")
    level_name = body.get("Level")
    if not isinstance(level_name, str) or level_name.lower() not in _LEVELS:
        raise bad_request("Level must be Patient, Study, Series or Instance")
    level = _LEVELS[level_name.lower()]
    filters_in = body.get("Query", {})
    if not isinstance(filters_in, dict):
        raise bad_request("Query must be an object of keyword -> matching value")
    filters: dict[str, str] = {}
    for name, value in filters_in.items():
        keyword = dicomjson.keyword_of(str(name))
        if keyword is None:
            raise bad_request(f"unknown attribute {name!r}")
        if not isinstance(value, str):
            raise bad_request(f"the value of {name} must be a string")
        if "\0" in value:
            raise bad_request(f"the value of {name} contains NUL")
        if value and value != "*":
            filters[keyword] = value
    numbers: dict[str, int] = {}
    for name in ("Limit", "Since"):
        raw = body.get(name, 0)
        # Bounded: a huge integer overflowed the C-level slicing below (a 500, found by
        # schemathesis).
        if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw < 2**63:
            raise bad_request(f"{name} must be a non-negative 64-bit integer")
        numbers[name] = raw
    flags: dict[str, bool] = {}
    for name in ("Expand", "CaseSensitive"):
        raw = body.get(name, False)
        if not isinstance(raw, bool):
            raise bad_request(f"{name} must be true or false")
        flags[name] = raw
    unique = UNIQUE_KEYS[level]
    query = Query(
        level=level,
        model="PATIENT" if level == "PATIENT" else "STUDY",
        filters=filters,
        return_keys=(unique,),
        limit=numbers["Limit"] or None,
        offset=numbers["Since"],
        fuzzy_names=not flags["CaseSensitive"] and ctx.settings.fuzzy_person_names,
    )
    return query, flags["Expand"]


async def tools_find(ctx: WebContext, request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json parses
        raise bad_request("the body must be JSON") from None
    query, expand = _find_query(ctx, body)
    unique = UNIQUE_KEYS[query.level]
    kind = _LEVEL_KIND[query.level]

    def run() -> list[Any]:
        ids = list(dict.fromkeys(row.get(unique, "") for row in ctx.archive.queries.run(query)))
        ids = [i for i in ids if i]
        if not expand:
            return ids
        return [d for d in (details(ctx, kind, i) for i in ids) if d is not None]

    try:
        found = await _blocking(ctx, run)
    except QueryError as exc:
        raise bad_request(exc.comment) from exc
    metrics.audit_http(ctx.archive.audit, request, "query", operation="REST tools/find",
                       level=query.level, keys=metrics.query_keys(query.filters),
                       matches=len(found))
    return web.json_response(found)


def routes(ctx: WebContext) -> list[web.RouteDef]:
    """Every REST route: resources, tools, modalities and the OpenAPI document."""
    out: list[web.RouteDef] = []

    def bind(fn: Callable[..., Any], *args: Any) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return cast(web.StreamResponse, await fn(ctx, request, *args))
        return handler

    for kind in KINDS:
        out.append(web.get(f"/{kind}", bind(list_resources, kind)))
        out.append(web.get(f"/{kind}/{{id}}", bind(get_resource, kind)))
        out.append(web.delete(f"/{kind}/{{id}}", bind(delete_resource, kind)))
    out.append(web.get("/instances/{id}/file", bind(instance_file)))
    out.append(web.get("/instances/{id}/preview", bind(instance_preview)))
    out.append(web.post("/tools/find", bind(tools_find)))
    out.extend(rest_modalities.routes(ctx, resolve_any))
    out.extend(openapi.routes(ctx))
    return out
