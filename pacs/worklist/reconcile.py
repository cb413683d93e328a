"""Orders meet their images: an order whose study has arrived and stayed unchanged for
``reconcile_quiet_period`` seconds becomes COMPLETED, and (with ``ris_port`` set) an ORU^R01
announcing the study and its viewer URL is queued for the RIS in the same transaction. Orders
looked at: active ones, and those completed (MPPS COMPLETED, ORC-5 CM) whose images were not
matched yet; each order is reconciled once.

A study belongs to an order when its StudyInstanceUID is the order's (the modality used the
worklist's UID), else when its AccessionNumber is the order's; in the second case the order
takes the study's UID, so the EHR links to what was really stored. "Unchanged" means the same
instance count at two looks ``reconcile_quiet_period`` apart; the counts are kept in memory, so a
restart only delays a completion. Worker 0 runs the loop; the work is a few index lookups per
active order (a worklist holds a day's orders, not millions).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pacs.index.query import Query
from pacs.worklist import outbound
from pacs.worklist.store import DB_NAME as WORKLIST_DB
from pacs.worklist.store import WorklistItem, WorklistStore

if TYPE_CHECKING:
    from pacs.archive import Archive

log = logging.getLogger("pacs.worklist")

_KEYS = ("StudyInstanceUID", "AccessionNumber", "NumberOfStudyRelatedInstances")


def public_url(archive: Archive) -> str:
    """The base URL of the HTTP side as others should use it (``public_url``, else guessed)."""
    settings = archive.settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    scheme = "https" if settings.http_tls else "http"
    return f"{scheme}://{host}:{settings.http_port}"


def _waiting(item: WorklistItem) -> bool:
    """Scheduled or under way, or completed (by MPPS or the RIS) before its images were seen."""
    return not item.reconciled and (item.active or item.status == "COMPLETED")


class Reconciler:
    """Looks at the active orders once per call of :meth:`run_once` (an executor thread)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.store = WorklistStore(archive.catalog)
        self._counts: dict[str, tuple[str, int, float]] = {}  # order -> (study, count, since)

    def _study_of(self, item: WorklistItem) -> tuple[str, int] | None:
        queries = self.archive.queries
        for keyword, value in (("StudyInstanceUID", item.study_instance_uid),
                               ("AccessionNumber", item.accession_number)):
            if not value:
                continue
            rows = list(queries.run(Query(level="STUDY", filters={keyword: value},
                                          return_keys=_KEYS, limit=1, fuzzy_names=False)))
            if rows:
                count = rows[0].get("NumberOfStudyRelatedInstances", "0")
                return rows[0]["StudyInstanceUID"], int(count) if count.isdigit() else 0
        return None

    def run_once(self, now: float | None = None) -> list[WorklistItem]:
        """Complete the orders whose study is quiet; the items completed."""
        now = time.time() if now is None else now
        quiet = self.archive.settings.reconcile_quiet_period
        active = [item for item in self.store.items() if _waiting(item)]
        seen = {item.key for item in active}
        for key in list(self._counts):
            if key not in seen:
                del self._counts[key]
        completed = []
        for item in active:
            found = self._study_of(item)
            if found is None or found[1] == 0:
                continue
            study_uid, count = found
            previous = self._counts.get(item.key)
            if previous is None or previous[:2] != (study_uid, count):
                self._counts[item.key] = (study_uid, count, now)
                if quiet > 0:
                    continue
                previous = self._counts[item.key]
            if now - previous[2] < quiet:
                continue
            done = self._complete(item.key, study_uid, count, now)
            if done is not None:
                completed.append(done)
                self._counts.pop(item.key, None)
        return completed

    def _complete(self, key: str, study_uid: str, count: int,
                  now: float) -> WorklistItem | None:
        archive = self.archive
        catalog = archive.catalog
        settings = archive.settings
        viewer = f"{public_url(archive)}/viewer?StudyInstanceUID={study_uid}"

        def apply(t: Any) -> WorklistItem | None:
            db = catalog.database(WORKLIST_DB)
            raw = t.txn.get(key.encode(), db=db)
            if raw is None:
                return None
            item = WorklistItem.decode(bytes(raw))
            if not _waiting(item):  # cancelled meanwhile: leave it
                return None
            item = replace(item, status="COMPLETED", study_instance_uid=study_uid,
                           order_control="RECONCILED", updated=now, reconciled=now)
            t.txn.put(key.encode(), item.encode(), db=db)
            if settings.ris_port:
                outbound.enqueue(t.txn, catalog.database(outbound.DB_NAME), item, viewer,
                                 settings.aet, now)
            return item

        item: WorklistItem | None = archive.writer.run(lambda: catalog._write(apply)).result()
        if item is not None:
            log.info("order %s completed: study %s arrived (%d instances, accession %s)%s",
                     key, study_uid, count, item.accession_number,
                     "; ORU queued for the RIS" if settings.ris_port else "")
            if archive.audit is not None:
                archive.audit.record("order", user="reconcile",
                                     patient_id=item.patient_id, study_uid=study_uid,
                                     order=key, status="COMPLETED")
        return item


async def reconcile_forever(archive: Archive, interval: float | None = None) -> None:
    """Worker 0: reconcile every ``interval`` seconds (a fifth of the quiet period, 1-30 s)."""
    reconciler = Reconciler(archive)
    period = interval or min(30.0, max(1.0, archive.settings.reconcile_quiet_period / 5))
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(archive.executor, reconciler.run_once)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worklist reconciliation round failed")
        await asyncio.sleep(period)
