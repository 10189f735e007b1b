"""Transcoding on retrieve (PS3.18 §8.7.3): instances, series and frames in the syntax the client names.

Every copy is compared pixel for pixel with pydicom's decode of the stored
file (JPEG baseline, being lossy, within a bound); stored frames asked for
with ``transfer-syntax=*`` must be the stored bitstream itself.
"""

from __future__ import annotations

from io import BytesIO

import httpx
import imagecodecs
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from archive.transcode import TARGETS, CannotTranscode, check, transcoded
from tests import viewing
from tests.conftest import PYDICOM_FILES, Huren
from tests.viewing import FILES, parts, path_of, study_of

Viewer = tuple[Huren, dict[str, Dataset]]
viewer = viewing.viewer  # the module's server and study (a fixture)
LOSSLESS = sorted(TARGETS - {JPEGBaseline8Bit})


@pytest.mark.parametrize("key", ["ct", "mr_jls", "mr_j2k", "mr_rle", "jpeg", "rgb_rle_2f"])
@pytest.mark.parametrize("target", LOSSLESS)
def test_lossless_targets_keep_every_pixel(key: str, target: str) -> None:
    raw = (PYDICOM_FILES / FILES[key]).read_bytes()
    copy = dcmread(BytesIO(transcoded([raw], target)))
    assert copy.file_meta.TransferSyntaxUID == target
    # The same instance in another encoding: pydicom would otherwise mint a new SOP Instance UID.
    assert copy.SOPInstanceUID == dcmread(BytesIO(raw)).SOPInstanceUID
    assert np.array_equal(copy.pixel_array, dcmread(BytesIO(raw)).pixel_array)


@pytest.mark.parametrize("key", ["jpeg", "rgb_rle_2f"])
def test_jpeg_baseline_of_8_bit_colour(key: str) -> None:
    raw = (PYDICOM_FILES / FILES[key]).read_bytes()
    copy = dcmread(BytesIO(transcoded([raw], JPEGBaseline8Bit)))
    assert copy.PhotometricInterpretation == "YBR_FULL_422" and copy.LossyImageCompression == "01"
    original = dcmread(BytesIO(raw)).pixel_array.astype(int)
    assert np.abs(copy.pixel_array.astype(int) - original).mean() < 3


def test_what_cannot_be_made_says_why() -> None:
    with pytest.raises(CannotTranscode, match="8-bit"):
        check(ExplicitVRLittleEndian, JPEGBaseline8Bit, 16)
    with pytest.raises(CannotTranscode, match="cannot be produced"):
        check(ExplicitVRLittleEndian, "1.2.840.10008.1.2.4.100")  # MPEG2: a real syntax we do not make
    with pytest.raises(CannotTranscode, match="cannot be produced"):
        check(ExplicitVRLittleEndian, "1.2.3.4")


@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless, RLELossless,
                                    JPEGLosslessSV1])
def test_instance_in_named_syntax(viewer: Viewer, target: str) -> None:
    server, datasets = viewer
    web = DICOMwebClient(server.dicomweb)
    for key in ("ct", "mr_jls", "rgb_rle_2f"):
        ds = datasets[key]
        got = web.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                    media_types=(("application/dicom", target),))
        assert got.file_meta.TransferSyntaxUID == target
        assert np.array_equal(got.pixel_array, ds.pixel_array), key


def test_series_picks_the_best_syntax_it_can_make(viewer: Viewer) -> None:
    server, datasets = viewer
    ds = datasets["ct"]
    accept = ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, '
              'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5; q=0.5, '
              'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4; q=0.9')
    answer = httpx.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}",
                       headers={"Accept": accept})
    assert answer.status_code == 200, answer.text
    [(kind, body)] = parts(answer.headers["content-type"], answer.content)
    assert kind == f"application/dicom; transfer-syntax={RLELossless}"
    assert np.array_equal(dcmread(BytesIO(body)).pixel_array, ds.pixel_array)


def test_study_in_explicit_little_endian(viewer: Viewer) -> None:
    server, datasets = viewer
    study = datasets["ct"].StudyInstanceUID
    got = DICOMwebClient(server.dicomweb).retrieve_study(
        study, media_types=(("application/dicom", ExplicitVRLittleEndian),))
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets.values()}
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(by_uid)
    for ds in got:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, by_uid[ds.SOPInstanceUID].pixel_array)


def test_frames_as_stored_are_the_stored_bitstream(viewer: Viewer) -> None:
    server, datasets = viewer
    web = DICOMwebClient(server.dicomweb)
    for key, kind in (("mr_jls", "image/jls"), ("mr_j2k", "image/jp2"), ("jpeg", "image/jpeg"),
                      ("rgb_rle_2f", "image/dicom-rle")):
        ds = datasets[key]
        stored = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))
        # What OHIF sends: octet-stream with any transfer syntax, meaning "as stored, please".
        answer = httpx.get(server.dicomweb + path_of(ds) + "/frames/1", headers={
            "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
        assert answer.status_code == 200, answer.text
        [(part_type, body)] = parts(answer.headers["content-type"], answer.content)
        assert part_type == f"{kind}; transfer-syntax={ds.file_meta.TransferSyntaxUID}", key
        assert f"transfer-syntax={ds.file_meta.TransferSyntaxUID}" in answer.headers["content-type"]
        assert body == stored[0], key
        frames = web.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                              [len(stored)], media_types=((kind, "*"),))
        assert frames == [stored[-1]], key


def test_frames_transcoded_and_decoded(viewer: Viewer) -> None:
    server, datasets = viewer
    web = DICOMwebClient(server.dicomweb)
    ds = datasets["mr_jls"]
    uids = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    [j2k] = web.retrieve_instance_frames(*uids, [1], media_types=(("image/jp2", JPEG2000Lossless),))
    assert np.array_equal(imagecodecs.jpeg2k_decode(j2k), ds.pixel_array.astype(np.uint16))
    [native] = web.retrieve_instance_frames(*uids, [1], media_types=("application/octet-stream",))
    assert np.array_equal(np.frombuffer(native, "<i2" if ds.PixelRepresentation else "<u2"),
                          ds.pixel_array.ravel())
    colour = datasets["rgb_rle_2f"]
    [jls] = web.retrieve_instance_frames(colour.StudyInstanceUID, colour.SeriesInstanceUID,
                                         colour.SOPInstanceUID, [2], media_types=(("image/jls", JPEGLSLossless),))
    assert np.array_equal(imagecodecs.jpegls_decode(jls), colour.pixel_array[1])


@pytest.mark.parametrize(("path", "accept", "status"), [
    ("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4', 406),
    ("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50', 406),  # 16-bit
    ("", "multipart/related; type=application/dicom; q=2", 400),
    ("", "text/html", 406),
    ("/frames/1", 'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.91', 406),
    ("/frames/1", "multipart/related; type=image/jpeg", 406),  # JPEG baseline of 16-bit pixels
    ("/frames/0", "*/*", 400),
    ("/frames/2", "*/*", 404),
    ("/frames/x", "*/*", 400),
])
def test_bad_input(viewer: Viewer, path: str, accept: str, status: int) -> None:
    server, datasets = viewer
    answer = httpx.get(server.dicomweb + path_of(datasets["ct"]) + path, headers={"Accept": accept})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]


def test_on_s3_and_postgresql(any_huren: Huren) -> None:
    web = DICOMwebClient(any_huren.dicomweb)
    datasets = study_of(["mr_jls", "rgb_rle_2f"])
    web.store_instances(list(datasets.values()))
    for ds in datasets.values():
        uids = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        got = web.retrieve_instance(*uids, media_types=(("application/dicom", JPEG2000Lossless),))
        assert np.array_equal(got.pixel_array, ds.pixel_array)
        stored = next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))
        kind = "image/jls" if ds.file_meta.TransferSyntaxUID == JPEGLSLossless else "image/dicom-rle"
        assert web.retrieve_instance_frames(*uids, [1], media_types=((kind, "*"),)) == [stored]
        # Decoded from the last frame's own bytes, read by range (not the whole object).
        count = int(ds.get("NumberOfFrames") or 1)
        [native] = web.retrieve_instance_frames(*uids, [count], media_types=("application/octet-stream",))
        last = ds.pixel_array if count == 1 else ds.pixel_array[-1]
        assert native == last.astype(last.dtype.newbyteorder("<")).tobytes()


def test_instance_in_implicit_little_endian(viewer: Viewer) -> None:
    # dicomweb-client refuses to ask for Implicit VR; a plain HTTP client may.
    server, datasets = viewer
    ds = datasets["mr_jls"]
    answer = httpx.get(server.dicomweb + path_of(ds),
                       headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2"
    got = dcmread(BytesIO(answer.content))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2" and got.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(got.pixel_array, ds.pixel_array)
