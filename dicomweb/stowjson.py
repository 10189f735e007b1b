"""STOW-RS with metadata and bulk data (PS3.18 §10.5):
``multipart/related; type="application/dicom+json"``.

Metadata parts hold DICOM JSON (PS3.18 Annex F): one data set or an array of
them. Their BulkDataURIs name other parts of the request by the part's
``Content-Location``; uncompressed values come as ``application/octet-stream``,
compressed pixel data as the image's own media type (``image/jpeg``,
``image/jls``, ``image/jp2``, ``image/dicom-rle``), whose ``transfer-syntax``
parameter, or else the type's default (PS3.18 Table 8.7.3-5), becomes the
instance's transfer syntax. One frame per part: compressed multi-frame pixel
data is refused (0xC122), to be sent as ``application/dicom``.

Each data set is written as a Part-10 file in the receive folder and then
archived by the one ingest path, exactly like an ``application/dicom`` part;
one that cannot be built is refused on its own (FailureReason 0xC000 "cannot
understand", 0xA900 without its UIDs, 0xC122 for a transfer syntax it cannot
take). Unlike ``application/dicom`` parts, which are never read whole, an
instance's bulk data values are read into memory to build it, one instance at
a time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from archive.ingest import Failure, IngestError
from dicomweb.bulkdata import DEFAULT_SYNTAX
from dicomweb.multipart import Part, media_type

DICOM_JSON = "application/dicom+json"
METADATA_TYPES = (DICOM_JSON, "application/json")
OCTETS = "application/octet-stream"
PIXEL_DATA = "7FE00010"
UTF8 = "ISO_IR 192"
# PS3.18 I.2.1: the instance was stored with one of its attributes coerced.
COERCED = 0xB000


class Unusable(ValueError):
    """A data set that cannot become an instance; `failure` says which FailureReason."""

    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


Built = tuple[Path, tuple[int, str] | None] | IngestError


def instances(parts: list[Part], folder: Path) -> Iterator[Built]:
    """Yield each metadata part's data sets as Part-10 files in `folder` (with the
    warning to report, if any), or the refusal of a data set that cannot be one.

    Every part file is removed once read; the Part-10 files are the caller's.
    """
    bulk = {part.headers.get("content-location", "").strip(): part for part in parts
            if part.content_type not in METADATA_TYPES and part.headers.get("content-location")}
    try:
        for part in parts:
            if part.content_type not in METADATA_TYPES:
                if part.headers.get("content-location", "").strip() not in bulk:
                    yield IngestError(Failure.CANNOT_UNDERSTAND, f"a part of type {part.content_type or 'unnamed'} "
                                      "without a Content-Location that a BulkDataURI could name")
                continue
            try:
                documents = orjson.loads(part.path.read_bytes())
            except orjson.JSONDecodeError as exc:
                yield IngestError(Failure.CANNOT_UNDERSTAND, f"the metadata part is not JSON: {exc}")
                continue
            for document in documents if isinstance(documents, list) else [documents]:
                yield _build(document, bulk, folder)
    finally:
        for part in parts:
            part.path.unlink(missing_ok=True)


def _build(document: Any, bulk: dict[str, Part], folder: Path) -> Built:
    uids = _uids(document)
    try:
        if not isinstance(document, dict):
            raise Unusable(Failure.CANNOT_UNDERSTAND, "a metadata item is not a DICOM JSON object")
        # File meta elements in the metadata are the sender's; this file gets its own.
        document = {key: value for key, value in document.items() if not key.startswith("0002")}
        syntax = _syntax(document, bulk)
        if syntax.is_compressed and _frames(document) > 1:
            raise Unusable(Failure.TRANSFER_SYNTAX_NOT_SUPPORTED, "compressed multi-frame pixel data in one "
                           "bulk data part cannot be split into its frames; send it as application/dicom")
        try:
            ds = Dataset.from_json(document, bulk_data_uri_handler=lambda tag, vr, uri: _value(bulk, tag, uri, syntax))
        except Unusable:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise Unusable(Failure.CANNOT_UNDERSTAND, f"the metadata is not valid DICOM JSON: {exc}") from None
        for keyword, uid in (("SOPClassUID", uids[0]), ("SOPInstanceUID", uids[1])):
            if not uid:
                raise Unusable(Failure.DATASET_MISMATCH, f"the data set has no {keyword}")
        warning = None
        if "SpecificCharacterSet" not in ds and not orjson.dumps(document).isascii():
            # The JSON's text is Unicode: kept as UTF-8, which the data set must then say.
            ds.SpecificCharacterSet = UTF8
            warning = (COERCED, f"SpecificCharacterSet (0008,0005) set to {UTF8}: the metadata has "
                       "non-ASCII text and named no character set")
        ds.file_meta = _file_meta(uids[0], uids[1], syntax)
        handle, name = tempfile.mkstemp(suffix=".dcm", dir=folder)
        os.close(handle)
        try:
            ds.save_as(name, enforce_file_format=True)
        except (ValueError, TypeError, OverflowError, UnicodeError, AttributeError) as exc:
            os.unlink(name)
            raise Unusable(Failure.CANNOT_UNDERSTAND, f"the data set cannot be written: {exc}") from None
        return Path(name), warning
    except Unusable as exc:
        return IngestError(exc.failure, str(exc), sop_class_uid=uids[0], sop_uid=uids[1])


def _frames(document: dict[str, Any]) -> int:
    try:
        return int(document["00280008"]["Value"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return 1


def _uids(document: Any) -> tuple[str, str]:
    found = []
    for tag in ("00080016", "00080018"):
        try:
            found.append(str(document[tag]["Value"][0]).strip())
        except (KeyError, IndexError, TypeError):
            found.append("")
    return found[0], found[1]


def _syntax(document: dict[str, Any], bulk: dict[str, Part]) -> UID:
    """The transfer syntax the pixel data's part is in: Explicit VR Little Endian
    unless a compressed image part says otherwise."""
    element = document.get(PIXEL_DATA)
    uri = element.get("BulkDataURI") if isinstance(element, dict) else None
    part = bulk.get(str(uri).strip()) if uri else None
    if part is None or part.content_type in ("", OCTETS):
        return ExplicitVRLittleEndian
    named = media_type(part.headers.get("content-type"))[1].get("transfer-syntax")
    syntax = UID(named) if named else DEFAULT_SYNTAX.get(part.content_type)
    if syntax is None or not syntax.is_compressed:
        raise Unusable(Failure.TRANSFER_SYNTAX_NOT_SUPPORTED, f"pixel data of type "
                       f"{part.headers.get('content-type')} names no compressed transfer syntax")
    return syntax


def _value(bulk: dict[str, Part], tag: str, uri: str, syntax: UID) -> bytes:
    part = bulk.get(uri.strip())
    if part is None:
        raise Unusable(Failure.CANNOT_UNDERSTAND,
                       f"the BulkDataURI of ({tag[:4]},{tag[4:]}), {uri}, names no part of the request")
    data = part.path.read_bytes()
    if tag.upper() == PIXEL_DATA and syntax.is_compressed:
        # One compressed frame per part (PS3.18 §8.7.3.3): encapsulated with an empty offset table.
        return encapsulate([data])
    return data


def _file_meta(sop_class: str, sop_uid: str, syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta
