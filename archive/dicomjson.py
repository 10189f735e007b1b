"""Datasets as DICOM JSON (PS3.18 Annex F), with bulk data by reference.

Binary values longer than :data:`BULK_THRESHOLD` bytes are not inlined: they
become a ``BulkDataURI`` under the instance's WADO-RS URL. The URIs are stored
relative to :data:`ROOT_MARK`, which is replaced by the server's own base URL
when metadata is served, so stored metadata survives a change of host name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

BULK_THRESHOLD = 1024
ROOT_MARK = "{{root}}"
UNDEFINED = 0xFFFFFFFF
BYTES_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


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
        element = ds[tag]
        if element.VR == "SQ":
            items = [
                to_json(item, bulk_base, bulk, path=[*path, key, str(i)])
                for i, item in enumerate(element.value)
            ]
            result[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        else:
            result[key] = _element_json(element)
    return result


def _element_json(element: DataElement) -> dict[str, Any]:
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
