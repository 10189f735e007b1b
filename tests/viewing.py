"""What the viewer-facing tests share: pydicom's real files filed into one study, and a server per module.

Starting ``huren serve`` takes seconds on a busy machine; the rendered,
transcoding, WADO-URI and caching tests each start one per module and store
their study once, then only read.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import PYDICOM_FILES, Huren, huren_config

# Real vendor files in the syntaxes viewers meet; all bundled with pydicom (no download).
FILES = {
    "ct": "CT_small.dcm",                       # 16-bit signed CT, Explicit VR LE
    "mr_jls": "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "mr_j2k": "MR_small_jp2klossless.dcm",      # JPEG 2000 lossless
    "mr_rle": "MR_small_RLE.dcm",               # RLE
    "jpeg": "SC_rgb_jpeg_gdcm.dcm",             # JPEG baseline, colour
    "jpeg_lossless": "JPGExtended.dcm",         # JPEG extended 12-bit
    "rgb_rle_2f": "SC_rgb_rle_2frame.dcm",      # multi-frame colour RLE
    "palette": "examples_palette.dcm",          # PALETTE COLOR
}


def filed(name: str, study: str, series_number: int) -> Dataset:
    """A pydicom test file moved into `study`, its own series, with the identity Huren indexes."""
    ds = dcmread(PYDICOM_FILES / name)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = series_number
    ds.PatientID = ds.get("PatientID") or "VIEWER1"
    ds.PatientName = ds.get("PatientName") or "VIEWER^TEST"
    return ds


def study_of(keys: list[str]) -> dict[str, Dataset]:
    """The files named by `keys` in one new study, in series order."""
    study = generate_uid()
    return {key: filed(FILES[key], study, n) for n, key in enumerate(keys, start=1)}


def start(tmp: Path, **sections) -> Huren:
    return Huren(tmp, huren_config(tmp, **sections)).start()


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Huren, dict[str, Dataset]]]:
    """One server (folder + SQLite) holding a study of every file in :data:`FILES`, sent by STOW-RS."""
    server = start(tmp_path_factory.mktemp("viewer"))
    datasets = study_of(list(FILES))
    DICOMwebClient(server.dicomweb).store_instances(list(datasets.values()))
    yield server, datasets
    server.stop()


def path_of(ds: Dataset) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The (Content-Type, body) of each part of a multipart/related answer."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return [(p.get_content_type() + "".join(f"; {k}={v}" for k, v in p.get_params()[1:]),
             p.get_payload(decode=True)) for p in message.iter_parts()]
