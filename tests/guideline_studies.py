"""Realistic studies for every item of the shipped guideline (``conf/guideline/jjj.yaml``).

``study("JJJ-CT-HEAD")`` is a study that passes: a Chinese patient with an
issuer and a national ID, institution, accession, a localizer, a 5 mm and a
1 mm axial series over the same range and a verified SR report. Knobs and
small helpers break one rule at a time (drop a series, rename it, move its
slices, a lossy syntax via :func:`facts_of`, an unverified report ...).

With ``pixels=True`` CT and MR slices carry 512×512 16-bit pixels (one shared
phantom per kind, so memory stays small) and every data set has file meta, so
the lead's end-to-end tests can write them as Part-10 files and send them.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset

from archive.dicomjson import to_json
from archive.guideline.facts import instance_facts
from tests.factory import with_meta

RULES = Path(__file__).resolve().parent.parent / "conf" / "guideline" / "jjj.yaml"

PATIENT = {"PatientName": "Wang^Fang=王^芳", "PatientID": "BJ0012345", "IssuerOfPatientID": "BJ-DEMO-1",
           "PatientBirthDate": "19660315", "PatientSex": "F"}
INSTITUTION = "北京市第一示范医院"
AXIAL, CORONAL, SAGITTAL = [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1]
FOR_PROCESSING = {
    uid.DigitalXRayImageStorageForPresentation: uid.DigitalXRayImageStorageForProcessing,
    uid.DigitalMammographyXRayImageStorageForPresentation: uid.DigitalMammographyXRayImageStorageForProcessing,
}


@functools.cache
def _phantom(rows: int, columns: int, level: int) -> bytes:
    """A disk of `level` in a dark field with a little noise: pixels a viewer can show."""
    y, x = np.mgrid[:rows, :columns]
    disk = (x - columns / 2) ** 2 + (y - rows / 2) ** 2 < (min(rows, columns) * 0.4) ** 2
    noise = np.random.default_rng(rows + level).integers(0, 40, (rows, columns))
    return (disk * level + noise).astype(np.uint16).tobytes()


class Builder:
    """Series of one study, numbered in the order they are added."""

    def __init__(self, pixels: bool) -> None:
        self.pixels = pixels
        self.study_uid, self.frame_uid = uid.generate_uid(), uid.generate_uid()
        self.datasets: list[Dataset] = []
        self.descriptions: list[str] = []
        self.number = 0

    def image(self, sop_class: str, modality: str, series: tuple[str, int], number: int, description: str,
              *, size: tuple[int, int] = (512, 512), level: int = 1024, **attributes: Any) -> Dataset:
        ds = _dataset(
            SOPClassUID=sop_class, SOPInstanceUID=uid.generate_uid(), StudyInstanceUID=self.study_uid,
            SeriesInstanceUID=series[0], SeriesNumber=series[1], Modality=modality, InstanceNumber=number,
            SeriesDescription=description, Manufacturer="DEMO MEDICAL", StationName=f"{modality}01",
            FrameOfReferenceUID=self.frame_uid, Rows=size[0], Columns=size[1], SamplesPerPixel=1,
            PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=12, HighBit=11,
            PixelRepresentation=0, **attributes)
        if self.pixels:
            ds.PixelData = _phantom(*size, level)
        self.datasets.append(ds)
        return ds

    def series(self) -> tuple[str, int]:
        self.number += 1
        return uid.generate_uid(), self.number

    def ct_localizer(self, body_part: str) -> None:
        self.image(uid.CTImageStorage, "CT", self.series(), 1, "Topogram 0.6 T20s", BodyPartExamined=body_part,
                   ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], ImageOrientationPatient=SAGITTAL,
                   ImagePositionPatient=[0, -250, 200], PixelSpacing=[1, 1], SliceThickness=0.6)

    def ct_stack(self, description: str, body_part: str, thickness: float, top: float, bottom: float,
                 **attributes: Any) -> None:
        """An axial series from `top` down to `bottom` (mm along the patient's head-foot axis)."""
        series = self.series()
        for i in range(round((top - bottom) / thickness) + 1):
            z = top - i * thickness
            self.image(uid.CTImageStorage, "CT", series, i + 1, description, BodyPartExamined=body_part,
                       ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], SliceThickness=thickness,
                       ImagePositionPatient=[-249.5, -249.5, z], ImageOrientationPatient=AXIAL, SliceLocation=z,
                       PixelSpacing=[0.977, 0.977], KVP=120, RescaleIntercept=-1024, RescaleSlope=1,
                       WindowCenter=40, WindowWidth=400, PatientPosition="HFS", **attributes)

    def ct_mpr(self, description: str, body_part: str, orientation: list[int], count: int = 20,
               **attributes: Any) -> None:
        series = self.series()
        for i in range(count):
            self.image(uid.CTImageStorage, "CT", series, i + 1, description, BodyPartExamined=body_part,
                       ImageType=["DERIVED", "SECONDARY", "MPR"], SliceThickness=3,
                       ImagePositionPatient=[-249.5, -150 + 3 * i, 0], ImageOrientationPatient=orientation,
                       PixelSpacing=[0.977, 0.977], RescaleIntercept=-1024, RescaleSlope=1, **attributes)

    def mr_series(self, description: str, body_part: str, *, names: Iterable[str], scanning: str, variant: str,
                  slices: int = 20, thickness: float = 5, orientation: list[int] = AXIAL,
                  image_types: Iterable[list[str]] = (["ORIGINAL", "PRIMARY", "M", "ND"],),
                  **attributes: Any) -> None:
        """A 2D MR series: for each slice one image per sequence name (several for DWI b-values)."""
        series, number = self.series(), 0
        normal = np.cross(orientation[:3], orientation[3:])
        for i in range(slices):
            at = (i - slices / 2) * thickness
            for name, image_type in zip(names, image_types):
                number += 1
                position = [-120.0, -120.0, -120.0] + normal * at
                self.image(uid.MRImageStorage, "MR", series, number, description, level=800, BodyPartExamined=body_part,
                           ImageType=image_type, SequenceName=name, ScanningSequence=scanning.split("\\"),
                           SequenceVariant=variant.split("\\"), ProtocolName=description, SliceThickness=thickness,
                           ImagePositionPatient=[float(v) for v in position], ImageOrientationPatient=orientation,
                           PixelSpacing=[0.47, 0.47], MagneticFieldStrength=3, **attributes)

    def xray(self, description: str, body_part: str, view: str, *, modality: str = "DX",
             sop_class: str = uid.DigitalXRayImageStorageForPresentation, series: tuple[str, int] | None = None,
             number: int = 1, **attributes: Any) -> None:
        self.image(sop_class, modality, series or self.series(), number, description, size=(256, 256),
                   level=2000, BodyPartExamined=body_part, ViewPosition=view, ImageType=["ORIGINAL", "PRIMARY"],
                   PresentationIntentType="FOR PRESENTATION", ImagerPixelSpacing=[0.139, 0.139], **attributes)

    def for_processing(self) -> None:
        """A raw FOR PROCESSING twin of every FOR PRESENTATION image, in series of their own."""
        twins: dict[str, tuple[str, int]] = {}
        for ds in [ds for ds in self.datasets if ds.get("PresentationIntentType") == "FOR PRESENTATION"]:
            twin = copy.deepcopy(ds)
            series = twins.setdefault(ds.SeriesInstanceUID, self.series())
            twin.SOPClassUID, twin.SOPInstanceUID = FOR_PROCESSING[ds.SOPClassUID], uid.generate_uid()
            twin.SeriesInstanceUID, twin.SeriesNumber = series
            twin.PresentationIntentType = "FOR PROCESSING"
            self.datasets.append(twin)

    def capture(self, description: str, modality: str) -> None:
        self.image(uid.SecondaryCaptureImageStorage, modality, self.series(), 1, description, ConversionType="WSD",
                   ImageType=["DERIVED", "SECONDARY", "OTHER"])

    def report(self, kind: str) -> None:
        """The radiologist's report: a verified SR ("sr"), an unverified one, or a PDF."""
        ds = _dataset(SOPInstanceUID=uid.generate_uid(), StudyInstanceUID=self.study_uid,
                      SeriesInstanceUID=uid.generate_uid(), SeriesNumber=99, InstanceNumber=1,
                      SeriesDescription="诊断报告", ContentDate="20260312", ContentTime="101500",
                      ConceptNameCodeSequence=[_code("18748-4", "LN", "Diagnostic Imaging Report")])
        signed = _dataset(VerifyingObserverName="Li^Ming=李^明", VerifyingOrganization=INSTITUTION,
                          VerificationDateTime="20260312103000", VerifyingObserverIdentificationCodeSequence=[])
        if kind == "pdf":
            ds.SOPClassUID, ds.Modality = uid.EncapsulatedPDFStorage, "DOC"
            ds.MIMETypeOfEncapsulatedDocument, ds.DocumentTitle = "application/pdf", "诊断报告"
            ds.BurnedInAnnotation = "YES"
            ds.EncapsulatedDocument = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
        else:
            ds.SOPClassUID, ds.Modality = uid.BasicTextSRStorage, "SR"
            ds.ValueType, ds.ContinuityOfContent, ds.CompletionFlag = "CONTAINER", "SEPARATE", "COMPLETE"
            ds.VerificationFlag = "VERIFIED" if kind == "sr" else "UNVERIFIED"
            if kind == "sr":
                ds.VerifyingObserverSequence = [signed]
            ds.ContentSequence = [
                _dataset(RelationshipType="CONTAINS", ValueType="TEXT", TextValue=text,
                         ConceptNameCodeSequence=[_code(code, "DCM", meaning)])
                for code, meaning, text in [("121070", "Findings", "所见：未见明显异常。"),
                                            ("121072", "Impressions", "印象：未见异常。")]]
        self.datasets.append(ds)


def _dataset(**attributes: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _dataset(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _dx(body_part: str, name: str, views: Iterable[tuple[str, str]], **attributes: Any) -> Callable[[Builder], None]:
    def build(b: Builder) -> None:
        for view, description in views:
            b.xray(f"{name} {description}", body_part, view, **attributes)
    return build


def _mammography(b: Builder) -> None:
    series = b.series()
    for number, (side, view) in enumerate([("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")], 1):
        b.xray(f"{side} {view}", "BREAST", view, modality="MG", number=number, series=series,
               sop_class=uid.DigitalMammographyXRayImageStorageForPresentation, ImageLaterality=side)


def _barium_meal(b: Builder) -> None:
    series = b.series()
    for number in range(1, 9):
        b.xray("上消化道钡餐造影", "STOMACH", "", modality="RF", number=number, series=series,
               sop_class=uid.XRayRadiofluoroscopicImageStorage)


def _ct(body_part: str, name: str, top: float, bottom: float, thin: float) -> Callable[[Builder], None]:
    def build(b: Builder) -> None:
        b.ct_localizer(body_part)
        b.ct_stack(f"{name} 5mm", body_part, 5, top, bottom)
        b.ct_stack(f"{name} {thin:g}mm", body_part, thin, top, bottom)
    return build


def _ct_chest_enhanced(b: Builder) -> None:
    agent = {"ContrastBolusAgent": "碘海醇 Iohexol 350", "ContrastBolusVolume": 80}
    b.ct_localizer("CHEST")
    b.ct_stack("平扫 5mm", "CHEST", 5, 0, -250)
    b.ct_stack("增强 动脉期 5mm", "CHEST", 5, 0, -250, **agent)
    b.ct_stack("增强 动脉期 1.25mm", "CHEST", 1.25, 0, -250, **agent)
    b.ct_mpr("MPR 冠状位 3mm", "CHEST", CORONAL, **agent)
    b.ct_mpr("MPR 矢状位 3mm", "CHEST", SAGITTAL, **agent)


TSE = {"scanning": "SE", "variant": "SK\\SP\\OSP"}


def _mr_head(b: Builder) -> None:
    b.mr_series("localizer", "HEAD", names=["*fl2d1"], scanning="GR", variant="SP", slices=3)
    b.mr_series("t1_se_tra", "HEAD", names=["*se2d1"], scanning="SE", variant="SP")
    b.mr_series("t2_tse_tra", "HEAD", names=["*tse2d1_15"], **TSE)
    b.mr_series("t2_tirm_tra_dark-fluid", "HEAD", names=["*tir2d1_21"], scanning="SE\\IR", variant="SK\\SP\\MP")
    b.mr_series("ep2d_diff_3scan_trace", "HEAD", names=["*ep_b0", "*ep_b1000t"], scanning="EP", variant="SK\\SP",
                image_types=[["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"],
                             ["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW"]])
    b.mr_series("ep2d_diff_3scan_trace_ADC", "HEAD", names=["*ep_b1000t"], scanning="EP", variant="SK\\SP",
                image_types=[["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]])


def _mr_mra(b: Builder) -> None:
    b.mr_series("localizer", "HEAD", names=["*fl2d1"], scanning="GR", variant="SP", slices=3)
    b.mr_series("tof_3d_multi-slab", "HEAD", names=["*fl3d1r_t70"], scanning="GR", variant="SP\\OSP",
                slices=60, thickness=0.5, MRAcquisitionType="3D")
    b.mr_series("tof_3d_multi-slab_MIP_SAG", "HEAD", names=["*fl3d1r_t70"], scanning="GR", variant="SP\\OSP",
                slices=15, thickness=0.5, orientation=SAGITTAL, image_types=[["DERIVED", "PRIMARY", "MIP", "ND"]])


def _mr_spine(body_part: str) -> Callable[[Builder], None]:
    def build(b: Builder) -> None:
        b.mr_series("localizer", body_part, names=["*fl2d1"], scanning="GR", variant="SP", slices=3)
        b.mr_series("t2_tse_sag", body_part, names=["*tse2d1_17"], orientation=SAGITTAL, slices=13, thickness=3, **TSE)
        b.mr_series("t1_tse_sag", body_part, names=["*tse2d1_3"], orientation=SAGITTAL, slices=13, thickness=3, **TSE)
        b.mr_series("t2_tse_fs_sag", body_part, names=["*tse2d1_17"], orientation=SAGITTAL, slices=13, thickness=3,
                    ScanOptions="FS", **TSE)
        b.mr_series("t2_tse_tra", body_part, names=["*tse2d1_15"], slices=15, thickness=4, **TSE)
    return build


def _mr_knee(b: Builder) -> None:
    knee = {"Laterality": "R", "slices": 20, "thickness": 3}
    b.mr_series("localizer", "KNEE", names=["*fl2d1"], scanning="GR", variant="SP", slices=3)
    b.mr_series("pd_tse_fs_sag", "KNEE", names=["*tse2d1_7"], orientation=SAGITTAL, ScanOptions="FS", **TSE, **knee)
    b.mr_series("pd_tse_fs_cor", "KNEE", names=["*tse2d1_7"], orientation=CORONAL, ScanOptions="FS", **TSE, **knee)
    b.mr_series("t1_tse_cor", "KNEE", names=["*tse2d1_3"], orientation=CORONAL, **TSE, **knee)


RECIPES: dict[str, tuple[str, Callable[[Builder], None]]] = {
    "JJJ-DR-CHEST": ("DR胸部正侧位", _dx("CHEST", "Chest", [("PA", "PA"), ("LL", "LAT")])),
    "JJJ-DR-CSPINE": ("DR颈椎正侧位", _dx("CSPINE", "C-Spine", [("AP", "AP"), ("LL", "LAT")])),
    "JJJ-DR-LSPINE": ("DR腰椎正侧位", _dx("LSPINE", "L-Spine", [("AP", "AP"), ("LL", "LAT")])),
    "JJJ-DR-KNEE": ("DR右膝关节正侧位", _dx("KNEE", "Knee", [("AP", "AP"), ("LL", "LAT")], ImageLaterality="R")),
    "JJJ-DR-PELVIS": ("DR骨盆正位", _dx("PELVIS", "Pelvis", [("AP", "AP")])),
    "JJJ-MG-BREAST": ("双侧乳腺X线摄影", _mammography),
    "JJJ-GI-UGI": ("上消化道钡餐造影", _barium_meal),
    "JJJ-CT-HEAD": ("头颅CT平扫", _ct("HEAD", "Head", 150, 30, 1)),
    "JJJ-CT-CHEST": ("胸部CT平扫", _ct("CHEST", "Chest", 0, -250, 1.25)),
    "JJJ-CT-ABDOMEN": ("上腹部CT平扫", _ct("ABDOMEN", "Abdomen", -220, -420, 1.25)),
    "JJJ-CT-LSPINE": ("腰椎CT平扫", _ct("LSPINE", "L-Spine", -380, -560, 1)),
    "JJJ-CT-CHEST-ENH": ("胸部CT增强", _ct_chest_enhanced),
    "JJJ-MR-HEAD": ("头颅MR平扫", _mr_head),
    "JJJ-MR-MRA": ("头颅MRA", _mr_mra),
    "JJJ-MR-CSPINE": ("颈椎MR平扫", _mr_spine("CSPINE")),
    "JJJ-MR-LSPINE": ("腰椎MR平扫", _mr_spine("LSPINE")),
    "JJJ-MR-KNEE": ("膝关节MR平扫", _mr_knee),
}


def study(*item_codes: str, pixels: bool = False, report: str | None = "sr", for_processing: bool = False,
          capture: str | None = None, **overrides: Any) -> list[Dataset]:
    """A study holding the exam items `item_codes`, shareable unless a knob says otherwise.

    `report`: "sr" (verified), "unverified", "pdf" or None. `for_processing`: add
    raw twins of the X-ray images. `capture`: add a secondary capture with this
    series description (e.g. "Dose Report"). `overrides`: DICOM keywords set on
    every data set; ``None`` deletes the attribute.
    """
    b = Builder(pixels)
    for code in item_codes:
        description, build = RECIPES[code]
        b.descriptions.append(description)
        build(b)
    if for_processing:
        b.for_processing()
    if capture:
        b.capture(capture, b.datasets[0].Modality)
    if report:
        b.report(report)
    national_id = _dataset(PatientID="110101196603150000", IssuerOfPatientID="CN-RESIDENT-ID")
    common = {
        "SpecificCharacterSet": "ISO_IR 192", **PATIENT, "OtherPatientIDsSequence": [national_id],
        "StudyDate": "20260312", "StudyTime": "093000", "SeriesDate": "20260312", "AccessionNumber": "A20260312007",
        "StudyID": "7", "ReferringPhysicianName": "Zhao^Lei=赵^磊", "InstitutionName": INSTITUTION,
        "InstitutionalDepartmentName": "放射科", "StudyDescription": "+".join(b.descriptions),
        "RequestedProcedureDescription": "+".join(b.descriptions), **overrides,
    }
    for ds in b.datasets:
        for keyword, value in common.items():
            if value is not None:
                setattr(ds, keyword, value)
            elif keyword in ds:
                delattr(ds, keyword)
        with_meta(ds)
    return b.datasets


def series_of(datasets: list[Dataset], description: str) -> list[Dataset]:
    """The data sets of the series described `description`."""
    return [ds for ds in datasets if ds.get("SeriesDescription") == description]


def without(datasets: list[Dataset], description: str) -> list[Dataset]:
    """`datasets` without the series described `description`."""
    return [ds for ds in datasets if ds.get("SeriesDescription") != description]


def rename(datasets: list[Dataset], names: dict[str, str]) -> list[Dataset]:
    """Give series new descriptions (old description -> new); returns `datasets`."""
    for ds in datasets:
        if ds.get("SeriesDescription") in names:
            ds.SeriesDescription = names[ds.SeriesDescription]
    return datasets


def facts_of(datasets: list[Dataset], transfer_syntax: str = uid.ExplicitVRLittleEndian) -> list[dict[str, Any]]:
    """What the judge gets: each data set's facts (via its DICOM JSON, as ingest makes
    them) with its ``sop_uid``, `transfer_syntax` and a ``sha256``.

    The hash stands in for the archive's hash of the stored file: unique per
    instance (encoding every file to hash it would take most of a test's time);
    a test makes a byte-identical copy by giving two facts the same value.
    """
    return [{**instance_facts(to_json(ds, "", {})), "sop_uid": ds.SOPInstanceUID, "transfer_syntax": transfer_syntax,
             "sha256": hashlib.sha256(ds.SOPInstanceUID.encode()).hexdigest()} for ds in datasets]
