"""C-FIND identifiers (PS3.4 C.4.1.1.3) to and from keyword -> text maps, with pydicom.

Identifiers are small and rare next to stored instances, so pydicom reads and writes them: it
knows every VR and character set. Values are kept as the text the Standard's matching rules
work on (multi-values joined by ``\\``; person names as ``Family^Given``).
"""

from __future__ import annotations

import warnings
from io import BytesIO

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue

from pacs.dicom import uids
from pacs.dicom.scan import scan
from pacs.errors import DicomFormatError

_CHARSET_TAG = 0x00080005


def _syntax(transfer_syntax_uid: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a native transfer syntax."""
    if transfer_syntax_uid == uids.IMPLICIT_VR_LITTLE_ENDIAN:
        return True, True
    if transfer_syntax_uid == uids.EXPLICIT_VR_BIG_ENDIAN:
        return False, False
    return False, True


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def decode_identifier(data: bytes, transfer_syntax_uid: str) -> dict[str, str]:
    """Keyword -> value text of every standard element of an identifier (sequences and
    private elements are left out: the index does not match on them)."""
    implicit, little = _syntax(transfer_syntax_uid)
    # Our scanner first: pydicom reads truncated or garbled bytes without complaint.
    scan(data, transfer_syntax_uid, stop_tag=0x100000000)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # range values like '2020-' are not valid DA
            ds = read_dataset(BytesIO(data), implicit, little)
            ds.decode()  # apply (0008,0005) to the text values
        result: dict[str, str] = {}
        for element in ds:
            keyword = keyword_for_tag(element.tag)
            if not keyword or element.VR == "SQ" or element.tag.is_private:
                continue
            # UI values are NUL-padded to an even length; text values space-padded.
            result[keyword] = _text(element.value).strip(" \x00")
        return result
    except DicomFormatError:
        raise
    except Exception as exc:  # pydicom raises many kinds on garbage
        raise DicomFormatError(f"cannot read the identifier: {exc}") from exc


def encode_identifier(values: dict[str, str], transfer_syntax_uid: str) -> bytes:
    """An identifier data set holding ``values`` (keyword -> text), in the given syntax."""
    implicit, little = _syntax(transfer_syntax_uid)
    ds = Dataset()
    if "SpecificCharacterSet" in values:
        # Always answered: empty means the default repertoire (PS3.4 C.4.1.1.3.1).
        ds.add(DataElement(_CHARSET_TAG, "CS", values["SpecificCharacterSet"] or None))
    for keyword, text in values.items():
        tag = tag_for_keyword(keyword)
        if tag is None or tag == _CHARSET_TAG:
            continue
        vr = dictionary_VR(tag)
        if vr == "SQ":
            continue
        value: object = text
        if vr in ("US", "UL", "SS", "SL", "FL", "FD") and text:
            # Numbers the index keeps as text: a malformed one is sent empty, not invented.
            try:
                value = [float(v) if vr.startswith("F") else int(v) for v in text.split("\\")]
            except ValueError:
                value = None
        elif "\\" in text:
            value = text.split("\\")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.add(DataElement(tag, vr, value if text else None))
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values are sent as the index holds them
        write_dataset(buffer, ds)
    return buffer.getvalue()
