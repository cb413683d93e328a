"""Which instances a C-MOVE or C-GET identifier names (PS3.4 C.4.2.2.1 / C.4.3.2.1).

A retrieve identifier carries the Query/Retrieve Level and the unique keys of that level (and,
in the Patient Root model, of the levels above): PatientID at PATIENT level,
StudyInstanceUID at STUDY, SeriesInstanceUID at SERIES, SOPInstanceUID at IMAGE. Each unique
key may be a list of UIDs (``\\``-separated). Resolution walks the catalog's child indexes.
SOP Instance UIDs named at IMAGE level that the archive does not hold are returned too: each
is a sub-operation the request implies (PS3.4 C.4.2.3.1) that fails.
"""

from __future__ import annotations

from typing import NamedTuple

from pacs.errors import QueryError
from pacs.index.catalog import Catalog
from pacs.index.query import Query, QueryEngine
from pacs.index.records import InstanceRecord

IDENTIFIER_MISMATCH = 0xA900
UNIQUE_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


def _values(elements: dict[str, str], keyword: str) -> list[str]:
    return [v.strip() for v in elements.get(keyword, "").split("\\") if v.strip()]


class Resolved(NamedTuple):
    records: list[InstanceRecord]  # in study/series/instance order
    unknown: list[str]  # SOP Instance UIDs named at IMAGE level that are not here


def resolve_instances(
    catalog: Catalog, engine: QueryEngine, model: str, elements: dict[str, str]
) -> Resolved:
    """Every indexed instance the identifier names, and the instances it names that are
    not indexed (IMAGE level only: at the other levels nothing names an instance)."""
    level = elements.get("QueryRetrieveLevel", "").strip().upper()
    if level not in UNIQUE_KEY or (model == "STUDY" and level == "PATIENT"):
        raise QueryError(IDENTIFIER_MISMATCH, f"invalid QueryRetrieveLevel {level!r}")
    keys = _values(elements, UNIQUE_KEY[level])
    if not keys:
        raise QueryError(IDENTIFIER_MISMATCH, f"{UNIQUE_KEY[level]} missing at {level} level")
    if level == "IMAGE":
        found = [(uid, catalog.get_instance(uid)) for uid in keys]
        return Resolved([r for _, r in found if r is not None],
                        [uid for uid, r in found if r is None])
    if level == "SERIES":
        series = keys
    else:
        if level == "PATIENT":
            studies: list[str] = []
            for patient_id in keys:
                query = Query(level="STUDY", model="PATIENT", filters={"PatientID": patient_id},
                              return_keys=("StudyInstanceUID",))
                studies += [row["StudyInstanceUID"] for row in engine.run(query)]
        else:
            studies = keys
        series = [s for study in studies for s in catalog.series_of_study(study)]
    return Resolved(catalog.instances_in_series(series), [])
