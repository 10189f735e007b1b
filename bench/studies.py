"""Synthetic but realistic DICOM studies, written as Part-10 files.

Used by the benchmark (``python -m bench.run``). Every function writes
explicit VR little endian files with a valid file meta header and returns
the paths it wrote, in send order. Given the same ``seed`` the
output is identical, UIDs included (they are derived from the seed with
:func:`pydicom.uid.generate_uid`); with ``seed=None`` a fresh seed is drawn.

Pixel data is a simple phantom plus noise, so that compression ratios and
transfer sizes are close to those of real images: a 512x512 CT slice is
512 KiB and compresses losslessly about 2:1, not 100:1 as zeros would.

Files are written under ``out_dir/<series folder>/``; use a fresh ``out_dir``
for each study so that two studies never share a folder.

Examples
--------
>>> from pathlib import Path
>>> from bench.studies import ct_study, tiny_studies
>>> paths = ct_study(Path("/tmp/ct"), thin_slices=60, thick_slices=12, seed=1)
>>> len(paths)
72
>>> tiny = tiny_studies(Path("/tmp/tiny"), 100, seed=1)
"""

from __future__ import annotations

import datetime as _dt
import random
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

__all__ = ["CHINESE_NAMES", "Exam", "ct_study", "dr_study", "mr_study", "tiny_studies"]

# SOP classes used here (PS3.4 Annex B).
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
MG_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
RF_IMAGE = UID("1.2.840.10008.5.1.4.1.1.12.2")
US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")

IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.8.498.1")
IMPLEMENTATION_VERSION = "HUREN_BENCH_1"
UTF8 = "ISO_IR 192"

#: (pinyin, hanzi) surname and given-name pairs for generated patients.
CHINESE_NAMES: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = (
    (
        ("ZHANG", "张"), ("WANG", "王"), ("LI", "李"), ("LIU", "刘"), ("CHEN", "陈"),
        ("YANG", "杨"), ("HUANG", "黄"), ("ZHAO", "赵"), ("WU", "吴"), ("ZHOU", "周"),
        ("XU", "徐"), ("SUN", "孙"), ("MA", "马"), ("ZHU", "朱"), ("HU", "胡"),
        ("GUO", "郭"), ("HE", "何"), ("GAO", "高"), ("LIN", "林"), ("LUO", "罗"),
        ("ZHENG", "郑"), ("LIANG", "梁"), ("XIE", "谢"), ("SONG", "宋"), ("TANG", "唐"),
        ("HAN", "韩"), ("FENG", "冯"), ("DENG", "邓"), ("CAO", "曹"), ("PENG", "彭"),
    ),
    (
        ("WEI", "伟"), ("FANG", "芳"), ("NA", "娜"), ("MIN", "敏"), ("JING", "静"),
        ("LI", "丽"), ("QIANG", "强"), ("LEI", "磊"), ("JUN", "军"), ("YANG", "洋"),
        ("YONG", "勇"), ("YAN", "艳"), ("JIE", "杰"), ("JUAN", "娟"), ("TAO", "涛"),
        ("MING", "明"), ("CHAO", "超"), ("XIUYING", "秀英"), ("XIAOMING", "小明"),
        ("HUA", "华"), ("PING", "平"), ("GANG", "刚"), ("GUIYING", "桂英"), ("XIA", "霞"),
    ),
)
_WESTERN_NAMES = ("SMITH^JOHN", "MUELLER^HANS", "TANAKA^YUKI", "KIM^MINJUN", "NGUYEN^AN")
_INSTITUTIONS = (
    "Peking Union Medical College Hospital",
    "Beijing Chaoyang Hospital",
    "Tianjin Medical University General Hospital",
    "Hebei General Hospital",
    "Beijing Tiantan Hospital",
)


@dataclass(frozen=True)
class Exam:
    """The patient and order a generated study belongs to.

    A non-ASCII `patient_name` sets *Specific Character Set* to ``ISO_IR 192``.
    """

    patient_name: str
    patient_id: str
    study_date: str  # YYYYMMDD
    accession: str


_CT_EXAM = Exam("WANG^XIAOMING=王^小明", "BENCH-CT-0001", "20240315", "ACC-CT-0001")
_MR_EXAM = Exam("LI^NA=李^娜", "BENCH-MR-0001", "20240316", "ACC-MR-0001")
_DR_EXAM = Exam("ZHAO^LEI=赵^磊", "BENCH-DX-0001", "20240317", "ACC-DX-0001")


# --------------------------------------------------------------------------- helpers


class _Uids:
    """Deterministic UIDs: the same seed and parts always give the same UID."""

    def __init__(self, seed: int) -> None:
        self.seed = str(seed)

    def __call__(self, *parts: object) -> UID:
        return generate_uid(entropy_srcs=["huren-bench", self.seed, *map(str, parts)])


def _seed(seed: int | None) -> int:
    return secrets.randbits(63) if seed is None else int(seed)


def _randomness(seed: int | None) -> tuple[_Uids, np.random.Generator]:
    """UIDs and pixel noise that the same `seed` reproduces."""
    seed = _seed(seed)
    return _Uids(seed), np.random.default_rng(seed)


def _needs_utf8(*texts: str) -> bool:
    return any(not text.isascii() for text in texts)


def _age(birth_date: str, on: str) -> str:
    born = _dt.date(int(birth_date[:4]), int(birth_date[4:6]), int(birth_date[6:8]))
    day = _dt.date(int(on[:4]), int(on[4:6]), int(on[6:8]))
    years = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
    return f"{max(years, 0):03d}Y"


def _write(ds: Dataset, path: Path) -> Path:
    """Write `ds` to `path` as a Part-10 file in explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _study_dataset(
    *,
    uids: _Uids,
    exam: Exam,
    modality: str,
    sop_class: UID,
    birth_date: str,
    sex: str,
    study_time: str,
    description: str,
    body_part: str,
    institution: str,
) -> Dataset:
    """The patient, study and equipment attributes shared by every instance."""
    ds = Dataset()
    if _needs_utf8(exam.patient_name, description, institution):
        ds.SpecificCharacterSet = UTF8
    day = exam.study_date
    ds.update({
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["ORIGINAL", "PRIMARY"],
        "SOPClassUID": sop_class,
        "StudyDate": day, "SeriesDate": day, "AcquisitionDate": day, "ContentDate": day,
        "StudyTime": study_time, "SeriesTime": study_time, "ContentTime": study_time,
        "AccessionNumber": exam.accession,
        "Modality": modality,
        "Manufacturer": "Huren Bench",
        "InstitutionName": institution,
        "ReferringPhysicianName": "",
        "StudyDescription": description,
        "ManufacturerModelName": "Synthetic",
        "PatientName": exam.patient_name,
        "PatientID": exam.patient_id,
        "IssuerOfPatientID": "HUREN-BENCH",
        "PatientBirthDate": birth_date,
        "PatientSex": sex,
        "PatientAge": _age(birth_date, day),
        "BodyPartExamined": body_part,
        "StudyInstanceUID": uids("study"),
        "StudyID": exam.accession[-16:],
        "FrameOfReferenceUID": uids("frame-of-reference"),
        "PositionReferenceIndicator": "",
        "PatientPosition": "HFS",
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "PixelRepresentation": 0,
        "LossyImageCompression": "00",
        "BurnedInAnnotation": "NO",
    })
    return ds


def _image_pixel(ds: Dataset, rows: int, columns: int, bits_stored: int) -> None:
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1


def _noise(rng: np.random.Generator, count: int, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """`count` frames of integer Gaussian noise, reused (rolled) across slices."""
    return (rng.standard_normal((count, *shape), dtype=np.float32) * sigma).astype(np.int32)


def _grid(rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in [-1, 1], x across columns and y down rows."""
    y, x = np.mgrid[-1 : 1 : rows * 1j, -1 : 1 : columns * 1j]
    return x.astype(np.float32), y.astype(np.float32)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _slices(
    variants: list[np.ndarray], noise: np.ndarray, count: int, maximum: int
) -> Iterator[bytes]:
    """Pixel bytes for `count` slices: anatomy changes slowly, noise every slice."""
    rows = noise.shape[1]
    for index in range(count):
        anatomy = variants[min(index * len(variants) // max(count, 1), len(variants) - 1)]
        frame = anatomy + np.roll(noise[index % len(noise)], (index * 37) % rows, axis=0)
        np.clip(frame, 0, maximum, out=frame)
        yield frame.astype("<u2").tobytes()


# --------------------------------------------------------------------------- CT


def _ct_anatomy(matrix: int, count: int) -> list[np.ndarray]:
    """`count` chest-like phantoms (stored values, HU + 1024) from neck to abdomen."""
    x, y = _grid(matrix, matrix)
    variants = []
    for k in range(count):
        z = (k + 0.5) / count  # 0 = top, 1 = bottom
        lung = max(np.sin(np.pi * z), 0.15)
        hu = np.full((matrix, matrix), -1000, dtype=np.int32)
        hu[(y > 0.72) & (y < 0.78) & (np.abs(x) < 0.9)] = 250  # table
        body = _ellipse(x, y, 0, 0.05, 0.82, 0.6)
        hu[body] = -100  # subcutaneous fat
        hu[_ellipse(x, y, 0, 0.05, 0.76, 0.54)] = 40  # soft tissue
        hu[_ellipse(x, y, -0.33, 0.0, 0.24 * lung, 0.36 * lung)] = -850
        hu[_ellipse(x, y, 0.33, 0.0, 0.24 * lung, 0.36 * lung)] = -850
        hu[_ellipse(x, y, 0.08, 0.08, 0.2 * (1.1 - lung / 2), 0.17 * (1.1 - lung / 2))] = 45
        hu[_ellipse(x, y, 0, 0.4, 0.08, 0.08)] = 700  # vertebra
        hu[_ellipse(x, y, 0, 0.4, 0.04, 0.04)] = 250  # canal
        hu[_ellipse(x, y, 0, -0.45, 0.06, 0.03)] = 900  # sternum
        variants.append(hu + 1024)
    return variants


def ct_study(
    out_dir: Path,
    *,
    thin_slices: int = 300,
    thick_slices: int = 60,
    exam: Exam = _CT_EXAM,
    matrix: int = 512,
    seed: int | None = None,
) -> list[Path]:
    """Write one chest CT study: a thin (1 mm) and a thick (5 mm) axial series.

    Parameters
    ----------
    out_dir : pathlib.Path
        Folder to write into (created); the series go to ``ct-thin/`` and ``ct-thick/``.
    thin_slices : int, optional
        Number of 1.0 mm slices in series 2 (default 300).
    thick_slices : int, optional
        Number of 5.0 mm slices in series 3 (default 60); ``0`` writes no thick series.
    exam : Exam, optional
        Patient name and ID, study date and accession number.
    matrix : int, optional
        Rows and columns of every slice (default 512).
    seed : int or None, optional
        Makes UIDs and pixel noise reproducible.

    Returns
    -------
    list of pathlib.Path
        The thin series files then the thick series files, by instance number.
    """
    uids, rng = _randomness(seed)
    base = _study_dataset(
        uids=uids, modality="CT", sop_class=CT_IMAGE, exam=exam,
        birth_date="19580723", sex="M", study_time="093512", description="CT CHEST PLAIN",
        body_part="CHEST", institution=_INSTITUTIONS[0],
    )
    _image_pixel(base, matrix, matrix, 12)
    base.update({
        "KVP": "120", "ConvolutionKernel": "B31f", "PatientOrientation": "",
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "PixelSpacing": [0.703125 * 512 / matrix] * 2,
        "RescaleIntercept": "-1024", "RescaleSlope": "1", "RescaleType": "HU",
        "WindowCenter": ["40", "-600"], "WindowWidth": ["400", "1500"],
        "AcquisitionNumber": 1, "ProtocolName": "Chest routine",
    })

    anatomy = _ct_anatomy(matrix, 8)
    noise = _noise(rng, 12, (matrix, matrix), 12.0)
    out_dir = Path(out_dir)
    paths: list[Path] = []
    for number, folder, count, thickness in (
        (2, "ct-thin", thin_slices, 1.0),
        (3, "ct-thick", thick_slices, 5.0),
    ):
        if count <= 0:
            continue
        base.SeriesInstanceUID = uids("series", number)
        base.SeriesNumber = number
        base.SeriesDescription = f"Chest {thickness:g}mm"
        base.SliceThickness = f"{thickness:g}"
        base.SpacingBetweenSlices = f"{thickness:g}"
        base.ImagesInAcquisition = count
        pixels = _slices(anatomy, noise, count, 4095)
        for index, frame in enumerate(pixels):
            z = -40.0 - index * thickness
            base.SOPInstanceUID = uids("instance", number, index)
            base.InstanceNumber = index + 1
            base.ImagePositionPatient = [-180.0, -180.0, z]
            base.SliceLocation = f"{z:g}"
            base.PixelData = frame
            paths.append(_write(base, out_dir / folder / f"{index + 1:04d}.dcm"))
    return paths


# --------------------------------------------------------------------------- MR

# (description, scanning sequence, TR, TE, tissue intensities for background, scalp, grey, white, CSF)
_MR_SEQUENCES = (
    ("T1 SE AX", ("SE",), 500.0, 12.0, (0, 700, 420, 560, 150)),
    ("T2 TSE AX", ("SE",), 4000.0, 95.0, (0, 500, 620, 430, 1300)),
    ("FLAIR AX", ("SE", "IR"), 9000.0, 120.0, (0, 520, 640, 480, 90)),
    ("DWI b1000 AX", ("EP",), 5200.0, 80.0, (0, 120, 380, 330, 60)),
    ("T1 SE SAG", ("SE",), 520.0, 11.0, (0, 690, 410, 550, 140)),
    ("T2 FLAIR COR", ("SE", "IR"), 8800.0, 118.0, (0, 510, 630, 470, 85)),
)


def _mr_labels(matrix: int, count: int) -> list[np.ndarray]:
    """Tissue label maps for a head: 0 air, 1 scalp, 2 grey, 3 white, 4 CSF."""
    x, y = _grid(matrix, matrix)
    maps = []
    for k in range(count):
        s = max(np.sin(np.pi * (k + 0.5) / count), 0.2)
        labels = np.zeros((matrix, matrix), dtype=np.int32)
        labels[_ellipse(x, y, 0, 0, 0.75 * s + 0.1, 0.9 * s + 0.05)] = 1
        labels[_ellipse(x, y, 0, 0, 0.68 * s + 0.08, 0.82 * s + 0.04)] = 2
        labels[_ellipse(x, y, 0, 0, 0.55 * s, 0.68 * s)] = 3
        labels[_ellipse(x, y, -0.1, -0.05, 0.06 * s, 0.22 * s)] = 4
        labels[_ellipse(x, y, 0.1, -0.05, 0.06 * s, 0.22 * s)] = 4
        maps.append(labels)
    return maps


def mr_study(
    out_dir: Path,
    *,
    sequences: int = 4,
    slices: int = 24,
    exam: Exam = _MR_EXAM,
    matrix: int = 256,
    seed: int | None = None,
) -> list[Path]:
    """Write one head MR study with `sequences` series of `slices` slices each.

    Parameters
    ----------
    out_dir : pathlib.Path
        Folder to write into; series go to ``mr-01/``, ``mr-02/``, ...
    sequences : int, optional
        Number of series (T1, T2, FLAIR, DWI, ...; at most 6), default 4.
    slices : int, optional
        Slices per series (default 24), 5 mm thick.
    exam, seed : optional
        As for :func:`ct_study`.
    matrix : int, optional
        Rows and columns (default 256).

    Returns
    -------
    list of pathlib.Path
        Every file, series by series.
    """
    if not 1 <= sequences <= len(_MR_SEQUENCES):
        raise ValueError(f"sequences must be 1..{len(_MR_SEQUENCES)}")
    uids, rng = _randomness(seed)
    base = _study_dataset(
        uids=uids, modality="MR", sop_class=MR_IMAGE, exam=exam,
        birth_date="19750412", sex="F", study_time="141005", description="MR HEAD PLAIN",
        body_part="HEAD", institution=_INSTITUTIONS[1],
    )
    _image_pixel(base, matrix, matrix, 12)
    base.update({
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        "MagneticFieldStrength": "3", "ImagingFrequency": "123.2", "ImagedNucleus": "1H",
        "SequenceVariant": "SK", "ScanOptions": "", "MRAcquisitionType": "2D",
        "SliceThickness": "5", "SpacingBetweenSlices": "6",
        "PixelSpacing": [0.9375 * 256 / matrix] * 2, "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "PatientOrientation": "", "WindowCenter": "600", "WindowWidth": "1200",
    })

    labels = _mr_labels(matrix, 6)
    noise = np.abs(_noise(rng, 8, (matrix, matrix), 20.0))
    out_dir = Path(out_dir)
    paths: list[Path] = []
    for s, (description, scanning, tr, te, tissue) in enumerate(_MR_SEQUENCES[:sequences]):
        number = s + 1
        table = np.asarray(tissue, dtype=np.int32)
        anatomy = [table[label] for label in labels]
        base.SeriesInstanceUID = uids("series", number)
        base.SeriesNumber = number
        base.SeriesDescription = description
        base.ProtocolName = description
        base.SequenceName = description.split()[0]
        base.ScanningSequence = list(scanning)  # pydicom takes a list, not a tuple, as a multi-value
        base.RepetitionTime = f"{tr:g}"
        base.EchoTime = f"{te:g}"
        base.AcquisitionNumber = number
        for index, frame in enumerate(_slices(anatomy, noise, slices, 4095)):
            z = -60.0 + index * 6.0
            base.SOPInstanceUID = uids("instance", number, index)
            base.InstanceNumber = index + 1
            base.ImagePositionPatient = [-120.0, -120.0, z]
            base.SliceLocation = f"{z:g}"
            base.PixelData = frame
            paths.append(_write(base, out_dir / f"mr-{number:02d}" / f"{index + 1:04d}.dcm"))
    return paths


# --------------------------------------------------------------------------- DR


def dr_study(
    out_dir: Path,
    *,
    rows: int = 3000,
    columns: int = 2500,
    exam: Exam = _DR_EXAM,
    seed: int | None = None,
) -> list[Path]:
    """Write one chest DR study: a single large 16-bit DX image (PA view).

    Parameters
    ----------
    out_dir : pathlib.Path
        Folder to write into; the image goes to ``dx/0001.dcm``.
    rows, columns : int, optional
        Image size (default 3000 x 2500, about 15 MB of pixel data).
    exam, seed : optional
        As for :func:`ct_study`.

    Returns
    -------
    list of pathlib.Path
        The one file written.
    """
    uids, rng = _randomness(seed)
    ds = _study_dataset(
        uids=uids, modality="DX", sop_class=DX_PRESENTATION, exam=exam,
        birth_date="19900105", sex="M", study_time="080244", description="DR CHEST PA",
        body_part="CHEST", institution=_INSTITUTIONS[2],
    )
    _image_pixel(ds, rows, columns, 14)
    del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator, ds.PatientPosition
    ds.update({
        "PresentationIntentType": "FOR PRESENTATION",
        "PixelIntensityRelationship": "LOG", "PixelIntensityRelationshipSign": 1,
        "RescaleIntercept": "0", "RescaleSlope": "1", "RescaleType": "US",
        "PresentationLUTShape": "IDENTITY",
        "ImagerPixelSpacing": ["0.139", "0.139"], "PixelSpacing": ["0.139", "0.139"],
        "ViewPosition": "PA", "PatientOrientation": ["L", "F"], "KVP": "125",
        "WindowCenter": "8192", "WindowWidth": "12000",
        "SeriesInstanceUID": uids("series", 1), "SeriesNumber": 1, "SeriesDescription": "Chest PA",
        "InstanceNumber": 1, "SOPInstanceUID": uids("instance", 1, 0),
    })

    x, y = _grid(rows, columns)
    image = np.full((rows, columns), 2000.0, dtype=np.float32)
    image += 9000.0 * _ellipse(x, y, 0, 0.05, 0.85, 0.95)  # mediastinum and soft tissue
    image -= 5000.0 * _ellipse(x, y, -0.4, -0.1, 0.3, 0.6)  # lungs
    image -= 5000.0 * _ellipse(x, y, 0.4, -0.1, 0.3, 0.6)
    image += 3000.0 * (np.abs(np.sin(y * 14.0)) > 0.96) * _ellipse(x, y, 0, -0.1, 0.75, 0.65)  # ribs
    image += rng.standard_normal((rows, columns), dtype=np.float32) * 60.0
    np.clip(image, 0, 16383, out=image)
    ds.PixelData = image.astype("<u2").tobytes()
    return [_write(ds, Path(out_dir) / "dx" / "0001.dcm")]


# --------------------------------------------------------------------------- tiny


# modality -> (SOP class, study descriptions, body parts)
_TINY_MODALITIES: dict[str, tuple[UID, tuple[str, ...], tuple[str, ...]]] = {
    "CT": (CT_IMAGE, ("CT CHEST PLAIN", "CT HEAD PLAIN", "CT ABDOMEN ENHANCED"), ("CHEST", "HEAD", "ABDOMEN")),
    "MR": (MR_IMAGE, ("MR KNEE PLAIN", "MR HEAD PLAIN", "MR LSPINE PLAIN"), ("KNEE", "HEAD", "LSPINE")),
    "DX": (DX_PRESENTATION, ("DR CHEST PA", "DR HAND", "DR PELVIS AP"), ("CHEST", "HAND", "PELVIS")),
    "CR": (CR_IMAGE, ("CR CHEST PA", "CR SKULL"), ("CHEST", "SKULL")),
    "MG": (MG_PRESENTATION, ("MG BILATERAL SCREENING",), ("BREAST",)),
    "RF": (RF_IMAGE, ("GI UPPER SERIES", "GI BARIUM SWALLOW"), ("STOMACH", "ESOPHAGUS")),
    "US": (US_IMAGE, ("US ABDOMEN", "US THYROID"), ("ABDOMEN", "NECK")),
}
# Roughly a regional hospital's mix.
_TINY_WEIGHTS = {"CT": 30, "MR": 15, "DX": 30, "CR": 5, "MG": 5, "RF": 5, "US": 10}
_TINY_FIRST_DAY = _dt.date(2015, 1, 1).toordinal()
_TINY_LAST_DAY = _dt.date(2025, 6, 30).toordinal()


def _tiny_patient(seed: int, number: int) -> tuple[str, str, str, str]:
    """(PatientName, PatientID, PatientBirthDate, PatientSex) for patient `number`."""
    rng = random.Random(f"{seed}:patient:{number}")
    surnames, given_names = CHINESE_NAMES
    (family, family_zh), (given, given_zh) = rng.choice(surnames), rng.choice(given_names)
    style = rng.random()
    if style < 0.05:
        name = rng.choice(_WESTERN_NAMES)
    elif style < 0.5:
        name = f"{family}^{given}"
    elif style < 0.9:
        name = f"{family}^{given}={family_zh}^{given_zh}"
    else:
        name = f"{family_zh}^{given_zh}"
    born = _dt.date.fromordinal(rng.randint(_dt.date(1935, 1, 1).toordinal(), _dt.date(2014, 12, 31).toordinal()))
    return name, f"T{number:07d}", born.strftime("%Y%m%d"), rng.choice("FM")


def tiny_studies(
    out_dir: Path,
    count: int,
    *,
    start: int = 0,
    seed: int | None = 0,
) -> list[Path]:
    """Write `count` tiny studies (one 8x8 instance each) for index-size tests.

    Study number ``i`` is the same whatever `count` is, so the first 2,000 of
    100,000 studies equal ``tiny_studies(dir, 2000)``. Each patient has about
    three studies; names are pinyin (``ZHANG^WEI``), pinyin with an ideographic
    group (``ZHANG^WEI=张^伟``) or ideographic only (``张^伟``), non-ASCII ones
    with *Specific Character Set* ``ISO_IR 192``. Dates spread over 2015-2025;
    modalities are CT, MR, DX, CR, MG, RF (GI) and US.

    Parameters
    ----------
    out_dir : pathlib.Path
        Files go to ``out_dir/<i // 1000>/<i>.dcm``.
    count : int
        Number of studies.
    start : int, optional
        Number of the first study (default 0), to extend an existing set.
    seed : int or None, optional
        Default 0, so that every caller gets the same set; ``None`` draws one.

    Returns
    -------
    list of pathlib.Path
        The files, in study order.
    """
    seed = _seed(seed)
    uids = _Uids(seed)
    modalities = list(_TINY_WEIGHTS)
    weights = list(_TINY_WEIGHTS.values())
    templates = {modality: _tiny_template(modality) for modality in modalities}
    out_dir = Path(out_dir)
    paths: list[Path] = []
    for number in range(start, start + count):
        rng = random.Random(f"{seed}:study:{number}")
        modality = rng.choices(modalities, weights)[0]
        ds = templates[modality]
        _, descriptions, body_parts = _TINY_MODALITIES[modality]
        which = rng.randrange(len(descriptions))
        name, patient_id, birth_date, sex = _tiny_patient(seed, number // 3)
        day = _dt.date.fromordinal(rng.randint(_TINY_FIRST_DAY, _TINY_LAST_DAY)).strftime("%Y%m%d")
        clock = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
        if not name.isascii():
            ds.SpecificCharacterSet = UTF8
        for keyword in ("StudyDate", "SeriesDate", "ContentDate"):
            setattr(ds, keyword, day)
        for keyword in ("StudyTime", "SeriesTime", "ContentTime"):
            setattr(ds, keyword, clock)
        ds.AccessionNumber = f"T{number:09d}"
        ds.StudyID = str(number % 100000)
        ds.InstitutionName = _INSTITUTIONS[rng.randrange(len(_INSTITUTIONS))]
        ds.StudyDescription = descriptions[which]
        ds.BodyPartExamined = body_parts[which]
        ds.PatientName = name
        ds.PatientID = patient_id
        ds.PatientBirthDate = birth_date
        ds.PatientSex = sex
        ds.PatientAge = _age(birth_date, day)
        ds.StudyInstanceUID = uids("tiny-study", number)
        ds.SeriesInstanceUID = uids("tiny-series", number)
        ds.SOPInstanceUID = uids("tiny-instance", number)
        ds.PixelData = struct.pack("<64H", *(rng.randrange(4096) for _ in range(64)))
        paths.append(_write(ds, out_dir / f"{number // 1000:04d}" / f"{number:07d}.dcm"))
    return paths


def _tiny_template(modality: str) -> Dataset:
    """A reusable one-instance dataset for `modality`; per-study values are set later."""
    sop_class = _TINY_MODALITIES[modality][0]
    ds = Dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.Manufacturer = "Huren Bench"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"{modality} tiny"
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    _image_pixel(ds, 8, 8, 12)
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    if modality in ("DX", "MG"):
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.ImagerPixelSpacing = ["0.1", "0.1"]
    return ds
