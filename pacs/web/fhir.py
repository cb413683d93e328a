"""FHIR R4 for the EHR: imaging orders in (ServiceRequest), the archive's studies out
(ImagingStudy), validated with ``fhir.resources`` (its R4B models; R4B changed neither resource).

::

    POST /fhir/ServiceRequest            an order -> a worklist item (201 + Location)
    PUT  /fhir/ServiceRequest/{id}       create or update that order (200 / 201)
    GET  /fhir/ServiceRequest/{id}       the order as stored, with its status
    GET  /fhir/ImagingStudy?patient=P    studies of PatientID P (or ``Patient/P``)
    GET  /fhir/ImagingStudy?identifier=A accession number A, or ``urn:oid:<StudyInstanceUID>``
    GET  /fhir/ImagingStudy/{uid}        one study (the FHIR id is the StudyInstanceUID)

ServiceRequest -> worklist item (``pacs.worklist.store.WorklistItem``), the mapping OpenEMR's
orders need: ``identifier`` typed PLAC (v2-0203) is the placer order number and the item key
(else the resource id), typed ACSN the accession number, system ``urn:dicom:uid`` the
StudyInstanceUID (``urn:oid:`` value; generated when absent); ``subject`` ``Patient/<id>`` is
the PatientID, and a contained Patient (``#ref``) gives name, birth date and sex; ``code`` is the
requested procedure (first coding: code, system, display; text as description); a coding of
``code`` or ``category`` in the DICOM system (``http://dicom.nema.org/resources/ontology/DCM``)
is the modality; ``occurrenceDateTime`` / ``occurrencePeriod.start`` the scheduled start;
``requester.display`` the referring physician; a ``performer`` Device whose display is an AE
title the scheduled station (else ``worklist_station_aet``). ``status`` active/on-hold ->
SCHEDULED, revoked/entered-in-error -> CANCELLED, completed -> COMPLETED; draft is refused.

Errors are OperationOutcome resources: 400 for JSON or structure the model rejects, 422 for a
valid resource the archive cannot schedule (no patient, a status it cannot map), 404 unknown id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web
from pydicom.uid import generate_uid

from pacs.errors import CatalogError, QueryError
from pacs.index.query import Query
from pacs.web.context import WebContext
from pacs.worklist.store import WorklistItem, WorklistStore

__all__ = ["routes"]

log = logging.getLogger("pacs.fhir")

FHIR_JSON = "application/fhir+json"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ENDPOINT_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
VIEWER_EXTENSION = "urn:pacs:viewer-url"
_STATUS = {"active": "SCHEDULED", "on-hold": "SCHEDULED", "revoked": "CANCELLED",
           "entered-in-error": "CANCELLED", "completed": "COMPLETED"}
_FHIR_STATUS = {"SCHEDULED": "active", "ARRIVED": "active", "READY": "active",
                "STARTED": "active", "COMPLETED": "completed", "CANCELLED": "revoked",
                "DISCONTINUED": "revoked"}
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR id datatype
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_AET = re.compile(r"^[^\\\x00-\x1f]{1,16}$")
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "O"}
_STUDY_KEYS = ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime",
               "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
               "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")


class FhirError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text

    def response(self) -> web.Response:
        outcome = {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": self.code, "diagnostics": self.text}]}
        return web.Response(status=self.status, text=json.dumps(outcome),
                            content_type=FHIR_JSON)


# -- ServiceRequest -> worklist item -----------------------------------------------------------

def _validate(body: bytes) -> Any:
    # Here, with fhir.resources: pydantic costs each worker 3 MiB before the first FHIR order.
    from fhir.resources.R4B.servicerequest import ServiceRequest
    from pydantic import ValidationError

    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FhirError(400, "invalid", f"body is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("resourceType") != "ServiceRequest":
        raise FhirError(400, "invalid", "resourceType must be ServiceRequest")
    try:
        return ServiceRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise FhirError(400, "structure", f"{where}: {first.get('msg')}") from None


def _pn(name: Any) -> str:
    """A FHIR HumanName as DICOM PN (family^given^middle^prefix^suffix)."""
    if name is None:
        return ""
    given = list(name.given or [])
    parts = [name.family or "", given[0] if given else "", " ".join(given[1:]),
             " ".join(name.prefix or []), " ".join(name.suffix or [])]
    return "^".join(parts).rstrip("^")


def _date(value: Any) -> tuple[str, str]:
    text = str(value) if value is not None else ""
    digits = re.sub(r"[^0-9]", "", text[:19])
    return digits[:8], digits[8:14]


def _codings(concept: Any) -> list[Any]:
    return list(concept.coding or []) if concept is not None else []


def _order_values(sr: Any, default_station: str) -> dict[str, Any]:
    if sr.status == "draft" or sr.status not in _STATUS:
        raise FhirError(422, "business-rule",
                        f"status {sr.status!r} cannot be scheduled (active, on-hold, revoked, "
                        "entered-in-error or completed)")
    reference = sr.subject.reference or "" if sr.subject is not None else ""
    values: dict[str, Any] = {"status": _STATUS[sr.status]}
    contained = {f"#{res.id}": res for res in (sr.contained or []) if getattr(res, "id", None)}
    patient = contained.get(reference)
    if patient is not None and patient.get_resource_type() == "Patient":
        ids = [i.value for i in (patient.identifier or []) if i.value]
        values["patient_id"] = ids[0] if ids else patient.id
        values["patient_name"] = _pn((patient.name or [None])[0])
        values["patient_birth_date"] = _date(patient.birthDate)[0]
        values["patient_sex"] = _SEX.get(patient.gender or "", "")
    elif reference.startswith("Patient/") and len(reference) > len("Patient/"):
        values["patient_id"] = reference.removeprefix("Patient/")
        if sr.subject.display:
            values["patient_name"] = sr.subject.display.replace(", ", "^")
    else:
        raise FhirError(422, "required", "subject must reference a Patient (Patient/<id> or a "
                        "contained Patient)")
    for identifier in sr.identifier or []:
        codes = {c.code for c in _codings(identifier.type)}
        if identifier.system == "urn:dicom:uid" and identifier.value:
            uid = identifier.value.removeprefix("urn:oid:")
            if not _UID.match(uid) or len(uid) > 64:
                raise FhirError(422, "value", f"{identifier.value!r} is not a DICOM UID")
            values["study_instance_uid"] = uid
        elif "ACSN" in codes:
            values["accession_number"] = identifier.value or ""
        elif "PLAC" in codes:
            values["placer_order_number"] = identifier.value or ""
        elif "FILL" in codes:
            values["filler_order_number"] = identifier.value or ""
    procedure = _codings(sr.code)
    if procedure:
        values["procedure_code_value"] = procedure[0].code or ""
        values["procedure_code_scheme"] = procedure[0].system or ""
        values["procedure_code_meaning"] = procedure[0].display or ""
    description = (sr.code.text if sr.code is not None else None) or (
        procedure[0].display if procedure else "")
    values["requested_procedure_description"] = description or ""
    values["sps_description"] = description or ""
    for coding in procedure + [c for cat in sr.category or [] for c in _codings(cat)]:
        if coding.system == DCM_SYSTEM and coding.code:
            values["modality"] = coding.code
            break
    start = sr.occurrenceDateTime or (sr.occurrencePeriod.start
                                      if sr.occurrencePeriod is not None else None)
    values["start_date"], values["start_time"] = _date(start)
    if sr.requester is not None and sr.requester.display:
        values["referring_physician_name"] = sr.requester.display
    station = default_station
    for performer in sr.performer or []:
        if (performer.reference or "").startswith("Device/") and performer.display and \
                _AET.match(performer.display):
            station = performer.display.strip()
    values["station_aet"] = station
    return values


def _item_key(sr: Any, path_id: str | None) -> str:
    if path_id is not None:
        return f"fhir:{path_id}"
    for identifier in sr.identifier or []:
        if "PLAC" in {c.code for c in _codings(identifier.type)} and identifier.value:
            return str(identifier.value)
    return f"fhir:{sr.id or uuid.uuid4().hex}"


def _store_order(store: WorklistStore, key: str, values: dict[str, Any],
                 resource_id: str) -> tuple[WorklistItem, bool]:
    now = time.time()
    created = False

    def change(current: WorklistItem | None) -> WorklistItem:
        nonlocal created
        created = current is None
        base = current or WorklistItem(key, created=now)
        item = replace(base, **values, order_control="FHIR", message_control_id=resource_id,
                       updated=now)
        if not item.study_instance_uid:
            item.study_instance_uid = generate_uid()
        if not item.requested_procedure_id:
            item.requested_procedure_id = item.accession_number or key[-16:]
        if not item.sps_id:
            item.sps_id = item.requested_procedure_id
        return item

    return store.update(key, change), created


def _service_request(item: WorklistItem, resource_id: str) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{item.study_instance_uid}"}]
    if item.accession_number:
        identifiers.append({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                            "value": item.accession_number})
    if item.placer_order_number:
        identifiers.append({"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]},
                            "value": item.placer_order_number})
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": resource_id, "identifier": identifiers,
        "status": _FHIR_STATUS.get(item.status, "unknown"), "intent": "order",
        "subject": {"reference": f"Patient/{item.patient_id}"},
    }
    if item.procedure_code_value or item.requested_procedure_description:
        code: dict[str, Any] = {"text": item.requested_procedure_description}
        if item.procedure_code_value:
            code["coding"] = [{"system": item.procedure_code_scheme,
                               "code": item.procedure_code_value,
                               "display": item.procedure_code_meaning}]
        resource["code"] = code
    return resource


# -- ImagingStudy --------------------------------------------------------------------------------

def _imaging_study(row: dict[str, str], base: str) -> dict[str, Any]:
    uid = row.get("StudyInstanceUID", "")
    date, time_of_day = row.get("StudyDate", ""), row.get("StudyTime", "")
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": uid, "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "subject": {"reference": f"Patient/{row.get('PatientID', '')}",
                    "display": row.get("PatientName", "").replace("^", " ").strip()},
        "contained": [{
            "resourceType": "Endpoint", "id": "wado", "status": "active",
            "connectionType": {"system": ENDPOINT_TYPE, "code": "dicom-wado-rs"},
            "payloadType": [{"text": "DICOM WADO-RS"}],
            "payloadMimeType": ["application/dicom"],
            "address": f"{base}/dicom-web",
        }],
        "endpoint": [{"reference": "#wado"}],
        "extension": [{"url": VIEWER_EXTENSION,
                       "valueUrl": f"{base}/viewer?StudyInstanceUID={uid}"}],
    }
    if row.get("AccessionNumber"):
        study["identifier"].append({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                                    "value": row["AccessionNumber"]})
    if len(date) == 8:
        started = f"{date[:4]}-{date[4:6]}-{date[6:8]}"
        if len(time_of_day) >= 6 and time_of_day[:6].isdigit():
            started += f"T{time_of_day[:2]}:{time_of_day[2:4]}:{time_of_day[4:6]}Z"
        study["started"] = started
    modalities = [m for m in row.get("ModalitiesInStudy", "").split("\\") if m]
    if modalities:
        study["modality"] = [{"system": DCM_SYSTEM, "code": m} for m in modalities]
    for key, name in (("NumberOfStudyRelatedSeries", "numberOfSeries"),
                      ("NumberOfStudyRelatedInstances", "numberOfInstances")):
        if row.get(key, "").isdigit():
            study[name] = int(row[key])
    if row.get("StudyDescription"):
        study["description"] = row["StudyDescription"]
    return study


def _search_filters(params: Any) -> dict[str, str]:
    filters: dict[str, str] = {}
    unknown = set(params) - {"patient", "identifier", "_count"}
    if unknown:
        raise FhirError(400, "not-supported", f"search parameter {sorted(unknown)[0]!r} is not "
                        "supported (patient, identifier, _count)")
    if "patient" in params:
        filters["PatientID"] = params["patient"].removeprefix("Patient/")
    if "identifier" in params:
        value = params["identifier"].split("|")[-1]  # system|value token
        if value.startswith("urn:oid:"):
            filters["StudyInstanceUID"] = value.removeprefix("urn:oid:")
        else:
            filters["AccessionNumber"] = value
    if not filters or any(not v or "*" in v or "?" in v or "\\" in v for v in filters.values()):
        raise FhirError(400, "required", "give patient= or identifier= with an exact value")
    return filters


def routes(ctx: WebContext) -> list[web.RouteDef]:
    archive = ctx.archive
    store = WorklistStore(archive.catalog, lambda fn: archive.writer.run(fn).result())

    def base(request: web.Request) -> str:
        return ctx.base_url(request)

    async def put_order(request: web.Request, path_id: str | None) -> web.Response:
        if path_id is not None and not _ID.match(path_id):
            return FhirError(400, "value", f"{path_id!r} is not a FHIR id").response()
        body = await request.read()
        try:
            sr = _validate(body)
            if path_id is not None and sr.id not in (None, path_id):
                raise FhirError(400, "invalid", "the resource id differs from the URL's")
            values = _order_values(sr, ctx.settings.worklist_station_aet)
        except FhirError as exc:
            log.warning("%s: FHIR ServiceRequest refused (%d): %s", request.remote,
                        exc.status, exc.text)
            return exc.response()
        key = _item_key(sr, path_id)
        resource_id = path_id or key.removeprefix("fhir:")
        if not _ID.match(resource_id):
            resource_id = uuid.uuid5(uuid.NAMESPACE_OID, key).hex
        loop = asyncio.get_running_loop()
        try:
            item, created = await loop.run_in_executor(
                archive.executor, _store_order, store, key, values, resource_id)
        except CatalogError as exc:  # not stored, or not durably (failed sync): never 201
            log.error("%s: FHIR ServiceRequest %s not stored durably: %s", request.remote,
                      resource_id, exc)
            return FhirError(500, "exception", f"order not stored: {exc}").response()
        log.info("%s: FHIR ServiceRequest %s %s (order %s, patient %s, study %s)",
                 request.remote, resource_id, "created" if created else "updated", key,
                 item.patient_id, item.study_instance_uid)
        location = f"{base(request)}/fhir/ServiceRequest/{resource_id}"
        return web.Response(status=201 if created else 200, content_type=FHIR_JSON,
                            text=json.dumps(_service_request(item, resource_id)),
                            headers={"Location": location})

    async def post_service_request(request: web.Request) -> web.Response:
        return await put_order(request, None)

    async def put_service_request(request: web.Request) -> web.Response:
        return await put_order(request, request.match_info["id"])

    async def get_service_request(request: web.Request) -> web.Response:
        resource_id = request.match_info["id"]
        for key in (f"fhir:{resource_id}", resource_id):
            item = store.get(key)
            if item is not None:
                return web.Response(content_type=FHIR_JSON,
                                    text=json.dumps(_service_request(item, resource_id)))
        return FhirError(404, "not-found", f"ServiceRequest/{resource_id} is unknown").response()

    def studies(filters: dict[str, str], limit: int | None) -> list[dict[str, str]]:
        query = Query(level="STUDY", filters=filters, return_keys=_STUDY_KEYS, limit=limit,
                      fuzzy_names=False)
        return list(archive.queries.run(query))

    async def search(request: web.Request) -> web.Response:
        try:
            filters = _search_filters(request.query)
            count = request.query.get("_count")
            limit = (int(count) if count is not None and count.isascii() and count.isdigit()
                     else None)
            if count is not None and (limit is None or limit > 10_000):
                raise FhirError(400, "value", "_count must be an integer in [0, 10000]")
        except FhirError as exc:
            return exc.response()
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(archive.executor, studies, filters, limit)
        except QueryError as exc:
            return FhirError(400, "value", exc.comment).response()
        root = base(request)
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(rows),
                  "entry": [{"fullUrl": f"{root}/fhir/ImagingStudy/{row['StudyInstanceUID']}",
                             "resource": _imaging_study(row, root),
                             "search": {"mode": "match"}} for row in rows]}
        return web.Response(content_type=FHIR_JSON, text=json.dumps(bundle))

    async def read(request: web.Request) -> web.Response:
        uid = request.match_info["id"]
        if not _UID.match(uid) or len(uid) > 64:
            return FhirError(404, "not-found", f"ImagingStudy/{uid} is unknown").response()
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(archive.executor, studies,
                                          {"StudyInstanceUID": uid}, 1)
        if not rows:
            return FhirError(404, "not-found", f"ImagingStudy/{uid} is unknown").response()
        return web.Response(content_type=FHIR_JSON,
                            text=json.dumps(_imaging_study(rows[0], base(request))))

    return [
        web.post("/fhir/ServiceRequest", post_service_request),
        web.put("/fhir/ServiceRequest/{id}", put_service_request),
        web.get("/fhir/ServiceRequest/{id}", get_service_request),
        web.get("/fhir/ImagingStudy", search),
        web.get("/fhir/ImagingStudy/{id}", read),
    ]
