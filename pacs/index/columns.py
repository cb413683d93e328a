"""Apache Arrow columns of the studies, for scans: infix wildcards, wide ranges, listings.

One row per study with its patient's attributes, its own, its counts and ModalitiesInStudy
(a list column), plus *derived* columns named ``keyword~`` holding the values as
:func:`pacs.index.matching.normalizer` prepares them (upper-cased person names, padded times),
so that a vectorised filter compares exactly what the Python matcher compares.

The columns are a cache of LMDB and always rebuildable from it. Freshness: every write
transaction bumps ``sx/gen`` and logs the studies and patients it changed
(:mod:`pacs.index.secondary`). Before each query :meth:`StudyColumns.snapshot` reads the
generation in a read transaction; when it moved, the changed studies are re-read from LMDB into
an *overlay* (study UID -> fresh row, or None when deleted) that hides their base rows. When the
overlay grows past ``compact_at`` rows it is folded into a new base table. A query issued right
after a store therefore sees it, whichever process wrote it, at a cost proportional to what
changed. A full build happens only when the cache is empty, the indexes were rebuilt (another
epoch) or the log no longer covers the gap.

Cold start: the base table is saved as an Arrow IPC file next to LMDB (``columns-studies.arrow``,
written atomically, tagged with epoch and generation) and memory-mapped at the next start, then
caught up from the log.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pacs.index import secondary
from pacs.index.catalog import (
    PATIENT_INSTANCES,
    PATIENT_KEY,
    PATIENT_SERIES,
    PATIENT_STUDIES,
    STUDY_INSTANCES,
    STUDY_SERIES,
    Catalog,
)
from pacs.index.codec import child_prefix, decode_dict, key
from pacs.index.matching import norm_time
from pacs.index.records import PATIENT_KEYWORDS, STUDY_KEYWORDS
from pacs.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
else:  # imported on first use (pacs.lazy): ~33 MiB a worker may never need
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")

log = logging.getLogger(__name__)

PATIENT_FIELDS = (*PATIENT_KEYWORDS, "IssuerOfPatientID")
PATIENT_COUNTS = (PATIENT_STUDIES, PATIENT_SERIES, PATIENT_INSTANCES)
STUDY_FIELDS: tuple[str, ...] = (
    "StudyInstanceUID",
    PATIENT_KEY,
    *PATIENT_FIELDS,
    *(k for k in STUDY_KEYWORDS if k != "StudyInstanceUID"),
    STUDY_SERIES,
    STUDY_INSTANCES,
)
LIST_FIELD = "ModalitiesInStudy"
DERIVED: dict[str, tuple[str, Callable[[str], str]]] = {
    "PatientName~": ("PatientName", str.upper),
    "ReferringPhysicianName~": ("ReferringPhysicianName", str.upper),
    "StudyTime~": ("StudyTime", norm_time),
}


@functools.cache
def schema() -> pa.Schema:
    """The columns' Arrow schema (built on first use: pyarrow loads lazily)."""
    return pa.schema(
        [pa.field(f, pa.string()) for f in STUDY_FIELDS]
        + [pa.field(LIST_FIELD, pa.list_(pa.string()))]
        + [pa.field(d, pa.string()) for d in DERIVED]
    )


FILE_NAME = "columns-studies.arrow"

Row = dict[str, str]


def patient_row(record: dict[str, Any]) -> Row:
    """The patient-level values of a patient record, as strings."""
    row = {f: str(record.get(f) or "") for f in PATIENT_FIELDS}
    for c in PATIENT_COUNTS:
        row[c] = str(record.get(c, 0))
    row[PATIENT_KEY] = record[PATIENT_KEY]
    return row


def study_row(
    txn: Any, dbs: dict[str, Any], uid: str, patients: dict[str, Row] | None = None
) -> Row | None:
    """Everything known at STUDY level (patient attributes included) about one study."""
    raw = txn.get(key(uid), db=dbs["studies"])
    if raw is None:
        return None
    record = decode_dict(raw)
    pk = record[PATIENT_KEY]
    prow = None if patients is None else patients.get(pk)
    if prow is None:
        praw = txn.get(key(pk), db=dbs["patients"])
        prow = patient_row(decode_dict(praw)) if praw is not None else {PATIENT_KEY: pk}
        if patients is not None:
            patients[pk] = prow
    return _study_values(uid, record, prow, secondary.modalities_of_study(txn, dbs, uid))


def _study_values(uid: str, record: dict[str, Any], prow: Row, modalities: Iterable[str]) -> Row:
    """A study's row from its record, its patient's row and its modalities."""
    row = dict(prow)
    for k in STUDY_KEYWORDS:
        row[k] = str(record.get(k) or "")
    row["StudyInstanceUID"] = uid
    row[STUDY_SERIES] = str(record.get(STUDY_SERIES, 0))
    row[STUDY_INSTANCES] = str(record.get(STUDY_INSTANCES, 0))
    row[LIST_FIELD] = "\\".join(modalities)
    return row


def rows_to_table(rows: Iterable[Row]) -> pa.Table:
    rows = list(rows)
    data: dict[str, list[Any]] = {f: [r.get(f, "") for r in rows] for f in STUDY_FIELDS}
    data[LIST_FIELD] = [r[LIST_FIELD].split("\\") if r.get(LIST_FIELD) else [] for r in rows]
    for name, (src, fn) in DERIVED.items():
        data[name] = [fn(v) for v in data[src]]
    return pa.table(data, schema=schema())


def table_rows(table: pa.Table, names: Iterable[str]) -> list[Row]:
    """Rows (as dicts of strings) of ``table`` restricted to the columns ``names``."""
    names = [n for n in names if n in table.column_names]
    cols = []
    for n in names:
        values = table.column(n).to_pylist()
        if n == LIST_FIELD:
            values = ["\\".join(v) for v in values]
        cols.append(values)
    # Columns of one table have one length: zip's strict check would cost per row.
    return [dict(zip(names, vals)) for vals in zip(*cols)]  # noqa: B905


@dataclass(frozen=True)
class Snapshot:
    """The studies as of one generation: ``table`` rows where ``keep``, plus ``overlay``."""

    table: pa.Table
    keep: pa.ChunkedArray | None  # None: every base row is current
    overlay: dict[str, Row | None] = field(default_factory=dict)
    generation: int = 0

    @property
    def overlay_rows(self) -> list[Row]:
        return [r for r in self.overlay.values() if r is not None]


class StudyColumns:
    """The study column cache of one process (thread-safe)."""

    def __init__(self, catalog: Catalog, compact_at: int = 4096, persist: bool = True) -> None:
        self.catalog = catalog
        self.compact_at = compact_at
        self.persist = persist and not catalog.readonly
        self._file = Path(catalog.path) / FILE_NAME
        self._lock = threading.Lock()
        self._epoch = ""
        self._snap: Snapshot | None = None
        self.full_builds = 0

    def snapshot(self) -> Snapshot:
        """The columns as of now (everything committed before this call included)."""
        dbs = {n: self.catalog.database(n) for n in _DBS}
        with self._lock, self.catalog.reader() as txn:
            st = secondary.state(txn, dbs)
            if st is None:
                raise secondary_missing()
            epoch, gen = st
            snap = self._snap
            if snap is None and self.persist:
                snap = self._load(epoch)
            if snap is not None and epoch == self._epoch and snap.generation == gen:
                self._snap = snap
                return snap
            changed = None
            if snap is not None and epoch == self._epoch and snap.generation < gen:
                changed = secondary.changed_since(txn, dbs, snap.generation, gen)
            if snap is None or changed is None:
                snap = self._build(txn, dbs, gen)
                self._epoch = epoch
            else:
                snap = self._catch_up(txn, dbs, snap, changed, gen)
        if snap.keep is None and self.persist and not self._saved(snap):
            self._save(snap)
        self._snap = snap
        return snap

    # -- building ------------------------------------------------------------------------------

    def _build(self, txn: Any, dbs: dict[str, Any], gen: int) -> Snapshot:
        self.full_builds += 1
        patients = [decode_dict(raw) for _, raw in
                    cast(Iterable[tuple[bytes, bytes]], txn.cursor(db=dbs["patients"]))]
        mods = secondary.all_study_modalities(txn, dbs)
        keys: list[bytes] = []
        studies: list[dict[str, Any]] = []
        for k, raw in cast(Iterable[tuple[bytes, bytes]], txn.cursor(db=dbs["studies"])):
            keys.append(k)
            studies.append(decode_dict(raw))
        try:
            table = _arrow_build(keys, studies, patients, mods)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a value of an unexpected type
            table = _row_build(keys, studies, patients, mods)
        return Snapshot(table, None, {}, gen)

    def _catch_up(
        self,
        txn: Any,
        dbs: dict[str, Any],
        snap: Snapshot,
        changed: tuple[set[str], set[str]],
        gen: int,
    ) -> Snapshot:
        studies, patients = changed
        for pk in patients:  # a patient's attributes changed: all its studies did
            prefix = child_prefix(pk)
            cursor = txn.cursor(db=dbs["patient_studies"])
            if cursor.set_range(prefix):
                for k, v in cast(Iterable[tuple[bytes, bytes]], cursor):
                    if not k.startswith(prefix):
                        break
                    studies.add(v.decode() if v else k[len(prefix) :].decode())
        overlay = dict(snap.overlay)
        cache: dict[str, Row] = {}
        for uid in studies:
            overlay[uid] = study_row(txn, dbs, uid, cache)
        table = snap.table
        if len(overlay) > self.compact_at:
            hide = pc.is_in(table.column("StudyInstanceUID"), value_set=pa.array(list(overlay)))
            base = table.filter(pc.invert(hide))
            live = [r for r in overlay.values() if r is not None]
            table = pa.concat_tables([base, rows_to_table(live)]).combine_chunks()
            return Snapshot(table, None, {}, gen)
        keep = pc.invert(
            pc.is_in(table.column("StudyInstanceUID"), value_set=pa.array(list(overlay)))
        )
        return Snapshot(table, keep, overlay, gen)

    # -- persistence ---------------------------------------------------------------------------

    def _saved(self, snap: Snapshot) -> bool:
        meta = snap.table.schema.metadata or {}
        return meta.get(b"generation") == str(snap.generation).encode()

    def _save(self, snap: Snapshot) -> None:
        table = snap.table.replace_schema_metadata(
            {"epoch": self._epoch, "generation": str(snap.generation)}
        )
        tmp = self._file.with_name(f".{FILE_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
            os.replace(tmp, self._file)
        except OSError as exc:
            log.warning("cannot save study columns to %s: %s", self._file, exc)

    def _load(self, epoch: str) -> Snapshot | None:
        try:
            source = pa.memory_map(str(self._file))
            table = pa.ipc.open_file(source).read_all()
        except (OSError, pa.ArrowInvalid):
            return None
        meta = table.schema.metadata or {}
        if meta.get(b"epoch", b"").decode() != epoch or table.schema.remove_metadata() != schema():
            return None
        self._epoch = epoch
        return Snapshot(table, None, {}, int(meta.get(b"generation", b"0")))



def _arrow_build(keys: list[bytes], studies: list[dict[str, Any]],
                 patients: list[dict[str, Any]], mods: dict[bytes, list[str]]) -> pa.Table:
    """The study columns from decoded records, converted by Arrow itself (a cold start at 1M
    instances spent most of its second in Python loops over 100,000 studies). The same values
    as :func:`_row_build`; raises ArrowInvalid/ArrowTypeError on a value of another type."""
    study_cols = [k for k in STUDY_KEYWORDS if k != "StudyInstanceUID"]
    st = pa.Table.from_pylist(studies, schema=pa.schema(
        [pa.field(f, pa.string()) for f in ("StudyInstanceUID", PATIENT_KEY, *study_cols)]
        + [pa.field(c, pa.int64()) for c in (STUDY_SERIES, STUDY_INSTANCES)]))
    pt = pa.Table.from_pylist(patients, schema=pa.schema(
        [pa.field(f, pa.string()) for f in (PATIENT_KEY, *PATIENT_FIELDS)]))
    pk = st.column(PATIENT_KEY)
    if pk.null_count:
        raise pa.ArrowInvalid("a study record without its patient key")
    data: dict[str, Any] = {}
    uid = pc.fill_null(st.column("StudyInstanceUID"), "")
    missing = pc.equal(uid, "")
    if pc.any(missing).as_py():  # records without their UID: the key holds it
        uid = pc.if_else(missing, pa.array([k.decode() for k in keys], pa.string()), uid)
    data["StudyInstanceUID"] = uid
    data[PATIENT_KEY] = pk
    where = pc.index_in(pk, value_set=pt.column(PATIENT_KEY).combine_chunks())
    for f in PATIENT_FIELDS:
        data[f] = pc.fill_null(pt.column(f).take(where), "")
    for f in study_cols:
        data[f] = pc.fill_null(st.column(f), "")
    for c in (STUDY_SERIES, STUDY_INSTANCES):
        data[c] = pc.cast(pc.fill_null(st.column(c), 0), pa.string())
    data[LIST_FIELD] = pa.array([mods.get(k, []) for k in keys], pa.list_(pa.string()))
    for name, (src, fn) in DERIVED.items():
        values = data[src]
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        distinct = pc.unique(values)  # names and times repeat: normalise each once
        normal = pa.array([fn(v) for v in distinct.to_pylist()], pa.string())
        data[name] = normal.take(pc.index_in(values, value_set=distinct))
    return pa.table([data[n] for n in schema().names], schema=schema())


def _row_build(keys: list[bytes], studies: list[dict[str, Any]],
               patients: list[dict[str, Any]], mods: dict[bytes, list[str]]) -> pa.Table:
    """The study columns built row by row in Python (what :func:`study_row` reads)."""
    prows = {p[PATIENT_KEY]: patient_row(p) for p in patients}
    return rows_to_table(
        _study_values(record.get("StudyInstanceUID") or k.decode(), record,
                      prows.get(record[PATIENT_KEY], {PATIENT_KEY: record[PATIENT_KEY]}),
                      mods.get(k, []))
        for k, record in zip(keys, studies, strict=True))


_DBS = ("studies", "patients", "patient_studies", "meta", *secondary.DB_NAMES)


def secondary_missing() -> Exception:
    from pacs.errors import CatalogError

    return CatalogError("secondary indexes missing: open the catalog read-write once")
