"""Retention: the ``[[retention]]`` rules, run as a job (``pacs retention``, or worker 0 of
``pacs serve`` every ``retention_check_interval`` seconds).

A rule ``older_than_days = N`` (optionally ``modality = "CT"``) deletes every study whose
StudyDate is more than N days before today (local date), optionally only studies having a
series of that Modality. **A study without a StudyDate, or with one that is not a valid
YYYYMMDD date, is never deleted**: its age is unknown.

Candidates come from the query engine (a StudyDate range ``-YYYYMMDD`` on the StudyDate
secondary index or the study columns; ModalitiesInStudy for the modality), never from a walk
of every record. Each study is deleted as a REST DELETE does it: its instances are unindexed
through the catalog (in the catalog writer thread when run by the server), then their blobs are
removed, then one ``retention`` audit event names the study, its patient and the rule.

The job is idempotent: a study whose deletion was interrupted (crash, stop) is still indexed
with its remaining instances and StudyDate, so the next run finds and finishes it. Instances
stored into a candidate study while it is being deleted are caught by re-reading the study until
it is gone (a few passes), or by the next run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from pacs.config import RetentionRule, Settings
from pacs.deletion import RunWrite, delete_instances
from pacs.errors import PacsError
from pacs.index.catalog import Catalog
from pacs.index.query import Query, QueryEngine
from pacs.store.base import BlobStore

if TYPE_CHECKING:
    from pacs.archive import Archive
    from pacs.audit import AuditTrail

log = logging.getLogger("pacs.retention")

T = TypeVar("T")

_PASSES = 3  # re-reads of a study that concurrent stores keep filling; the next run finishes it
_DATE = re.compile(r"\d{8}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A study a rule selects."""

    study_uid: str
    patient_id: str
    study_date: str
    modalities: str
    rule: RetentionRule


@dataclass
class RetentionReport:
    """What one run selected and deleted."""

    candidates: list[Candidate] = field(default_factory=list)
    deleted_studies: int = 0
    deleted_instances: int = 0
    deleted_bytes: int = 0
    failed: int = 0  # studies left (partly) in place by an error; the next run retries


def describe(rule: RetentionRule) -> str:
    """The rule as written in the settings: ``older_than_days=3650 modality=CT``."""
    text = f"older_than_days={rule.older_than_days}"
    return f"{text} modality={rule.modality}" if rule.modality else text


def cutoff(rule: RetentionRule, today: date) -> str:
    """The first StudyDate (YYYYMMDD) a rule keeps: studies dated before it go."""
    return (today - timedelta(days=rule.older_than_days)).strftime("%Y%m%d")


def _dated_before(value: str, limit: str) -> bool:
    """Whether ``value`` is a real YYYYMMDD date before ``limit`` (undated: never)."""
    value = value.strip()
    if not _DATE.fullmatch(value):
        return False
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return value < limit


def select(queries: QueryEngine, rules: Iterable[RetentionRule],
           today: date | None = None) -> list[Candidate]:
    """The studies the rules select (each once, under the first rule that selects it)."""
    today = today or date.today()
    out: dict[str, Candidate] = {}
    for rule in rules:
        limit = cutoff(rule, today)
        last_day = (datetime.strptime(limit, "%Y%m%d") - timedelta(days=1)).strftime("%Y%m%d")
        filters = {"StudyDate": f"-{last_day}", "StudyInstanceUID": "", "PatientID": "",
                   "ModalitiesInStudy": rule.modality}
        for row in queries.run(Query("STUDY", filters=filters)):
            uid = row["StudyInstanceUID"]
            # The range already excludes empty dates; the check also rejects malformed ones.
            if uid and uid not in out and _dated_before(row["StudyDate"], limit):
                out[uid] = Candidate(uid, row["PatientID"], row["StudyDate"].strip(),
                                     row["ModalitiesInStudy"], rule)
    return list(out.values())


def _direct(fn: Callable[[], T]) -> T:
    return fn()


def delete_study(catalog: Catalog, store: BlobStore, study_uid: str,
                 run_write: RunWrite[Any] = _direct,
                 still_due: Callable[[dict[str, Any]], bool] | None = None) -> tuple[int, int]:
    """Unindex every instance of a study, then remove their blobs: (instances, bytes).

    ``run_write`` runs a catalog write (the server passes its writer thread's). ``still_due``
    re-checks the study record before each pass (a concurrent store may have changed it).
    """
    instances = size = 0
    for _ in range(_PASSES):
        study = catalog.get_study(study_uid)
        if study is None or (still_due is not None and not still_due(study)):
            break
        records = catalog.instances_in_series(catalog.series_of_study(study_uid))
        if not records:
            break
        count, nbytes = delete_instances(catalog, store,
                                         [r.sop_instance_uid for r in records], run_write,
                                         "retention")
        instances += count
        size += nbytes
    return instances, size


def apply_rules(
    catalog: Catalog,
    store: BlobStore,
    queries: QueryEngine,
    audit: AuditTrail | None,
    rules: Iterable[RetentionRule],
    *,
    run_write: RunWrite[Any] = _direct,
    today: date | None = None,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    on_study: Callable[[Candidate, int], None] | None = None,
) -> RetentionReport:
    """Select the studies the rules select and (unless ``dry_run``) delete and audit each.

    ``stop`` ends the run between two studies; ``on_study(candidate, instances)`` is told of
    each deleted study (the command prints them).
    """
    today = today or date.today()
    report = RetentionReport(select(queries, rules, today))
    if dry_run:
        return report
    for candidate in report.candidates:
        if stop is not None and stop.is_set():
            break
        limit = cutoff(candidate.rule, today)

        def still_due(study: dict[str, Any], limit: str = limit) -> bool:
            return _dated_before(str(study.get("StudyDate", "")), limit)

        try:
            instances, size = delete_study(catalog, store, candidate.study_uid, run_write,
                                           still_due)
        except PacsError as exc:
            log.error("retention: cannot delete study %s: %s", candidate.study_uid, exc)
            report.failed += 1
            if audit is not None:
                audit.record("retention", "failure", user="retention",
                             patient_id=candidate.patient_id, study_uid=candidate.study_uid,
                             rule=describe(candidate.rule), detail=str(exc))
            continue
        if not instances:
            continue  # deleted meanwhile (REST, another run) or no longer due
        report.deleted_studies += 1
        report.deleted_instances += instances
        report.deleted_bytes += size
        log.info("retention: deleted study %s of patient %r (StudyDate %s, %d instances) by "
                 "rule %s", candidate.study_uid, candidate.patient_id, candidate.study_date,
                 instances, describe(candidate.rule))
        if audit is not None:
            audit.record("retention", user="retention", patient_id=candidate.patient_id,
                         study_uid=candidate.study_uid, rule=describe(candidate.rule),
                         study_date=candidate.study_date, count=instances)
        if on_study is not None:
            on_study(candidate, instances)
    return report


def run_in_archive(archive: Archive, stop: threading.Event | None = None) -> RetentionReport:
    """Blocking: one run of the settings' rules in a serving worker (writes go through its
    catalog writer thread, so they queue behind the stores in flight)."""

    def run_write(fn: Callable[[], T]) -> T:
        return archive.writer.run(fn).result()

    return apply_rules(archive.catalog, archive.store, archive.queries, archive.audit,
                       archive.settings.retention, run_write=run_write, stop=stop)


async def retention_forever(archive: Archive) -> None:
    """Worker 0's task: run the rules now, then every ``retention_check_interval`` seconds.

    A run is a blocking job on its own thread; cancelling the task asks it to stop after the
    current study and waits for that (the archive closes only once nothing uses it).
    """
    loop = asyncio.get_running_loop()
    interval = archive.settings.retention_check_interval
    stop = threading.Event()
    while True:
        future = loop.run_in_executor(None, run_in_archive, archive, stop)
        try:
            report = await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            await asyncio.gather(future, return_exceptions=True)
            raise
        except Exception:  # the next run retries; a failed run deletes nothing it should not
            log.exception("retention run failed")
        else:
            log.info("retention run finished: %d candidates, %d studies (%d instances, "
                     "%.1f MB) deleted, %d failed", len(report.candidates),
                     report.deleted_studies, report.deleted_instances,
                     report.deleted_bytes / 1e6, report.failed)
        await asyncio.sleep(interval)


def retention_command(settings: Settings, dry_run: bool) -> int:
    """``pacs retention [--dry-run]``: run the rules once (or list what they would delete)."""
    from pacs.archive import open_catalog, open_store
    from pacs.audit import AuditTrail

    if not settings.retention:
        print("no [[retention]] rules in the settings: nothing to do")
        return 0
    try:
        store = open_store(settings, worker_id=-1)
    except PacsError as exc:
        log.error("cannot open the archive at %s: %s", settings.data_dir, exc)
        return 2
    try:
        catalog = open_catalog(settings)
    except PacsError as exc:
        store.close()
        log.error("cannot open the archive at %s: %s", settings.data_dir, exc)
        return 2
    audit = None if dry_run else AuditTrail(settings.audit_dir, settings.audit)
    try:
        report = apply_rules(
            catalog, store, QueryEngine(catalog), audit, settings.retention, dry_run=dry_run,
            on_study=lambda c, n: print(f"deleted study {c.study_uid}  patient {c.patient_id}  "
                                        f"StudyDate {c.study_date}  {n} instances  "
                                        f"({describe(c.rule)})"))
    except PacsError as exc:  # a rule the query engine refuses (e.g. a bad modality value)
        log.error("retention: %s", exc)
        return 2
    finally:
        if audit is not None:
            audit.close()
        catalog.close()
        store.close()
    if dry_run:
        for c in report.candidates:
            print(f"would delete study {c.study_uid}  patient {c.patient_id}  "
                  f"StudyDate {c.study_date}  modalities {c.modalities or '-'}  "
                  f"({describe(c.rule)})")
        print(f"{len(report.candidates)} studies would be deleted")
        return 0
    print(f"deleted {report.deleted_studies} studies ({report.deleted_instances} instances, "
          f"{report.deleted_bytes / 1e6:.1f} MB), {report.failed} failed")
    return 0 if not report.failed else 1
