"""Retention rules over an in-process archive: which studies go, deletion, audit, re-runs."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs.archive import Archive
from pacs.audit import read_events
from pacs.cli import main
from pacs.config import RetentionRule, Settings
from pacs.dicom import part10
from pacs.errors import BlobNotFound
from pacs.index.query import QueryEngine
from pacs.retention import Candidate, apply_rules, cutoff, select
from tests.dicomgen import make_ct, write

TODAY = date.today()  # the command uses the real date: so do the rules here


def ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).strftime("%Y%m%d")


# name -> (StudyDate, modalities of its series); two instances per series
STUDIES = {
    "old_ct": (ago(4000), ("CT",)),
    "old_mr": (ago(4000), ("MR",)),
    "old_mixed": (ago(800), ("MR", "CT")),
    "day_before_cutoff": (ago(366), ("CT",)),
    "on_cutoff": (ago(365), ("CT",)),  # exactly 365 days old: not *older* than 365 days
    "recent_ct": (ago(3), ("CT",)),
    "undated_ct": ("", ("CT",)),
    "malformed_date": ("2001", ("CT",)),
    "impossible_date": ("20011345", ("CT",)),
}


def _dataset_bytes(tmp: Path, **kwargs: object) -> bytes:
    ds = make_ct(rows=8, columns=8, **kwargs)  # type: ignore[arg-type]
    data = write(ds, tmp / f"{ds.SOPInstanceUID}.dcm").read_bytes()
    _meta, offset = part10.read_file_meta(data)
    return data[offset:]


def populate(archive: Archive, tmp: Path) -> dict[str, str]:
    """Store STUDIES; name -> StudyInstanceUID."""
    uids: dict[str, str] = {}

    async def store_all() -> None:
        for n, (name, (study_date, modalities)) in enumerate(STUDIES.items()):
            study = uids[name] = generate_uid()
            for modality in modalities:
                series = generate_uid()
                for i in range(2):
                    data = _dataset_bytes(tmp, patient_id=f"P{n}", study_uid=study,
                                          series_uid=series, modality=modality,
                                          instance_number=i + 1)
                    await archive.ingest.store(
                        _with_date(data, study_date), transfer_syntax_uid="1.2.840.10008.1.2.1",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=None,
                        source_aet="TEST")

    asyncio.run(store_all())
    return uids


def _with_date(data: bytes, study_date: str) -> bytes:
    """Re-encode make_ct's StudyDate (20260102) element with another value."""
    element = b"\x08\x00\x20\x00DA\x08\x0020260102"
    assert data.count(element) == 1
    value = study_date.encode()
    if len(value) % 2:
        value += b" "
    return data.replace(element, b"\x08\x00\x20\x00DA" + len(value).to_bytes(2, "little") + value)


@pytest.fixture(params=["segments", "files"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    settings = Settings(data_dir=tmp_path / "data", store_backend=request.param,
                        lmdb_map_size=1 << 28)
    opened = Archive.open(settings)
    yield opened
    opened.close()


@pytest.fixture
def stored(archive: Archive, tmp_path: Path) -> dict[str, str]:
    return populate(archive, tmp_path)


def engines(archive: Archive) -> list[QueryEngine]:
    """The StudyDate index plan, the same with a tiny index cap (falls back to the column
    scan), and the forced column scan: every plan must select the same studies."""
    capped = QueryEngine(archive.catalog, index_cap=1)
    scanning = QueryEngine(archive.catalog)
    scanning.force_scan = True
    return [archive.queries, capped, scanning]


def names(uids: dict[str, str], selected: list[str]) -> set[str]:
    by_uid = {v: k for k, v in uids.items()}
    return {by_uid[u] for u in selected}


def test_cutoff_is_n_days_before_today() -> None:
    assert cutoff(RetentionRule(365), TODAY) == ago(365)


def test_rule_selects_studies_dated_before_the_cutoff(archive: Archive,
                                                      stored: dict[str, str]) -> None:
    for engine in engines(archive):
        chosen = select(engine, [RetentionRule(365)], TODAY)
        assert names(stored, [c.study_uid for c in chosen]) == {
            "old_ct", "old_mr", "old_mixed", "day_before_cutoff"}
        assert all(c.rule == RetentionRule(365) for c in chosen)
        dates = {c.study_uid: c.study_date for c in chosen}
        assert dates[stored["old_ct"]] == ago(4000)


def test_modality_rule_needs_a_series_of_that_modality(archive: Archive,
                                                       stored: dict[str, str]) -> None:
    for engine in engines(archive):
        chosen = select(engine, [RetentionRule(365, "CT")], TODAY)
        assert names(stored, [c.study_uid for c in chosen]) == {
            "old_ct", "old_mixed", "day_before_cutoff"}
        chosen = select(engine, [RetentionRule(1000, "MR")], TODAY)
        assert names(stored, [c.study_uid for c in chosen]) == {"old_mr"}


def test_several_rules_select_each_study_once(archive: Archive, stored: dict[str, str]) -> None:
    rules = [RetentionRule(3000, "CT"), RetentionRule(700)]
    chosen = select(archive.queries, rules, TODAY)
    assert sorted(names(stored, [c.study_uid for c in chosen])) == sorted(
        {"old_ct", "old_mr", "old_mixed"})
    assert len(chosen) == 3
    rule_of = {c.study_uid: c.rule for c in chosen}
    assert rule_of[stored["old_ct"]] == rules[0] and rule_of[stored["old_mr"]] == rules[1]


def test_apply_deletes_index_and_blobs_and_audits(archive: Archive,
                                                  stored: dict[str, str]) -> None:
    catalog = archive.catalog
    doomed = ("old_ct", "old_mr", "old_mixed", "day_before_cutoff")
    locations = {name: [r.location for r in catalog.instances_in_series(
        catalog.series_of_study(stored[name]))] for name in doomed}
    before = catalog.statistics()
    report = apply_rules(catalog, archive.store, archive.queries, archive.audit,
                         [RetentionRule(365)], today=TODAY)
    assert (report.deleted_studies, report.deleted_instances, report.failed) == (4, 10, 0)
    for name, uid in stored.items():
        assert (catalog.get_study(uid) is None) == (name in doomed), name
    for name in doomed:
        assert len(locations[name]) == 2 * len(STUDIES[name][1])
        for location in locations[name]:
            with pytest.raises(BlobNotFound):
                archive.store.get(location)
    after = catalog.statistics()
    assert before["instances"] - after["instances"] == 10
    assert before["total_size"] - after["total_size"] == report.deleted_bytes > 0
    assert archive.audit is not None
    archive.audit.close()
    events = [e for e in read_events(archive.settings.audit_dir) if e["action"] == "retention"]
    assert sorted(e["study_uid"] for e in events) == sorted(stored[n] for n in doomed)
    for event in events:
        assert event["user"] == "retention" and event["outcome"] == "success"
        assert event["rule"] == "older_than_days=365" and event["patient_id"].startswith("P")
    # A second run finds nothing left to do.
    again = apply_rules(catalog, archive.store, archive.queries, archive.audit,
                        [RetentionRule(365)], today=TODAY)
    assert (again.candidates, again.deleted_studies) == ([], 0)


def test_dry_run_deletes_nothing(archive: Archive, stored: dict[str, str]) -> None:
    before = archive.catalog.statistics()
    report = apply_rules(archive.catalog, archive.store, archive.queries, archive.audit,
                         [RetentionRule(365)], today=TODAY, dry_run=True)
    assert len(report.candidates) == 4 and report.deleted_studies == 0
    assert archive.catalog.statistics() == before


def test_interrupted_run_is_finished_by_the_next(archive: Archive,
                                                 stored: dict[str, str]) -> None:
    catalog = archive.catalog
    uid = stored["old_mixed"]
    records = catalog.instances_in_series(catalog.series_of_study(uid))
    # What a run stopped midway leaves: some instances unindexed and their blobs removed.
    for record in records[:3]:
        assert catalog.delete_instance(record.sop_instance_uid) is not None
        archive.store.delete(record.location)
    stop = threading.Event()
    stop.set()  # a stopped run deletes nothing more
    report = apply_rules(catalog, archive.store, archive.queries, archive.audit,
                         [RetentionRule(365)], today=TODAY, stop=stop)
    assert report.deleted_studies == 0 and catalog.get_study(uid) is not None
    report = apply_rules(catalog, archive.store, archive.queries, archive.audit,
                         [RetentionRule(365)], today=TODAY)
    assert report.deleted_instances == 1 + 2 + 2 + 2  # the rest of old_mixed, then the others
    assert catalog.get_study(uid) is None
    with pytest.raises(BlobNotFound):
        archive.store.get(records[3].location)


def test_study_redated_meanwhile_is_kept(archive: Archive, stored: dict[str, str]) -> None:
    """A candidate whose StudyDate changes during the run (its instances re-sent with a recent
    date, on_duplicate=replace) is re-checked before its deletion, and kept."""
    catalog = archive.catalog
    archive.ingest.on_duplicate = "replace"
    redated: list[str] = []

    def resend(_candidate: Candidate, _instances: int) -> None:
        if redated:
            return
        left = [n for n in ("old_ct", "old_mr", "old_mixed", "day_before_cutoff")
                if catalog.get_study(stored[n]) is not None]
        uid = stored[left[0]]
        redated.append(uid)
        records = catalog.instances_in_series(catalog.series_of_study(uid))

        async def send() -> None:
            for record in records:
                blob = archive.store.get(record.location)
                _meta, offset = part10.read_file_meta(blob)
                old = STUDIES[left[0]][0].encode()
                data = blob[offset:].replace(b"DA\x08\x00" + old, b"DA\x08\x00" + ago(1).encode())
                await archive.ingest.store(data, transfer_syntax_uid="1.2.840.10008.1.2.1",
                                           sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                           sop_instance_uid=record.sop_instance_uid,
                                           source_aet="TEST")

        asyncio.run(send())
        study = catalog.get_study(uid)
        assert study is not None and study["StudyDate"] == ago(1)

    report = apply_rules(catalog, archive.store, archive.queries, archive.audit,
                         [RetentionRule(365)], today=TODAY, on_study=resend)
    assert len(report.candidates) == 4 and report.deleted_studies == 3
    assert redated and catalog.get_study(redated[0]) is not None


@pytest.fixture
def root_logging() -> Iterator[None]:
    """main() configures the root logger (force=True): give this process's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_command_dry_run_then_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "pacs.toml"
    config.write_text("[[retention]]\nolder_than_days = 1000\n")
    archive = Archive.open(Settings(data_dir=data_dir, lmdb_map_size=1 << 28))
    try:
        uids = populate(archive, tmp_path)
    finally:
        archive.close()
    args = ["retention", "--config", str(config), "--data-dir", str(data_dir)]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would delete study {uids['old_ct']}" in out
    assert f"would delete study {uids['old_mr']}" in out
    assert uids["recent_ct"] not in out and uids["undated_ct"] not in out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"deleted study {uids['old_ct']}" in out and "failed" in out
    archive = Archive.open(Settings(data_dir=data_dir, lmdb_map_size=1 << 28))
    try:
        assert archive.catalog.get_study(uids["old_ct"]) is None
        assert archive.catalog.get_study(uids["recent_ct"]) is not None
        assert archive.catalog.get_study(uids["undated_ct"]) is not None
    finally:
        archive.close()
    events = [e for e in read_events(data_dir / "audit") if e["action"] == "retention"]
    assert {uids["old_ct"], uids["old_mr"]} <= {e["study_uid"] for e in events}
