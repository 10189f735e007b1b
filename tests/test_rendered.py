"""Rendered images and thumbnails (PS3.18 §10.4.1.1.3-4, §8.3.5) against dicomweb-client and httpx.

A CT slice is checked by pixel statistics in regions its Hounsfield units
define (lungs dark, soft tissue grey, bone bright); colour by exact PNG
pixels against pydicom's decode; and the error answers a viewer can cause.
"""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from starlette.testclient import TestClient

from archive.config import Config
from archive.guideline.compliance import Compliance
from archive.render import Rendering, parse, render
from archive.storage.filesystem import FilesystemStore
from dicomweb.app import build_app
from dicomweb.rendered import Thumbnails
from tests import viewing
from tests.conftest import Archive, Huren, audit_trail
from tests.viewing import parts, path_of, study_of

Viewer = tuple[Huren, dict[str, Dataset]]
viewer = viewing.viewer  # the module's server and study (a fixture)


def picture(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(body)))


def test_ct_soft_tissue_window_looks_right(viewer: Viewer) -> None:
    server, datasets = viewer
    ct = datasets["ct"]
    web = DICOMwebClient(server.dicomweb)
    body = web.retrieve_instance_rendered(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID,
                                          media_types=("image/png",), params={"window": "40,400,linear"})
    shown = picture(body)
    assert shown.shape == (ct.Rows, ct.Columns) and shown.dtype == np.uint8
    hu = apply_modality_lut(ct.pixel_array, ct)
    lungs, tissue, bone = hu < -600, (hu > 0) & (hu < 80), hu > 500
    assert lungs.sum() > 500 and tissue.sum() > 500 and bone.sum() > 200
    assert shown[lungs].mean() < 5                      # air and lung: black
    assert 110 < shown[tissue].mean() < 180             # soft tissue: mid grey
    assert shown[bone].mean() > 250                     # bone: white
    # The same answer as rendering in process (kept as a PNG to look at while debugging).
    assert np.array_equal(shown, picture(render(_file(ct), None, parse(window="40,400"), "image/png")))


def test_ct_default_window_and_monochrome1(viewer: Viewer) -> None:
    server, datasets = viewer
    ct = datasets["ct"]
    url = server.dicomweb + path_of(ct) + "/rendered"
    default = picture(httpx.get(url, headers={"Accept": "image/png"}).content)
    hu = apply_modality_lut(ct.pixel_array, ct)
    # No window in the instance: its own range, so the darkest and brightest values reach 0 and 255.
    assert default[hu == hu.min()].max() <= 1 and default[hu == hu.max()].min() >= 254
    inverted = copy.deepcopy(ct)
    inverted.PhotometricInterpretation = "MONOCHROME1"
    flipped = picture(render(_file(inverted), None, parse(window="40,400"), "image/png"))
    straight = picture(render(_file(ct), None, parse(window="40,400"), "image/png"))
    assert np.array_equal(flipped, 255 - straight)


def test_colour_is_exact_in_png(viewer: Viewer) -> None:
    server, datasets = viewer
    web = DICOMwebClient(server.dicomweb)
    for key in ("rgb_rle_2f", "palette"):
        ds = datasets[key]
        body = web.retrieve_instance_frames_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                                     [1], media_types=("image/png",))
        shown = picture(body)
        expected = ds.pixel_array[0] if key == "rgb_rle_2f" else _palette(ds)
        assert shown.shape == expected.shape and np.array_equal(shown, expected), key


def test_jpeg_colour_is_close(viewer: Viewer) -> None:
    server, datasets = viewer
    ds = datasets["jpeg"]
    body = DICOMwebClient(server.dicomweb).retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("image/jpeg",),
        params={"quality": "95"})
    assert body[:2] == b"\xff\xd8"
    assert np.abs(picture(body).astype(int) - ds.pixel_array.astype(int)).mean() < 3


def test_multi_frame_gif_and_viewport(viewer: Viewer) -> None:
    server, datasets = viewer
    ds = datasets["rgb_rle_2f"]
    url = server.dicomweb + path_of(ds) + "/rendered"
    gif = httpx.get(url, headers={"Accept": "image/gif"})
    assert gif.headers["content-type"] == "image/gif"
    assert Image.open(BytesIO(gif.content)).n_frames == 2
    wildcard = httpx.get(url, headers={"Accept": "image/*"})
    assert wildcard.headers["content-type"] == "image/gif"  # multi-frame default (PS3.18 Table 8.7.4-1)
    ct = datasets["ct"]
    fitted = httpx.get(server.dicomweb + path_of(ct) + "/rendered", params={"viewport": "64,32"},
                       headers={"Accept": "image/png"})
    assert Image.open(BytesIO(fitted.content)).size == (32, 32)  # aspect ratio kept inside 64x32
    cropped = picture(httpx.get(server.dicomweb + path_of(ct) + "/rendered",
                                params={"viewport": "40,20,40,0,-40,20", "window": "40,400"},
                                headers={"Accept": "image/png"}).content)
    whole = picture(render(_file(ct), None, parse(window="40,400"), "image/png"))
    assert np.array_equal(cropped, whole[:20, :40][:, ::-1])  # negative width flips


def test_series_and_study_rendered_are_multipart(viewer: Viewer) -> None:
    server, datasets = viewer
    ct = datasets["ct"]
    web = DICOMwebClient(server.dicomweb)
    series = web.retrieve_series_rendered(ct.StudyInstanceUID, ct.SeriesInstanceUID, media_types=("image/jpeg",))
    assert b"\xff\xd8" in series
    study = httpx.get(f"{server.dicomweb}/studies/{ct.StudyInstanceUID}/rendered",
                      headers={"Accept": 'multipart/related; type="image/png"'}, timeout=60)
    assert study.status_code == 200
    got = parts(study.headers["content-type"], study.content)
    assert len(got) == len(datasets) and all(kind == "image/png" for kind, _ in got)


def test_thumbnails_at_every_level(viewer: Viewer) -> None:
    server, datasets = viewer
    ct = datasets["ct"]
    base = f"{server.dicomweb}/studies/{ct.StudyInstanceUID}"
    for path in ("", f"/series/{ct.SeriesInstanceUID}", path_of(ct).split(ct.StudyInstanceUID)[1],
                 path_of(ct).split(ct.StudyInstanceUID)[1] + "/frames/1"):
        answer = httpx.get(base + path + "/thumbnail")
        assert answer.status_code == 200, (path, answer.text)
        assert answer.headers["content-type"] == "image/jpeg"
        assert max(Image.open(BytesIO(answer.content)).size) <= 128
        again = httpx.get(base + path + "/thumbnail", headers={"If-None-Match": answer.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    sized = httpx.get(base + path_of(ct).split(ct.StudyInstanceUID)[1] + "/thumbnail",
                      params={"viewport": "64,64"}, headers={"Accept": "image/png"})
    assert Image.open(BytesIO(sized.content)).size == (64, 64)


def test_annotation_burns_text(viewer: Viewer) -> None:
    server, datasets = viewer
    ct = datasets["ct"]
    url = server.dicomweb + path_of(ct) + "/rendered"
    plain = picture(httpx.get(url, params={"window": "-600,1500"}, headers={"Accept": "image/png"}).content)
    marked = picture(httpx.get(url, params={"window": "-600,1500", "annotation": "patient,technique"},
                               headers={"Accept": "image/png"}).content)
    assert (plain != marked)[:20].sum() > 50 and np.array_equal(plain[-30:], marked[-30:])


@pytest.mark.parametrize(("params", "headers", "status", "parameter"), [
    ({"window": "40"}, {}, 400, "window"),
    ({"window": "40,abc"}, {}, 400, "window"),
    ({"window": "40,0,linear"}, {}, 400, "window"),
    ({"window": "40,400,cubic"}, {}, 400, "window"),
    ({"viewport": "0,10"}, {}, 400, "viewport"),
    ({"viewport": "10,10,500,500,10,10"}, {}, 400, "viewport"),
    ({"quality": "101"}, {}, 400, "quality"),
    ({"annotation": "everything"}, {}, 400, "annotation"),
    ({}, {"Accept": "text/html"}, 406, "accept"),
    ({}, {"Accept": "image/png;q=x"}, 400, "accept"),
    ({}, {"Accept": "not-a-type"}, 400, "accept"),
])
def test_bad_input(viewer: Viewer, params: dict, headers: dict, status: int, parameter: str) -> None:
    server, datasets = viewer
    answer = httpx.get(server.dicomweb + path_of(datasets["ct"]) + "/rendered", params=params, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["parameter"] == parameter


def test_bad_frames_and_absent_resources(viewer: Viewer) -> None:
    server, datasets = viewer
    ds = datasets["rgb_rle_2f"]
    url = server.dicomweb + path_of(ds)
    assert httpx.get(url + "/frames/0/rendered").status_code == 400
    assert httpx.get(url + "/frames/3/rendered").status_code == 404
    assert httpx.get(url + "/frames/3/thumbnail").status_code == 404
    missing = httpx.get(f"{server.dicomweb}/studies/1.2.3.4/rendered")
    assert missing.status_code == 404 and missing.json()["error"] == "no such study in the archive"


def _file(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _palette(ds: Dataset) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(ds.pixel_array, ds)
    return rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)


def test_several_frames_are_multipart_or_one_gif(viewer: Viewer) -> None:
    server, datasets = viewer
    ds = datasets["rgb_rle_2f"]
    url = server.dicomweb + path_of(ds) + "/frames/2,1/rendered"
    answer = httpx.get(url, headers={"Accept": "image/png"})
    got = parts(answer.headers["content-type"], answer.content)
    assert [kind for kind, _ in got] == ["image/png", "image/png"]
    assert np.array_equal(picture(got[0][1]), ds.pixel_array[1])
    assert np.array_equal(picture(got[1][1]), ds.pixel_array[0])
    gif = httpx.get(url, headers={"Accept": "image/gif"})
    assert gif.headers["content-type"] == "image/gif" and Image.open(BytesIO(gif.content)).n_frames == 2


def test_thumbnail_cache_is_bounded_and_least_recently_used_goes_first() -> None:
    cache = Thumbnails(budget=10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recently used
    cache.put("c", b"1234")           # over budget: b, the least recently used, goes
    assert cache.get("b") is None and cache.get("a") == b"1234" and cache.get("c") == b"1234"
    cache.put("huge", b"x" * 11)      # larger than the whole budget: never kept
    assert cache.get("huge") is None and cache.get("a") == b"1234"


def test_on_s3_and_postgresql(any_huren: Huren) -> None:
    datasets = study_of(["ct", "mr_j2k"])
    DICOMwebClient(any_huren.dicomweb).store_instances(list(datasets.values()))
    ct = datasets["ct"]
    shown = picture(httpx.get(any_huren.dicomweb + path_of(ct) + "/rendered", params={"window": "40,400"},
                              headers={"Accept": "image/png"}).content)
    assert np.array_equal(shown, picture(render(_file(ct), None, parse(window="40,400"), "image/png")))
    thumbnail = httpx.get(f"{any_huren.dicomweb}/studies/{ct.StudyInstanceUID}/thumbnail")
    assert thumbnail.status_code == 200 and max(Image.open(BytesIO(thumbnail.content)).size) <= 128
    mr = datasets["mr_j2k"]
    link = httpx.get(any_huren.url + "/wado", params={
        "requestType": "WADO", "studyUID": mr.StudyInstanceUID, "seriesUID": mr.SeriesInstanceUID,
        "objectUID": mr.SOPInstanceUID, "contentType": "image/png"})
    assert link.status_code == 200 and picture(link.content).shape == (mr.Rows, mr.Columns)


def test_one_frame_of_a_compressed_multi_frame_is_read_alone(tmp_path: Path) -> None:
    """A still of frame 20 of 30 reads the header and that frame's fragments, not the whole object,
    and is the picture the whole object gives."""
    class Counting(FilesystemStore):
        def read(self, key, start=0, length=None, **kw):
            for chunk in super().read(key, start, length, **kw):
                self.bytes_read += len(chunk)
                yield chunk

    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path)
    source = get_testdata_file("examples_ybr_color.dcm")
    stored = archive.add(path=Path(source))
    store = Counting(tmp_path / "archive")
    store.bytes_read = 0
    config = Config()
    with TestClient(build_app(config, archive.db, store, archive.ingest, tmp_path / "spool",
                              Compliance(archive.db, config), audit_trail(archive.db))) as client:
        answer = client.get(f"/dicom-web/studies/{stored.study_uid}/series/{stored.series_uid}/instances/"
                            f"{stored.sop_uid}/frames/20/rendered", headers={"Accept": "image/png"})
    assert answer.status_code == 200, answer.text
    size = Path(source).stat().st_size
    assert 0 < store.bytes_read < size / 5
    whole = render(Path(source).read_bytes(), [20], Rendering(), "image/png")
    assert np.array_equal(picture(answer.content), picture(whole))
