"""Which instances a C-MOVE or C-GET identifier names (PS3.4 C.4.2.2.1 / C.4.3.2.1).

A retrieve identifier carries the Query/Retrieve Level and the unique keys of that level (and,
in the Patient Root model, of the levels above): PatientID at PATIENT level,
StudyInstanceUID at STUDY, SeriesInstanceUID at SERIES, SOPInstanceUID at IMAGE. Each unique
key may be a list of UIDs (``\\``-separated). Resolution walks the catalog's child indexes.
"""

from __future__ import annotations

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


def resolve_instances(
    catalog: Catalog, engine: QueryEngine, model: str, elements: dict[str, str]
) -> list[InstanceRecord]:
    """Every indexed instance the identifier names, in study/series/instance order."""
    level = elements.get("QueryRetrieveLevel", "").strip().upper()
    if level not in UNIQUE_KEY or (model == "STUDY" and level == "PATIENT"):
        raise QueryError(IDENTIFIER_MISMATCH, f"invalid QueryRetrieveLevel {level!r}")
    keys = _values(elements, UNIQUE_KEY[level])
    if not keys:
        raise QueryError(IDENTIFIER_MISMATCH, f"{UNIQUE_KEY[level]} missing at {level} level")
    if level == "IMAGE":
        records = [catalog.get_instance(uid) for uid in keys]
        return [r for r in records if r is not None]
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
    return catalog.instances_in_series(series)
