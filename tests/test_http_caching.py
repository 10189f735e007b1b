"""HTTP done well (RFC 9110, 9111): ETag/If-None-Match, gzip for JSON only, Range, Cache-Control."""

from __future__ import annotations

import gzip
from io import BytesIO

import httpx
import orjson
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests import viewing
from tests.conftest import Huren
from tests.viewing import path_of

Viewer = tuple[Huren, dict[str, Dataset]]
viewer = viewing.viewer  # the module's server and study (a fixture)


def test_metadata_etag_and_304(viewer: Viewer) -> None:
    server, datasets = viewer
    ct = datasets["ct"]
    url = f"{server.dicomweb}/studies/{ct.StudyInstanceUID}/metadata"
    first = httpx.get(url)
    assert first.status_code == 200 and first.headers["etag"].startswith('"')
    assert first.headers["cache-control"] == "public, no-cache"  # a study grows: revalidate
    again = httpx.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == first.headers["etag"]
    assert httpx.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    instance = httpx.get(server.dicomweb + path_of(ct) + "/metadata")
    assert "immutable" in instance.headers["cache-control"]
    assert instance.headers["etag"] != first.headers["etag"]


def test_a_new_instance_changes_the_study_etag(viewer: Viewer) -> None:
    server, datasets = viewer
    study = datasets["ct"].StudyInstanceUID
    url = f"{server.dicomweb}/studies/{study}/metadata"
    before = httpx.get(url).headers["etag"]
    extra = viewing.filed(viewing.FILES["mr_rle"], study, 99)
    DICOMwebClient(server.dicomweb).store_instances([extra])
    after = httpx.get(url, headers={"If-None-Match": before})
    assert after.status_code == 200 and after.headers["etag"] != before


def test_json_is_gzipped_and_dicom_is_not(viewer: Viewer) -> None:
    server, datasets = viewer
    ct = datasets["ct"]
    with httpx.Client() as client:
        url = f"{server.dicomweb}/studies/{ct.StudyInstanceUID}/metadata"
        raw = client.get(url, headers={"Accept-Encoding": "identity"})
        zipped = client.send(client.build_request("GET", url, headers={"Accept-Encoding": "gzip"}), stream=True)
        body = zipped.read()  # httpx decodes; the header says what went over the wire
        assert zipped.headers["content-encoding"] == "gzip"
        assert orjson.loads(body) == orjson.loads(raw.content)
        instance = client.get(server.dicomweb + path_of(ct), headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in instance.headers and instance.status_code == 200
    assert len(gzip.compress(raw.content)) < len(raw.content)


def test_range_on_a_single_part_instance(viewer: Viewer) -> None:
    server, datasets = viewer
    ds = datasets["mr_jls"]
    url = server.dicomweb + path_of(ds)
    whole = httpx.get(url, headers={"Accept": "application/dicom"})
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
    assert dcmread(BytesIO(whole.content)).SOPInstanceUID == ds.SOPInstanceUID
    size = len(whole.content)
    part = httpx.get(url, headers={"Accept": "application/dicom", "Range": "bytes=128-1151"})
    assert part.status_code == 206 and part.content == whole.content[128:1152]
    assert part.headers["content-range"] == f"bytes 128-1151/{size}"
    tail = httpx.get(url, headers={"Accept": "application/dicom", "Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == whole.content[-100:]
    past = httpx.get(url, headers={"Accept": "application/dicom", "Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    stale = httpx.get(url, headers={"Accept": "application/dicom", "Range": "bytes=0-9", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == whole.content
    cached = httpx.get(url, headers={"Accept": "application/dicom", "If-None-Match": whole.headers["etag"]})
    assert cached.status_code == 304
    assert whole.headers["cache-control"] == "public, max-age=31536000, immutable"


def test_frames_and_rendered_carry_validators(viewer: Viewer) -> None:
    server, datasets = viewer
    ds = datasets["ct"]
    for suffix in ("/frames/1", "/rendered"):
        first = httpx.get(server.dicomweb + path_of(ds) + suffix)
        assert first.status_code == 200 and "immutable" in first.headers["cache-control"]
        assert httpx.get(server.dicomweb + path_of(ds) + "/rendered",
                         headers={"If-None-Match": first.headers["etag"]}).status_code in (200, 304)
    rendered = httpx.get(server.dicomweb + path_of(ds) + "/rendered")
    assert httpx.get(server.dicomweb + path_of(ds) + "/rendered",
                     headers={"If-None-Match": rendered.headers["etag"]}).status_code == 304
    other = httpx.get(server.dicomweb + path_of(ds) + "/rendered", params={"window": "40,400"})
    assert other.headers["etag"] != rendered.headers["etag"]


def test_private_when_access_is_enforced(tmp_path) -> None:
    server = viewing.start(tmp_path, hospitals=[{"id": "hosp-a", "name": "Hospital A", "ae_titles": ["CT_A"]}])
    try:
        token = server.token(admin=True)
        auth = {"Authorization": f"Bearer {token}"}
        datasets = viewing.study_of(["ct"])
        DICOMwebClient(server.dicomweb, headers=auth).store_instances(list(datasets.values()))
        ct = datasets["ct"]
        answer = httpx.get(server.dicomweb + path_of(ct), headers={**auth, "Accept": "application/dicom"})
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "private, max-age=31536000, immutable"
        assert "Authorization" in answer.headers["vary"]
    finally:
        server.stop()


def test_multipart_instances_carry_validators(viewer: Viewer) -> None:
    server, datasets = viewer
    ct = datasets["ct"]
    series = f"{server.dicomweb}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
    first = httpx.get(series)
    assert first.status_code == 200 and first.headers["cache-control"] == "public, no-cache"
    assert httpx.get(series, headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    assert httpx.get(series).content == first.content  # the same answer, byte for byte, as its ETag says
    study = httpx.get(f"{server.dicomweb}/studies/{ct.StudyInstanceUID}")
    assert study.headers["etag"] != first.headers["etag"]
    instance = httpx.get(server.dicomweb + path_of(ct))
    assert "immutable" in instance.headers["cache-control"]
    transcoded = httpx.get(series, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5'})
    assert transcoded.headers["etag"] != first.headers["etag"]  # another syntax, another representation
