"""WADO-URI (PS3.18 §9): the links hospital systems embed, under the DICOMweb root and the server's root."""

from __future__ import annotations

from io import BytesIO

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from archive.render import parse, render
from tests import viewing
from tests.conftest import Huren

Viewer = tuple[Huren, dict[str, Dataset]]
viewer = viewing.viewer  # the module's server and study (a fixture)


def query(ds: Dataset, **extra: str) -> dict[str, str]:
    return {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
            "objectUID": ds.SOPInstanceUID, **extra}


def test_jpeg_by_default_at_both_addresses(viewer: Viewer) -> None:
    server, datasets = viewer
    ct = datasets["ct"]
    for base in (server.dicomweb, server.url):
        answer = httpx.get(base + "/wado", params=query(ct))
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/jpeg"
        assert Image.open(BytesIO(answer.content)).size == (ct.Columns, ct.Rows)


def test_window_size_region_frame(viewer: Viewer) -> None:
    server, datasets = viewer
    ct = datasets["ct"]
    shown = np.asarray(Image.open(BytesIO(httpx.get(server.url + "/wado", params=query(
        ct, contentType="image/png", windowCenter="40", windowWidth="400")).content)))
    assert np.array_equal(shown, np.asarray(Image.open(BytesIO(
        render(viewing_file(ct), None, parse(window="40,400"), "image/png")))))
    small = httpx.get(server.url + "/wado", params=query(ct, rows="64"))
    assert Image.open(BytesIO(small.content)).size == (64, 64)
    half = httpx.get(server.url + "/wado", params=query(ct, region="0,0,0.5,0.25", contentType="image/png"))
    assert Image.open(BytesIO(half.content)).size == (64, 32)
    colour = datasets["rgb_rle_2f"]
    second = np.asarray(Image.open(BytesIO(httpx.get(server.url + "/wado", params=query(
        colour, frameNumber="2", contentType="image/png")).content)))
    assert np.array_equal(second, colour.pixel_array[1])


def test_dicom_in_explicit_little_endian_or_as_named(viewer: Viewer) -> None:
    server, datasets = viewer
    ds = datasets["mr_jls"]
    plain = httpx.get(server.url + "/wado", params=query(ds, contentType="application/dicom"))
    got = dcmread(BytesIO(plain.content))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # the WADO-URI default
    assert got.SOPInstanceUID == ds.SOPInstanceUID and np.array_equal(got.pixel_array, ds.pixel_array)
    named = httpx.get(server.url + "/wado", params=query(ds, contentType="application/dicom",
                                                        transferSyntax=JPEG2000Lossless))
    got = dcmread(BytesIO(named.content))
    assert got.file_meta.TransferSyntaxUID == JPEG2000Lossless and np.array_equal(got.pixel_array, ds.pixel_array)


@pytest.mark.parametrize(("change", "status", "parameter"), [
    ({"objectUID": None}, 400, "objectUID"),
    ({"seriesUID": None}, 400, "seriesUID"),
    ({"requestType": "WADO-RS"}, 400, "requestType"),
    ({"anonymize": "yes"}, 400, "anonymize"),
    ({"frameNumber": "0"}, 400, "frameNumber"),
    ({"frameNumber": "2"}, 400, "frameNumber"),
    ({"windowCenter": "40"}, 400, "windowCenter"),
    ({"windowCenter": "40", "windowWidth": "-5"}, 400, "windowWidth"),
    ({"rows": "many"}, 400, "rows"),
    ({"region": "0.5,0.5,0.2,0.9"}, 400, "region"),
    ({"contentType": "text/html"}, 406, "contentType"),
    ({"contentType": "application/dicom", "transferSyntax": "1.2.3"}, 406, "transferSyntax"),
    ({"objectUID": "1.2.3.4"}, 404, None),
])
def test_bad_input(viewer: Viewer, change: dict, status: int, parameter: str | None) -> None:
    server, datasets = viewer
    params = {k: v for k, v in {**query(datasets["ct"]), **change}.items() if v is not None}
    answer = httpx.get(server.url + "/wado", params=params)
    assert answer.status_code == status, answer.text
    assert answer.json().get("parameter") == parameter


def viewing_file(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
