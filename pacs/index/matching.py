"""C-FIND attribute matching (PS3.4 C.2.2.2), in Python and as Apache Arrow masks.

A query value is compiled once into a :class:`Filter` that answers the same question two ways:
``test(row)`` on one row (a ``keyword -> str`` mapping, used on LMDB records) and
``mask(table)`` on an Arrow table of many rows (used on the column cache). Both must agree;
the property tests hold them to a brute-force reference.

Rules implemented, by kind of query value (after stripping leading/trailing spaces):

- ``''`` or ``'*'``: universal matching (no filter is built at all).
- ``A\\B\\C``: any of the values matches (*list of UID matching* for UI, and the same OR for
  every other VR, e.g. ``ModalitiesInStudy=CT\\MR``). A stored value holding several values
  (``ModalitiesInStudy``) matches when any of its values does.
- ``*`` / ``?`` inside a value: wildcard matching (any run / exactly one character), for every VR
  except DA, TM, DT, UI and the numeric ones, where it is an error.
- ``A-B``, ``-B``, ``A-`` for DA, TM and DT: inclusive range matching; partial times are padded
  (``10`` is 10:00:00.000000 as a lower bound, 10:59:59.999999 as an upper bound).
- anything else: single value matching, case-sensitive except for person names (PN) when
  ``fold`` (the default, see ``Query.fuzzy_names``) which compares upper-cased values.
- ``combined`` (Combined Date and Time Range Matching, C.2.2.2.5.2 / extended negotiation):
  StudyDate and StudyTime ranges form one date-time range ``dateA timeA - dateB timeB``.

Malformed values (an invalid date, a wildcard in a UID, ``-`` alone ...) raise
:class:`pacs.errors.QueryError` with status 0xC000 (unable to process) and a comment.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from pacs.errors import QueryError
from pacs.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
else:  # imported on first use (pacs.lazy): ~33 MiB a worker may never need
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")

UNABLE_TO_PROCESS = 0xC000

# VRs of the keywords the index holds, and of the computed ones.
_VRS: dict[str, str] = {
    "PatientName": "PN",
    "ReferringPhysicianName": "PN",
    "PatientID": "LO",
    "IssuerOfPatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyInstanceUID": "UI",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "AccessionNumber": "SH",
    "StudyID": "SH",
    "StudyDescription": "LO",
    "SeriesInstanceUID": "UI",
    "Modality": "CS",
    "SeriesNumber": "IS",
    "SeriesDescription": "LO",
    "BodyPartExamined": "CS",
    "SOPInstanceUID": "UI",
    "SOPClassUID": "UI",
    "InstanceNumber": "IS",
    "ModalitiesInStudy": "CS",
    "SOPClassesInStudy": "UI",
    "NumberOfPatientRelatedStudies": "IS",
    "NumberOfPatientRelatedSeries": "IS",
    "NumberOfPatientRelatedInstances": "IS",
    "NumberOfStudyRelatedSeries": "IS",
    "NumberOfStudyRelatedInstances": "IS",
    "NumberOfSeriesRelatedInstances": "IS",
}
_NO_WILDCARD = frozenset({"DA", "TM", "DT", "UI", "IS", "DS", "SS", "US", "SL", "UL", "FL", "FD"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})

_DA = re.compile(r"\d{8}")
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_DT = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?")


@lru_cache(maxsize=1024)
def vr_of(keyword: str) -> str | None:
    """The VR of a keyword (None for a keyword the data dictionary does not know)."""
    vr = _VRS.get(keyword)
    if vr is not None:
        return vr
    from pydicom.datadict import dictionary_VR, tag_for_keyword  # off the hot path

    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return None


def fail(comment: str) -> QueryError:
    return QueryError(UNABLE_TO_PROCESS, comment)


# -- normalisation (the same in Python and in the Arrow columns) -------------------------------


def norm_time(value: str, high: bool = False) -> str:
    """``HHMMSS.FFFFFF`` from a (partial, possibly colon-separated) TM; ``high`` pads with the
    largest digits (for an upper bound). Unparseable stored values are returned unchanged."""
    v = value.replace(":", "")
    if not _TM.fullmatch(v):
        return value
    hhmmss, _, frac = v.partition(".")
    pad = "995959" if high else "000000"
    hhmmss += pad[len(hhmmss) :]
    frac = frac + ("9" if high else "0") * (6 - len(frac))
    return f"{hhmmss}.{frac}"


def norm_datetime(value: str, high: bool = False) -> str:
    """``YYYYMMDDHHMMSS.FFFFFF`` from a (partial) DT, offset dropped; unparseable: unchanged."""
    if not _DT.fullmatch(value):
        return value
    v = value[:-5] if len(value) > 5 and value[-5] in "+-" else value
    date, rest = v[:8], v[8:]
    date += ("1231" if high else "0101")[len(date) - 4 :]
    return date + norm_time(rest or ("23" if high else "00"), high)


def normalizer(vr: str | None, fold: bool) -> Callable[[str], str] | None:
    """How stored values are prepared before comparison (None: as they are)."""
    if vr == "PN" and fold:
        return str.upper
    if vr == "TM":
        return norm_time
    if vr == "DT":
        return norm_datetime
    return None


def derived_column(keyword: str, vr: str | None, fold: bool) -> str:
    """Name of the Arrow column holding ``keyword`` prepared by :func:`normalizer`."""
    return keyword if normalizer(vr, fold) is None else f"{keyword}~"


# -- the alternatives one value compiles to ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exact:
    value: str


@dataclass(frozen=True, slots=True)
class Like:
    pattern: str  # C-FIND wildcard pattern (already folded when case-insensitive)

    @property
    def prefix(self) -> str:
        """The literal characters before the first wildcard."""
        return re.split(r"[*?]", self.pattern, maxsplit=1)[0]

    def matches(self, value: str) -> bool:
        return wildcard_match(self.pattern, value)

    def like(self) -> str:
        out = []
        for c in self.pattern:
            if c == "*":
                out.append("%")
            elif c == "?":
                out.append("_")
            elif c in "%_\\":
                out.append("\\" + c)
            else:
                out.append(c)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Range:
    low: str | None  # normalised, inclusive
    high: str | None


Alternative = Exact | Like | Range


def _check_date(v: str) -> str:
    if not _DA.fullmatch(v):
        raise fail(f"invalid date {v!r}")
    try:
        datetime.date(int(v[:4]), int(v[4:6]), int(v[6:]))
    except ValueError:  # month 13, day 45: it matched nothing, silently
        raise fail(f"invalid date {v!r}") from None
    return v


def _range(vr: str, text: str, keyword: str) -> Range:
    if vr == "DA":
        lo, _, hi = text.partition("-")
        return Range(_check_date(lo) if lo else None, _check_date(hi) if hi else None)
    if vr == "TM":
        lo, _, hi = text.partition("-")
        for part in (lo, hi):
            if part and not _TM.fullmatch(part.replace(":", "")):
                raise fail(f"invalid time {part!r} in {keyword}")
        return Range(norm_time(lo) if lo else None, norm_time(hi, True) if hi else None)
    # DT: the '-' that splits the range is the one leaving two valid (or empty) sides
    for i, c in enumerate(text):
        if c != "-":
            continue
        lo, hi = text[:i], text[i + 1 :]
        if all(not p or _DT.fullmatch(p) for p in (lo, hi)):
            return Range(norm_datetime(lo) if lo else None, norm_datetime(hi, True) if hi else None)
    raise fail(f"invalid date-time range {text!r} in {keyword}")


# A wildcard value longer than this is refused (0xC000): no matching key needs it, and Arrow's
# RE2 refuses patterns of about 100 kB (with megabytes of stderr).
MAX_WILDCARD_VALUE = 1024


def wildcard_match(pattern: str, value: str) -> bool:
    """Whether ``value`` matches the C-FIND wildcard ``pattern`` whole ('*' any run of
    characters, '?' one; PS3.4 C.2.2.2.4). Greedy with one backtrack point (the last '*'):
    O(len(pattern) x len(value)) at worst, where a regular expression of '*?*?...' backtracks
    exponentially (28 characters froze a worker for 23 s)."""
    p = v = 0
    star, star_v = -1, 0
    while v < len(value):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == value[v]):
            p += 1
            v += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, star_v = p, v
            p += 1
        elif star >= 0:
            star_v += 1
            p, v = star + 1, star_v
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def compile_value(keyword: str, vr: str | None, value: str, fold: bool) -> list[Alternative]:
    """The alternatives (OR) of one non-universal query value; raises QueryError."""
    alternatives: list[Alternative] = []
    for part in value.split("\\"):
        part = part.strip(" ")
        if part in ("", "*"):
            raise fail(f"empty or universal value in the list of {keyword}")
        if vr in _RANGE_VRS and "-" in part and not (vr == "DT" and _DT.fullmatch(part)):
            if part == "-":
                raise fail(f"range without bounds in {keyword}")
            alternatives.append(_range(vr, part, keyword))
            continue
        if "*" in part or "?" in part:
            if vr in _NO_WILDCARD:
                raise fail(f"wildcards are not allowed in {keyword} ({vr})")
            if len(part) > MAX_WILDCARD_VALUE:
                raise fail(f"wildcard value of {keyword} longer than {MAX_WILDCARD_VALUE}")
            alternatives.append(Like(part.upper() if vr == "PN" and fold else part))
            continue
        if vr == "DA":
            _check_date(part)
        elif vr == "TM":
            if not _TM.fullmatch(part.replace(":", "")):
                raise fail(f"invalid time {part!r} in {keyword}")
            part = norm_time(part)
        elif vr == "DT":
            part = norm_datetime(part)
        elif vr == "UI" and (len(part) > 64 or not re.fullmatch(r"[0-9.]+", part)):
            raise fail(f"invalid UID {part!r} in {keyword}")
        elif vr == "PN" and fold:
            part = part.upper()
        alternatives.append(Exact(part))
    return alternatives


def is_universal(value: str) -> bool:
    v = value.strip(" ")
    return v in ("", "*")


# -- filters -----------------------------------------------------------------------------------


class Filter:
    """One compiled matching key."""

    keyword: str
    columns: tuple[str, ...]  # Arrow columns ``mask`` reads

    def test(self, row: Mapping[str, str]) -> bool:
        raise NotImplementedError

    def exact_values(self) -> list[str] | None:
        """The values when every alternative is single value matching (None otherwise)."""
        return None

    def mask(self, table: pa.Table) -> pa.ChunkedArray:
        raise NotImplementedError


class ValueFilter(Filter):
    """Matching of one attribute against a compiled value (see the module docstring)."""

    def __init__(self, keyword: str, value: str, fold: bool = True) -> None:
        self.keyword = keyword
        self.vr = vr_of(keyword)
        self.value = value
        self.alternatives = compile_value(keyword, self.vr, value, fold)
        self.norm = normalizer(self.vr, fold)
        self.column = derived_column(keyword, self.vr, fold)
        self.columns = (self.column,)

    # planner hints
    def exact_values(self) -> list[str] | None:
        """The values when every alternative is single value matching."""
        if all(isinstance(a, Exact) for a in self.alternatives):
            return [a.value for a in self.alternatives if isinstance(a, Exact)]
        return None

    def _one(self, stored: str) -> bool:
        if self.norm is not None:
            stored = self.norm(stored)
        for alt in self.alternatives:
            if isinstance(alt, Exact):
                if stored == alt.value:
                    return True
            elif isinstance(alt, Like):
                if alt.matches(stored):
                    return True
            elif (
                stored
                and (alt.low is None or stored >= alt.low)
                and (alt.high is None or stored <= alt.high)
            ):
                return True
        return False

    def test(self, row: Mapping[str, str]) -> bool:
        stored = row.get(self.keyword, "")
        if "\\" in stored:
            return any(self._one(v) for v in stored.split("\\"))
        return self._one(stored)

    def _mask_values(self, col: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
        result = None
        for alt in self.alternatives:
            if isinstance(alt, Exact):
                m = pc.equal(col, alt.value)
            elif isinstance(alt, Like):
                m = pc.match_like(col, alt.like())
            else:
                m = pc.not_equal(col, "")
                if alt.low is not None:
                    m = pc.and_(m, pc.greater_equal(col, alt.low))
                if alt.high is not None:
                    m = pc.and_(m, pc.less_equal(col, alt.high))
            result = m if result is None else pc.or_(result, m)
        assert result is not None
        return pc.fill_null(result, False)

    def mask(self, table: pa.Table) -> pa.ChunkedArray:
        col = table.column(self.column)
        if pa.types.is_list(col.type):  # multi-valued: any element matches
            out = []
            for chunk in col.chunks:
                # per list: matching elements = cumulative count at its end minus at its start
                hits = pc.cumulative_sum(pc.cast(self._mask_values(chunk.values), pa.int64()))
                ends = pa.concat_arrays([pa.array([0], pa.int64()), hits])
                offsets = chunk.offsets
                last = pc.take(ends, offsets.slice(1))
                first = pc.take(ends, offsets.slice(0, len(offsets) - 1))
                out.append(pc.greater(last, first))
            return pa.chunked_array(out, pa.bool_())
        return self._mask_values(col)


class CombinedDateTimeFilter(Filter):
    """StudyDate + StudyTime as one range (Combined Date and Time Range Matching)."""

    def __init__(self, date_keyword: str, time_keyword: str, date: str, time: str) -> None:
        self.keyword = date_keyword
        self.time_keyword = time_keyword
        d = _range("DA", date, date_keyword)
        lo_t, _, hi_t = time.partition("-")
        if "-" not in time:
            lo_t = hi_t = time
        for part in (lo_t, hi_t):
            if part and not _TM.fullmatch(part.replace(":", "")):
                raise fail(f"invalid time {part!r} in {time_keyword}")
        self.low = None if d.low is None else d.low + norm_time(lo_t or "00")
        self.high = None if d.high is None else d.high + norm_time(hi_t or "23", True)
        self.columns = (date_keyword, f"{time_keyword}~")

    def test(self, row: Mapping[str, str]) -> bool:
        date = row.get(self.keyword, "")
        if not date:
            return False
        stamp = date + norm_time(row.get(self.time_keyword, "") or "00")
        return (self.low is None or stamp >= self.low) and (self.high is None or stamp <= self.high)

    def mask(self, table: pa.Table) -> pa.ChunkedArray:
        date = table.column(self.keyword)
        time = table.column(f"{self.time_keyword}~")
        time = pc.if_else(pc.equal(time, ""), "000000.000000", time)
        stamp = pc.binary_join_element_wise(date, time, "")
        m = pc.not_equal(date, "")
        if self.low is not None:
            m = pc.and_(m, pc.greater_equal(stamp, self.low))
        if self.high is not None:
            m = pc.and_(m, pc.less_equal(stamp, self.high))
        return pc.fill_null(m, False)
