"""Transfer syntax conversion of whole data sets, for sending to peers (PS3.5 Sections 7, 8, A).

:func:`plan_syntax` picks the syntax to send in: the stored one when the peer accepted it, else
Explicit or Implicit VR Little Endian when :func:`can_convert` says we can get there.
:func:`convert_dataset` does the conversion of a bare data set held in memory:

* Implicit VR LE, Explicit VR LE and Explicit VR BE to Implicit/Explicit VR LE natively: the
  top-level elements come from :func:`pacs.dicom.scan.scan` (which also validates the whole
  buffer), sequences are converted recursively by a small walker here. For implicit input the
  VR comes from the dictionary, ambiguous VRs resolved as PS3.5 and pydicom do (Pixel Data,
  Overlay and Waveform Data OW; "US or SS" by the nearest Pixel Representation; LUT Data US
  for a single entry, else OW); private tags are UN (private creators LO). An explicit VR whose
  16-bit length cannot hold the value becomes UN. UN of undefined length (whose content is
  Implicit VR LE by definition) is copied as is. Lengths of defined-length sequences and items,
  and group lengths (gggg,0000), are recomputed. Big endian numeric values are byte-swapped.
* Deflated Explicit VR LE: raw inflate (zlib, wbits -15), then as Explicit VR LE.
* Encapsulated (compressed) syntaxes: decoded by pydicom (``Dataset.decompress`` with the
  pylibjpeg plugins: JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE) into
  Explicit VR LE, keeping the SOP Instance UID; then to Implicit VR LE natively if asked.

Anything else raises :class:`ConversionError`; malformed input raises
:class:`~pacs.errors.DicomFormatError`.
"""

from __future__ import annotations

import io
import struct
import sys
import warnings
import zlib
from array import array
from collections.abc import Sequence
from functools import lru_cache

from pacs.dicom import scan as _scan
from pacs.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from pacs.errors import DicomFormatError, PacsError

__all__ = ["ConversionError", "can_convert", "convert_dataset", "plan_syntax"]

_NATIVE_IN = frozenset(
    (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN)
)
_TARGETS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)  # in order of preference

_LONG_VRS = frozenset(
    ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)
# Byte-swap width of each numeric VR (big endian input).
_SWAP = {"US": "H", "SS": "H", "OW": "H", "AT": "H", "UL": "I", "SL": "I", "FL": "I",
         "OF": "I", "OL": "I", "FD": "Q", "OD": "Q", "SV": "Q", "UV": "Q", "OV": "Q"}  # fmt: skip
_US_SS_TAGS = frozenset((
    0x00189810, 0x00221452, 0x00280104, 0x00280105, 0x00280106, 0x00280107, 0x00280108,
    0x00280109, 0x00280110, 0x00280111, 0x00280120, 0x00280121, 0x00281101, 0x00281102,
    0x00281103, 0x00283002, 0x00409211, 0x00409216, 0x00603004, 0x00603006,
))  # fmt: skip
_PIXEL_REPRESENTATION = 0x00280103
_BITS_ALLOCATED = 0x00280100
_LUT_DATA = 0x00283006
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF

_LE_TAG, _BE_TAG = struct.Struct("<HH"), struct.Struct(">HH")
_LE_U16, _BE_U16 = struct.Struct("<H"), struct.Struct(">H")
_LE_U32, _BE_U32 = struct.Struct("<I"), struct.Struct(">I")
_IMPLICIT_HEADER = struct.Struct("<HHI")
_SHORT_HEADER = struct.Struct("<HH2sH")
_LONG_HEADER = struct.Struct("<HH2sHI")
_ITEM_HEADER = _IMPLICIT_HEADER


class ConversionError(PacsError):
    """The data set cannot be converted to the requested transfer syntax."""


@lru_cache(maxsize=64)
def _decodable(transfer_syntax: str) -> bool:
    """pydicom has a working pixel data decoder for this encapsulated syntax."""
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(transfer_syntax).is_available)
    except Exception:  # NotImplementedError for syntaxes nobody decodes, ImportError...
        return False


def can_convert(from_ts: str, to_ts: str) -> bool:
    """True when :func:`convert_dataset` knows a way from ``from_ts`` to ``to_ts``."""
    if from_ts == to_ts:
        return True
    if to_ts not in _TARGETS:
        return False
    if from_ts in _NATIVE_IN or from_ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return True
    return _decodable(from_ts)


def plan_syntax(stored_ts: str, accepted: Sequence[str]) -> str | None:
    """The accepted transfer syntax to send a ``stored_ts`` instance in, None if impossible.

    The stored syntax when accepted (no conversion), else Explicit VR LE, else Implicit VR LE,
    as far as we can convert to them.
    """
    if stored_ts in accepted:
        return stored_ts
    for target in _TARGETS:
        if target in accepted and can_convert(stored_ts, target):
            return target
    return None


def convert_dataset(dataset: bytes | bytearray | memoryview, from_ts: str, to_ts: str) -> bytes:
    """A bare data set in ``from_ts`` re-encoded in ``to_ts`` (see the module docstring)."""
    if from_ts == to_ts:
        return bytes(dataset)
    if to_ts not in _TARGETS:
        raise ConversionError(f"cannot convert to transfer syntax {to_ts}")
    explicit_out = to_ts == EXPLICIT_VR_LITTLE_ENDIAN
    if from_ts in _NATIVE_IN:
        return _native(dataset, from_ts, explicit_out)
    if from_ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        inflated = _inflate(dataset)
        if explicit_out:
            _scan.scan(inflated, EXPLICIT_VR_LITTLE_ENDIAN, stop_tag=0x100000000)  # validate
            return inflated
        return _native(inflated, EXPLICIT_VR_LITTLE_ENDIAN, False)
    if not _decodable(from_ts):
        raise ConversionError(f"no decoder for transfer syntax {from_ts}")
    explicit = _decompress(dataset, from_ts)
    return explicit if explicit_out else _native(explicit, EXPLICIT_VR_LITTLE_ENDIAN, False)


def _inflate(dataset: bytes | bytearray | memoryview) -> bytes:
    inflater = zlib.decompressobj(-15)
    try:
        return inflater.decompress(dataset) + inflater.flush()
    except zlib.error as exc:
        raise DicomFormatError(f"invalid deflate stream ({exc})") from None


def _decompress(dataset: bytes | bytearray | memoryview, from_ts: str) -> bytes:
    """Decode the pixel data with pydicom; the data set in Explicit VR LE."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from pacs.dicom.part10 import file_meta

    data = file_meta("1.2", "1.2", from_ts) + bytes(dataset)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's remarks on odd headers: not failures
            ds = pydicom.dcmread(io.BytesIO(data))
            if "PixelData" in ds:
                ds.decompress(generate_instance_uid=False)
            out = DicomBytesIO()
            out.is_little_endian = True
            out.is_implicit_VR = False
            del ds.file_meta
            write_dataset(out, ds)
    except Exception as exc:  # pydicom and the codecs raise all sorts
        raise ConversionError(
            f"cannot decompress {from_ts}: {type(exc).__name__}: {exc}"
        ) from exc
    return out.getvalue()


def _native(dataset: bytes | bytearray | memoryview, from_ts: str, explicit_out: bool) -> bytes:
    table = _scan.scan(dataset, from_ts, stop_tag=0x100000000)
    return _Converter(table, explicit_out).run()


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str:
    """The dictionary VR of a tag as written (ambiguous ones unresolved), 'UN' if unknown."""
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0:
        return "UL"
    if group & 1:
        return "LO" if 0x0010 <= element <= 0x00FF else "UN"
    from pydicom.datadict import dictionary_VR

    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return vr if vr else "UN"


def _implicit_vr(tag: int, length: int, pixel_rep: int) -> str:
    """The VR to write for an element read without one (PS3.5 A.1, pydicom's choices)."""
    if length == _UNDEFINED:
        return "OB" if tag == _PIXEL_DATA else "SQ"
    vr = _dictionary_vr(tag)
    if len(vr) == 2:
        return vr
    if vr == "US or SS":
        return "SS" if pixel_rep == 1 else "US"
    if tag == _LUT_DATA or vr == "US or SS or OW":
        return "US" if length == 2 else "OW"
    return "OW"  # "OB or OW": Pixel, Overlay, Waveform Data... are OW in implicit VR


class _Converter:
    """Walks one data set and re-encodes it; output parts are views of the input."""

    def __init__(self, table: _scan.ElementTable, explicit_out: bool) -> None:
        self.table = table
        self.buf = memoryview(table.buffer).cast("B")
        self.explicit_in = table.explicit
        self.little = table.little_endian
        self.explicit_out = explicit_out
        self.tag_struct = _LE_TAG if self.little else _BE_TAG
        self.u16 = _LE_U16 if self.little else _BE_U16
        self.u32 = _LE_U32 if self.little else _BE_U32
        self.pixel_swap = "H"

    def run(self) -> bytes:
        table, raw = self.table, self.table.raw
        pixel_rep = 0
        pr = table.find(_PIXEL_REPRESENTATION)
        if pr is not None and pr.length == 2:
            pixel_rep = self.u16.unpack_from(self.buf, pr.value_offset)[0]
        bits = table.find(_BITS_ALLOCATED)
        if bits is not None and bits.length == 2:
            # Big endian 32/64-bit pixel data is swapped by its sample width (as pydicom and
            # dcmtk read it), not by 16-bit words.
            self.pixel_swap = {32: "I", 64: "Q"}.get(
                self.u16.unpack_from(self.buf, bits.value_offset)[0], "H"
            )
        elements: list[tuple[int, list[bytes | memoryview], int]] = []
        for index, (tag, vr, offset, length) in enumerate(table):
            explicit = raw[4 * index + 1] != 0
            vr_in = vr if explicit else None
            parts, size, _ = self._element(tag, vr_in, offset, length, pixel_rep)
            elements.append((tag, parts, size))
        return b"".join(_flatten(elements))

    # -- nested data sets ------------------------------------------------------------------

    def _fail(self, reason: str, offset: int, tag: int | None = None) -> DicomFormatError:
        return DicomFormatError(reason, offset, tag)

    def _dataset(
        self, pos: int, end: int, explicit: bool, until_delimiter: bool, pixel_rep: int
    ) -> tuple[list[bytes | memoryview], int, int]:
        """Convert the elements in ``buf[pos:end]`` (or up to an Item Delimitation Item):
        (parts, size, position after the data set)."""
        buf = self.buf
        elements: list[tuple[int, list[bytes | memoryview], int]] = []
        first = True
        while True:
            if pos >= end:
                if until_delimiter:
                    raise self._fail("item is not terminated", pos)
                break
            if end - pos < 8:
                raise self._fail("truncated element header", pos)
            group, elem = self.tag_struct.unpack_from(buf, pos)
            tag = (group << 16) | elem
            if tag == _ITEM_END:
                if not until_delimiter:
                    raise self._fail("unexpected item delimiter", pos, tag)
                pos += 8
                break
            if group == 0xFFFE:
                raise self._fail("unexpected item or delimiter tag", pos, tag)
            vr_bytes = bytes(buf[pos + 4 : pos + 6])
            element_explicit = explicit and vr_bytes.isalpha() and vr_bytes.isupper()
            if first and explicit and not element_explicit:
                explicit = False  # the explicit-to-implicit switch some writers produce
            first = False
            vr_in: str | None
            if element_explicit:
                vr_in = vr_bytes.decode("ascii")
                if vr_in in _LONG_VRS:
                    if end - pos < 12:
                        raise self._fail("truncated element header", pos, tag)
                    length = self.u32.unpack_from(buf, pos + 8)[0]
                    value = pos + 12
                else:
                    length = self.u16.unpack_from(buf, pos + 6)[0]
                    value = pos + 8
            else:
                vr_in = None
                length = self.u32.unpack_from(buf, pos + 4)[0]
                value = pos + 8
            if tag == _PIXEL_REPRESENTATION and length == 2 and value + 2 <= end:
                pixel_rep = self.u16.unpack_from(buf, value)[0]
            parts, size, pos = self._element(tag, vr_in, value, length, pixel_rep, end)
            elements.append((tag, parts, size))
        flat = _flatten(elements)
        return flat, sum(len(p) for p in flat), pos

    def _element(
        self, tag: int, vr_in: str | None, value: int, length: int, pixel_rep: int,
        end: int | None = None,
    ) -> tuple[list[bytes | memoryview], int, int]:
        """One element re-encoded: (parts, size, position after its value)."""
        buf = self.buf
        limit = len(buf) if end is None else end
        vr = vr_in if vr_in is not None else _implicit_vr(tag, length, pixel_rep)
        if length == _UNDEFINED:
            if vr == "SQ":
                body, after = self._items(value, limit, None, vr_in is not None, pixel_rep)
            elif vr == "UN":  # content is Implicit VR LE whatever the outer syntax
                body, after = self._items(value, limit, None, False, pixel_rep, keep=True)
            else:  # encapsulated fragments: copied as they are
                body, after = self._fragments(value, limit, tag)
            return self._header(tag, vr, _UNDEFINED, body), 0, after
        stop = value + length
        if stop > limit:
            raise self._fail("element value runs past the end of the buffer", value, tag)
        if vr == "SQ":
            body, _ = self._items(value, stop, stop, vr_in is not None, pixel_rep)
            size = sum(len(p) for p in body)
            return self._header(tag, vr, size, body), 0, stop
        data: bytes | memoryview = buf[value:stop]
        if not self.little and vr in _SWAP:
            swapped = array(self.pixel_swap if tag == _PIXEL_DATA and vr == "OW" else _SWAP[vr])
            if length % swapped.itemsize:
                raise self._fail(f"{vr} value length {length} not a multiple of its width",
                                 value, tag)  # fmt: skip
            swapped.frombytes(data)
            swapped.byteswap()
            data = swapped.tobytes()
        return self._header(tag, vr, length, [data]), 0, stop

    def _header(
        self, tag: int, vr: str, length: int, body: list[bytes | memoryview]
    ) -> list[bytes | memoryview]:
        group, elem = tag >> 16, tag & 0xFFFF
        if not self.explicit_out:
            return [_IMPLICIT_HEADER.pack(group, elem, length), *body]
        if vr not in _LONG_VRS and (length > 0xFFFF or len(vr) != 2 or not vr.isupper()):
            vr = "UN"  # a 16-bit length cannot hold it (or the VR is unusable)
        code = vr.encode("ascii")
        if vr in _LONG_VRS:
            return [_LONG_HEADER.pack(group, elem, code, 0, length), *body]
        return [_SHORT_HEADER.pack(group, elem, code, length), *body]

    def _items(
        self, pos: int, limit: int, stop: int | None, explicit: bool, pixel_rep: int,
        keep: bool = False,
    ) -> tuple[list[bytes | memoryview], int]:
        """Sequence items from ``pos`` to ``stop`` (defined length) or to the Sequence
        Delimitation Item: (converted parts incl. the delimiter, position after)."""
        buf = self.buf
        out: list[bytes | memoryview] = []
        end = limit if stop is None else stop
        converter = self if not keep else _Converter.__new__(_Converter)
        if keep:  # UN of undefined length: Implicit VR LE inside, written back unchanged
            converter.__dict__.update(self.__dict__)
            converter.explicit_out = False
            converter.little = True
            converter.tag_struct, converter.u16, converter.u32 = _LE_TAG, _LE_U16, _LE_U32
        while True:
            if pos >= end:
                if stop is None:
                    raise self._fail("sequence is not terminated", pos)
                return out, pos
            if end - pos < 8:
                raise self._fail("truncated item header", pos)
            group, elem = converter.tag_struct.unpack_from(buf, pos)
            tag = (group << 16) | elem
            length = converter.u32.unpack_from(buf, pos + 4)[0]
            if tag == _SEQ_END:
                if stop is not None:
                    raise self._fail("sequence delimiter in a defined-length sequence", pos)
                out.append(_ITEM_HEADER.pack(0xFFFE, 0xE0DD, 0))
                return out, pos + 8
            if tag != _ITEM:
                raise self._fail("expected an item or a sequence delimiter", pos, tag)
            start = pos + 8
            if length == _UNDEFINED:
                parts, _size, pos = converter._dataset(start, end, explicit, True, pixel_rep)
                out.append(_ITEM_HEADER.pack(0xFFFE, 0xE000, _UNDEFINED))
                out.extend(parts)
                out.append(_ITEM_HEADER.pack(0xFFFE, 0xE00D, 0))
            else:
                if start + length > end:
                    raise self._fail("item runs past the end of its sequence", pos, tag)
                parts, size, _ = converter._dataset(start, start + length, explicit, False,
                                                    pixel_rep)  # fmt: skip
                out.append(_ITEM_HEADER.pack(0xFFFE, 0xE000, size))
                out.extend(parts)
                pos = start + length

    def _fragments(
        self, pos: int, limit: int, tag: int
    ) -> tuple[list[bytes | memoryview], int]:
        """Encapsulated fragments up to the Sequence Delimitation Item, copied unchanged."""
        buf, start = self.buf, pos
        while True:
            if limit - pos < 8:
                raise self._fail("encapsulated value is not terminated", pos, tag)
            group, elem = self.tag_struct.unpack_from(buf, pos)
            length = self.u32.unpack_from(buf, pos + 4)[0]
            item = (group << 16) | elem
            if item == _SEQ_END:
                pos += 8
                break
            if item != _ITEM or length == _UNDEFINED or pos + 8 + length > limit:
                raise self._fail("invalid encapsulated fragment", pos, tag)
            pos += 8 + length
        if not self.little:
            raise ConversionError("encapsulated value in a big endian data set")
        return [buf[start:pos]], pos


def _flatten(
    elements: list[tuple[int, list[bytes | memoryview], int]],
) -> list[bytes | memoryview]:
    """Concatenate element parts, recomputing each group length (gggg,0000) on the way."""
    out: list[bytes | memoryview] = []
    for index, (tag, parts, _size) in enumerate(elements):
        if tag & 0xFFFF == 0 and len(parts) == 2 and len(parts[1]) == 4:
            group = tag >> 16
            total = 0
            for other, other_parts, _ in elements[index + 1 :]:
                if other >> 16 != group:
                    break
                total += sum(len(p) for p in other_parts)
            out.append(parts[0])
            out.append(total.to_bytes(4, "little"))
            continue
        out.extend(parts)
    return out


if sys.byteorder != "little":  # pragma: no cover - array byte swapping assumes it
    raise ImportError("pacs.dicom.convert assumes a little endian host")
