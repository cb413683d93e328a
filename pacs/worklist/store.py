"""Worklist items (scheduled procedure steps from HL7 orders), kept in the catalog's LMDB
environment so they persist with the index and survive restarts::

    worklist   b"<order key>" -> JSON WorklistItem

The order key is the placer order number (ORC-2, ``id^namespace``), else the filler order number
(ORC-3). Cancelled, discontinued and completed orders stay in the database with their status (the
order's history), but only active ones (``ACTIVE_STATUSES``) are offered to modalities.

Writes go through the archive's catalog writer thread (one LMDB writer per process); reads open
a short read transaction of their own. The server commits without fsync (``durable_commits``
off) and only instances are replayed from the segment log after a crash, so every write that
changed an item is made durable with ``Catalog.sync`` before it returns: an order is
acknowledged only once it survives a power cut (MPPS steps: ``MppsSCP._write`` does the same).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pacs.index.catalog import Catalog

DB_NAME = "worklist"

# DICOM Scheduled Procedure Step Status (0040,0020) values offered on the worklist.
ACTIVE_STATUSES = ("SCHEDULED", "ARRIVED", "READY", "STARTED")

T = TypeVar("T")


@dataclass(slots=True)
class WorklistItem:
    """One order = one requested procedure with one scheduled procedure step."""

    key: str
    status: str = "SCHEDULED"
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""  # DICOM PN: family^given^middle^prefix^suffix
    patient_birth_date: str = ""  # YYYYMMDD
    patient_sex: str = ""  # M, F, O
    placer_order_number: str = ""
    filler_order_number: str = ""
    accession_number: str = ""
    study_instance_uid: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    procedure_code_value: str = ""
    procedure_code_scheme: str = ""
    procedure_code_meaning: str = ""
    referring_physician_name: str = ""
    sps_id: str = ""
    sps_description: str = ""
    modality: str = ""
    station_aet: str = ""
    start_date: str = ""  # YYYYMMDD
    start_time: str = ""  # HHMMSS
    performing_physician_name: str = ""
    order_control: str = ""  # ORC-1 of the last message applied
    message_control_id: str = ""  # MSH-10 of the last message applied
    created: float = 0.0
    updated: float = 0.0
    reconciled: float = 0.0  # when its study was matched (and the RIS told); 0: not yet
    mpps_uid: str = ""  # the Modality Performed Procedure Step reporting on it

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> WorklistItem:
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class WorklistStore:
    """Items of the ``worklist`` sub-database of ``catalog``.

    ``run_write`` runs a function in the process's catalog writer thread and returns its result
    (``lambda fn: archive.writer.run(fn).result()``); without it, writes run in the caller's
    thread (tools, tests).
    """

    def __init__(
        self, catalog: Catalog, run_write: Callable[[Callable[[], Any]], Any] | None = None
    ) -> None:
        self.catalog = catalog
        self._run_write = run_write or (lambda fn: fn())

    def _db(self) -> Any | None:
        try:
            return self.catalog.database(DB_NAME)
        except KeyError:  # an older catalog opened read-only: no orders yet
            return None

    def get(self, key: str) -> WorklistItem | None:
        db = self._db()
        if db is None:
            return None
        with self.catalog.reader(upper=False) as txn:
            raw = txn.get(key.encode(), db=db)
        return None if raw is None else WorklistItem.decode(bytes(raw))

    def items(self) -> list[WorklistItem]:
        """Every item, active or not, by order key."""
        db = self._db()
        if db is None:
            return []
        with self.catalog.reader(upper=False) as txn, txn.cursor(db=db) as cursor:
            return [WorklistItem.decode(bytes(value)) for _key, value in cursor]

    def update(
        self, key: str, change: Callable[[WorklistItem | None], WorklistItem | T]
    ) -> WorklistItem | T:
        """Read-modify-write one item in one write transaction.

        ``change`` gets the stored item (None when absent) and returns the item to store, or
        anything else (an error description) to store nothing; its result is returned. A
        stored item is durable on return (CatalogError when the commit or its sync fails).
        """
        catalog = self.catalog

        def apply(t: Any) -> WorklistItem | T:
            db = catalog.database(DB_NAME)
            raw = t.txn.get(key.encode(), db=db)
            current = None if raw is None else WorklistItem.decode(bytes(raw))
            result = change(current)
            if isinstance(result, WorklistItem):
                t.txn.put(result.key.encode(), result.encode(), db=db)
            return result

        def write() -> WorklistItem | T:
            return catalog._write(apply)

        result: WorklistItem | T = self._run_write(write)
        if isinstance(result, WorklistItem):
            # Here, in the caller's thread: an fsync in the writer thread would stall ingest.
            catalog.sync()
        return result

    def update_where(
        self,
        select: Callable[[WorklistItem], bool],
        change: Callable[[WorklistItem], WorklistItem],
    ) -> list[WorklistItem]:
        """Read-modify-write every item ``select`` picks, in one write transaction (ADT
        patient updates and merges); the items as stored, durable on return (CatalogError
        when the commit or its sync fails)."""
        catalog = self.catalog

        def apply(t: Any) -> list[WorklistItem]:
            db = catalog.database(DB_NAME)
            changed = []
            with t.txn.cursor(db=db) as cursor:
                picked = [WorklistItem.decode(bytes(v)) for _k, v in cursor]
            for item in picked:
                if select(item):
                    new = change(item)
                    t.txn.put(new.key.encode(), new.encode(), db=db)
                    changed.append(new)
            return changed

        def write() -> list[WorklistItem]:
            return catalog._write(apply)

        result: list[WorklistItem] = self._run_write(write)
        if result:
            catalog.sync()
        return result
