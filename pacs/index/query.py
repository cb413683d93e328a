"""The query model shared by C-FIND, QIDO-RS and the REST API: ``Query`` -> rows.

::

    q = parse_identifier("STUDY", "STUDY", {"PatientName": "SMI*", "StudyDate": "20240101-",
                                            "ModalitiesInStudy": "", "StudyInstanceUID": ""})
    for row in QueryEngine(catalog).run(q):   # lazily, one dict per match
        ...                                   # {"QueryRetrieveLevel": "STUDY", "PatientName":
                                              #  "SMITH^ANN", ..., "SpecificCharacterSet": ""}

Levels and models follow PS3.4 C.6.1 (Patient Root: PATIENT, STUDY, SERIES, IMAGE) and C.6.2
(Study Root: STUDY, SERIES, IMAGE). Hierarchical rules (C.4.1.2.1) are applied leniently, as
dcmtk and pynetdicom users expect: the unique keys of the levels above may be given (and are
then matched) or left out; keys of the levels *below* the query level may not carry a matching
value (0xA900); unknown or unsupported optional keys are returned empty and not matched. Matching
rules are in :mod:`pacs.index.matching`.

Plans, cheapest first (all read LMDB in short read transactions, never across a ``yield``):

1. a UID of the query level or above (single value or list): direct record reads;
2. an LMDB secondary index (:mod:`pacs.index.secondary`): PatientID, PatientName (upper-cased),
   AccessionNumber, StudyDate (single value, prefix wildcard or range), Modality at SERIES
   level; a prefix or range matching more than ``index_cap`` keys is abandoned for
3. a vectorised scan of the study columns (:mod:`pacs.index.columns`), used for infix
   wildcards, wide ranges and unfiltered listings at PATIENT and STUDY level.

SERIES and IMAGE queries resolve the studies (or series) first, then walk the child indexes.
Every row is checked against every filter, so plans only decide speed, never results.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast

from pacs.errors import QueryError
from pacs.index import secondary
from pacs.index.catalog import (
    PATIENT_KEY,
    SERIES_INSTANCES,
    Catalog,
)
from pacs.index.codec import child_prefix, decode_dict, decode_instance, key
from pacs.index.columns import (
    LIST_FIELD,
    PATIENT_COUNTS,
    STUDY_FIELDS,
    Row,
    Snapshot,
    StudyColumns,
    patient_row,
    study_row,
    table_rows,
)
from pacs.index.matching import (
    UNABLE_TO_PROCESS,
    CombinedDateTimeFilter,
    Exact,
    Filter,
    Like,
    Range,
    ValueFilter,
    is_universal,
    vr_of,
)
from pacs.index.records import (
    ALL_KEYWORDS,
    INSTANCE_KEYWORDS,
    PATIENT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
)
from pacs.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
else:  # imported on first use (pacs.lazy): ~33 MiB a worker may never need
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
Model = Literal["PATIENT", "STUDY"]
LEVELS: tuple[Level, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")
IDENTIFIER_MISMATCH = 0xA900
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
SOP_CLASSES = "SOPClassesInStudy"
_LEVEL_OF: dict[str, int] = {
    **dict.fromkeys((*PATIENT_KEYWORDS, "IssuerOfPatientID", *PATIENT_COUNTS), 0),
    **dict.fromkeys(
        (
            *STUDY_KEYWORDS,
            LIST_FIELD,
            SOP_CLASSES,
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
        ),
        1,
    ),
    **dict.fromkeys((*SERIES_KEYWORDS, SERIES_INSTANCES), 2),
    **dict.fromkeys(INSTANCE_KEYWORDS, 3),
}
_NOT_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})
_UPPER_OF_INSTANCE = frozenset(ALL_KEYWORDS) - frozenset(INSTANCE_KEYWORDS)
_CHUNK = 256


@dataclass(frozen=True)
class Query:
    """One query: level, information model, matching keys and return keys.

    ``filters`` maps keywords to C-FIND matching values as received ('' or '*' is universal);
    ``return_keys`` are the keywords to answer with (every filter key is returned as well).
    ``limit``/``offset`` cut the result; ``order_by`` (keywords, '-' prefix for descending)
    sorts it, at the cost of reading every match first. ``fuzzy_names`` makes person names
    match case-insensitively; ``combined_datetime`` turns on Combined Date and Time Range
    Matching of StudyDate with StudyTime.
    """

    level: Level
    model: Model = "STUDY"
    filters: Mapping[str, str] = field(default_factory=dict)
    return_keys: Sequence[str] = ()
    limit: int | None = None
    offset: int = 0
    fuzzy_names: bool = True
    combined_datetime: bool = False
    order_by: Sequence[str] = ()


def parse_identifier(
    level: str | None,
    model: str,
    elements: Mapping[str, str],
    *,
    limit: int | None = None,
    fuzzy_names: bool = True,
    combined_datetime: bool = False,
) -> Query:
    """A validated Query from a C-FIND identifier (keyword -> value as received).

    ``level`` is the QueryRetrieveLevel (None: taken from ``elements``); ``model`` is "PATIENT"
    (Patient Root) or "STUDY" (Study Root). Raises QueryError(status, comment).
    """
    if level is None:
        level = elements.get("QueryRetrieveLevel")
    if not level or not level.strip():
        raise QueryError(IDENTIFIER_MISMATCH, "QueryRetrieveLevel missing")
    level = level.strip().upper()
    keys = [k for k in elements if k not in _NOT_KEYS]
    query = Query(
        level=level,  # type: ignore[arg-type]  # checked by compile
        model=model,  # type: ignore[arg-type]
        filters={k: elements[k] for k in keys if not is_universal(elements[k] or "")},
        return_keys=tuple(keys),
        limit=limit,
        fuzzy_names=fuzzy_names,
        combined_datetime=combined_datetime,
    )
    compile_query(query)
    return query


# -- compiling ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """A compiled query: filters per level (0 patient .. 3 image) and what to return."""

    query: Query
    depth: int
    filters: list[list[Filter]]
    return_keys: tuple[str, ...]
    needs: frozenset[str]  # keywords the rows must carry (returned or matched)

    def upto(self, depth: int) -> list[Filter]:
        return [f for level in self.filters[: depth + 1] for f in level]


def compile_query(query: Query) -> Plan:
    """Check a query and compile its filters; raises QueryError."""
    if query.level not in LEVELS:
        raise QueryError(IDENTIFIER_MISMATCH, f"invalid QueryRetrieveLevel {query.level!r}")
    if query.model not in ("PATIENT", "STUDY"):
        raise QueryError(IDENTIFIER_MISMATCH, f"unknown information model {query.model!r}")
    if query.model == "STUDY" and query.level == "PATIENT":
        raise QueryError(IDENTIFIER_MISMATCH, "the Study Root model has no PATIENT level")
    if (query.limit is not None and query.limit < 0) or query.offset < 0:
        raise QueryError(UNABLE_TO_PROCESS, "negative limit or offset")
    depth = LEVELS.index(query.level)
    filters: list[list[Filter]] = [[], [], [], []]
    values = {k: (v or "").strip(" ") for k, v in query.filters.items() if k not in _NOT_KEYS}
    values = {k: v for k, v in values.items() if not is_universal(v)}
    if (
        query.combined_datetime
        and "-" in values.get("StudyDate", "")
        and "StudyTime" in values
        and "\\" not in values["StudyDate"] + values["StudyTime"]
    ):
        cf = CombinedDateTimeFilter(
            "StudyDate", "StudyTime", values.pop("StudyDate"), values.pop("StudyTime")
        )
        filters[1].append(cf)
    for keyword, value in values.items():
        lvl = _LEVEL_OF.get(keyword)
        if lvl is None:
            if vr_of(keyword) is None:
                raise QueryError(IDENTIFIER_MISMATCH, f"unknown attribute {keyword!r}")
            continue  # an optional key the index does not hold: not matched (returned empty)
        if lvl > depth:
            raise QueryError(
                IDENTIFIER_MISMATCH, f"{keyword} is below the {query.level} level of the query"
            )
        if lvl == 0 and query.model == "STUDY":
            lvl = 1  # Study Root: patient attributes are study-level attributes
        filters[max(lvl, 0)].append(ValueFilter(keyword, value, query.fuzzy_names))
    for kw in query.order_by:
        if kw.lstrip("-") not in _LEVEL_OF:
            raise QueryError(UNABLE_TO_PROCESS, f"cannot sort by {kw!r}")
    keys = tuple(
        dict.fromkeys(k for k in (*query.return_keys, *query.filters) if k not in _NOT_KEYS)
    )
    needs = frozenset(keys) | {k.lstrip("-") for k in query.order_by}
    return Plan(query, depth, filters, keys, needs)


# -- the engine --------------------------------------------------------------------------------


class QueryEngine:
    """Runs queries over a Catalog; thread-safe, one per process is enough."""

    def __init__(
        self, catalog: Catalog, *, index_cap: int = 256, columns: StudyColumns | None = None
    ) -> None:
        self.catalog = catalog
        self.index_cap = index_cap
        self.columns = columns or StudyColumns(catalog)
        self.force_scan = False  # tests: always take the column scan at PATIENT/STUDY level
        self._dbs = {
            n: catalog.database(n)
            for n in (
                "patients",
                "studies",
                "series",
                "instances",
                "patient_studies",
                "study_series",
                "series_instances",
                "meta",
                *secondary.DB_NAMES,
            )
        }
        with catalog.reader() as txn:
            built = secondary.state(txn, self._dbs) is not None
        if not built and not catalog.readonly:
            catalog.store_batch([])  # the first write builds the secondary indexes

    # -- public API ----------------------------------------------------------------------------

    def run(self, query: Query) -> Iterator[dict[str, str]]:
        """The matching rows, lazily; raises QueryError at once for an invalid query.

        Each row maps QueryRetrieveLevel, SpecificCharacterSet ('' when every value is ASCII,
        else 'ISO_IR 192': the values are str, the encoder picks the bytes) and every return
        and filter key to its value ('' when the index does not hold it).
        """
        plan = compile_query(query)
        return self._run(plan)

    def run_tables(self, query: Query) -> Iterator[pa.Table] | None:
        """The matching rows of a column-scan query as Arrow tables (64 rows, then growing to
        2,048), or None when the query is answered row by row (keyed lookups, SERIES and IMAGE
        levels, sorting, offsets, computed keys not in the columns).

        The tables hold a string column per return key the columns have (ModalitiesInStudy
        joined with ``\\``); a return key without a column is empty in every row. The rows
        are those :meth:`run` gives, in the same order: :func:`rows_of_table` turns them into
        its dicts. Raises QueryError at once for an invalid query.
        """
        return self.answer(query)[1]

    def answer(
        self, query: Query
    ) -> tuple[tuple[str, ...], Iterator[pa.Table] | None, Iterator[dict[str, str]] | None]:
        """The return keys of ``query`` and its matches either as tables (:meth:`run_tables`)
        or as rows (:meth:`run`), the plan chosen once: a keyed lookup is not made twice."""
        plan = compile_query(query)
        if (
            plan.depth != 1
            or query.order_by
            or query.offset
            or SOP_CLASSES in plan.needs
            or any(c in plan.needs for c in PATIENT_COUNTS)
        ):
            return plan.return_keys, None, self._run(plan)
        filters = plan.upto(1)
        uids = None if self.force_scan else self._keyed_studies(filters)
        if uids is None:
            return plan.return_keys, self._scan_tables(plan, filters), None
        return plan.return_keys, None, self._run(plan, uids)

    def count(self, query: Query) -> int:
        """How many rows ``query`` matches, ignoring its limit and offset."""
        plan = compile_query(replace(query, limit=None, offset=0, return_keys=(), order_by=()))
        if not any(plan.filters):
            stats = self.catalog.statistics()
            return stats[("patients", "studies", "series", "instances")[plan.depth]]
        return sum(1 for _ in self._matches(plan))

    # -- rows ----------------------------------------------------------------------------------

    def _run(self, plan: Plan, keyed: list[str] | None = None) -> Iterator[dict[str, str]]:
        """``keyed``: the study UIDs of a STUDY-level plan's index lookup, when already made."""
        q = plan.query
        rows: Iterable[Row] = self._matches(plan, keyed)
        if q.order_by:
            materialised = list(rows)
            for kw in reversed(q.order_by):
                materialised.sort(key=_sort_key(kw.lstrip("-")), reverse=kw.startswith("-"))
            rows = materialised
        # Both below 2**63 each, their sum not: islice takes at most sys.maxsize.
        stop = None if q.limit is None else min(q.offset + q.limit, sys.maxsize)
        level = q.level
        keys = plan.return_keys
        for row in itertools.islice(rows, q.offset, stop):
            out: dict[str, str] = {"QueryRetrieveLevel": level}
            ascii_only = True
            for k in keys:
                v = row.get(k, "")
                out[k] = v
                if ascii_only and not v.isascii():
                    ascii_only = False
            out["SpecificCharacterSet"] = "" if ascii_only else "ISO_IR 192"
            yield out

    def _matches(self, plan: Plan, keyed: list[str] | None = None) -> Iterator[Row]:
        if plan.depth == 0:
            return self._patients(plan)
        if plan.depth == 1:
            return self._studies(plan, plan.upto(1), plan.needs, keyed)
        if plan.depth == 2:
            return self._series(plan)
        return self._images(plan)

    # -- PATIENT ---------------------------------------------------------------------------

    def _patients(self, plan: Plan) -> Iterator[Row]:
        filters = plan.filters[0]
        keyed = None if self.force_scan else self._keyed_patients(filters)
        pks = self._scan_patients(filters) if keyed is None else keyed
        for chunk in _chunks(pks, _CHUNK):
            with self.catalog.reader() as txn:
                rows = []
                for pk in chunk:
                    raw = _get(txn, key(pk), "patients", self._dbs)
                    if raw is not None:
                        row = patient_row(decode_dict(raw))
                        if all(f.test(row) for f in filters):
                            rows.append(row)
            yield from rows

    def _keyed_patients(self, filters: list[Filter]) -> list[str] | None:
        with self.catalog.reader() as txn:
            for family, keyword in (("pid", "PatientID"), ("pn", "PatientName")):
                f = _find(filters, keyword)
                if f is not None:
                    found = self._lookup(txn, family, f)
                    if found is not None:
                        return list(dict.fromkeys(found))
        return None

    def _scan_patients(self, filters: list[Filter]) -> Iterator[str]:
        snap = self.columns.snapshot()
        table = snap.table
        mask = self._mask(snap, filters)
        seen: set[str] = set()
        for part in _parts(table.select([PATIENT_KEY]), mask, 4096):
            for pk in part.column(0).to_pylist():
                if pk not in seen:
                    seen.add(pk)
                    yield pk
        for row in snap.overlay_rows:
            if row[PATIENT_KEY] not in seen and all(f.test(row) for f in filters):
                seen.add(row[PATIENT_KEY])
                yield row[PATIENT_KEY]

    # -- STUDY -----------------------------------------------------------------------------

    def _studies(
        self, plan: Plan, filters: list[Filter], needs: Iterable[str],
        keyed: list[str] | None = None,
    ) -> Iterator[Row]:
        needs = frozenset(needs)
        uids = keyed
        if uids is None and not self.force_scan:
            uids = self._keyed_studies(filters)
        if uids is not None:
            rows = self._study_rows(uids, filters, needs)
        else:
            rows = self._scan_studies(filters, needs)
        if SOP_CLASSES in needs or any(c in needs for c in PATIENT_COUNTS):
            rows = self._augment(rows, needs, filters)
        return rows

    def _keyed_studies(self, filters: list[Filter]) -> list[str] | None:
        with self.catalog.reader() as txn:
            f = _find(filters, "StudyInstanceUID")
            exact = None if f is None else f.exact_values()
            if exact is not None:
                return list(dict.fromkeys(exact))
            for family, keyword in (
                ("pid", "PatientID"),
                ("acc", "AccessionNumber"),
                ("pn", "PatientName"),
                ("sd", "StudyDate"),
            ):
                f = _find(filters, keyword)
                if f is None:
                    continue
                found = self._lookup(txn, family, f)
                if found is None:
                    continue
                if family in ("pid", "pn"):
                    found = [
                        s
                        for pk in dict.fromkeys(found)
                        for s in self._children(txn, "patient_studies", pk)
                    ]
                return list(dict.fromkeys(found))
        return None

    def _study_rows(
        self, uids: Sequence[str], filters: list[Filter], needs: frozenset[str]
    ) -> Iterator[Row]:
        for chunk in _chunks(uids, _CHUNK):
            rows = []
            with self.catalog.reader() as txn:
                cache: dict[str, Row] = {}
                for uid in chunk:
                    row = study_row(txn, self._dbs, uid, cache)
                    if row is not None and all(f.test(row) for f in filters if _ok(f, row)):
                        rows.append(row)
            yield from rows

    def _scan_studies(self, filters: list[Filter], needs: frozenset[str]) -> Iterator[Row]:
        snap = self.columns.snapshot()
        table = snap.table
        names = [n for n in (*STUDY_FIELDS, LIST_FIELD) if n in needs]
        names += ["StudyInstanceUID", PATIENT_KEY]
        mask = self._mask(snap, filters)
        for part in _parts(table, mask, 1024):
            yield from table_rows(part, names)
        for row in snap.overlay_rows:  # computed keys are matched by _augment
            if all(f.test(row) for f in filters if _columnar(f, table)):
                yield row

    def _scan_tables(self, plan: Plan, filters: list[Filter]) -> Iterator[pa.Table]:
        snap = self.columns.snapshot()
        table = snap.table
        names = [k for k in plan.return_keys if k in table.column_names]
        if "StudyInstanceUID" not in names:
            names.append("StudyInstanceUID")  # a table without columns would have no rows
        left = plan.query.limit
        parts: Iterable[pa.Table] = _parts(table.select(names), self._mask(snap, filters), 2048)
        if LIST_FIELD in names:
            i = names.index(LIST_FIELD)
            parts = (p.set_column(i, LIST_FIELD, pc.binary_join(p.column(i), "\\"))
                     for p in parts)
        overlay = [row for row in snap.overlay_rows
                   if all(f.test(row) for f in filters if _columnar(f, table))]
        if overlay:
            fresh = pa.table({k: pa.array([row.get(k, "") for row in overlay], pa.string())
                              for k in names})
            parts = itertools.chain(parts, [fresh])
        for part in parts:
            if left is not None:
                if left <= 0:
                    return
                part = part.slice(0, left)
                left -= part.num_rows
            yield part

    def _augment(
        self, rows: Iterator[Row], needs: frozenset[str], filters: list[Filter]
    ) -> Iterator[Row]:
        """Add patient counts and SOPClassesInStudy (not in the columns), then match them."""
        later = [f for f in filters if f.keyword in (*PATIENT_COUNTS, SOP_CLASSES)]
        for chunk in _chunks(rows, _CHUNK):
            out = []
            with self.catalog.reader() as txn:
                for row in chunk:
                    row = dict(row)
                    if any(c in needs for c in PATIENT_COUNTS):
                        raw = _get(txn, key(row[PATIENT_KEY]), "patients", self._dbs)
                        if raw is not None:
                            row.update(patient_row(decode_dict(raw)))
                    if SOP_CLASSES in needs:
                        series = self._children(txn, "study_series", row["StudyInstanceUID"])
                        classes = {
                            c
                            for s in series
                            for c in secondary.sop_classes_of_series(txn, self._dbs, s)
                        }
                        row[SOP_CLASSES] = "\\".join(sorted(classes))
                    if all(f.test(row) for f in later):
                        out.append(row)
            yield from out

    # -- SERIES and IMAGE ------------------------------------------------------------------

    def _series(self, plan: Plan) -> Iterator[Row]:
        series_filters = plan.filters[2]
        upper = plan.upto(1)
        f = _find(series_filters, "SeriesInstanceUID")
        exact = None if f is None else f.exact_values()
        if exact is None and not upper:
            m = _find(series_filters, "Modality")
            if m is not None:
                with self.catalog.reader() as txn:
                    exact = self._lookup(txn, "mod", m)
        if exact is not None:
            yield from self._series_rows(dict.fromkeys(exact), None, plan, upper)
            return
        upper_needs = plan.needs | {"StudyInstanceUID", PATIENT_KEY} | set(_ALL_UPPER)
        for study in self._studies(plan, upper, upper_needs):
            with self.catalog.reader() as txn:
                children = self._children(txn, "study_series", study["StudyInstanceUID"])
            yield from self._series_rows(children, study, plan, upper)

    def _series_rows(
        self, uids: Iterable[str], study: Row | None, plan: Plan, upper: list[Filter]
    ) -> Iterator[Row]:
        filters = plan.filters[2]
        studies: dict[str, Row | None] = {}
        for chunk in _chunks(uids, _CHUNK):
            rows = []
            with self.catalog.reader() as txn:
                for uid in chunk:
                    raw = _get(txn, key(uid), "series", self._dbs)
                    if raw is None:
                        continue
                    record = decode_dict(raw)
                    parent = study
                    if parent is None:
                        st = record["StudyInstanceUID"]
                        if st not in studies:
                            srow = self._upper_row(txn, st, plan)
                            ok = srow is not None and all(f.test(srow) for f in upper)
                            studies[st] = srow if ok else None
                        parent = studies[st]
                        if parent is None:
                            continue
                    row = dict(parent)
                    for k in SERIES_KEYWORDS:
                        row[k] = str(record.get(k) or "")
                    row["SeriesInstanceUID"] = uid
                    row[SERIES_INSTANCES] = str(record.get(SERIES_INSTANCES, 0))
                    if all(f.test(row) for f in filters):
                        rows.append(row)
            yield from rows

    def _images(self, plan: Plan) -> Iterator[Row]:
        filters = plan.filters[3]
        f = _find(filters, "SOPInstanceUID")
        exact = None if f is None else f.exact_values()
        if exact is not None:
            yield from self._image_rows(dict.fromkeys(exact), None, plan)
            return
        for series in self._series(replace(plan, needs=plan.needs | set(_ALL_UPPER))):
            with self.catalog.reader() as txn:
                children = self._children(txn, "series_instances", series["SeriesInstanceUID"])
            yield from self._image_rows(children, series, plan)

    def _image_rows(self, uids: Iterable[str], series: Row | None, plan: Plan) -> Iterator[Row]:
        filters = plan.filters[3]
        parents: dict[str, Row | None] = {}
        upper = plan.upto(2)
        for chunk in _chunks(uids, _CHUNK):
            rows = []
            with self.catalog.reader() as txn:
                for uid in chunk:
                    raw = _get(txn, key(uid), "instances", self._dbs)
                    if raw is None:
                        continue
                    record = decode_instance(raw)
                    attrs = record.attributes
                    parent = series
                    if parent is None:
                        parent = self._series_parent(
                            txn, attrs["SeriesInstanceUID"], parents, upper, plan
                        )
                        if parent is None:
                            continue
                    row = dict(parent)
                    for k, v in attrs.items():
                        if k not in _UPPER_OF_INSTANCE and isinstance(v, str):
                            row[k] = v
                    if all(f.test(row) for f in filters):
                        rows.append(row)
            yield from rows

    def _upper_row(self, txn: Any, study_uid: str, plan: Plan) -> Row | None:
        row = study_row(txn, self._dbs, study_uid)
        if row is not None and SOP_CLASSES in plan.needs:
            series = self._children(txn, "study_series", study_uid)
            classes = {
                c for s in series for c in secondary.sop_classes_of_series(txn, self._dbs, s)
            }
            row[SOP_CLASSES] = "\\".join(sorted(classes))
        return row

    def _series_parent(
        self, txn: Any, uid: str, cache: dict[str, Row | None], upper: list[Filter], plan: Plan
    ) -> Row | None:
        if uid not in cache:
            raw = _get(txn, key(uid), "series", self._dbs)
            row = None
            if raw is not None:
                record = decode_dict(raw)
                row = self._upper_row(txn, record["StudyInstanceUID"], plan)
                if row is not None:
                    for k in SERIES_KEYWORDS:
                        row[k] = str(record.get(k) or "")
                    row["SeriesInstanceUID"] = uid
                    row[SERIES_INSTANCES] = str(record.get(SERIES_INSTANCES, 0))
                    if not all(f.test(row) for f in upper):
                        row = None
            cache[uid] = row
        return cache[uid]

    # -- helpers -------------------------------------------------------------------------------

    def _lookup(self, txn: Any, family: str, f: Filter) -> list[str] | None:
        """Keys from one secondary index for every alternative of ``f``; None: not usable."""
        if not isinstance(f, ValueFilter):
            if isinstance(f, CombinedDateTimeFilter) and family == "sd":
                low = None if f.low is None else f.low[:8]
                high = None if f.high is None else f.high[:8]
                return secondary.lookup(
                    txn, self._dbs, family, low=low, high=high, cap=self.index_cap
                )
            return None
        out: list[str] = []
        for alt in f.alternatives:
            if isinstance(alt, Exact):
                found = secondary.lookup(
                    txn, self._dbs, family, exact=alt.value, cap=self.index_cap
                )
            elif isinstance(alt, Like):
                if not alt.prefix:
                    return None
                found = secondary.lookup(
                    txn, self._dbs, family, prefix=alt.prefix, cap=self.index_cap
                )
            elif isinstance(alt, Range) and family == "sd":
                found = secondary.lookup(
                    txn, self._dbs, family, low=alt.low, high=alt.high, cap=self.index_cap
                )
            else:
                return None
            if found is None:
                return None
            out.extend(found)
            if len(out) > self.index_cap:
                return None
        return out

    def _children(self, txn: Any, index: str, parent: str) -> list[str]:
        prefix = child_prefix(parent)
        out = []
        cursor = txn.cursor(db=self._dbs[index])
        if cursor.set_range(prefix):
            for k, v in cursor:
                if not k.startswith(prefix):
                    break
                out.append(v.decode() if v else k[len(prefix) :].decode())
        return out

    def _mask(self, snap: Snapshot, filters: list[Filter]) -> Any:
        """Rows of the base table matching the filters it has columns for (None: all)."""
        mask = snap.keep
        for f in filters:
            if not _columnar(f, snap.table):
                continue
            m = f.mask(snap.table)
            mask = m if mask is None else _and(mask, m)
        return mask


_ALL_UPPER = (*STUDY_FIELDS, LIST_FIELD)


def _and(a: Any, b: Any) -> Any:
    return pc.and_(a, b)


def _parts(table: pa.Table, mask: Any, n: int) -> Iterator[pa.Table]:
    """The rows of ``table`` where ``mask`` is true (all when None), in slices growing from 64
    to ``n`` rows (a small limit converts few rows; a long listing converts in bulk)."""
    idx = None if mask is None else pc.indices_nonzero(mask)
    total = table.num_rows if idx is None else len(idx)
    start, size = 0, min(64, n)
    while start < total:
        yield table.slice(start, size) if idx is None else table.take(idx.slice(start, size))
        start += size
        size = min(size * 2, n)


def _columnar(f: Filter, table: pa.Table) -> bool:
    return all(c in table.column_names for c in f.columns)


def _get(txn: Any, k: bytes, db: str, dbs: dict[str, Any]) -> bytes | None:
    return cast(bytes | None, txn.get(k, db=dbs[db]))


def _sort_key(keyword: str) -> Callable[[Row], str]:
    def get(row: Row) -> str:
        return row.get(keyword, "")

    return get


def _find(filters: list[Filter], keyword: str) -> Filter | None:
    for f in filters:
        if f.keyword == keyword:
            return f
    return None


def _ok(f: Filter, row: Row) -> bool:
    return f.keyword not in (*PATIENT_COUNTS, SOP_CLASSES) or f.keyword in row


def _chunks(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk
