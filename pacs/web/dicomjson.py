"""The DICOM JSON Model (PS3.18 Annex F) for index rows: keyword -> str in, JSON objects out.

Values come from the index as the C-FIND encoder sees them (multiple values joined by a
backslash, PN as ``Family^Given``). VRs are pydicom's dictionary VRs (an ambiguous "US or SS"
reads as US). Numbers become JSON numbers (IS, DS, US, SS, UL, SL, FL, FD, SV, UV), PN values
``{"Alphabetic": ...}``, empty values an attribute without "Value". Binary values are never in
the index; WADO-RS metadata adds a ``BulkDataURI`` for the Pixel Data of image instances
(:func:`has_pixel_data`, decided from the SOP Class alone so that no file is opened) and
:func:`binary_element` gives small values inline (``InlineBinary``, base64).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag
from pydicom.uid import UID

__all__ = ["INLINE_BINARY_LIMIT", "MEDIA_TYPE", "binary_element", "dumps", "dumps_datasets",
           "has_pixel_data", "keyword_of", "tag_key", "to_json", "vr_of"]

MEDIA_TYPE = "application/dicom+json"

INLINE_BINARY_LIMIT = 1024  # bytes: larger binary values are given by BulkDataURI
_INTEGER_VRS = frozenset(("IS", "US", "SS", "UL", "SL", "SV", "UV"))
_FLOAT_VRS = frozenset(("DS", "FL", "FD"))


@lru_cache(maxsize=1024)
def tag_key(keyword: str) -> str | None:
    """The 8 upper-case hex digits of a keyword's tag; None when unknown."""
    tag = keyword_dict.get(keyword)
    return None if tag is None else f"{tag:08X}"


@lru_cache(maxsize=1024)
def vr_of(keyword: str) -> str:
    tag = keyword_dict.get(keyword)
    if tag is None:
        return "UN"
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return vr[:2] if vr else "UN"


def keyword_of(name: str) -> str | None:
    """A keyword (``PatientName``) or a tag (``00100010``, ``0010,0010``) as a known keyword."""
    if name in keyword_dict:
        return name
    digits = name.replace(",", "").replace("(", "").replace(")", "")
    if len(digits) == 8:
        try:
            tag = int(digits, 16)
        except ValueError:
            return None
        keyword = keyword_for_tag(tag)
        return keyword or None
    return None


def _number(vr: str, text: str) -> int | float | None:
    text = text.strip()
    if not text:
        return None
    try:
        if vr in _INTEGER_VRS:
            return int(text)
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def element(keyword: str, value: str) -> dict[str, Any]:
    """One attribute in the JSON model: {"vr": ..., "Value": [...]}."""
    vr = vr_of(keyword)
    out: dict[str, Any] = {"vr": vr}
    if value == "":
        return out
    if vr == "SQ":
        return out  # sequences are not in the index
    # Single-valued text VRs: a backslash is a character there, not a separator.
    values: list[Any] = [value] if vr in ("LT", "ST", "UT", "UR") else value.split("\\")
    if vr == "PN":
        out["Value"] = [{"Alphabetic": v} if v else None for v in values]
    elif vr in _INTEGER_VRS or vr in _FLOAT_VRS:
        out["Value"] = [_number(vr, v) for v in values]
    elif vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return out  # bulk data is not in the index
    else:
        out["Value"] = [v if v else None for v in values]
    return out


def to_json(row: Mapping[str, str], extra: Iterable[tuple[str, dict[str, Any]]] = ()) -> \
        dict[str, Any]:
    """One data set of the JSON model, tags in ascending order; unknown keywords skipped."""
    items: list[tuple[str, dict[str, Any]]] = []
    for keyword, value in row.items():
        if keyword == "QueryRetrieveLevel":
            continue
        key = tag_key(keyword)
        if key is None:
            continue
        if keyword == "SpecificCharacterSet" and not value:
            continue
        items.append((key, element(keyword, value)))
    items.extend(extra)
    return dict(sorted(items))


@lru_cache(maxsize=256)
def has_pixel_data(sop_class_uid: str) -> bool:
    """True for the SOP Classes whose instances carry Pixel Data (the image storage classes,
    segmentations); False for SR, presentation states, waveforms, documents, RT plans..."""
    name = UID(sop_class_uid).name if sop_class_uid else ""
    if not name.endswith("Storage") and not name.endswith("Storage - For Presentation") \
            and not name.endswith("Storage - For Processing"):
        return False
    return "Image" in name or name.startswith(("Segmentation", "Label Map Segmentation"))


def binary_element(vr: str, value: bytes, uri: str,
                   limit: int = INLINE_BINARY_LIMIT) -> dict[str, Any]:
    """A binary attribute (OB, OW, OF, UN ...): ``InlineBinary`` up to ``limit`` bytes, else
    a ``BulkDataURI`` where the value can be retrieved."""
    if len(value) <= limit:
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    return {"vr": vr, "BulkDataURI": uri}


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(data: Any) -> bytes:
    return _encode(data).encode("utf-8")


@lru_cache(maxsize=16384)
def _encoded(keyword: str, value: str) -> tuple[str, str] | None:
    """(tag key, ``"TAG":{...}``) of one attribute. Memoized: the patient, study and series
    attributes repeat in every instance of a study's metadata."""
    key = tag_key(keyword)
    return None if key is None else (key, f'"{key}":{_encode(element(keyword, value))}')


def _first(item: tuple[str, str]) -> str:
    return item[0]


def dumps_datasets(datasets: Iterable[tuple[Mapping[str, str],
                                            Iterable[tuple[str, dict[str, Any]]]]]) -> bytes:
    """``dumps([to_json(row, extra) for row, extra in datasets])``, the same bytes (tags are
    unique in each data set), without building and encoding each element anew: a 500-instance
    study's metadata has 10,000 of them, mostly the same few dozen."""
    out: list[str] = []
    for row, extra in datasets:
        items: list[tuple[str, str]] = []
        for keyword, value in row.items():
            if keyword == "QueryRetrieveLevel" or (keyword == "SpecificCharacterSet"
                                                   and not value):
                continue
            encoded = _encoded(keyword, value)
            if encoded is not None:
                items.append(encoded)
        items.extend((key, f'"{key}":{_encode(elem)}') for key, elem in extra)
        items.sort(key=_first)
        out.append("{" + ",".join([text for _, text in items]) + "}")
    return ("[" + ",".join(out) + "]").encode("utf-8")
