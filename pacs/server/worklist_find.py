"""Modality Worklist SCP: C-FIND in the Modality Worklist Information Model - FIND
(1.2.840.10008.5.1.4.31, PS3.4 K.6) over the items HL7 orders made (``pacs.worklist.store``).

Identifiers and responses carry a sequence (Scheduled Procedure Step Sequence), so they are read
and written with pydicom (a worklist is small; this is not a hot path). Matching (PS3.4 C.2.2.2):
an empty key matches everything, ``*``/``?`` wildcards, DA/TM ranges (``a-b``, ``a-``, ``-b``),
UID lists (``\\``); PN keys ignore case when ``fuzzy_person_names`` is set. Keys on
the top level: PatientName, PatientID, IssuerOfPatientID, PatientBirthDate, PatientSex,
AccessionNumber, StudyInstanceUID, RequestedProcedureID, RequestedProcedureDescription,
ReferringPhysicianName; in the Scheduled Procedure Step Sequence item: ScheduledStationAETitle,
ScheduledProcedureStepStartDate/Time, Modality, ScheduledPerformingPhysicianName,
ScheduledProcedureStepID/Description/Status. Other keys are returned empty and match
everything. Only active items (scheduled, arrived, ready, started) are offered.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from pacs.errors import QueryError
from pacs.index.matching import (
    MAX_WILDCARD_VALUE,
    compile_value,
    is_universal,
    wildcard_match,
)
from pacs.net import dimse
from pacs.server.find import audit_query, find_rsp
from pacs.server.messages import UNABLE_TO_PROCESS, Request, Response
from pacs.worklist.store import WorklistItem, WorklistStore

if TYPE_CHECKING:
    from pacs.archive import Archive

log = logging.getLogger("pacs.worklist")
_CHECKED_VRS = frozenset({"DA", "TM", "DT", "UI"})

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
IDENTIFIER_DOES_NOT_MATCH = 0xA900

_SYNTAXES = {  # transfer syntax -> (implicit VR, little endian)
    "1.2.840.10008.1.2": (True, True),
    "1.2.840.10008.1.2.1": (False, True),
    "1.2.840.10008.1.2.2": (False, False),
}

# keyword -> (WorklistItem field, matching kind)
_TOP: dict[str, tuple[str, str]] = {
    "PatientName": ("patient_name", "PN"),
    "PatientID": ("patient_id", "LO"),
    "IssuerOfPatientID": ("issuer_of_patient_id", "LO"),
    "PatientBirthDate": ("patient_birth_date", "DA"),
    "PatientSex": ("patient_sex", "CS"),
    "AccessionNumber": ("accession_number", "SH"),
    "StudyInstanceUID": ("study_instance_uid", "UI"),
    "RequestedProcedureID": ("requested_procedure_id", "SH"),
    "RequestedProcedureDescription": ("requested_procedure_description", "LO"),
    "ReferringPhysicianName": ("referring_physician_name", "PN"),
    "PlacerOrderNumberImagingServiceRequest": ("placer_order_number", "LO"),
    "FillerOrderNumberImagingServiceRequest": ("filler_order_number", "LO"),
}
_SPS: dict[str, tuple[str, str]] = {
    "ScheduledStationAETitle": ("station_aet", "AE"),
    "ScheduledProcedureStepStartDate": ("start_date", "DA"),
    "ScheduledProcedureStepStartTime": ("start_time", "TM"),
    "Modality": ("modality", "CS"),
    "ScheduledPerformingPhysicianName": ("performing_physician_name", "PN"),
    "ScheduledProcedureStepID": ("sps_id", "SH"),
    "ScheduledProcedureStepDescription": ("sps_description", "LO"),
    "ScheduledProcedureStepStatus": ("status", "CS"),
}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _wildcard(pattern: str, value: str, ignore_case: bool) -> bool:
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    return wildcard_match(pattern, value)


def matches(key: str, kind: str, value: str, fuzzy_names: bool) -> bool:
    """Whether a stored ``value`` matches the identifier's ``key`` (PS3.4 C.2.2.2)."""
    if key == "" or key == "*":
        return True
    if kind == "UI":
        return value in key.split("\\")
    if kind in ("DA", "TM") and "-" in key:
        low, _, high = key.partition("-")
        if kind == "TM":  # compare HHMMSS prefixes of equal length
            value, low, high = value.replace(":", ""), low.replace(":", ""), high.replace(":", "")
            return bool(value) and (not low or value >= low[:6]) and (
                not high or value[: len(high[:6])] <= high[:6])
        return bool(value) and (not low or value >= low) and (not high or value <= high)
    ignore_case = kind == "PN" and fuzzy_names
    if "*" in key or "?" in key:
        return _wildcard(key, value, ignore_case)
    if "\\" in key and kind in ("CS", "AE", "SH", "LO"):
        return value in key.split("\\")
    if ignore_case:
        return key.lower() == value.lower()
    return key == value.rstrip() if kind == "TM" else key == value


def _code_item(item: WorklistItem) -> Dataset | None:
    if not item.procedure_code_value:
        return None
    code = Dataset()
    code.CodeValue = item.procedure_code_value
    code.CodingSchemeDesignator = item.procedure_code_scheme or "L"
    code.CodeMeaning = item.procedure_code_meaning or item.procedure_code_value
    return code


def _fill(query: Dataset, item: WorklistItem, table: dict[str, tuple[str, str]]) -> Dataset:
    """A response data set: the query's elements, with the item's values."""
    out = Dataset()
    for elem in query:
        keyword = elem.keyword
        if keyword == "SpecificCharacterSet":
            continue
        if keyword in table:
            out.add_new(elem.tag, elem.VR, getattr(item, table[keyword][0]) or None)
        elif keyword == "ScheduledProcedureStepSequence" and table is _TOP:
            template = elem.value[0] if elem.value else _full_sps_query()
            out.add_new(elem.tag, "SQ", Sequence([_fill(template, item, _SPS)]))
        elif keyword == "RequestedProcedureCodeSequence":
            code = _code_item(item)
            out.add_new(elem.tag, "SQ", Sequence([code] if code is not None else []))
        elif elem.VR == "SQ":
            out.add_new(elem.tag, "SQ", Sequence([]))
        else:
            out.add_new(elem.tag, elem.VR, None)
    return out


def _full_sps_query() -> Dataset:
    template = Dataset()
    for keyword in _SPS:
        setattr(template, keyword, "")
    return template


def _matches(query: Dataset, item: WorklistItem, fuzzy_names: bool) -> bool:
    for keyword, (field, kind) in _TOP.items():
        if keyword in query and not matches(_text(query[keyword].value), kind,
                                            getattr(item, field), fuzzy_names):
            return False
    sps = query.get((0x0040, 0x0100))  # ScheduledProcedureStepSequence
    if sps is not None and sps.VR == "SQ" and sps.value:
        step = sps.value[0]
        for keyword, (field, kind) in _SPS.items():
            if keyword in step and not matches(_text(step[keyword].value), kind,
                                               getattr(item, field), fuzzy_names):
                return False
    return True


def _keys(query: Dataset) -> dict[str, str]:
    """The query's matching keys (top level and the step item) for the audit trail."""
    keys: dict[str, str] = {}
    for elem in query:
        if elem.VR == "SQ":
            if elem.keyword == "ScheduledProcedureStepSequence" and elem.value:
                keys.update(_keys(elem.value[0]))
        elif elem.keyword:
            keys[elem.keyword] = _text(elem.value)
    return keys


def respond(query: Dataset, item: WorklistItem) -> Dataset:
    out = _fill(query, item, _TOP)
    out.SpecificCharacterSet = "ISO_IR 192"
    return out


def select(query: Dataset, items: list[WorklistItem], fuzzy_names: bool,
           limit: int = 0) -> list[Dataset]:
    """Responses for the active items matching ``query``, by start date and time."""
    found = [i for i in items if i.active and _matches(query, i, fuzzy_names)]
    found.sort(key=lambda i: (i.start_date, i.start_time, i.key))
    if limit:
        found = found[:limit]
    return [respond(query, i) for i in found]


class WorklistFindSCP:
    """Answers C-FIND-RQ on the Modality Worklist Information Model."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.store = WorklistStore(archive.catalog)

    def _query(self, request: Request) -> tuple[Dataset, bool, bool]:
        syntax = _SYNTAXES.get(request.transfer_syntax)
        if syntax is None:
            raise QueryError(UNABLE_TO_PROCESS, "unsupported transfer syntax")
        data = request.dataset_bytes()
        if data is None:
            raise QueryError(UNABLE_TO_PROCESS, "request without an identifier")
        try:
            from pynetdicom.dsutils import decode  # here: all of pynetdicom is ~7 MiB

            query = decode(io.BytesIO(data), *syntax)
            elements = [(elem, elem.value) for elem in query.iterall()]  # parsed now
        except Exception as exc:
            raise QueryError(UNABLE_TO_PROCESS, f"cannot parse identifier: {exc}") from exc
        for elem, value in elements:
            if not isinstance(value, str) or is_universal(value):
                continue
            if elem.VR in _CHECKED_VRS:  # dates, times and UIDs as the Q/R C-FIND checks them
                compile_value(elem.keyword, elem.VR, value, True)
            elif len(value) > MAX_WILDCARD_VALUE and ("*" in value or "?" in value):
                raise QueryError(UNABLE_TO_PROCESS,
                                 f"wildcard value longer than {MAX_WILDCARD_VALUE} characters")
        sps = query.get((0x0040, 0x0100))
        if sps is not None and (sps.VR != "SQ" or len(sps.value) > 1):
            raise QueryError(IDENTIFIER_DOES_NOT_MATCH,
                             "ScheduledProcedureStepSequence must hold at most one item")
        return query, *syntax

    async def c_find(self, request: Request) -> Response:
        query, implicit, little = self._query(request)
        settings = self.archive.settings
        loop = asyncio.get_running_loop()
        run: Callable[[], list[Dataset]] = lambda: select(  # noqa: E731
            query, self.store.items(), settings.fuzzy_person_names, settings.max_find_results)
        responses = await loop.run_in_executor(self.archive.executor, run)
        assert request.send_pending is not None
        from pynetdicom.dsutils import encode

        sent = 0
        for response in responses:
            if request.cancel is not None and request.cancel.is_set():
                log.info("%s: worklist C-FIND cancelled after %d matches", request.calling_aet,
                         sent)
                audit_query(self.archive, request, "WORKLIST", "", _keys(query), sent, True)
                return Response(find_rsp(request, dimse.CANCEL, False))
            identifier = encode(response, implicit, little)
            if identifier is None:
                raise QueryError(UNABLE_TO_PROCESS, "cannot encode a worklist response")
            await request.send_pending(find_rsp(request, dimse.PENDING, True), identifier)
            sent += 1
        log.info("%s: worklist C-FIND, %d matches", request.calling_aet, sent)
        audit_query(self.archive, request, "WORKLIST", "", _keys(query), sent)
        return Response(find_rsp(request, dimse.SUCCESS, False))
