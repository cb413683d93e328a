"""The DICOM tag scanner: element table and index attributes of a dataset (PS3.5 Section 7).

:func:`scan` walks a bare dataset (as received over DIMSE, or after the Part-10 header) held
in ``bytes``, ``bytearray``, ``memoryview`` or ``mmap`` and returns the :class:`ElementTable`
of its top-level elements ``(tag, vr, value_offset, length)`` up to, and excluding, the first
top-level tag >= ``stop_tag`` (default: Pixel Data). :func:`index_attributes` turns a table into
the index record, :func:`read_index_attributes` does both.

The loop itself has two twins with one behaviour: the compiled ``pacs.dicom._cscan`` (from
``ext/scan.pyx``) and the pure ``pacs.dicom._pyscan``. :data:`IMPLEMENTATION` says which one
runs; ``PACS_NO_EXTENSIONS=1`` forces the pure one. With the compiled twin,
:func:`read_index_attributes` takes a fast path (``_cscan.index_core``): the loop records only
the index tags and decodes plain ASCII/Latin-1 values itself, handing the others to
:func:`pacs.dicom.charset.decode_value`; its record equals :func:`index_attributes` of the
table (the twin tests check it).

Transfer syntaxes: Implicit VR LE, Explicit VR LE, Explicit VR BE, Deflated Explicit VR LE
(and JPIP Referenced Deflate; the buffer is the raw-deflated dataset, inflated with zlib in
growing steps up to :data:`MAX_INFLATED` bytes; table offsets then refer to
``ElementTable.buffer``, the inflated bytes), any other (encapsulated) syntax as Explicit VR LE.

Leniency policy (identical in both twins)
-----------------------------------------
* **VR style.** At the start of the top-level dataset the first element decides: explicit VR if
  its two VR bytes are upper-case letters A-Z, implicit otherwise, whatever the transfer syntax
  says (pydicom does the same, with a warning). Inside an undefined-length item, implicit VR is
  inherited, and an explicit parent switches to implicit when the item's first element does
  not look explicit (the explicit-to-implicit switch some writers produce; UN of undefined
  length holding implicit VR content is read this way). In an explicit dataset, an element
  whose VR bytes are not A-Z is read as implicit VR (tag, 32-bit length), as pydicom does.
* **VRs.** OB OD OF OL OV OW SQ SV UC UN UR UT UV have 2 reserved bytes and a 32-bit length;
  every other VR, known or not (any two upper-case letters), a 16-bit length (like pydicom).
* **Undefined length** (0xFFFFFFFF) on any element (SQ, UN, encapsulated OB, or implicit VR)
  is walked as a sequence of items up to its Sequence Delimitation Item; undefined-length items
  are walked as datasets up to their Item Delimitation Item. Defined-length sequences and items
  are skipped by their length, not parsed. Delimiter lengths are ignored.
* **Accepted silently:** odd lengths, unknown VRs, tags out of order or repeated (the last
  occurrence wins in the index), group lengths that do not match.
* **Errors** are :class:`pacs.errors.DicomFormatError` ``(reason, offset, tag)`` with ``offset``
  the start of the header being read and ``tag`` its tag (None if fewer than 4 bytes remained):
  a header or value running past the end of the buffer (no trailing garbage is tolerated), a
  sequence or item not closed at the end of the buffer, a non-item tag where an item or a
  sequence delimiter must be, an item or delimiter tag (group FFFE) at the top level or an
  item where a data element must be, and nesting deeper than 64 sequences. The scanner never
  reads outside the buffer and always advances, so it cannot loop.
"""

from __future__ import annotations

import mmap
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from typing import Any, NamedTuple, overload

from pydicom.datadict import dictionary_VR, keyword_dict

from pacs.dicom import _pyscan
from pacs.dicom.charset import (
    DEFAULT_CHARSET_INFO,
    DEFAULT_ENCODINGS,
    STRING_VRS,
    charset_info,
    decode_value,
    python_encodings,
)
from pacs.errors import DicomFormatError
from pacs.extensions import compiled
from pacs.index.records import ALL_KEYWORDS

__all__ = [
    "IMPLEMENTATION",
    "INDEX_KEYWORDS",
    "MAX_INFLATED",
    "PIXEL_DATA",
    "UNDEFINED_LENGTH",
    "Buffer",
    "Element",
    "ElementTable",
    "index_attributes",
    "read_index_attributes",
    "scan",
]

Buffer = bytes | bytearray | memoryview | mmap.mmap
ScanCore = Callable[[Any, bool, bool, int, int], tuple[MutableSequence[int], int, int, int]]
IndexCore = Callable[[Any, bool, bool, int, int, Any], tuple[dict[str, str] | None, int, int, int]]

PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
MAX_INFLATED = 256 * 1024 * 1024
INDEX_KEYWORDS: tuple[str, ...] = (*ALL_KEYWORDS, "SpecificCharacterSet")

_REASONS = {
    _pyscan.E_HEADER: "truncated element header",
    _pyscan.E_VALUE: "element value runs past the end of the buffer",
    _pyscan.E_ITEM: "item runs past the end of the buffer",
    _pyscan.E_UNTERMINATED: "undefined-length sequence or item is not terminated",
    _pyscan.E_DEPTH: "sequences nested too deeply",
    _pyscan.E_EXPECTED_ITEM: "expected an item or a sequence delimiter",
    _pyscan.E_DELIMITER: "unexpected item or delimiter tag",
}
# Outcomes that more inflated bytes may change
_RETRY = frozenset(
    (_pyscan.END, _pyscan.E_HEADER, _pyscan.E_VALUE, _pyscan.E_ITEM, _pyscan.E_UNTERMINATED)
)

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = frozenset(("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"))


def _pick_core() -> tuple[ScanCore, IndexCore | None, str]:
    module = compiled("pacs.dicom._cscan")
    if module is not None:
        return module.scan_core, module.index_core, "cython"
    return _pyscan.scan_core, None, "python"


_core, _index_core, IMPLEMENTATION = _pick_core()


class Element(NamedTuple):
    """One top-level data element: ``length`` is 0xFFFFFFFF when undefined."""

    tag: int
    vr: str
    value_offset: int
    length: int


_VR_NAMES: dict[int, str] = {}
_IMPLICIT_VRS: dict[tuple[int, bool], str] = {}


def _vr_name(code: int, tag: int, length: int) -> str:
    if code:
        name = _VR_NAMES.get(code)
        if name is None:
            name = _VR_NAMES[code] = chr(code >> 8) + chr(code & 0xFF)
        return name
    undefined = length == UNDEFINED_LENGTH
    key = (tag, undefined)
    name = _IMPLICIT_VRS.get(key)
    if name is None:
        name = _IMPLICIT_VRS[key] = _dictionary_vr(tag, undefined)
    return name


def _dictionary_vr(tag: int, undefined: bool) -> str:
    """VR of an implicit VR element: the dictionary's (first choice when ambiguous)."""
    if tag & 0xFFFF == 0:
        return "UL"  # group length
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "SQ" if undefined else "UN"
    return vr[:2]


class ElementTable(Sequence[Element]):
    """Top-level elements of a scanned dataset.

    ``buffer`` is the object the offsets refer to (the inflated bytes for deflated syntaxes),
    ``stop_offset`` the offset of the first tag >= the stop tag (None when the dataset ended
    first), ``raw`` the flat ``[tag, vr_code, value_offset, length, ...]`` list of the loop
    (the compiled loop hands over an ``array.array``; the list is made on first use).
    """

    __slots__ = ("_flat", "_list", "buffer", "explicit", "little_endian", "stop_offset")

    def __init__(
        self,
        raw: MutableSequence[int],
        buffer: Buffer,
        *,
        explicit: bool = True,
        little_endian: bool = True,
        stop_offset: int | None = None,
    ) -> None:
        self._flat = raw
        self._list: list[int] | None = raw if isinstance(raw, list) else None
        self.buffer = buffer
        self.explicit = explicit
        self.little_endian = little_endian
        self.stop_offset = stop_offset

    @property
    def raw(self) -> list[int]:
        if self._list is None:
            self._list = list(self._flat)
        return self._list

    def __len__(self) -> int:
        return len(self._flat) // 4

    @overload
    def __getitem__(self, index: int) -> Element: ...
    @overload
    def __getitem__(self, index: slice) -> list[Element]: ...
    def __getitem__(self, index: int | slice) -> Element | list[Element]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("element index out of range")
        tag, code, offset, length = self._flat[4 * index : 4 * index + 4]
        return Element(tag, _vr_name(code, tag, length), offset, length)

    def __iter__(self) -> Iterator[Element]:
        raw = self._flat
        for i in range(0, len(raw), 4):
            tag, code, offset, length = raw[i : i + 4]
            yield Element(tag, _vr_name(code, tag, length), offset, length)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ElementTable):
            return NotImplemented
        return (self.raw, self.stop_offset) == (other.raw, other.stop_offset)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<ElementTable {len(self)} elements, stop_offset={self.stop_offset}>"

    @property
    def tags(self) -> list[int]:
        return list(self._flat[0::4])

    def find(self, tag: int) -> Element | None:
        """The last element with ``tag``, or None."""
        tags = self._flat[0::4]
        try:
            i = len(tags) - 1 - tags[::-1].index(tag)
        except ValueError:
            return None
        return self[i]

    def value(self, tag: int) -> bytes | None:
        """The raw value bytes of ``tag`` (None when absent or of undefined length)."""
        element = self.find(tag)
        if element is None or element.length == UNDEFINED_LENGTH:
            return None
        start = element.value_offset
        return bytes(self.buffer[start : start + element.length])


_SYNTAXES: dict[str, tuple[bool, bool, bool]] = {}


def _syntax(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """(explicit, little endian, deflated) for a transfer syntax UID."""
    known = _SYNTAXES.get(transfer_syntax_uid)
    if known is not None:
        return known
    uid = transfer_syntax_uid.rstrip("\x00 ")
    if uid == _IMPLICIT_LE:
        known = False, True, False
    elif uid == _EXPLICIT_BE:
        known = True, False, False
    else:
        known = True, True, uid in _DEFLATED
    if len(_SYNTAXES) < 256:
        _SYNTAXES[transfer_syntax_uid] = known
    return known


def _as_view(buffer: Buffer) -> Any:
    """A 1-D unsigned-byte view when ``buffer`` is a memoryview of another shape."""
    if isinstance(buffer, memoryview):
        if not buffer.c_contiguous:
            return memoryview(buffer.tobytes())
        if buffer.format != "B" or buffer.ndim != 1:
            return buffer.cast("B")
    return buffer


def _fail(status: int, pos: int, tag: int) -> DicomFormatError:
    return DicomFormatError(_REASONS[status], pos, tag if tag >= 0 else None)


def _inflate_scan(
    core: ScanCore, buffer: Buffer, stop_tag: int, offset: int
) -> tuple[bytearray, MutableSequence[int], int, int, int]:
    """Inflate a raw-deflated dataset only as far as the scan needs it."""
    inflater = zlib.decompressobj(-15)
    source = memoryview(buffer)
    pending: Any = source[offset:]
    out = bytearray()
    limit = 1 << 14  # a typical header fits; grows x4 per retry
    try:
        while True:
            want = limit - len(out)
            chunk = inflater.decompress(pending, want)
            out += chunk
            pending = inflater.unconsumed_tail
            done = inflater.eof or (len(chunk) < want and not pending)
            flat, status, pos, tag = core(out, True, True, stop_tag, 0)
            if status == _pyscan.STOP or done or status not in _RETRY:
                return out, flat, status, pos, tag
            if limit >= MAX_INFLATED:
                raise DicomFormatError("inflated dataset exceeds the size limit", len(out))
            limit = min(limit * 4, MAX_INFLATED)
    except zlib.error as exc:
        raise DicomFormatError(f"invalid deflate stream ({exc})", len(out)) from None
    finally:
        if isinstance(pending, memoryview):
            pending.release()
        source.release()


def scan(
    buffer: Buffer, transfer_syntax_uid: str, stop_tag: int = PIXEL_DATA, offset: int = 0
) -> ElementTable:
    """Element table of the top-level elements of the dataset at ``buffer[offset:]``.

    Stops before the first top-level tag >= ``stop_tag`` (``0x100000000``: read to the end).
    Raises :class:`~pacs.errors.DicomFormatError` on malformed input (module docstring).
    """
    return _scan(_core, buffer, transfer_syntax_uid, stop_tag, offset)


def _prepare(
    buffer: Buffer, transfer_syntax_uid: str, stop_tag: int, offset: int
) -> tuple[Any, bool, bool, bool]:
    """(view, explicit, little endian, deflated) after checking the arguments."""
    explicit, little, deflated = _syntax(transfer_syntax_uid)
    if not 0 <= stop_tag <= 0x100000000:
        raise ValueError(f"stop tag out of range: {stop_tag:#x}")
    view = _as_view(buffer)  # the buffer itself unless a memoryview of other items
    if not 0 <= offset <= len(view):
        raise ValueError(f"offset {offset} outside the buffer of {len(view)} bytes")
    return view, explicit, little, deflated


def _scan(
    core: ScanCore, buffer: Buffer, transfer_syntax_uid: str, stop_tag: int, offset: int
) -> ElementTable:
    view, explicit, little, deflated = _prepare(buffer, transfer_syntax_uid, stop_tag, offset)
    target: Buffer = view
    if deflated:
        target, flat, status, pos, tag = _inflate_scan(core, view, stop_tag, offset)
    else:
        flat, status, pos, tag = core(view, explicit, little, stop_tag, offset)
    if status > _pyscan.STOP:
        raise _fail(status, pos, tag)
    return ElementTable(
        flat,
        target,
        explicit=explicit,
        little_endian=little,
        stop_offset=pos if status == _pyscan.STOP else None,
    )


def _keyword_vr(keyword: str) -> str:
    return str(dictionary_VR(keyword_dict[keyword]))


_INDEX_TAGS: dict[int, tuple[str, str]] = {
    keyword_dict[kw]: (kw, _keyword_vr(kw)) for kw in INDEX_KEYWORDS
}
_INDEX_TAG_SET = frozenset(_INDEX_TAGS)
_INDEX_TAG_ORDER = sorted(_INDEX_TAGS)
_STRING_VR_CODES = {(ord(vr[0]) << 8) | ord(vr[1]): vr for vr in STRING_VRS}
_SQ_CODE = 0x5351
# VRs decoded as Latin-1 with trailing spaces and NULs stripped (pydicom's multi_string)
_PLAIN_VRS = frozenset({"AS", "CS", "DA", "DT", "TM", "UI", "UR"})
_SPECIFIC_CHARACTER_SET = 0x00080005


def index_attributes(table: ElementTable) -> dict[str, str]:
    """Keyword -> decoded string for every :data:`INDEX_KEYWORDS` element in ``table``.

    Absent elements are omitted, so are sequences and undefined-length values. The Specific
    Character Set is honoured; trailing padding is stripped; multiple values stay joined by
    ``\\``; the last occurrence of a repeated tag wins. Never raises.
    """
    raw = table._flat
    tags = list(raw[0::4])
    if tags == sorted(tags):
        # The usual case: ascending tags, so bisect finds the last occurrence of each.
        hits = []
        for tag in _INDEX_TAG_ORDER:
            i = bisect_right(tags, tag) - 1
            if i >= 0 and tags[i] == tag:
                hits.append(4 * i)
    else:
        last = len(tags) - 1
        reversed_tags = tags[::-1]
        hits = [
            4 * (last - reversed_tags.index(tag))
            for tag in sorted(_INDEX_TAG_SET.intersection(tags))
        ]
    buf = table.buffer
    result: dict[str, str] = {}
    encodings = DEFAULT_ENCODINGS
    for i in hits:  # in tag order, so (0008,0005) comes first
        tag, code, start, length = raw[i : i + 4]
        if length == UNDEFINED_LENGTH:
            continue
        keyword, vr = _INDEX_TAGS[tag]
        if code:
            explicit_vr = _STRING_VR_CODES.get(code)
            if explicit_vr is not None:
                vr = explicit_vr
            elif code == _SQ_CODE:
                continue
        value = bytes(buf[start : start + length])
        if vr in _PLAIN_VRS:
            text = value.decode("latin-1").rstrip(" \x00")
            if tag == _SPECIFIC_CHARACTER_SET:
                encodings = python_encodings(text)
            result[keyword] = text
        else:
            result[keyword] = decode_value(vr, value, encodings)
    return result


def read_index_attributes(
    buffer: Buffer, transfer_syntax_uid: str, *, stop_tag: int = PIXEL_DATA, offset: int = 0
) -> dict[str, str]:
    """:func:`index_attributes` of :func:`scan`: the index record of a bare dataset.

    ``offset`` is where the dataset starts in ``buffer`` (e.g. after the Part-10 header).
    Raises only :class:`~pacs.errors.DicomFormatError` on malformed input.
    """
    return _read_index(_core, _index_core, buffer, transfer_syntax_uid, stop_tag, offset)


def _read_index(
    core: ScanCore,
    index_core: IndexCore | None,
    buffer: Buffer,
    transfer_syntax_uid: str,
    stop_tag: int,
    offset: int,
) -> dict[str, str]:
    """The index record by ``index_core`` (the compiled fast path) or via the table."""
    if index_core is None:
        return index_attributes(_scan(core, buffer, transfer_syntax_uid, stop_tag, offset))
    view, explicit, little, deflated = _prepare(buffer, transfer_syntax_uid, stop_tag, offset)
    if deflated:
        # Inflate as far as the scan needs, then walk the inflated bytes once more (cheap).
        view, _flat, status, pos, tag = _inflate_scan(core, view, stop_tag, offset)
        if status > _pyscan.STOP:
            raise _fail(status, pos, tag)
        offset = 0
    record, status, pos, tag = index_core(view, explicit, little, stop_tag, offset, _INDEX_SPEC)
    if record is None:
        raise _fail(status, pos, tag)
    return record


def _index_spec() -> Any:
    """The compiled fast path's description of the index tags (None without the extension)."""
    try:
        from pacs.dicom import _cscan
    except ImportError:
        return None
    return _cscan.IndexSpec(
        _INDEX_TAG_ORDER,
        [_INDEX_TAGS[tag][0] for tag in _INDEX_TAG_ORDER],
        [_INDEX_TAGS[tag][1] for tag in _INDEX_TAG_ORDER],
        sorted(STRING_VRS),
        decode_value,
        charset_info,
        DEFAULT_CHARSET_INFO,
        _SPECIFIC_CHARACTER_SET,
    )


_INDEX_SPEC = _index_spec()
