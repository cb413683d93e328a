"""QIDO-RS (PS3.18 Section 10.6): search for studies, series and instances over the shared
query model (:mod:`pacs.index.query`), answered in the DICOM JSON model.

Query parameters: attribute matching by keyword or tag (``PatientName=SMI*``,
``00100020=X``; a UID list comma-separated), ``includefield`` (repeatable, comma-separated,
``all``), ``fuzzymatching``, ``limit``, ``offset``, ``orderby`` (keywords, '-' descending; an
extension). ``X-Total-Count`` says how many match before limit and offset. Errors: 400 with a
JSON body ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from pacs import metrics
from pacs.errors import QueryError
from pacs.index.matching import is_universal
from pacs.index.query import Level, Query
from pacs.index.records import (
    INSTANCE_KEYWORDS,
    PATIENT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
)
from pacs.web import dicomjson
from pacs.web.context import WebContext, bad_request, count_param, require_json

__all__ = ["DEFAULT_KEYS", "build_query", "routes"]

STUDY_COUNTS = ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "STUDY": (*PATIENT_KEYWORDS, *STUDY_KEYWORDS, "ModalitiesInStudy", *STUDY_COUNTS),
    "SERIES": ("StudyInstanceUID", *SERIES_KEYWORDS, "NumberOfSeriesRelatedInstances"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", *INSTANCE_KEYWORDS),
}
# Every attribute the index can answer at each level ("includefield=all").
ALL_KEYS: dict[str, tuple[str, ...]] = {
    "STUDY": (*DEFAULT_KEYS["STUDY"], "SOPClassesInStudy"),
    "SERIES": (*PATIENT_KEYWORDS, *STUDY_KEYWORDS, *DEFAULT_KEYS["SERIES"]),
    "IMAGE": (*PATIENT_KEYWORDS, *STUDY_KEYWORDS, *SERIES_KEYWORDS, *INSTANCE_KEYWORDS),
}
_CONTROL = frozenset(("includefield", "fuzzymatching", "limit", "offset", "orderby"))
MAX_LIMIT = 100_000


def _bool(raw: str, name: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise bad_request(f"{name} must be true or false, not {raw!r}")


def build_query(
    level: Level,
    params: Sequence[tuple[str, str]],
    path_keys: Mapping[str, str],
    fuzzy_default: bool,
    limit_cap: int | None = None,
) -> Query:
    """A Query from QIDO-RS parameters (in order, repeats kept); raises HTTPBadRequest."""
    filters: dict[str, str] = dict(path_keys)
    include: list[str] = []
    single: dict[str, str] = {}
    order_by: list[str] = []
    for name, value in params:
        if name in _CONTROL:
            if name == "includefield":
                include.extend(v.strip() for v in value.split(",") if v.strip())
            elif name == "orderby":
                order_by.extend(v.strip() for v in value.split(",") if v.strip())
            else:
                if name in single:
                    raise bad_request(f"{name} given more than once")
                single[name] = value
            continue
        keyword = dicomjson.keyword_of(name)
        if keyword is None:
            raise bad_request(f"unknown attribute {name!r}")
        if keyword in filters and keyword not in path_keys:
            raise bad_request(f"{keyword} given more than once")
        if keyword in path_keys:
            if value and not is_universal(value) and value != path_keys[keyword]:
                raise bad_request(f"{keyword} contradicts the resource path")
            continue
        if dicomjson.vr_of(keyword) == "UI":
            value = value.replace(",", "\\")
        filters[keyword] = value
    keys: list[str] = list(DEFAULT_KEYS[level])
    for name in include:
        if name.lower() == "all":
            keys.extend(ALL_KEYS[level])
            continue
        keyword = dicomjson.keyword_of(name)
        if keyword is None:
            raise bad_request(f"unknown attribute {name!r} in includefield")
        keys.append(keyword)
    sort: list[str] = []
    for kw in order_by:
        keyword = dicomjson.keyword_of(kw.lstrip("-"))
        if keyword is None:
            raise bad_request(f"unknown attribute {kw!r} in orderby")
        sort.append(("-" if kw.startswith("-") else "") + keyword)
    limit = count_param(single, "limit")
    if limit_cap is not None:
        limit = limit_cap if limit is None else min(limit, limit_cap)
    fuzzy = fuzzy_default
    if "fuzzymatching" in single and _bool(single["fuzzymatching"], "fuzzymatching"):
        fuzzy = True
    keys.extend(filters)
    return Query(
        level=level,
        model="STUDY",
        filters={k: v for k, v in filters.items() if not is_universal(v or "")},
        return_keys=tuple(dict.fromkeys(keys)),
        limit=limit,
        offset=count_param(single, "offset") or 0,
        fuzzy_names=fuzzy,
        order_by=tuple(sort),
    )


def _run(ctx: WebContext, query: Query) -> tuple[list[dict[str, str]], int]:
    """Blocking: the page of rows and the total count."""
    engine = ctx.archive.queries
    rows = list(engine.run(query))
    complete = query.limit is None or len(rows) < query.limit
    total = len(rows) if query.offset == 0 and complete else engine.count(query)
    return rows, total


def _retrieve_url(ctx: WebContext, request: web.Request, level: Level, row: dict[str, str]) -> \
        str:
    url = f"{ctx.base_url(request)}/dicom-web/studies/{row.get('StudyInstanceUID', '')}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{row.get('SeriesInstanceUID', '')}"
    if level == "IMAGE":
        url += f"/instances/{row.get('SOPInstanceUID', '')}"
    return url


async def search(ctx: WebContext, request: web.Request, level: Level,
                 path_keys: dict[str, str]) -> web.StreamResponse:
    require_json(request, "QIDO-RS")
    query = build_query(level, list(request.query.items()), path_keys,
                        ctx.settings.fuzzy_person_names,
                        ctx.settings.max_find_results or MAX_LIMIT)
    loop = asyncio.get_running_loop()
    try:
        rows, total = await loop.run_in_executor(ctx.archive.executor, _run, ctx, query)
    except QueryError as exc:
        raise bad_request(exc.comment) from exc
    keys = metrics.query_keys(query.filters)
    patient_id = keys.get("PatientID", "")
    study_uid = keys.get("StudyInstanceUID", "")
    metrics.audit_http(ctx.archive.audit, request, "query",
                       patient_id="" if any(c in patient_id for c in "*?") else patient_id,
                       study_uid="" if "\\" in study_uid else study_uid, operation="QIDO-RS",
                       level=level, keys=keys, matches=len(rows), total=total)
    body: list[dict[str, Any]] = []
    for row in rows:
        url = _retrieve_url(ctx, request, level, row)
        body.append(dicomjson.to_json(row, [("00081190", {"vr": "UR", "Value": [url]})]))
    headers = {"X-Total-Count": str(total)}
    if not body:
        return web.Response(status=204, headers=headers)
    return web.Response(body=dicomjson.dumps(body), content_type=dicomjson.MEDIA_TYPE,
                        headers=headers)


def routes(ctx: WebContext) -> list[web.RouteDef]:
    async def studies(request: web.Request) -> web.StreamResponse:
        return await search(ctx, request, "STUDY", {})

    async def all_series(request: web.Request) -> web.StreamResponse:
        return await search(ctx, request, "SERIES", {})

    async def all_instances(request: web.Request) -> web.StreamResponse:
        return await search(ctx, request, "IMAGE", {})

    async def study_series(request: web.Request) -> web.StreamResponse:
        return await search(ctx, request, "SERIES",
                            {"StudyInstanceUID": request.match_info["study"]})

    async def study_instances(request: web.Request) -> web.StreamResponse:
        return await search(ctx, request, "IMAGE",
                            {"StudyInstanceUID": request.match_info["study"]})

    async def series_instances(request: web.Request) -> web.StreamResponse:
        return await search(ctx, request, "IMAGE",
                            {"StudyInstanceUID": request.match_info["study"],
                             "SeriesInstanceUID": request.match_info["series"]})

    return [
        web.get("/dicom-web/studies", studies),
        web.get("/dicom-web/series", all_series),
        web.get("/dicom-web/instances", all_instances),
        web.get("/dicom-web/studies/{study}/series", study_series),
        web.get("/dicom-web/studies/{study}/instances", study_instances),
        web.get("/dicom-web/studies/{study}/series/{series}/instances", series_instances),
    ]
