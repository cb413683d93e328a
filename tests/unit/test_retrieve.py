"""Retrieve identifiers resolve to exactly the instances they name, at every level."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs.errors import QueryError
from pacs.index.catalog import Catalog
from pacs.index.query import QueryEngine
from pacs.server.retrieve import resolve_instances
from tests.unit.index._records import make_record


@pytest.fixture
def catalog(tmp_path: Path):
    cat = Catalog(tmp_path / "db", map_size=1 << 26)
    cat.store_batch([
        make_record("P1", "ST1", "SE1", "I1"), make_record("P1", "ST1", "SE1", "I2"),
        make_record("P1", "ST1", "SE2", "I3"), make_record("P1", "ST2", "SE3", "I4"),
        make_record("P2", "ST3", "SE4", "I5"),
    ])  # fmt: skip
    yield cat
    cat.close()


@pytest.mark.parametrize(
    ("model", "identifier", "expected", "unknown"),
    [
        ("PATIENT", {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}, "I1 I2 I3 I4", ""),
        ("PATIENT", {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1\\P2"},
         "I1 I2 I3 I4 I5", ""),
        ("STUDY", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "ST1"}, "I1 I2 I3", ""),
        ("STUDY", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "ST2\\ST3"}, "I4 I5",
         ""),
        ("STUDY", {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "SE1"}, "I1 I2", ""),
        ("STUDY", {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": "I5\\NO1\\I3\\NO2"},
         "I5 I3", "NO1 NO2"),
        ("STUDY", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "UNKNOWN"}, "", ""),
    ],
)
def test_levels(catalog: Catalog, model: str, identifier: dict[str, str], expected: str,
                unknown: str) -> None:
    """What is named and here, and what is named at IMAGE level but not here (a failed
    sub-operation of the retrieve)."""
    resolved = resolve_instances(catalog, QueryEngine(catalog), model, identifier)
    uids = [r.sop_instance_uid for r in resolved.records]
    assert sorted(uids) == sorted(expected.split())
    assert resolved.unknown == unknown.split()


@pytest.mark.parametrize(
    ("model", "identifier"),
    [
        ("STUDY", {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}),  # no PATIENT in Study Root
        ("STUDY", {"QueryRetrieveLevel": "STUDY"}),  # unique key missing
        ("STUDY", {"StudyInstanceUID": "ST1"}),  # level missing
        ("PATIENT", {"QueryRetrieveLevel": "FRAME", "PatientID": "P1"}),
    ],
)
def test_bad_identifiers(catalog: Catalog, model: str, identifier: dict[str, str]) -> None:
    with pytest.raises(QueryError) as info:
        resolve_instances(catalog, QueryEngine(catalog), model, identifier)
    assert info.value.status == 0xA900
