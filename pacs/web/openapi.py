"""The OpenAPI 3 document of the REST API, served at ``GET /openapi.json``.

DICOMweb (``/dicom-web``) and the viewer follow their own standards; of DICOMweb only the
WADO-RS frames, bulk data, rendered and thumbnail routes are described here (their parameters).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pacs import __version__
from pacs.web.context import WebContext

__all__ = ["document", "routes"]

JSON = "application/json"
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
# PatientID is any LO value (URL-encoded in the path); the schema keeps to a simple alphabet.
PATIENT_ID_PATTERN = r"^[A-Za-z0-9_^-][A-Za-z0-9 _^-]{0,63}$"
AET_PATTERN = r"^[A-Za-z0-9_-]{1,16}$"

_ERROR = {"$ref": "#/components/schemas/Error"}
_IDS = {"type": "array", "items": {"type": "string"}}
_TAGS = {"type": "object", "additionalProperties": {"type": "string"}}
_COUNT = {"type": "integer", "minimum": 0}

_KIND = {
    "patients": ("Patient", "PatientID of the patient (every issuer of that PatientID "
                 "together), URL-encoded; not Orthanc's hash", PATIENT_ID_PATTERN),
    "studies": ("Study", "StudyInstanceUID (not Orthanc's hash)", UID_PATTERN),
    "series": ("Series", "SeriesInstanceUID (not Orthanc's hash)", UID_PATTERN),
    "instances": ("Instance", "SOPInstanceUID (not Orthanc's hash)", UID_PATTERN),
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ERROR}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _path_param(name: str, description: str, pattern: str, max_length: int = 64) -> \
        dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern, "maxLength": max_length}}


def _query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_LIST_PARAMS = [
    _query_param("expand", {"type": "boolean"}, "return details instead of ids"),
    _query_param("limit", {"type": "integer", "minimum": 0}, "at most this many"),
    _query_param("since", {"type": "integer", "minimum": 0}, "skip this many first"),
]


def _schemas() -> dict[str, Any]:
    def resource(type_: str, props: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "required": ["ID", "Type", "MainDicomTags"],
                "properties": {"ID": {"type": "string"}, "Type": {"const": type_},
                               "MainDicomTags": _TAGS, **props}}

    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "Patient": resource("Patient", {"Studies": _IDS, "CountStudies": _COUNT,
                                        "CountSeries": _COUNT, "CountInstances": _COUNT}),
        "Study": resource("Study", {"ParentPatient": {"type": "string"},
                                    "PatientMainDicomTags": _TAGS, "Series": _IDS,
                                    "CountSeries": _COUNT, "CountInstances": _COUNT}),
        "Series": resource("Series", {"ParentStudy": {"type": "string"}, "Instances": _IDS,
                                      "CountInstances": _COUNT}),
        "Instance": resource("Instance", {
            "ParentSeries": {"type": "string"}, "ParentStudy": {"type": "string"},
            "FileSize": _COUNT, "TransferSyntaxUID": {"type": "string"},
            "RemoteAET": {"type": "string"}, "ReceivedAt": {"type": "number"}}),
        "Deleted": {"type": "object", "required": ["RemainingAncestor", "DeletedInstances"],
                    "properties": {
                        "RemainingAncestor": {"anyOf": [
                            {"type": "null"},
                            {"type": "object", "required": ["ID", "Type", "Path"],
                             "properties": {"ID": {"type": "string"},
                                            "Type": {"type": "string"},
                                            "Path": {"type": "string"}}}]},
                        "DeletedInstances": _COUNT, "DeletedSize": _COUNT}},
        "Find": {"type": "object", "required": ["Level"], "additionalProperties": False,
                 "properties": {
                     "Level": {"enum": ["Patient", "Study", "Series", "Instance"]},
                     "Query": {"type": "object", "additionalProperties": {"type": "string"},
                               "description": "keyword (or tag) -> C-FIND matching value "
                                              "(wildcards, ranges, UID lists)"},
                     "Expand": {"type": "boolean"}, "CaseSensitive": {"type": "boolean"},
                     "Limit": {"type": "integer", "minimum": 0},
                     "Since": {"type": "integer", "minimum": 0}}},
        "Modality": {"type": "object", "required": ["Host", "Port"],
                     "additionalProperties": False,
                     "properties": {"AET": {"type": "string"},
                                    "Host": {"type": "string", "minLength": 1,
                                             "pattern": r"^[A-Za-z0-9.:-]+$"},
                                    "Port": {"type": "integer", "minimum": 1,
                                             "maximum": 65535},
                                    "AllowMove": {"type": "boolean"},
                                    "UseDicomTls": {"type": "boolean"}}},
        "StoreRequest": {"anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "object", "required": ["Resources"], "additionalProperties": False,
             "properties": {"Resources": {"type": "array", "minItems": 1,
                                          "items": {"type": "string", "minLength": 1}},
                            "Synchronous": {"type": "boolean"}}}]},
        "StoreResult": {"type": "object",
                        "required": ["Completed", "Warning", "Failed", "FailedInstances"],
                        "properties": {"Description": {"type": "string"},
                                       "LocalAet": {"type": "string"},
                                       "RemoteAet": {"type": "string"},
                                       "InstancesCount": _COUNT, "Completed": _COUNT,
                                       "Warning": _COUNT, "Failed": _COUNT,
                                       "FailedInstances": _IDS}},
    }


def _resource_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    bad = _error("bad parameters")
    for kind, (type_, id_doc, pattern) in _KIND.items():
        ref = {"$ref": f"#/components/schemas/{type_}"}
        param = _path_param("id", id_doc, pattern)
        paths[f"/{kind}"] = {"get": {
            "summary": f"{type_} ids (details with expand)", "operationId": f"list_{kind}",
            "parameters": _LIST_PARAMS,
            "responses": {"200": _json("ids, or details with expand", {
                "anyOf": [_IDS, {"type": "array", "items": ref}]}), "400": bad}}}
        paths[f"/{kind}/{{id}}"] = {
            "parameters": [param],
            "get": {"summary": f"one {type_.lower()}: main DICOM tags, children and counts",
                    "operationId": f"get_{kind}",
                    "responses": {"200": _json("details", ref), "400": bad,
                                  "404": _error("unknown id")}},
            "delete": {"summary": f"delete the {type_.lower()}: index entries and files",
                       "operationId": f"delete_{kind}",
                       "responses": {"200": _json("what was deleted",
                                                  {"$ref": "#/components/schemas/Deleted"}),
                                     "400": bad, "404": _error("unknown id")}},
        }
    param = _path_param("id", _KIND["instances"][1], UID_PATTERN)
    paths["/instances/{id}/file"] = {"get": {
        "summary": "the Part-10 file as stored", "operationId": "get_instance_file",
        "parameters": [param],
        "responses": {"200": {"description": "the file",
                              "content": {"application/dicom": {"schema": {
                                  "type": "string", "format": "binary"}}}},
                      "404": _error("unknown id")}}}
    paths["/instances/{id}/preview"] = {"get": {
        "summary": "the first frame rendered as PNG", "operationId": "get_instance_preview",
        "parameters": [param],
        "responses": {"200": {"description": "PNG", "content": {"image/png": {"schema": {
                          "type": "string", "format": "binary"}}}},
                      "404": _error("unknown id"),
                      "415": _error("no pixel data, or it cannot be decoded")}}}
    paths["/tools/find"] = {"post": {
        "summary": "find resources with the query model C-FIND and QIDO-RS share",
        "operationId": "tools_find",
        "requestBody": {"required": True, "content": {JSON: {"schema": {
            "$ref": "#/components/schemas/Find"}}}},
        "responses": {"200": _json("ids (details with Expand)", {
            "anyOf": [_IDS, {"type": "array", "items": {"type": "object"}}]}),
            "400": bad}}}
    return paths


def _modality_paths() -> dict[str, Any]:
    bad = _error("bad parameters")
    unknown = _error("unknown modality or resource")
    memory = ("Changes are kept in data_dir/state/modalities.json, shared at once by every "
              "worker and kept across restarts; C-MOVE destinations, forwarding and storage "
              "commitment reports use them. An entry overrides a [remote.AET] table of the "
              "same name; access control uses the settings file only.")
    aet = _path_param("aet", "AE title of the remote", AET_PATTERN, 16)
    modality = {"$ref": "#/components/schemas/Modality"}
    return {
        "/modalities": {"get": {
            "summary": "remote AE titles (details with expand)", "operationId": "list_modalities",
            "description": memory,
            "parameters": [_query_param("expand", {"type": "boolean"}, "details by AE title")],
            "responses": {"200": _json("AE titles, or an object of details", {
                "anyOf": [_IDS, {"type": "object", "additionalProperties": modality}]}),
                "400": bad}}},
        "/modalities/{aet}": {
            "parameters": [aet],
            "get": {"summary": "one remote", "operationId": "get_modality",
                    "responses": {"200": _json("the remote", modality), "404": unknown}},
            "put": {"summary": "create or replace a remote", "description": memory,
                    "operationId": "put_modality",
                    "requestBody": {"required": True,
                                    "content": {JSON: {"schema": modality}}},
                    "responses": {"200": _json("replaced", modality),
                                  "201": _json("created", modality), "400": bad,
                                  "409": _error("UseDicomTls, but this archive's TLS "
                                                "settings cannot be loaded")}},
            "delete": {"summary": "forget a remote", "description": memory,
                       "operationId": "delete_modality",
                       "responses": {"200": _json("removed", {"type": "object"}),
                                     "404": unknown,
                                     "409": _error("defined in the settings file")}},
        },
        "/modalities/{aet}/echo": {"post": {
            "summary": "C-ECHO the remote", "operationId": "echo_modality",
            "parameters": [aet],
            "responses": {"200": _json("the C-ECHO status", {
                "type": "object", "properties": {"Status": {"type": "integer"}}}),
                "404": unknown, "502": _error("the remote cannot be reached")}}},
        "/modalities/{aet}/store": {"post": {
            "summary": "C-STORE patients, studies, series or instances to the remote",
            "description": "Resources are ids of any level; the answer counts the C-STORE "
                           "sub-operations as C-MOVE does.",
            "operationId": "store_to_modality", "parameters": [aet],
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "$ref": "#/components/schemas/StoreRequest"}}}},
            "responses": {"200": _json("counts", {"$ref": "#/components/schemas/StoreResult"}),
                          "400": bad, "404": unknown}}},
    }


def _binary(media: str) -> dict[str, Any]:
    return {media: {"schema": {"type": "string", "format": "binary"}}}


def _dicomweb_paths() -> dict[str, Any]:
    """WADO-RS frames, bulk data, rendered images and thumbnails (PS3.18 10.4)."""
    bad, unknown = _error("bad parameters"), _error("unknown UID, frame or attribute")
    refused = _error("no acceptable media type (Accept)")
    study = _path_param("study", "StudyInstanceUID", UID_PATTERN)
    series = _path_param("series", "SeriesInstanceUID", UID_PATTERN)
    instance = _path_param("instance", "SOPInstanceUID", UID_PATTERN)
    multipart = {"description": "multipart/related, one part per frame or value",
                 "content": _binary("multipart/related")}
    image = {"description": "the image", "content": _binary("image/jpeg") | _binary(
        "image/png")}
    render_params = [
        _query_param("window", {"type": "string", "pattern": r"^[^,]+,[^,]+(,[a-z-]+)?$"},
                     "center,width[,function]: linear (default), linear-exact, sigmoid"),
        _query_param("viewport", {"type": "string",
                                  "pattern": r"^[0-9]{1,4},[0-9]{1,4}(,[0-9]{1,5}){0,4}$"},
                     "vw,vh[,sx,sy,sw,sh]: fit into vw x vh keeping the aspect ratio"),
        _query_param("quality", {"type": "integer", "minimum": 1, "maximum": 100},
                     "JPEG quality (default 90)"),
    ]

    def get(summary: str, op: str, params: list[dict[str, Any]], ok: dict[str, Any],
            description: str = "") -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": summary, "operationId": op, "parameters": params,
            "responses": {"200": ok, "400": bad, "404": unknown, "406": refused}}
        if description:
            operation["description"] = description
        return {"get": operation}

    base = "/dicom-web/studies/{study}/series/{series}/instances/{instance}"
    uids = [study, series, instance]
    frame_list = {"name": "frames", "in": "path", "required": True,
                  "description": "comma-separated 1-based frame numbers",
                  "schema": {"type": "string", "pattern": r"^[1-9][0-9]{0,5}(,[1-9][0-9]{0,5})*$",
                             "maxLength": 200}}
    frame = {"name": "frame", "in": "path", "required": True, "description": "1-based",
             "schema": {"type": "string", "pattern": r"^[1-9][0-9]{0,5}$"}}
    tag = {"name": "tag", "in": "path", "required": True,
           "description": "top-level tag, 8 hex digits (7FE00010: Pixel Data)",
           "schema": {"type": "string", "pattern": r"^[0-9A-Fa-f]{8}$"}}
    thumbnail = ("a representative image (middle instance of the first image series) as "
                 "JPEG (default) or PNG, 128x128 unless viewport says otherwise")
    return {
        base + "/frames/{frames}": get(
            "frames: native as application/octet-stream, compressed as stored (image/jpeg, "
            "image/jls, image/jp2, image/jphc, image/dicom-rle) or decoded per Accept",
            "wado_frames", [*uids, frame_list], multipart),
        base + "/bulkdata/{tag}": get(
            "the value of an attribute (Pixel Data: the frames)", "wado_bulkdata",
            [*uids, tag], multipart),
        base + "/rendered": get("the first frame rendered (PNG by default, or JPEG)",
                                "wado_rendered", [*uids, *render_params], image),
        base + "/frames/{frame}/rendered": get(
            "a frame rendered", "wado_frame_rendered", [*uids, frame, *render_params], image),
        base + "/thumbnail": get("instance thumbnail", "wado_instance_thumbnail",
                                 [*uids, *render_params], image, thumbnail),
        "/dicom-web/studies/{study}/series/{series}/thumbnail": get(
            "series thumbnail", "wado_series_thumbnail", [study, series, *render_params],
            image, thumbnail),
        "/dicom-web/studies/{study}/thumbnail": get(
            "study thumbnail", "wado_study_thumbnail", [study, *render_params], image,
            thumbnail),
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    system = {"get": {"summary": "name, version, AE title and ports", "operationId": "system",
                      "responses": {"200": _json("system", {"type": "object"})}}}
    statistics = {"get": {"summary": "counts and disk size", "operationId": "statistics",
                          "responses": {"200": _json("statistics", {
                              "type": "object",
                              "properties": {"CountPatients": _COUNT, "CountStudies": _COUNT,
                                             "CountSeries": _COUNT, "CountInstances": _COUNT,
                                             "TotalDiskSize": {"type": "string"},
                                             "TotalDiskSizeMB": _COUNT}})}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pacs-archive REST API",
            "version": __version__,
            "description": "An Orthanc-style REST API. Resource ids are DICOM identifiers, "
                           "not Orthanc's hashes: PatientID for patients (URL-encoded), "
                           "StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID otherwise. "
                           "Errors carry a JSON body {\"error\": message}: 400 for bad "
                           "parameters, 404 for unknown ids. DICOMweb is under /dicom-web.",
        },
        "paths": _secured({"/system": system, "/statistics": statistics, **_resource_paths(),
                           **_modality_paths(), **_dicomweb_paths()}) | _auth_paths(),
        "components": {"schemas": _schemas(), "securitySchemes": _SECURITY_SCHEMES},
        # With http_auth on, every route needs one of these; off (the default), none ({}).
        "security": [{"basic": []}, {"bearer": []}, {}],
    }


_SECURITY_SCHEMES = {
    "basic": {"type": "http", "scheme": "basic",
              "description": "a user of `pacs user add` (when http_auth is on)"},
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "a token of POST /auth/token (HMAC-signed, token_lifetime)"},
}


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation may answer 401 (no or bad credentials) and 403 (role too low)."""
    for item in paths.values():
        for method, operation in item.items():
            if method not in ("get", "put", "post", "delete"):
                continue  # path-level parameters
            operation["responses"].setdefault("401", _error("credentials needed (http_auth)"))
            operation["responses"].setdefault("403", _error("the user's role is too low"))
    return paths


def _auth_paths() -> dict[str, Any]:
    token = {"type": "object", "required": ["access_token", "token_type", "expires_in"],
             "properties": {"access_token": {"type": "string"},
                            "token_type": {"const": "bearer"},
                            "expires_in": {"type": "integer", "minimum": 1}}}
    return {"/auth/token": {"post": {
        "summary": "a bearer token for the user of the Basic credentials",
        "description": "Send it as `Authorization: Bearer <token>` until it expires; it "
                       "stops working when the user is removed or changes password.",
        "operationId": "issue_token", "security": [{"basic": []}],
        "responses": {"200": _json("the token", token),
                      "401": _error("no or bad Basic credentials"),
                      "404": _error("HTTP authentication is off (http_auth = false)")}}}}


def routes(_ctx: WebContext) -> list[web.RouteDef]:
    body = document()

    async def get(_request: web.Request) -> web.Response:
        return web.json_response(body)

    return [web.get("/openapi.json", get)]
