"""Datasets as DICOM JSON (PS3.18 Annex F), with bulk data by reference.

Binary values longer than :data:`BULK_THRESHOLD` bytes are not inlined: they
become a ``BulkDataURI`` under the instance's WADO-RS URL. The URIs are stored
relative to :data:`ROOT_MARK`, which is replaced by the server's own base URL
when metadata is served, so stored metadata survives a change of host name.

This runs once per received instance, so it is on the ingest's hot path.
Values of the common VRs (strings, numbers, tags) go from the file's bytes
straight to JSON with pydicom's own decoding rules; building pydicom elements
first costs ten times as much. Person names, sequences, implicit-VR and
ambiguous elements, and any value those rules do not cover exactly go through
pydicom, so the output is always what ``DataElement.to_json_dict`` gives.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.charset import decode_bytes, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.valuerep import TEXT_VR_DELIMS

BULK_THRESHOLD = 1024
ROOT_MARK = "{{root}}"
UNDEFINED = 0xFFFFFFFF
BYTES_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}

# How pydicom reads each VR's bytes (pydicom.values.converters), for the fast path.
_NUMBERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_SPLIT_THEN_STRIP = {"SH", "LO", "UC"}  # charset text, each value stripped
_SINGLE_TEXT = {"ST", "LT", "UT"}  # charset text, one value
_STRIP_THEN_SPLIT = {"AS", "CS", "DA", "DT", "TM", "UI"}  # ASCII, trailing padding dropped
_TEXT_VRS = _SPLIT_THEN_STRIP | _SINGLE_TEXT | _STRIP_THEN_SPLIT | {"AE", "UR", "IS", "DS"}
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def instance_path(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The WADO-RS path of an instance below the DICOMweb root (PS3.18 §10.4)."""
    return f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def to_json(ds: Dataset, bulk_base: str, bulk: dict[str, tuple[int, int]], *,
            path: Iterable[str] = ()) -> dict[str, Any]:
    """Return `ds` as a DICOM JSON object, bulk values as BulkDataURIs below `bulk_base`.

    Values deferred by ``dcmread(defer_size=...)`` are never read: a deferred
    binary value is by definition bulk data. Each bulk value's place in the
    file is added to `bulk` as ``{"<tag path>": (offset, length)}`` so it can be
    served later by a ranged read.
    """
    path = list(path)
    encodings = _encodings(ds)
    result: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        if tag.group == 0x0002:
            continue
        key = f"{tag:08X}"
        raw = ds.get_item(tag)
        vr = _vr_of(raw, tag)
        if vr in BYTES_VRS and _is_bulk(raw):
            where = "/".join([*path, key])
            result[key] = {"vr": vr, "BulkDataURI": f"{bulk_base}/{where}"}
            # Inside a sequence, pydicom's value_tell may count from the sequence's
            # own buffer, not the file: nested values are found by parsing instead.
            if isinstance(raw, RawDataElement) and raw.length != UNDEFINED and not path:
                bulk[where] = (raw.value_tell, raw.length)
            continue
        fast = None
        if isinstance(raw, RawDataElement) and vr is not None and (raw.VR or not tag.is_private):
            # An implicit VR private element's VR comes from its creator: pydicom's job.
            fast = value_json(vr, raw.value, raw.is_little_endian, encodings)
        if fast is not None:
            result[key] = fast
            continue
        element = _element(ds, raw, encodings)
        if element.VR == "SQ":
            items = [
                to_json(item, bulk_base, bulk, path=[*path, key, str(i)])
                for i, item in enumerate(element.value)
            ]
            result[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        else:
            result[key] = element_json(element)
    return result


def _encodings(ds: Dataset) -> list[str]:
    """The Python codecs of the data set's text, as pydicom decodes it."""
    return codecs(ds.original_character_set)


def codecs(encodings: str | Sequence[str] | None) -> list[str]:
    """pydicom's encodings of a data set (one codec, several, or none: the default) as a list."""
    encodings = encodings or [default_encoding]
    return [encodings] if isinstance(encodings, str) else list(encodings)


def _element(ds: Dataset, raw: Any, encodings: list[str]) -> DataElement:
    """`raw` as a pydicom element; through the data set where it needs more than its bytes."""
    if (isinstance(raw, RawDataElement) and raw.value is not None and raw.VR is not None
            and raw.VR not in ("SQ", "UN") and " or " not in raw.VR):
        return convert_raw_data_element(raw, encoding=encodings, ds=ds)
    # Deferred values, sequences, implicit or ambiguous VRs: pydicom reads and corrects them.
    return ds[raw.tag]


def value_json(vr: str, value: bytes | None, little: bool, encodings: list[str]) -> dict[str, Any] | None:
    """The DICOM JSON of an element of a common VR from its encoded `value`, or None.

    None hands the element to pydicom: any VR or value not covered here.
    """
    if value is None or " or " in vr:
        return None
    if not value:
        return {"vr": vr} if vr in _NUMBERS or vr in _TEXT_VRS or vr == "AT" else None
    if vr in _NUMBERS:
        code = _NUMBERS[vr]
        size = struct.calcsize(code)
        if len(value) % size:
            return None
        order = "<" if little else ">"
        return {"vr": vr, "Value": list(struct.unpack(f"{order}{len(value) // size}{code}", value))}
    if vr == "AT":
        if len(value) % 4:
            return None
        order = "<" if little else ">"
        words = struct.unpack(f"{order}{len(value) // 2}H", value)
        return {"vr": vr, "Value": [f"{words[i]:04X}{words[i + 1]:04X}" for i in range(0, len(words), 2)]}
    if vr in _SPLIT_THEN_STRIP:
        text = decode_bytes(value, encodings, TEXT_VR_DELIMS)
        return _strings(vr, [v.rstrip("\0 ") for v in text.split("\\")])
    if vr in _SINGLE_TEXT:
        return _strings(vr, [decode_bytes(value, encodings, TEXT_VR_DELIMS).rstrip("\0 ")])
    if not value.isascii():
        return None
    text = value.decode("ascii")
    if vr in _STRIP_THEN_SPLIT:
        return _strings(vr, text.rstrip(" \0").split("\\"))
    if vr == "AE":
        return _strings(vr, [v.strip() for v in text.split("\\")])
    if vr == "UR":
        return _strings(vr, [text.rstrip()])
    if vr in ("IS", "DS"):
        items = text.rstrip(" \0").split("\\")
        if items == [""]:
            return {"vr": vr}
        pattern, number = (_INTEGER, int) if vr == "IS" else (_DECIMAL, float)
        if not all(pattern.fullmatch(item) for item in items):
            return None
        return {"vr": vr, "Value": [number(item) for item in items]}
    return None


def _strings(vr: str, values: Sequence[str]) -> dict[str, Any]:
    # pydicom: one empty value is an empty element; empty values among several stay "".
    if len(values) == 1 and not values[0]:
        return {"vr": vr}
    return {"vr": vr, "Value": list(values)}


def element_json(element: DataElement) -> dict[str, Any]:
    """One non-sequence element as DICOM JSON.

    IS and DS values are JSON numbers, but CP 1861 lets them be strings
    (PS3.18 Table F.2.3-1): a value that is no number (pydicom's ``badVR.dcm``
    has an IS of ``1A``) goes out as sent rather than failing the instance.
    """
    try:
        return element.to_json_dict(None, 0)
    except ValueError:
        if element.VR not in ("IS", "DS"):
            raise
    values = element.value if element.VM > 1 else [element.value]
    return {"vr": element.VR, "Value": [None if v in (None, "") else str(v) for v in values]}


def _vr_of(raw: Any, tag: BaseTag) -> str | None:
    vr = getattr(raw, "VR", None)
    if vr is None:
        try:
            return dictionary_VR(tag)
        except KeyError:
            return "UN"
    return vr


def _is_bulk(raw: Any) -> bool:
    if isinstance(raw, RawDataElement):
        return raw.value is None or raw.length > BULK_THRESHOLD
    value = raw.value
    return isinstance(value, (bytes, bytearray)) and len(value) > BULK_THRESHOLD


# Reading values back from DICOM JSON (the index's columns and the guideline's facts).

def first_value(body: dict[str, Any], tag: str) -> Any:
    """The first value of `tag` (``"00100020"``) in a DICOM JSON object, or ``None``."""
    values = body.get(tag, {}).get("Value")
    return values[0] if values else None


def first_text(body: dict[str, Any], tag: str) -> str:
    """The first value of `tag` as a stripped string; ``""`` when absent."""
    value = first_value(body, tag)
    return "" if value is None else str(value).strip()


def person_name(body: dict[str, Any], tag: str) -> str:
    """The first name of a PN element in its DICOM form, ``Alphabetic=Ideographic=Phonetic``."""
    value = first_value(body, tag)
    if not isinstance(value, dict):
        return ""
    groups = [value.get(group, "") for group in ("Alphabetic", "Ideographic", "Phonetic")]
    return "=".join(groups).rstrip("=")


def first_int(body: dict[str, Any], tag: str) -> int | None:
    """The first value of an IS/US/… element as an integer; ``None`` when absent or not a number."""
    value = first_value(body, tag)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
