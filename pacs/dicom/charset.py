"""Value decoding for the index: Specific Character Set (PS3.5 Section 6.1) via pydicom.

pydicom's :func:`pydicom.charset.convert_encodings` turns (0008,0005) into Python codecs and
:func:`pydicom.charset.decode_bytes` handles ISO 2022 code extensions. pydicom warns (or raises,
depending on its validation mode) on unknown terms and undecodable bytes; here those cases never
warn nor raise: unknown terms fall back to the default repertoire and undecodable bytes become
U+FFFD, which is what pydicom returns after its warning.

The per-VR rules mirror pydicom's converters (``pydicom.values``) so that the index holds the
same strings pydicom shows: text VRs are decoded with the character set, the others as
ISO 646 / Latin-1; trailing spaces and NULs are stripped; multi-values stay joined by ``\\``.
"""

from __future__ import annotations

import codecs
import functools
import warnings

from pydicom.charset import convert_encodings, decode_bytes

DEFAULT_ENCODINGS: tuple[str, ...] = ("iso8859",)

# Delimiters that reset ISO 2022 code extensions in text values (pydicom.charset.TEXT_VR_DELIMS)
_TEXT_DELIMS = {0x0D, 0x0A, 0x09, 0x0C}
_ESC = b"\x1b"

# VRs whose values are decoded with the Specific Character Set.
TEXT_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})
# VRs the index can represent as a string (an element with another explicit VR, e.g. UN, is
# decoded by its dictionary VR instead).
STRING_VRS = TEXT_VRS | frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})


@functools.lru_cache(maxsize=256)
def python_encodings(specific_character_set: str) -> tuple[str, ...]:
    """Python codecs for a (0008,0005) value (terms joined by ``\\``), never raising."""
    terms = specific_character_set.split("\\")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            encodings = convert_encodings(terms if len(terms) > 1 else terms[0])
        except Exception:  # pydicom in RAISE validation mode: fall back like its WARN mode
            return DEFAULT_ENCODINGS
    checked: list[str] = []
    for name in encodings:
        try:
            codecs.lookup(name)
        except LookupError:
            name = DEFAULT_ENCODINGS[0]
        checked.append(name)
    return tuple(checked) or DEFAULT_ENCODINGS


# codec_mode: how the first codec of a character set decodes bytes without an ISO 2022 escape
LATIN1 = 0  # every byte as the code point of its value
ASCII_COMPATIBLE = 1  # bytes 0-127 as ASCII (others need the codec)
OTHER = 2  # only the codec knows
_LATIN1_TEXT = bytes(range(256)).decode("latin-1")


@functools.lru_cache(maxsize=64)
def codec_mode(encodings: tuple[str, ...]) -> int:
    """:data:`LATIN1`, :data:`ASCII_COMPATIBLE` or :data:`OTHER` for ``encodings[0]``.

    Tells the compiled index decoder when ``decode_text`` of a value without ESC is plain
    Latin-1 decoding (found by decoding every byte value, not from the codec's name).
    """
    try:
        if bytes(range(256)).decode(encodings[0], "replace") == _LATIN1_TEXT:
            return LATIN1
        if bytes(range(128)).decode(encodings[0], "replace") == _LATIN1_TEXT[:128]:
            return ASCII_COMPATIBLE
    except Exception:  # an unusable codec: decode_value copes with it
        pass
    return OTHER


@functools.lru_cache(maxsize=256)
def charset_info(specific_character_set: str) -> tuple[tuple[str, ...], int]:
    """(:func:`python_encodings`, :func:`codec_mode`) of a (0008,0005) value."""
    encodings = python_encodings(specific_character_set)
    return encodings, codec_mode(encodings)


DEFAULT_CHARSET_INFO: tuple[tuple[str, ...], int] = (DEFAULT_ENCODINGS, LATIN1)


def decode_text(value: bytes, encodings: tuple[str, ...]) -> str:
    """Decode a text value with the character set, as pydicom does, without warnings."""
    if _ESC not in value:
        return value.decode(encodings[0], "replace")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return decode_bytes(value, list(encodings), _TEXT_DELIMS)
        except Exception:  # pydicom in RAISE validation mode
            return value.decode(encodings[0], "replace")


def decode_value(vr: str, value: bytes, encodings: tuple[str, ...]) -> str:
    """The index string of one element value, following pydicom's converter for ``vr``."""
    if vr in TEXT_VRS:
        if vr == "PN":
            text = decode_text(value.rstrip(b"\x00 "), encodings)
            if "=" in text:  # drop empty trailing component groups, as pydicom's PersonName
                text = "\\".join(v.rstrip("=") for v in text.split("\\"))
            return text
        text = decode_text(value, encodings)
        if vr in ("ST", "LT", "UT"):
            return text.rstrip("\x00 ")
        if "\\" not in text:
            return text.rstrip("\x00 ")
        return "\\".join(v.rstrip("\x00 ") for v in text.split("\\"))
    text = value.decode("latin-1")
    if vr == "AE" or vr == "IS" or vr == "DS":
        if "\\" not in text:
            return text.strip(" \x00")
        return "\\".join(v.strip(" \x00") for v in text.rstrip(" \x00").split("\\"))
    return text.rstrip(" \x00")
