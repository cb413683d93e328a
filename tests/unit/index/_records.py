"""Test helpers: synthetic instance records and a full consistency check of a catalog."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import strategies as st

from pacs.index.catalog import (
    PATIENT_INSTANCES,
    PATIENT_KEY,
    PATIENT_SERIES,
    PATIENT_STUDIES,
    SERIES_INSTANCES,
    STUDY_INSTANCES,
    STUDY_SERIES,
    Catalog,
)
from pacs.index.records import ALL_KEYWORDS, InstanceRecord


def make_record(
    patient: str,
    study: str,
    series: str,
    sop: str,
    size: int = 100,
    location: str | None = None,
    **attrs: str,
) -> InstanceRecord:
    values = dict.fromkeys(ALL_KEYWORDS, "")
    values.update(
        PatientID=patient,
        PatientName=f"Name^{patient}",
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        SOPInstanceUID=sop,
        SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        Modality="CT",
    )
    values.update(attrs)
    return InstanceRecord(
        attributes=values,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        location=location or f"loc/{sop}",
        size=size,
        digest="0" * 32,
        source_aet="MODALITY",
        received_at=1_700_000_000.5,
        specific_character_set="ISO_IR 192",
    )


def hierarchy(
    n_patients: int = 2, n_studies: int = 2, n_series: int = 2, n_inst: int = 3
) -> list[InstanceRecord]:
    """n_patients x n_studies x n_series x n_inst records with UIDs 1.<p>.<st>.<se>.<i>."""
    return [
        make_record(f"P{p}", f"1.{p}.{st}", f"1.{p}.{st}.{se}", f"1.{p}.{st}.{se}.{i}", size=10 + i)
        for p in range(n_patients)
        for st in range(n_studies)
        for se in range(n_series)
        for i in range(n_inst)
    ]


def check_consistent(catalog: Catalog) -> None:
    """Every count, child index and total agrees with the instance records themselves."""
    instances = list(catalog.iter_instances())
    per_series = Counter(r.attributes["SeriesInstanceUID"] for r in instances)
    series_uids: set[str] = set()
    study_uids: set[str] = set()
    patient_keys: set[str] = set()
    study_totals: Counter[str] = Counter()
    patient_totals: Counter[str] = Counter()
    for series_uid, n in per_series.items():
        series = catalog.get_series(series_uid)
        assert series is not None, series_uid
        assert series[SERIES_INSTANCES] == n
        assert sorted(catalog.instances_of_series(series_uid)) == sorted(
            r.sop_instance_uid for r in instances if r.attributes["SeriesInstanceUID"] == series_uid
        )
        series_uids.add(series_uid)
        study_uids.add(series["StudyInstanceUID"])
        study_totals[series["StudyInstanceUID"]] += n
    for study_uid in study_uids:
        study = catalog.get_study(study_uid)
        assert study is not None, study_uid
        listed = catalog.series_of_study(study_uid)
        assert study[STUDY_SERIES] == len(listed) and set(listed) <= series_uids
        assert study[STUDY_INSTANCES] == study_totals[study_uid]
        patient_keys.add(study[PATIENT_KEY])
        patient_totals[study[PATIENT_KEY]] += study_totals[study_uid]
    assert sum(len(catalog.series_of_study(s)) for s in study_uids) == len(series_uids)
    for pk in patient_keys:
        patient = catalog.get_patient(pk)
        assert patient is not None, pk
        studies = catalog.studies_of_patient(pk)
        assert patient[PATIENT_STUDIES] == len(studies) and set(studies) <= study_uids
        assert patient[PATIENT_SERIES] == sum(len(catalog.series_of_study(s)) for s in studies)
        assert patient[PATIENT_INSTANCES] == patient_totals[pk]
    assert catalog.statistics() == {
        "patients": len(patient_keys),
        "studies": len(study_uids),
        "series": len(series_uids),
        "instances": len(instances),
        "total_size": sum(r.size for r in instances),
    }


# Small pools so that duplicates, moves between series/studies/patients and deletes all happen.
_SOPS = st.sampled_from([f"9.{i}" for i in range(6)])
DELETE_OP = st.tuples(st.just("delete"), _SOPS)


def store_op(*more: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    """(policy, patient, study, series, sop, size, *more) of a random store."""
    return st.tuples(
        st.sampled_from(["keep", "replace"]),
        st.sampled_from(["P0", "P1", ""]),
        st.sampled_from(["1.1", "1.2", "1.3"]),
        st.sampled_from(["1.1.1", "1.1.2", "1.2.1"]),
        _SOPS,
        st.integers(1, 1000),
        *more,
    )
