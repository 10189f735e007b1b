"""Read what the index needs from a received Part-10 file, without its pixel data.

One pass: the data set up to the pixel data becomes DICOM JSON, walked from
its bytes when it is explicit VR little endian (:mod:`archive.scanner`), else
parsed by pydicom (large values deferred, never loaded); then the pixel-data
element is walked by its headers alone to record frame offsets and to prove the
file is whole.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from archive import charsets, names  # noqa: F401  (charsets: decoding fixes)
from archive.dicomjson import (
    ROOT_MARK,
    first_int,
    first_text,
    first_value,
    instance_path,
    person_name,
    to_json,
)
from archive.frames import (
    PIXEL_TAGS,
    UNDEFINED,
    FrameIndex,
    TruncatedPixelData,
    index_frames,
    read_pixel_header,
)
from archive.guideline.facts import instance_facts
from archive.scanner import Scanned, scan

DEFER = 64 * 1024


class UnreadableInstance(ValueError):
    """The file is not a DICOM instance we can archive; the message says why."""

    def __init__(self, message: str, *, missing_uid: bool = False) -> None:
        super().__init__(message)
        self.missing_uid = missing_uid


@dataclass(frozen=True)
class InstanceHeader:
    """The archive's view of one instance, ready for the index."""

    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    meta_sop_uid: str
    patient: dict[str, str]
    study: dict[str, str]
    series: dict[str, Any]
    instance: dict[str, Any]
    metadata: bytes
    facts: bytes          # JSON: what the sharing guideline may judge (archive.guideline.facts)
    frames: FrameIndex | None
    bulk: dict[str, tuple[int, int]]
    # Its RequestAttributesSequence items: (RequestedProcedureID, ScheduledProcedureStepID, AccessionNumber).
    requests: tuple[tuple[str, str, str], ...] = ()


def read_header(path: Path) -> InstanceHeader:
    """Parse the Part-10 file at `path`.

    Raises
    ------
    UnreadableInstance
        If the file is not DICOM, is cut short, or lacks an identifying UID.
    """
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        try:
            scanned = scan(fp.fileno(), size)
            if scanned is not None:
                syntax, meta_sop_uid = UID(scanned.syntax), scanned.meta_sop_uid
                uids = _uids(lambda _keyword, tag: str(first_value(scanned.body, tag) or ""))
                fp.seek(scanned.end)
                body, frames, bulk = _pixel_data(fp, (False, True), uids, _linked(scanned))
            else:
                syntax, meta_sop_uid, uids, body, frames, bulk = _read(fp, size)
        except UnreadableInstance:
            raise
        except TruncatedPixelData as exc:
            raise UnreadableInstance(f"truncated or malformed pixel data: {exc}") from None
        except InvalidDicomError as exc:
            raise UnreadableInstance(f"not a DICOM Part-10 file: {exc}") from None
        except (EOFError, ValueError, KeyError, TypeError, OverflowError, NotImplementedError,
                LookupError, UnicodeError, struct.error, zlib.error, OSError, BytesLengthException) as exc:
            # A file cut short inside a header, a deflated stream or an undefined-length
            # sequence makes pydicom raise struct.error, zlib.error or OSError ("No tag to read").
            raise UnreadableInstance(f"cannot parse the dataset: {exc}") from None
    sop_class, sop_uid, study_uid, series_uid = uids
    patient_name = person_name(body, "00100010")
    alphabetic, ideographic, phonetic = names.groups(patient_name)
    return InstanceHeader(
        sop_class_uid=sop_class,
        sop_uid=sop_uid,
        study_uid=study_uid,
        series_uid=series_uid,
        transfer_syntax=str(syntax),
        meta_sop_uid=meta_sop_uid,
        patient={
            "patient_id": first_text(body, "00100020"),
            "issuer": first_text(body, "00100021"),
            "patient_name": patient_name,
            "name_alphabetic": alphabetic,
            "name_ideographic": ideographic,
            "name_phonetic": phonetic,
            "name_pinyin": names.pinyin(patient_name),
            "birth_date": first_text(body, "00100030"),
            "sex": first_text(body, "00100040"),
        },
        study={
            "study_date": first_text(body, "00080020"),
            "study_time": first_text(body, "00080030"),
            "accession_number": first_text(body, "00080050"),
            "study_id": first_text(body, "00200010"),
            "study_description": first_text(body, "00081030"),
            "referring_physician": names.groups(person_name(body, "00080090"))[0],
        },
        series={
            "modality": first_text(body, "00080060"),
            "series_number": first_int(body, "00200011"),
            "series_description": first_text(body, "0008103E"),
            "body_part": first_text(body, "00180015"),
            "performed_date": first_text(body, "00400244"),
            "performed_time": first_text(body, "00400245"),
        },
        instance={
            "instance_number": first_int(body, "00200013"),
            "rows": first_int(body, "00280010"),
            "columns": first_int(body, "00280011"),
            "number_of_frames": first_int(body, "00280008"),
        },
        metadata=orjson.dumps(body),
        facts=orjson.dumps(instance_facts(body)),
        frames=frames,
        bulk=bulk,
        requests=request_attributes(body),
    )


def _read(fp: BinaryIO, size: int) -> tuple[UID, str, tuple[str, str, str, str], dict[str, Any],
                                           FrameIndex | None, dict[str, tuple[int, int]]]:
    """Read the file with pydicom: every transfer syntax, every oddity, every error."""
    ds = dcmread(fp, stop_before_pixels=True, defer_size=DEFER)
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if not syntax:
        raise UnreadableInstance("the file meta information has no Transfer Syntax UID")
    if syntax == DeflatedExplicitVRLittleEndian:
        # The inflated stream cannot be walked by offsets: read it whole,
        # pixel data included, so its metadata names every element.
        fp.seek(0)
        ds = dcmread(fp)
    _check_whole(ds, size)
    encoding = _read_encoding(ds)
    uids = _uids(lambda keyword, _tag: str(ds.get(keyword, "") or ""))
    if syntax == DeflatedExplicitVRLittleEndian:
        encoding = None  # offsets lie in the inflated stream, not in the file

    def body_of(bulk_base: str, bulk: dict[str, tuple[int, int]]) -> dict[str, Any]:
        return to_json(ds, bulk_base, bulk)

    # In an unknown encoding the pixel data cannot be found: an image is refused
    # below as lacking it, an instance without pixel data is stored as it is.
    body, frames, bulk = _pixel_data(fp, encoding, uids, body_of)
    if syntax == DeflatedExplicitVRLittleEndian:
        bulk.clear()
    meta_sop_uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    return syntax, meta_sop_uid, uids, body, frames, bulk


def _linked(scanned: Scanned) -> Callable[[str, dict[str, tuple[int, int]]], dict[str, Any]]:
    """The scanned data set's body, its bulk values linked below the instance's URL."""
    def body_of(bulk_base: str, bulk: dict[str, tuple[int, int]]) -> dict[str, Any]:
        scanned.link_bulk(bulk_base)
        bulk.update(scanned.bulk)
        return scanned.body
    return body_of


def _pixel_data(fp: BinaryIO, encoding: tuple[bool, bool] | None, uids: tuple[str, str, str, str],
                body_of: Callable[[str, dict[str, tuple[int, int]]], dict[str, Any]],
                ) -> tuple[dict[str, Any], FrameIndex | None, dict[str, tuple[int, int]]]:
    """The data set's body, its frames and bulk values, from the pixel data's header at ``fp.tell()``.

    `encoding` is the (implicit VR, little endian) the data set was read in; ``None``
    when its pixel data cannot be walked by offsets in the file.
    """
    pixel = read_pixel_header(fp, *encoding) if encoding is not None else None
    pixel_value = fp.tell()
    bulk: dict[str, tuple[int, int]] = {}
    _sop_class, sop_uid, study_uid, series_uid = uids
    bulk_base = ROOT_MARK + instance_path(study_uid, series_uid, sop_uid) + "/bulkdata"
    body = body_of(bulk_base, bulk)  # may read deferred values, moving `fp`
    if pixel is None:
        if _lacks_pixel_data(body):
            raise UnreadableInstance("the image has Rows and Columns but no Pixel Data: "
                                     "the file ends before it")
        return body, None, bulk
    tag, vr, length = pixel
    key = f"{tag:08X}"
    if length != UNDEFINED:
        bulk[key] = (pixel_value, length)
    body[key] = {"vr": vr, "BulkDataURI": f"{bulk_base}/{key}"}
    assert encoding is not None
    fp.seek(pixel_value)
    frames = index_frames(
        fp, encoding[1], length,
        frames=first_int(body, "00280008") or 1,
        rows=first_int(body, "00280010") or 0, columns=first_int(body, "00280011") or 0,
        samples=first_int(body, "00280002") or 1,
        bits_allocated=first_int(body, "00280100") or 8,
        photometric=first_text(body, "00280004"),
    )
    return body, frames, bulk


def _check_whole(ds: Dataset, size: int, where: str = "") -> None:
    """Refuse a data set with a value cut short by the end of the file.

    pydicom reads a short value without complaint, and a deferred one is not
    read at all, so a file truncated before its pixel data (pydicom's
    ``rtplan_truncated.dcm``) would otherwise be archived as if whole. Values
    of undefined-length sequences were read from the file and are checked
    item by item; a defined-length sequence is whole when its value is.
    """
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement):
            if raw.length == UNDEFINED:
                continue
            have = size - raw.value_tell if raw.value is None else len(raw.value)
            if have < raw.length:
                raise UnreadableInstance(f"the file is cut short: {where}{tag} needs "
                                         f"{raw.length} bytes, has {max(have, 0)}")
        elif raw.VR == "SQ":
            for i, item in enumerate(raw.value):
                _check_whole(item, size, f"{where}{tag} item {i + 1}, ")


def _lacks_pixel_data(body: dict[str, Any]) -> bool:
    """Whether an image's pixels are missing: the sign of a file cut just before them.

    Pixel data referenced by URL (JPIP, PS3.3 C.7.6.3.1.3) is not missing.
    """
    return ("00280010" in body and "00280011" in body and "00287FE0" not in body
            and not any(f"{tag:08X}" in body for tag in PIXEL_TAGS))


def _read_encoding(ds: Dataset) -> tuple[bool, bool] | None:
    """The (implicit VR, little endian) encoding the data set was actually read in,
    or ``None`` when pydicom has none (a data set it did not decode from bytes).

    pydicom reads an implicit VR data set sent under an explicit VR transfer
    syntax (pydicom's ``SC_rgb_jpeg.dcm``) as implicit, but reports the transfer
    syntax's encoding as ``original_encoding``; its raw elements keep the truth,
    which the pixel-data header that follows the data set needs.
    """
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement):
            return raw.is_implicit_VR, raw.is_little_endian
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    return implicit, little


def _uids(value_of: Callable[[str, str], str]) -> tuple[str, str, str, str]:
    """The SOP Class, SOP Instance, Study and Series Instance UIDs, each found by
    ``value_of(keyword, tag)``."""
    found = []
    for keyword, tag in (("SOPClassUID", "00080016"), ("SOPInstanceUID", "00080018"),
                         ("StudyInstanceUID", "0020000D"), ("SeriesInstanceUID", "0020000E")):
        value = value_of(keyword, tag).strip("\0 ")
        if not value:
            raise UnreadableInstance(f"the dataset has no {keyword}", missing_uid=True)
        if len(value) > 64:
            raise UnreadableInstance(f"{keyword} is longer than 64 characters")
        found.append(value)
    return found[0], found[1], found[2], found[3]


def request_attributes(body: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """The (RequestedProcedureID, ScheduledProcedureStepID, AccessionNumber) of each
    RequestAttributesSequence item of a DICOM JSON data set (PS3.3 C.7.3.1), for QIDO-RS
    to match on; items without any of the three are left out."""
    items = body.get("00400275", {}).get("Value") or []
    found = {(first_text(item, "00401001"), first_text(item, "00400009"), first_text(item, "00080050"))
             for item in items if isinstance(item, dict)}
    return tuple(sorted(ids for ids in found if any(ids)))
