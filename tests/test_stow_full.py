"""STOW-RS in full (PS3.18 §10.5, Annex I): metadata and bulk data requests
(``application/dicom+json`` with parts named by Content-Location) beside
``application/dicom``; per-instance FailureReason and WarningReason with their
text in Warning headers; 200 / 202 / 409; ``POST /studies/{study}`` refusing
only the instances of another study. Folder + SQLite and S3 + PostgreSQL."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError

from tests.conftest import PYDICOM_FILES, Huren, huren_config
from tests.factory import instance

BOUNDARY = "stow-json-boundary"
JSON_BODY = f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'
DICOM_BODY = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def metadata(ds: Dataset, base: str = "http://client.example/bulk") -> tuple[dict[str, Any], dict[str, bytes]]:
    """`ds` as DICOM JSON with every value of 64 bytes or more as a BulkDataURI, and those values."""
    values: dict[str, bytes] = {}

    def refer(element: Any) -> str:
        uri = f"{base}/{ds.SOPInstanceUID}/{element.tag:08X}"
        values[uri] = element.value
        return uri

    return ds.to_json_dict(bulk_data_threshold=64, bulk_data_element_handler=refer), values


def multipart(parts: list[tuple[dict[str, str], bytes]]) -> bytes:
    chunks = []
    for headers, content in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        chunks.append(f"--{BOUNDARY}\r\n{head}\r\n".encode() + content + b"\r\n")
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


def json_request(documents: list[dict[str, Any]], bulk: dict[str, bytes],
                 bulk_type: str = "application/octet-stream") -> bytes:
    parts = [({"Content-Type": "application/dicom+json"}, orjson.dumps(documents))]
    parts += [({"Content-Type": bulk_type, "Content-Location": uri}, value) for uri, value in bulk.items()]
    return multipart(parts)


def post(huren: Huren, content: bytes, study: str | None = None, content_type: str = JSON_BODY) -> httpx.Response:
    url = huren.dicomweb + "/studies" + (f"/{study}" if study else "")
    return httpx.post(url, content=content, headers={"Content-Type": content_type}, timeout=60)


def failures(answer: httpx.Response) -> dict[str, int]:
    items = answer.json().get("00081198", {}).get("Value", [])
    return {item.get("00081155", {}).get("Value", [""])[0]: item["00081197"]["Value"][0] for item in items}


def stored(answer: httpx.Response) -> list[str]:
    return [item["00081155"]["Value"][0] for item in answer.json().get("00081199", {}).get("Value", [])]


def retrieved(huren: Huren, ds: Dataset) -> Dataset:
    return DICOMwebClient(huren.dicomweb).retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                            ds.SOPInstanceUID)


def test_json_with_bulk_data(any_huren: Huren) -> None:
    first = instance(rows=64, columns=64, SpecificCharacterSet="ISO_IR 192", PatientName="Wang^Xiaodong=王^小东")
    second = instance(rows=32, columns=32, frames=3, StudyInstanceUID=first.StudyInstanceUID,
                      SpecificCharacterSet="ISO_IR 192", PatientName="Wang^Xiaodong=王^小东")
    documents, bulk = [], {}
    for ds in (first, second):
        document, values = metadata(ds)
        documents.append(document)
        bulk.update(values)
    assert all("BulkDataURI" in document["7FE00010"] for document in documents)
    answer = post(any_huren, json_request(documents, bulk))
    assert answer.status_code == 200, answer.text
    assert "warning" not in answer.headers
    assert stored(answer) == [first.SOPInstanceUID, second.SOPInstanceUID]
    for ds in (first, second):
        back = retrieved(any_huren, ds)
        assert back.PixelData == ds.PixelData
        assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)
    assert str(retrieved(any_huren, first).PatientName) == "Wang^Xiaodong=王^小东"
    # Archived by the one ingest path: searchable, counted, fuzzy in pinyin.
    found = httpx.get(any_huren.dicomweb + "/studies", params={"PatientName": "wang*", "fuzzymatching": "true"})
    found = found.json()
    assert [s["00201208"]["Value"] for s in found] == [[2]]


@pytest.mark.parametrize(("name", "media"), [
    ("SC_rgb_jpeg_gdcm.dcm", "image/jpeg"),
    ("MR_small_jpeg_ls_lossless.dcm", "image/jls"),
    ("MR_small_RLE.dcm", "image/dicom-rle"),
    ("JPEG2000.dcm", "image/jp2"),
])
def test_json_with_compressed_pixel_data(huren: Huren, name: str, media: str) -> None:
    source = dcmread(PYDICOM_FILES / name)
    syntax = source.file_meta.TransferSyntaxUID
    [frame] = list(generate_frames(source.PixelData, number_of_frames=1))
    document, bulk = metadata(source)
    uri = document["7FE00010"]["BulkDataURI"]
    bulk[uri] = frame
    parts = [({"Content-Type": "application/dicom+json"}, orjson.dumps([document]))]
    parts += [({"Content-Type": f"{media}; transfer-syntax={syntax}" if uri == key else "application/octet-stream",
                "Content-Location": key}, value) for key, value in bulk.items()]
    answer = post(huren, multipart(parts))
    assert answer.status_code == 200, answer.headers.get("warning")
    back = retrieved(huren, source)
    assert back.file_meta.TransferSyntaxUID == syntax
    assert list(generate_frames(back.PixelData, number_of_frames=1)) == [frame]
    np.testing.assert_array_equal(back.pixel_array, source.pixel_array)


def test_missing_bulk_part(huren: Huren) -> None:
    whole, broken = instance(), instance()
    document, bulk = metadata(whole)
    broken_document, _values = metadata(broken)
    answer = post(huren, json_request([document, broken_document], bulk))
    assert answer.status_code == 202
    assert stored(answer) == [whole.SOPInstanceUID]
    assert failures(answer) == {broken.SOPInstanceUID: 0xC000}
    warning = answer.headers["warning"]
    assert warning.startswith(f'299 huren "{broken.SOPInstanceUID}: the BulkDataURI of (7FE0,0010)')
    assert "names no part of the request" in warning
    # Alone it is refused whole: 409, and nothing of it is archived.
    answer = post(huren, json_request([broken_document], {}))
    assert answer.status_code == 409 and failures(answer) == {broken.SOPInstanceUID: 0xC000}
    assert [s["0020000D"]["Value"][0] for s in httpx.get(huren.dicomweb + "/studies").json()] == \
        [whole.StudyInstanceUID]


def test_bad_metadata(huren: Huren) -> None:
    no_uid, _bulk = metadata(instance(rows=4, columns=4))
    del no_uid["00080018"]
    not_json = multipart([({"Content-Type": "application/dicom+json"}, b"[{not json")])
    answer = post(huren, not_json)
    assert answer.status_code == 409 and failures(answer) == {"": 0xC000}
    assert "the metadata part is not JSON" in answer.headers["warning"]
    answer = post(huren, json_request([no_uid], {}))
    assert answer.status_code == 409 and list(failures(answer).values()) == [0xA900]
    assert "no SOPInstanceUID" in answer.headers["warning"]
    document, bulk = metadata(instance())
    uri = document["7FE00010"]["BulkDataURI"]
    answer = post(huren, multipart([({"Content-Type": "application/dicom+json"}, orjson.dumps([document])),
                                    ({"Content-Type": "image/gif", "Content-Location": uri}, bulk[uri])]))
    assert answer.status_code == 409 and list(failures(answer).values()) == [0xC122]
    # Compressed multi-frame pixel data in one part cannot be split into frames: refused, not guessed at.
    two = dcmread(PYDICOM_FILES / "SC_rgb_rle_2frame.dcm")
    document, bulk = metadata(two)
    uri = document["7FE00010"]["BulkDataURI"]
    answer = post(huren, multipart([({"Content-Type": "application/dicom+json"}, orjson.dumps([document])),
                                    ({"Content-Type": "image/dicom-rle", "Content-Location": uri}, bulk[uri])]))
    assert answer.status_code == 409 and failures(answer) == {two.SOPInstanceUID: 0xC122}
    assert "multi-frame" in answer.headers["warning"]


def test_unicode_without_a_character_set_is_a_warning(huren: Huren) -> None:
    ds = instance(rows=4, columns=4, SpecificCharacterSet=None, PatientName="王^小东")
    document, bulk = metadata(ds)
    assert "00080005" not in document
    answer = post(huren, json_request([document], bulk))
    assert answer.status_code == 202
    [item] = answer.json()["00081199"]["Value"]
    assert item["00081196"]["Value"] == [0xB000]
    assert "SpecificCharacterSet" in answer.headers["warning"]
    back = retrieved(huren, ds)
    assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "王^小东"


def test_study_in_the_path_refuses_only_other_studies(huren: Huren) -> None:
    study = generate_uid()
    mine, other = instance(StudyInstanceUID=study), instance()
    documents, bulk = [], {}
    for ds in (mine, other):
        document, values = metadata(ds)
        documents.append(document)
        bulk.update(values)
    answer = post(huren, json_request(documents, bulk), study=study)
    assert answer.status_code == 202
    assert stored(answer) == [mine.SOPInstanceUID]
    assert failures(answer) == {other.SOPInstanceUID: 0xC409}
    assert answer.json()["00081190"]["Value"] == [f"{huren.dicomweb}/studies/{study}"]
    # The same with application/dicom parts, and dicomweb-client's own request.
    third = instance(StudyInstanceUID=study)
    client = DICOMwebClient(huren.dicomweb)
    with pytest.raises(HTTPError):  # 409: its only instance is of another study
        client.store_instances([instance()], study_instance_uid=study)
    client.store_instances([third], study_instance_uid=study)
    assert len(client.search_for_instances(study)) == 2


def test_kept_conflict_is_a_warning(tmp_path) -> None:
    server = Huren(tmp_path, huren_config(tmp_path, ingest={"on_conflict": "keep"})).start()
    try:
        ds = instance()
        client = DICOMwebClient(server.dicomweb)
        client.store_instances([ds])
        changed = instance(SOPInstanceUID=ds.SOPInstanceUID, StudyInstanceUID=ds.StudyInstanceUID,
                           SeriesInstanceUID=ds.SeriesInstanceUID, PatientName="OTHER^NAME")
        out = BytesIO()
        changed.save_as(out, enforce_file_format=True)
        answer = post(server, multipart([({"Content-Type": "application/dicom"}, out.getvalue())]),
                      content_type=DICOM_BODY)
        assert answer.status_code == 202
        [item] = answer.json()["00081199"]["Value"]
        assert item["00081196"]["Value"] == [0xB00C]
        assert "was kept" in answer.headers["warning"]
        assert str(retrieved(server, ds).PatientName) == "TEST^PATIENT"
    finally:
        server.stop()
