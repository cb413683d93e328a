"""Secondary indexes of the catalog, written in the same LMDB write transaction as the records.

Named databases (keys are bytes; ``k(uid)`` is :func:`pacs.index.codec.key`)::

    sx         family NUL value NUL k(uid) -> b'' (or the UID when k() hashed it)
    sx_counts  b'sm' NUL k(study)  NUL Modality     -> ASCII count of its series with it
               b'sc' NUL k(series) NUL SOPClassUID  -> ASCII count of its instances with it
    sx_log     generation (8 bytes big endian)     -> JSON [study UIDs, patient keys] changed
    meta       sx/version, sx/epoch, sx/gen

Families of ``sx`` (value as stored, or normalised): ``pid`` PatientID and ``pn`` PatientName
upper-cased (-> patient key), ``acc`` AccessionNumber and ``sd`` StudyDate (-> StudyInstanceUID),
``mod`` Modality (-> SeriesInstanceUID). The records' own keys already index the UIDs of every
level, and the catalog's child indexes the hierarchy. Values are cut to ``MAX_VALUE`` bytes
(matching always re-checks the record), so an exact lookup is a prefix scan of
``family NUL value NUL`` and a prefix or range lookup a cursor walk from ``family NUL low``.

``sx_counts`` gives ModalitiesInStudy and SOPClassesInStudy without reading series or instance
records. ``sx_log`` and ``sx/gen`` let the Arrow column cache (:mod:`pacs.index.columns`) of any
process catch up with the studies written since it was built; ``sx/epoch`` changes whenever the
indexes are rebuilt (fresh or cleared catalog), which invalidates every cache.

:func:`on_flush` is called by ``pacs.index.catalog._Txn.flush`` with each changed record before
and after the transaction; the first write to a catalog without these indexes (an archive built
by an older version) builds them from the records.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any, cast

import lmdb
import orjson

from pacs.index.codec import decode_dict, decode_instance, key

DB_NAMES = ("sx", "sx_counts", "sx_log")
FORMAT = b"1"
MAX_VALUE = 96
LOG_KEEP = 100_000  # generations kept in sx_log (at least; up to LOG_TRIM_EVERY - 1 more)
LOG_TRIM_EVERY = 1024

_VERSION = b"sx/version"
_EPOCH = b"sx/epoch"
_GEN = b"sx/gen"

# family -> (level database, record field, upper-case?)
FAMILIES: dict[str, tuple[str, str, bool]] = {
    "pid": ("patients", "PatientID", False),
    "pn": ("patients", "PatientName", True),
    "acc": ("studies", "AccessionNumber", False),
    "sd": ("studies", "StudyDate", False),
    "mod": ("series", "Modality", False),
}
_BY_LEVEL: dict[str, list[tuple[bytes, str, bool]]] = defaultdict(list)
for _fam, (_level, _field, _upper) in FAMILIES.items():
    _BY_LEVEL[_level].append((_fam.encode(), _field, _upper))
_FIELDS_BY_LEVEL = {level: tuple(f for _, f, _ in fams) for level, fams in _BY_LEVEL.items()}

Dbs = dict[str, Any]


def value_bytes(value: str, upper: bool = False) -> bytes:
    """The value part of an index key: NUL removed, upper-cased if asked, cut to MAX_VALUE."""
    raw = (value.upper() if upper else value).replace("\0", "").encode()
    if len(raw) > MAX_VALUE:
        raw = raw[:MAX_VALUE].decode(errors="ignore").encode()
    return raw


def _record_keys(level: str, uid: str, record: dict[str, Any] | None) -> set[bytes]:
    if record is None:
        return set()
    k = key(uid)
    out = set()
    for fam, field, upper in _BY_LEVEL.get(level, ()):
        value = record.get(field) or ""
        if value:
            out.add(fam + b"\0" + value_bytes(value, upper) + b"\0" + k)
    return out


def _uid_value(uid: str) -> bytes:
    raw = uid.encode()
    return b"" if key(uid) == raw else raw


def _count_key(family: bytes, parent: str, child: str) -> bytes:
    return family + b"\0" + key(parent) + b"\0" + child.replace("\0", "").encode()[:128]


# A patient record's counts: set to one value on both sides, they drop out of a comparison.
_NO_COUNTS = dict.fromkeys(("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                            "NumberOfPatientRelatedInstances"), 0)


def _patient_attrs(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, **_NO_COUNTS}


def _add_counts(txn: lmdb.Transaction, db: Any, deltas: dict[bytes, int]) -> None:
    for k, d in deltas.items():
        if not d:
            continue
        n = int(cast(bytes, txn.get(k, b"0", db=db))) + d
        if n > 0:
            txn.put(k, str(n).encode(), db=db)
        else:
            txn.delete(k, db=db)


def _count_series_modality(
    old: dict[str, Any] | None, new: dict[str, Any] | None, studies: set[str],
    counts: dict[bytes, int],
) -> None:
    """A series appeared, went or changed study or modality: its studies' modality counts."""
    for record, sign in ((old, -1), (new, 1)):
        if record is not None:
            studies.add(record["StudyInstanceUID"])
            if record.get("Modality"):
                counts[_count_key(b"sm", record["StudyInstanceUID"], record["Modality"])] += sign


def on_flush(
    txn: lmdb.Transaction,
    dbs: Dbs,
    changes: Iterable[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]],
    instance_deltas: Iterable[tuple[str, str, int]],
) -> None:
    """Update the indexes for records changed in this write transaction.

    ``changes``: (level database, key, record before the transaction or None, record after it
    or None). ``instance_deltas``: (SeriesInstanceUID, SOPClassUID, +1 or -1).
    """
    meta = dbs["meta"]
    if txn.get(_VERSION, db=meta) != FORMAT:
        rebuild(txn, dbs)
        return
    changes = list(changes)
    instance_deltas = list(instance_deltas)
    if not changes and not instance_deltas:
        return
    sx = dbs["sx"]
    studies: set[str] = set()
    patients: set[str] = set()
    counts: dict[bytes, int] = defaultdict(int)
    for level, uid, old, new in changes:
        if level == "patients":
            if old is not None and new is not None and _patient_attrs(old) != _patient_attrs(new):
                patients.add(uid)
        elif level == "studies":
            studies.add(uid)
        elif level == "series":
            if (old is not None and new is not None
                    and old["StudyInstanceUID"] == new["StudyInstanceUID"]
                    and old.get("Modality") == new.get("Modality")):
                studies.add(new["StudyInstanceUID"])  # its study's modality counts hold
            else:
                _count_series_modality(old, new, studies, counts)
        fields = _FIELDS_BY_LEVEL.get(level, ())
        if (old is not None and new is not None
                and list(map(old.get, fields)) == list(map(new.get, fields))):
            continue  # the indexed values did not change (a count did): same index keys
        old_keys = _record_keys(level, uid, old)
        new_keys = _record_keys(level, uid, new)
        for k in old_keys - new_keys:
            txn.delete(k, db=sx)
        if new_keys - old_keys:
            value = _uid_value(uid)
            for k in new_keys - old_keys:
                txn.put(k, value, db=sx)
    for series_uid, sop_class, delta in instance_deltas:
        counts[_count_key(b"sc", series_uid, sop_class)] += delta
    _add_counts(txn, dbs["sx_counts"], counts)
    gen = int(cast(bytes, txn.get(_GEN, b"0", db=meta))) + 1
    txn.put(_GEN, str(gen).encode(), db=meta)
    entry = [sorted(studies), sorted(patients)]
    txn.put(gen.to_bytes(8, "big"), orjson.dumps(entry), db=dbs["sx_log"])
    if gen > LOG_KEEP and gen % LOG_TRIM_EVERY == 0:
        trim_log(txn, dbs["sx_log"], gen - LOG_KEEP)


def trim_log(txn: lmdb.Transaction, db: Any, oldest_kept: int) -> int:
    """Delete the change-log generations before ``oldest_kept``; how many went.

    Done every ``LOG_TRIM_EVERY`` generations rather than one per commit: deleting the oldest
    entry rewrote another leaf of the log in every transaction (+10-20% per one-instance commit
    once an archive had written ``LOG_KEEP`` transactions).
    """
    limit = oldest_kept.to_bytes(8, "big")
    cursor = txn.cursor(db=db)
    n = 0
    if cursor.first():
        while bytes(cursor.key()) < limit:
            if not cursor.delete():
                break
            n += 1
    return n


def rebuild(txn: lmdb.Transaction, dbs: Dbs) -> None:
    """Build every secondary index from the records (in the caller's write transaction)."""
    for name in DB_NAMES:
        txn.drop(dbs[name], delete=False)
    sx = dbs["sx"]
    counts: dict[bytes, int] = defaultdict(int)
    for level in ("patients", "studies", "series"):
        for k, raw in cast(Iterator[tuple[bytes, bytes]], txn.cursor(db=dbs[level])):
            record = decode_dict(raw)
            ident = _ident_of(k, record, level)
            value = _uid_value(ident)
            for ik in _record_keys(level, ident, record):
                txn.put(ik, value, db=sx)
            if level == "series" and record.get("Modality"):
                counts[_count_key(b"sm", record["StudyInstanceUID"], record["Modality"])] += 1
    for _, raw in cast(Iterator[tuple[bytes, bytes]], txn.cursor(db=dbs["instances"])):
        inst = decode_instance(raw)
        attrs = inst.attributes
        counts[_count_key(b"sc", attrs["SeriesInstanceUID"], attrs.get("SOPClassUID", ""))] += 1
    _add_counts(txn, dbs["sx_counts"], counts)
    meta = dbs["meta"]
    txn.put(_VERSION, FORMAT, db=meta)
    txn.put(_EPOCH, os.urandom(8).hex().encode(), db=meta)
    txn.put(_GEN, b"0", db=meta)


def _ident_of(k: bytes, record: dict[str, Any], level: str) -> str:
    field = {"patients": "patient_key", "studies": "StudyInstanceUID"}.get(
        level, "SeriesInstanceUID"
    )
    ident = record.get(field)
    return str(ident) if ident else k.decode()


# -- reading -----------------------------------------------------------------------------------


def state(txn: lmdb.Transaction, dbs: Dbs) -> tuple[str, int] | None:
    """(epoch, generation) of the indexes, None when they were never built."""
    meta = dbs["meta"]
    if txn.get(_VERSION, db=meta) != FORMAT:
        return None
    epoch = cast(bytes, txn.get(_EPOCH, b"", db=meta)).decode()
    return epoch, int(cast(bytes, txn.get(_GEN, b"0", db=meta)))


def changed_since(
    txn: lmdb.Transaction, dbs: Dbs, gen: int, now: int
) -> tuple[set[str], set[str]] | None:
    """Study UIDs and patient keys changed in generations (gen, now]; None if no longer logged."""
    if now - gen > LOG_KEEP:
        return None
    studies: set[str] = set()
    patients: set[str] = set()
    cursor = txn.cursor(db=dbs["sx_log"])
    start = (gen + 1).to_bytes(8, "big")
    if not cursor.set_range(start) or cursor.key() != start:
        return None
    for _, raw in cast(Iterator[tuple[bytes, bytes]], cursor):
        st, pk = orjson.loads(raw)
        studies.update(st)
        patients.update(pk)
    return studies, patients


def _walk(
    txn: lmdb.Transaction, db: Any, start: bytes, prefix: bytes
) -> Iterator[tuple[bytes, bytes]]:
    cursor = txn.cursor(db=db)
    if not cursor.set_range(start):
        return
    for k, v in cast(Iterator[tuple[bytes, bytes]], cursor):
        if not k.startswith(prefix):
            return
        yield k, v


def _ident(k: bytes, v: bytes) -> str:
    return v.decode() if v else k.split(b"\0", 2)[2].decode()


def lookup(
    txn: lmdb.Transaction,
    dbs: Dbs,
    family: str,
    *,
    exact: str | None = None,
    prefix: str | None = None,
    low: str | None = None,
    high: str | None = None,
    cap: int | None = None,
) -> list[str] | None:
    """Keys (patient keys or UIDs) of ``family`` whose value is ``exact``, starts with
    ``prefix`` or lies in [low, high]; None when more than ``cap`` were found (the caller
    should scan instead). Values are compared as stored in the key (upper-cased for ``pn``)."""
    upper = FAMILIES[family][2]
    fam = family.encode() + b"\0"
    out: list[str] = []
    if exact is not None:
        start = fam + value_bytes(exact, upper) + b"\0"
        walk = _walk(txn, dbs["sx"], start, start)
    elif prefix is not None:
        start = fam + value_bytes(prefix, upper)
        walk = _walk(txn, dbs["sx"], start, start)
    else:
        start = fam + (value_bytes(low, upper) if low else b"")
        hi = None if high is None else value_bytes(high, upper)
        walk = _walk(txn, dbs["sx"], start, fam)
        for k, v in walk:
            if hi is not None and k[len(fam) : k.index(b"\0", len(fam))] > hi:
                break
            out.append(_ident(k, v))
            if cap is not None and len(out) > cap:
                return None
        return out
    for k, v in walk:
        out.append(_ident(k, v))
        if cap is not None and len(out) > cap:
            return None
    return out


def _count_children(txn: lmdb.Transaction, dbs: Dbs, family: bytes, parent: str) -> list[str]:
    prefix = family + b"\0" + key(parent) + b"\0"
    return [k[len(prefix) :].decode() for k, _ in _walk(txn, dbs["sx_counts"], prefix, prefix)]


def modalities_of_study(txn: lmdb.Transaction, dbs: Dbs, study_uid: str) -> list[str]:
    """The distinct Modality values of a study's series, sorted."""
    return _count_children(txn, dbs, b"sm", study_uid)


def sop_classes_of_series(txn: lmdb.Transaction, dbs: Dbs, series_uid: str) -> list[str]:
    """The distinct SOPClassUIDs of a series' instances, sorted."""
    return [c for c in _count_children(txn, dbs, b"sc", series_uid) if c]


def all_study_modalities(txn: lmdb.Transaction, dbs: Dbs) -> dict[bytes, list[str]]:
    """k(StudyInstanceUID) -> its modalities, for every study (one cursor walk)."""
    out: dict[bytes, list[str]] = defaultdict(list)
    for k, _ in _walk(txn, dbs["sx_counts"], b"sm\0", b"sm\0"):
        study, _, modality = k[3:].rpartition(b"\0")
        out[study].append(modality.decode())
    return out
