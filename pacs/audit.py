"""The audit trail: one JSON line per security-relevant event, appended, never rewritten.

Fields follow the spirit of IHE ATNA / DICOM PS3.15 Annex A.5 audit messages, flattened::

    {"time": "2026-11-29T12:00:00.123456Z", "action": "store", "outcome": "success",
     "user": "CT1", "source": "10.0.0.7:50412", "patient_id": "P1", "study_uid": "1.2.3",
     "count": 12, "detail": "..."}

``action`` is one of ``ACTIONS``; ``user`` is a calling AE title (DIMSE) or a user name (HTTP);
``source`` the peer address. Every process of the archive appends to one file per day
(``data_dir/audit/audit-YYYY-MM-DD.jsonl``) with ``O_APPEND`` and one ``write`` per line, so
lines from several workers never interleave. Storing is audited once per study and association
(as ATNA's "DICOM Instances Transferred"), not per instance, to stay off the hot path.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("pacs.audit")

Action = Literal["store", "query", "retrieve", "view", "delete", "login", "association",
                 "retention", "configuration", "order"]
ACTIONS: tuple[str, ...] = ("store", "query", "retrieve", "view", "delete", "login",
                            "association", "retention", "configuration", "order")
Outcome = Literal["success", "failure"]


class AuditTrail:
    """Appends audit events to the day's file; ``enabled=False`` makes every call a no-op."""

    def __init__(self, directory: Path, enabled: bool = True) -> None:
        self.directory = directory
        self.enabled = enabled
        self._day = ""
        self._fd = -1
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)

    def record(
        self,
        action: Action,
        outcome: Outcome = "success",
        *,
        user: str = "",
        source: str = "",
        patient_id: str = "",
        study_uid: str = "",
        **extra: Any,
    ) -> None:
        """Append one event; an I/O error is logged, never raised into the request."""
        if not self.enabled:
            return
        now = time.time()
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "action": action,
            "outcome": outcome,
            "user": user,
            "source": source,
        }
        if patient_id:
            event["patient_id"] = patient_id
        if study_uid:
            event["study_uid"] = study_uid
        event.update(extra)
        line = (json.dumps(event, separators=(",", ":"), default=str) + "\n").encode()
        try:
            os.write(self._file(now), line)
        except OSError as exc:
            log.error("cannot write the audit trail in %s: %s", self.directory, exc)

    def _file(self, now: float) -> int:
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        if day != self._day:
            self.close()
            path = self.directory / f"audit-{day}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._day = day
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._day = ""


def read_events(directory: Path) -> list[dict[str, Any]]:
    """Every event under ``directory``, oldest file first (tests and `pacs audit`)."""
    events: list[dict[str, Any]] = []
    for path in sorted(directory.glob("audit-*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            events.extend(json.loads(line) for line in fh if line.strip())
    return events
