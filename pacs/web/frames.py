"""Pixel data frames of a stored instance, read from the blob store by range (PS3.18 10.4.1.1.6,
8.7.3): the frames of WADO-RS ``/frames/{list}`` and the PixelData bulk data.

:func:`locate` reads the head of a blob up to the Pixel Data element (in growing steps, never
the pixel data itself) and scans it with :mod:`pacs.dicom.scan`; :func:`read_frame` then reads
one frame: for native pixel data its byte range (frames of BitsAllocated 1 that do not start on
a byte are re-aligned), for encapsulated pixel data its fragments, located with the Extended or
Basic Offset Table or by walking the fragment headers (pydicom's ``get_frame`` over a ranged
reader of the blob). Data sets that cannot be read by range (deflated, big endian) are read
whole with pydicom. :func:`decode_frame` decodes one frame to native bytes (pydicom with the
pylibjpeg plugins; YBR colour becomes RGB, as the transfer syntax conversion does).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pacs.dicom import part10, scan
from pacs.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from pacs.errors import DicomFormatError
from pacs.store.base import BlobStore

__all__ = [
    "FRAME_MEDIA_TYPES",
    "NATIVE_SYNTAXES",
    "OCTET_STREAM",
    "FrameError",
    "PixelInfo",
    "decode_frame",
    "locate",
    "parse_frame_list",
    "read_frame",
]

OCTET_STREAM = "application/octet-stream"
NATIVE_SYNTAXES = frozenset((IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
                             EXPLICIT_VR_BIG_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN))
# PS3.18 Table 8.7.3-5: the media type of a compressed frame sent as stored.
FRAME_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.50": ("image/jpeg",),
    "1.2.840.10008.1.2.4.51": ("image/jpeg",),
    "1.2.840.10008.1.2.4.57": ("image/jpeg",),
    "1.2.840.10008.1.2.4.70": ("image/jpeg",),
    "1.2.840.10008.1.2.4.80": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.81": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.90": ("image/jp2",),
    "1.2.840.10008.1.2.4.91": ("image/jp2",),
    "1.2.840.10008.1.2.4.92": ("image/jpx",),
    "1.2.840.10008.1.2.4.93": ("image/jpx",),
    "1.2.840.10008.1.2.4.201": ("image/jphc",),
    "1.2.840.10008.1.2.4.202": ("image/jphc",),
    "1.2.840.10008.1.2.4.203": ("image/jphc",),
    "1.2.840.10008.1.2.5": ("image/dicom-rle", "image/x-dicom-rle"),
}
MAX_FRAMES_PER_REQUEST = 10_000
HEAD = 64 * 1024  # first read of a blob; grown x4 until the elements before Pixel Data fit

_RANGED = frozenset((IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, *FRAME_MEDIA_TYPES))
_ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES = 0x00280010, 0x00280011, 0x00280002, 0x00280100, \
    0x00280008
_EXTENDED_OFFSETS, _EXTENDED_LENGTHS = 0x7FE00001, 0x7FE00002
_ITEM, _SEQUENCE_END = 0xE000FFFE, 0xE0DDFFFE  # as read little endian ("<I")


class FrameError(Exception):
    """No such frame, no pixel data, or pixel data that cannot be read or decoded."""


def parse_frame_list(text: str) -> list[int]:
    """``"1,3,2"`` -> [1, 3, 2] (1-based, order kept); ValueError when malformed."""
    items = text.split(",")
    if len(items) > MAX_FRAMES_PER_REQUEST:
        raise ValueError("too many frame numbers")
    numbers: list[int] = []
    for item in items:
        item = item.strip()
        if not item.isdigit() or not item.isascii() or len(item) > 9:
            raise ValueError(f"not a frame number: {item!r}")
        number = int(item)
        if number < 1:
            raise ValueError("frame numbers start at 1")
        numbers.append(number)
    return numbers


@dataclass(frozen=True, slots=True)
class PixelInfo:
    """Where the Pixel Data of a blob is and the frame geometry."""

    transfer_syntax: str
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int
    value_offset: int  # of the Pixel Data value in the blob (-1: read whole with pydicom)
    length: int  # of the value; scan.UNDEFINED_LENGTH when encapsulated
    extended: tuple[bytes, bytes] | None = None  # Extended Offset Table and lengths

    @property
    def encapsulated(self) -> bool:
        return self.transfer_syntax not in NATIVE_SYNTAXES

    @property
    def frame_bits(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated


def _number(table: scan.ElementTable, tag: int, default: int) -> int:
    raw = table.value(tag)
    if raw is None or not raw:
        return default
    element = table.find(tag)
    if element is not None and element.vr in ("IS", "DS"):  # NumberOfFrames is IS text
        try:
            return int(float(raw.decode("ascii").strip(" \x00").split("\\")[0] or default))
        except ValueError:
            return default
    if len(raw) >= 2:
        return int(struct.unpack_from("<H", raw)[0])
    return default


def locate(store: BlobStore, location: str, transfer_syntax: str, size: int) -> PixelInfo:
    """Blocking: the Pixel Data of a stored instance; FrameError when it has none."""
    if transfer_syntax not in _RANGED:
        return _locate_whole(store.get(location), transfer_syntax)
    want = HEAD
    while True:
        head = store.get(location, 0, want)
        complete = len(head) >= size
        try:
            _meta, offset = part10.read_file_meta(head)
            table = scan.scan(head, transfer_syntax, scan.PIXEL_DATA, offset)
        except DicomFormatError as exc:
            if complete:
                raise FrameError(f"malformed data set: {exc}") from None
            want *= 4
            continue
        stop = table.stop_offset
        if (stop is None or stop + 12 > len(head)) and not complete:
            want *= 4
            continue
        break
    if stop is None or stop + 8 > len(head):
        raise FrameError("the instance has no pixel data")
    tag = (struct.unpack_from("<H", head, stop)[0] << 16) | struct.unpack_from("<H", head,
                                                                             stop + 2)[0]
    if tag != scan.PIXEL_DATA:
        raise FrameError("the instance has no pixel data")
    if table.explicit and head[stop + 4:stop + 6].isalpha():
        length = struct.unpack_from("<I", head, stop + 8)[0]
        value_offset = stop + 12
    else:
        length = struct.unpack_from("<I", head, stop + 4)[0]
        value_offset = stop + 8
    extended = None
    offsets, lengths = table.value(_EXTENDED_OFFSETS), table.value(_EXTENDED_LENGTHS)
    if offsets and lengths:
        extended = (offsets, lengths)
    info = PixelInfo(transfer_syntax, _number(table, _ROWS, 0), _number(table, _COLUMNS, 0),
                     _number(table, _SAMPLES, 1), _number(table, _BITS, 0),
                     max(1, _number(table, _FRAMES, 1)), value_offset, length, extended)
    _check(info, size)
    return info


def _check(info: PixelInfo, size: int) -> None:
    if info.encapsulated:
        if info.length != scan.UNDEFINED_LENGTH:
            raise FrameError("encapsulated pixel data of defined length")
        return
    if info.frame_bits <= 0:
        raise FrameError("Rows, Columns or Bits Allocated missing")
    needed = (info.frames * info.frame_bits + 7) // 8
    if info.length == scan.UNDEFINED_LENGTH or info.length < needed or \
            (info.value_offset >= 0 and info.value_offset + needed > size):
        raise FrameError(f"pixel data shorter than {info.frames} frames")


def _locate_whole(data: bytes, transfer_syntax: str) -> PixelInfo:
    """Deflated and big endian data sets: the geometry from pydicom (value_offset -1)."""
    ds = _dataset(data)
    if "PixelData" not in ds:
        raise FrameError("the instance has no pixel data")
    info = PixelInfo(transfer_syntax, int(ds.get("Rows", 0) or 0),
                     int(ds.get("Columns", 0) or 0), int(ds.get("SamplesPerPixel", 1) or 1),
                     int(ds.get("BitsAllocated", 0) or 0),
                     max(1, int(ds.get("NumberOfFrames", 1) or 1)), -1,
                     len(ds.PixelData) if transfer_syntax in NATIVE_SYNTAXES
                     else scan.UNDEFINED_LENGTH)
    _check(info, len(data))
    return info


def _dataset(data: bytes):  # type: ignore[no-untyped-def]
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises all sorts
        raise FrameError(f"cannot read the data set: {type(exc).__name__}: {exc}") from None


class _BlobReader(io.RawIOBase):
    """A seekable read-only file over one blob: each read is a ranged read of the store."""

    def __init__(self, store: BlobStore, location: str, size: int) -> None:
        self._store, self._location, self._size, self._pos = store, location, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Sequence[int]) -> int:  # type: ignore[override]
        view = memoryview(buffer)  # type: ignore[arg-type]
        data = self._store.get(self._location, self._pos, len(view))
        view[:len(data)] = data
        self._pos += len(data)
        return len(data)


def _native_slice(data: bytes, start_bit: int, bits: int) -> bytes:
    """``bits`` bits from bit ``start_bit`` of ``data`` (BitsAllocated 1: LSB first)."""
    import numpy as np

    unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    return np.packbits(unpacked[start_bit:start_bit + bits], bitorder="little").tobytes()


def read_frame(store: BlobStore, location: str, size: int, info: PixelInfo,
               number: int) -> bytes:
    """Blocking: frame ``number`` (1-based) as stored: native bytes or the compressed frame."""
    if not 1 <= number <= info.frames:
        raise FrameError(f"no frame {number}: the instance has {info.frames}")
    index = number - 1
    if info.value_offset < 0:
        return _whole_frame(store.get(location), info, index)
    if not info.encapsulated:
        bits = info.frame_bits
        start_bit = index * bits
        first = info.value_offset + start_bit // 8
        if bits % 8 == 0:
            return store.get(location, first, bits // 8)
        shift = start_bit % 8
        data = store.get(location, first, (shift + bits + 7) // 8)
        return _native_slice(data, shift, bits)
    from pydicom.encaps import get_frame

    reader = io.BufferedReader(_BlobReader(store, location, size), 256 * 1024)
    try:
        reader.seek(info.value_offset)
        return get_frame(reader, index, number_of_frames=info.frames,
                         extended_offsets=info.extended)
    except (ValueError, KeyError, struct.error) as exc:
        raise FrameError(f"cannot find frame {number}: {exc}") from None
    finally:
        reader.close()


def _whole_frame(data: bytes, info: PixelInfo, index: int) -> bytes:
    import numpy as np

    ds = _dataset(data)
    if info.encapsulated:
        from pydicom.encaps import get_frame

        try:
            return get_frame(ds.PixelData, index, number_of_frames=info.frames)
        except ValueError as exc:
            raise FrameError(f"cannot find frame {index + 1}: {exc}") from None
    value = bytes(ds.PixelData)
    if info.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN and info.bits_allocated > 8:
        # frames go out little endian (Explicit VR Little Endian)
        width = info.bits_allocated // 8
        value = np.frombuffer(value[:len(value) // width * width],
                              dtype=f">u{width}").astype(f"<u{width}").tobytes()
    bits = info.frame_bits
    if bits % 8 == 0:
        return value[index * bits // 8:(index + 1) * bits // 8]
    return _native_slice(value, index * bits, bits)


def decode_frame(data: bytes, number: int) -> bytes:
    """Blocking: frame ``number`` (1-based) of a Part-10 file decoded to native little endian
    bytes (colour interleaved, YBR as RGB)."""
    from pydicom.pixels.utils import pixel_array

    try:
        array = pixel_array(io.BytesIO(data), index=number - 1)
    except Exception as exc:  # the decoders raise all sorts
        raise FrameError(f"cannot decode frame {number}: {type(exc).__name__}: {exc}") \
            from None
    if array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return bytes(array.tobytes())
