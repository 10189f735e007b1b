"""The ingest's DICOM JSON is pydicom's, value for value, for every file pydicom ships.

:func:`archive.dicomjson.to_json` reads common values straight from the file's
bytes instead of through pydicom elements; these tests hold it to
``DataElement.to_json_dict`` on pydicom's test files and character-set files
(every transfer syntax, implicit and explicit VR, big endian, ISO 2022 and
multi-byte character sets, nested sequences, private tags, odd values).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from archive.dicomjson import to_json
from archive.header import DEFER
from tests import factory
from tests.conftest import PYDICOM_FILES
from tests.test_roundtrip import assert_same_json, expected_json

CHARSET_FILES = PYDICOM_FILES.parent / "charset_files"


def _readable(folder: Path) -> list[Path]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path, stop_before_pixels=True, force=True)
                ds.to_json_dict(None, 0)  # what pydicom itself can put into JSON
        except Exception:  # noqa: BLE001  (not a data set pydicom can read or write as JSON)
            continue
        if len(ds):
            found.append(path)
    return found


FILES = _readable(PYDICOM_FILES) + _readable(CHARSET_FILES)


def _read(path: Path, **kwargs) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, stop_before_pixels=True, force=True, **kwargs)


def test_there_are_files_to_compare() -> None:
    assert len(FILES) > 150
    assert any(p.parent == CHARSET_FILES for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PYDICOM_FILES.parent)))
def test_json_is_pydicoms(path: Path) -> None:
    expected = expected_json(_read(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = to_json(_read(path, defer_size=DEFER), "bulk", {})
    assert_same_json(expected, ours)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_values_of_every_common_vr(tmp_path: Path, syntax: UID) -> None:
    """Multi-values, empty values, padding, signs and numbers in each byte order."""
    ds = factory.instance(
        SpecificCharacterSet="ISO_IR 192",
        ImageType=["ORIGINAL", "", "AXIAL"],  # CS with an empty value
        PatientName="WANG^XIAOMING=王^小明",
        PatientID=" ID 1 ",  # LO keeps leading spaces
        StudyDescription="胸部\\平扫",  # a backslash in LO separates values
        ImageComments="line one\\still one  ",  # LT is one value
        PixelSpacing=["0.5", "1e-3"],
        SliceThickness=" 1.25 ",
        InstanceNumber="+7",
        SeriesNumber="",
        WindowCenter=["40", "-600"],
        SmallestImagePixelValue=3,
        FrameIncrementPointer=[0x00181063, 0x00181065],
        RetrieveAETitle=[" AE1 ", "AE2"],
        ReferencedFrameNumber=[1, 2],
        TagAngleSecondAxis=-5,
        RecommendedDisplayFrameRateInFloat=29.97,
        SelectorUVValue=[2**40, 1],
        SelectorSVValue=-(2**40),
        SelectorULValue=[7, 8],
        SelectorSLValue=-7,
        SpacingBetweenSlices="1.0",
        ContentTime="101500.123 ",
    )
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "values.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    assert_same_json(expected_json(_read(path)), to_json(_read(path, defer_size=DEFER), "bulk", {}))
