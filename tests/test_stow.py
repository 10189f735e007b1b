"""STOW-RS: bad requests and bad parts get a clear status; nothing already stored is lost.

Statuses follow PS3.18 §10.5.3: 200 when every part was stored, 202 when some
were, 409 when none were, each refused part listed in FailedSOPSequence with
the same FailureReason codes C-STORE answers with.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.conftest import Huren, huren_config
from tests.factory import instance

BOUNDARY = "huren-test-boundary"
DICOM_PARTS = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def part10(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def body(*parts: bytes, part_type: str = "application/dicom") -> bytes:
    chunks = [f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts]
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


def post(huren: Huren, content: bytes, *, study: str | None = None,
         content_type: str = DICOM_PARTS) -> httpx.Response:
    url = huren.dicomweb + "/studies" + (f"/{study}" if study else "")
    return httpx.post(url, content=content, headers={"Content-Type": content_type}, timeout=60)


def failures(answer: httpx.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in answer.json().get("00081198", {}).get("Value", [])]


def stored(answer: httpx.Response) -> list[str]:
    return [item["00081155"]["Value"][0] for item in answer.json().get("00081199", {}).get("Value", [])]


@pytest.fixture
def archived(huren: Huren) -> Dataset:
    """One instance already in the archive, to prove that bad input loses nothing."""
    ds = instance(rows=64, columns=64)
    assert post(huren, body(part10(ds))).status_code == 200
    return ds


def still_there(huren: Huren, ds: Dataset) -> None:
    url = (f"{huren.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    answer = httpx.get(url)
    assert answer.status_code == 200
    assert part10(ds)[132:] in answer.content  # the dataset, byte for byte, after its preamble
    found = httpx.get(huren.dicomweb + "/instances").json()
    assert [i["00080018"]["Value"][0] for i in found] == [ds.SOPInstanceUID]


@pytest.mark.parametrize("content_type", [
    "application/dicom",
    "application/json",
    'multipart/related; type="application/dicom+xml"; boundary=x',
    "multipart/form-data; boundary=x",
])
def test_wrong_content_type_is_415(huren: Huren, archived: Dataset, content_type: str) -> None:
    answer = post(huren, body(part10(instance())), content_type=content_type)
    assert answer.status_code == 415
    assert answer.json()["parameter"] == "content-type"
    still_there(huren, archived)


@pytest.mark.parametrize("content, content_type", [
    (body(b"x"), 'multipart/related; type="application/dicom"'),     # no boundary
    (b"no parts at all", DICOM_PARTS),
    (body(part10(instance()))[:-40], DICOM_PARTS),                      # cut short
])
def test_malformed_body_is_400(huren: Huren, archived: Dataset, content: bytes, content_type: str) -> None:
    answer = post(huren, content, content_type=content_type)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]
    still_there(huren, archived)


def test_oversized_body_is_413(tmp_path: Path) -> None:
    server = Huren(tmp_path, huren_config(tmp_path, http={"max_request_bytes": 64 * 1024})).start()
    try:
        small = instance()
        assert post(server, body(part10(small))).status_code == 200
        big = body(part10(instance(rows=256, columns=256)))
        assert post(server, big).status_code == 413
        # Without a Content-Length (chunked) the limit holds while reading.
        chunked = httpx.post(server.dicomweb + "/studies", content=iter([big[:40000], big[40000:]]),
                             headers={"Content-Type": DICOM_PARTS}, timeout=60)
        assert chunked.status_code == 413
        still_there(server, small)
        assert not list((tmp_path / "spool").glob("*.part")), "spooled parts of refused bodies stay"
    finally:
        server.stop()


def test_bad_parts_are_listed_with_their_failure_reason(huren: Huren, archived: Dataset) -> None:
    good = part10(instance(rows=64, columns=64))
    no_uid = instance()
    del no_uid.SOPInstanceUID
    parts = [
        b"\x00garbage" * 100,                   # not DICOM at all
        good[:-2000],                           # truncated inside the pixel data
        part10(no_uid),                         # no SOP Instance UID
    ]
    answer = post(huren, body(*parts))
    assert answer.status_code == 409
    assert failures(answer) == [0xC000, 0xC000, 0xA900]
    assert "00081199" not in answer.json()
    still_there(huren, archived)


def test_part_of_another_type_is_refused(huren: Huren, archived: Dataset) -> None:
    answer = post(huren, body(part10(instance()), part_type="application/pdf"))
    assert answer.status_code == 409
    assert failures(answer) == [0xC000]
    still_there(huren, archived)


def test_some_stored_some_refused_is_202(huren: Huren, archived: Dataset) -> None:
    new = instance(StudyInstanceUID=archived.StudyInstanceUID)
    answer = post(huren, body(part10(new), b"garbage"))
    assert answer.status_code == 202
    assert stored(answer) == [new.SOPInstanceUID]
    assert failures(answer) == [0xC000]


def test_instance_of_another_study_is_refused(huren: Huren, archived: Dataset) -> None:
    answer = post(huren, body(part10(instance())), study=archived.StudyInstanceUID)
    assert answer.status_code == 409
    assert failures(answer) == [0xC409]
    still_there(huren, archived)


def test_resend_is_a_success_and_stores_nothing_new(huren: Huren, archived: Dataset) -> None:
    answer = post(huren, body(part10(archived)), study=archived.StudyInstanceUID)
    assert answer.status_code == 200
    assert stored(answer) == [archived.SOPInstanceUID]
    still_there(huren, archived)


def test_different_object_under_an_archived_uid_is_rejected(huren: Huren, archived: Dataset) -> None:
    impostor = dcmread(BytesIO(part10(archived)))
    impostor.PatientName = "SOMEONE^ELSE"
    answer = post(huren, body(part10(impostor)))
    assert answer.status_code == 409
    assert failures(answer) == [0x0111]
    still_there(huren, archived)


def test_parts_without_preamble_are_archived_as_part10(huren: Huren) -> None:
    """pydicom's dcmwrite of a new dataset (what dicomweb-client sends) omits preamble and DICM."""
    ds = instance()
    out = BytesIO()
    ds.save_as(out)  # no enforce_file_format: file meta, but no preamble
    assert out.getvalue()[128:132] != b"DICM"
    assert post(huren, body(out.getvalue())).status_code == 200
    url = (f"{huren.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    retrieved = httpx.get(url).content
    assert b"\r\n\r\n" + b"\0" * 128 + b"DICM" in retrieved


def test_series_of_another_study_is_refused_not_misfiled(huren: Huren, archived: Dataset) -> None:
    """The same file with only StudyInstanceUID and SOPInstanceUID changed: refused
    with 0xC40A, never a 500 and never filed under the first study."""
    from pydicom.uid import generate_uid

    moved = dcmread(BytesIO(part10(archived)))
    moved.StudyInstanceUID, moved.SOPInstanceUID = generate_uid(), generate_uid()
    moved.file_meta.MediaStorageSOPInstanceUID = moved.SOPInstanceUID
    answer = post(huren, body(part10(moved)))
    assert answer.status_code == 409
    assert failures(answer) == [0xC40A]
    studies = httpx.get(f"{huren.dicomweb}/studies", params={"StudyInstanceUID": moved.StudyInstanceUID})
    assert studies.status_code == 200 and studies.json() == []
    assert httpx.get(f"{huren.dicomweb}/studies/{moved.StudyInstanceUID}/metadata").status_code == 404
    instances = httpx.get(f"{huren.dicomweb}/studies/{archived.StudyInstanceUID}/instances").json()
    assert [i["00080018"]["Value"][0] for i in instances] == [archived.SOPInstanceUID]
    still_there(huren, archived)


def test_the_same_instance_by_both_doors_is_stored_once(huren: Huren, tmp_path: Path) -> None:
    """STOW-RS then C-STORE, and C-STORE then STOW-RS: each sender's file meta differs,
    the data set does not; the second is a success that stores nothing."""
    by_stow_first, by_dimse_first = instance(rows=64, columns=64), instance(rows=64, columns=64)
    assert post(huren, body(part10(by_stow_first))).status_code == 200
    first = tmp_path / "stow-first.dcm"
    first.write_bytes(part10(by_stow_first))
    assert huren.storescu(first).returncode == 0
    second = tmp_path / "dimse-first.dcm"
    second.write_bytes(part10(by_dimse_first))
    assert huren.storescu(second).returncode == 0
    again = post(huren, body(part10(by_dimse_first)))
    assert again.status_code == 200 and stored(again) == [by_dimse_first.SOPInstanceUID]
    for ds in (by_stow_first, by_dimse_first):
        found = httpx.get(f"{huren.dicomweb}/studies/{ds.StudyInstanceUID}/instances").json()
        assert [i["00080018"]["Value"][0] for i in found] == [ds.SOPInstanceUID]
    assert "conflict" not in huren.log.read_text()
