"""Judging studies against the shipped Jing-Jin-Ji rule set: each item passes when
complete, and each rule alone fails it with a finding a radiographer can act on."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from archive.guideline.classify import classify
from archive.guideline.judge import Finding, Judgement, judge
from archive.guideline.rules import RuleSet, load_rule_set
from tests.guideline_studies import (
    RECIPES,
    RULES,
    facts_of,
    rename,
    series_of,
    study,
    without,
)


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rule_set(RULES)


def uids(datasets: list[Dataset], *descriptions: str) -> tuple[str, ...]:
    """The Series Instance UIDs of the series with these descriptions, in that order."""
    return tuple(series_of(datasets, d)[0].SeriesInstanceUID for d in descriptions)


def only(judgement: Judgement, *, verdict: str = "fail") -> Finding:
    """The judgement's one finding; its items fail with it."""
    assert len(judgement.findings) == 1, [f.message["en"] for f in judgement.findings]
    assert judgement.verdict == verdict
    assert all(item.verdict == verdict for item in judgement.items)
    finding = judgement.findings[0]
    assert finding.message["zh"] and finding.message["zh"] != finding.message["en"]
    return finding


def assert_finding(finding: Finding, rule: str, item: str | None, series: tuple[str, ...], en: str,
                   outcome: str = "fail") -> None:
    assert (finding.rule, finding.outcome, finding.item, finding.series) == (rule, outcome, item, series)
    assert finding.message["en"] == en


@pytest.mark.parametrize("code", list(RECIPES))
def test_every_item_passes(rules: RuleSet, code: str) -> None:
    datasets = study(code)
    judgement = judge(rules, facts_of(datasets))
    assert (judgement.verdict, judgement.findings) == ("pass", ())
    [item] = judgement.items
    assert (item.code, item.verdict, item.validity_days) == (code, "pass", 30)
    assert item.name == rules.item(code).name.model_dump()
    # Everything but the report and the localizer belongs to the item.
    images = {ds.SeriesInstanceUID for ds in datasets if ds.Modality not in ("SR", "DOC")
              and "LOCALIZER" not in ds.get("ImageType", []) and ds.SeriesDescription != "localizer"}
    assert set(item.series) == images


def test_encapsulated_pdf_report_passes(rules: RuleSet) -> None:
    assert judge(rules, facts_of(study("JJJ-MR-KNEE", report="pdf"))).verdict == "pass"


@pytest.mark.parametrize(("keyword", "rule", "name"), [
    ("PatientID", "study.patient_id", "Patient ID (0010,0020)"),
    ("IssuerOfPatientID", "study.issuer", "Issuer of Patient ID (0010,0021)"),
    ("PatientName", "study.patient_name", "Patient's Name (0010,0010)"),
    ("PatientSex", "study.sex", "Patient's Sex (0010,0040)"),
    ("PatientBirthDate", "study.birth_date", "Patient's Birth Date (0010,0030)"),
    ("StudyDate", "study.study_date", "Study Date (0008,0020)"),
    ("StudyTime", "study.study_time", "Study Time (0008,0030)"),
    ("AccessionNumber", "study.accession_number", "Accession Number (0008,0050)"),
    ("InstitutionName", "study.institution", "Institution Name (0008,0080)"),
])
def test_missing_identity_attribute(rules: RuleSet, keyword: str, rule: str, name: str) -> None:
    judgement = judge(rules, facts_of(study("JJJ-DR-CHEST", **{keyword: None})))
    assert_finding(only(judgement), rule, None, (), f"{name} is missing")


def test_attribute_missing_in_some_series(rules: RuleSet) -> None:
    datasets = study("JJJ-DR-PELVIS")
    del datasets[-1].InstitutionName  # the report's
    assert_finding(only(judge(rules, facts_of(datasets))), "study.institution", None, uids(datasets, "诊断报告"),
                   "Institution Name (0008,0080) is missing in 1 of 2 series (series 99)")


def test_lossy_transfer_syntax(rules: RuleSet) -> None:
    datasets = study("JJJ-DR-CHEST")
    facts = facts_of(datasets[:-1], JPEGBaseline8Bit) + facts_of(datasets[-1:])
    assert_finding(only(judge(rules, facts)), "study.transfer_syntax", None, uids(datasets, "Chest PA", "Chest LAT"),
                   "series 1, 2 stored with lossy transfer syntax JPEG Baseline (1.2.840.10008.1.2.4.50); "
                   "send the lossless originals")


def test_unknown_transfer_syntax(rules: RuleSet) -> None:
    datasets = study("JJJ-DR-PELVIS")
    assert_finding(only(judge(rules, facts_of(datasets, "1.2.3.4"))), "study.transfer_syntax", None,
                   uids(datasets, "Pelvis AP", "诊断报告"),
                   "series 1, 99 stored with transfer syntax 1.2.3.4, not known to be lossless; send it lossless")


def test_no_report(rules: RuleSet) -> None:
    assert_finding(only(judge(rules, facts_of(study("JJJ-CT-HEAD", report=None)))), "study.report", None, (),
                   "no signed report: send the verified report as a structured report (SR) or an Encapsulated PDF")


def test_unverified_report(rules: RuleSet) -> None:
    datasets = study("JJJ-DR-PELVIS", report="unverified")
    assert_finding(only(judge(rules, facts_of(datasets))), "study.report", None, uids(datasets, "诊断报告"),
                   "the report (series 99) is not verified (VerificationFlag UNVERIFIED); send the signed report")


def test_gap_in_instance_numbers(rules: RuleSet) -> None:
    datasets = [ds for ds in study("JJJ-GI-UGI") if ds.InstanceNumber != 4 or ds.Modality != "RF"]
    assert_finding(only(judge(rules, facts_of(datasets))), "images.missing", "JJJ-GI-UGI",
                   uids(datasets, "上消化道钡餐造影"),
                   "Upper GI barium meal: series 1 (上消化道钡餐造影) is missing images: instance numbers 4")


def test_fewer_images_than_declared(rules: RuleSet) -> None:
    datasets = [ds for ds in study("JJJ-GI-UGI", ImagesInAcquisition=8) if ds.InstanceNumber != 8]
    assert_finding(only(judge(rules, facts_of(datasets))), "images.missing", "JJJ-GI-UGI",
                   uids(datasets, "上消化道钡餐造影"),
                   "Upper GI barium meal: series 1 (上消化道钡餐造影) has 7 of its 8 images")


def test_missing_mr_image(rules: RuleSet) -> None:
    datasets = study("JJJ-MR-HEAD")
    datasets.remove(series_of(datasets, "t2_tse_tra")[7])
    assert_finding(only(judge(rules, facts_of(datasets))), "images.missing", "JJJ-MR-HEAD",
                   uids(datasets, "t2_tse_tra"),
                   "MR head, plain: series 3 (t2_tse_tra) is missing images: instance numbers 8")


def test_missing_view(rules: RuleSet) -> None:
    judgement = judge(rules, facts_of(without(study("JJJ-DR-CHEST"), "Chest LAT")))
    assert_finding(only(judgement), "xray.views", "JJJ-DR-CHEST", (), "DR chest PA and lateral: no lateral view")


def test_missing_mammography_view_of_one_side(rules: RuleSet) -> None:
    datasets = [ds for ds in study("JJJ-MG-BREAST") if ds.get("SeriesDescription") != "L MLO"]
    assert_finding(only(judge(rules, facts_of(datasets))), "xray.views", "JJJ-MG-BREAST", (),
                   "Bilateral mammography CC and MLO: no mediolateral oblique (MLO) view of the left side")


def test_each_knee_needs_both_views(rules: RuleSet) -> None:
    datasets = study("JJJ-DR-KNEE")
    left = copy.deepcopy(series_of(datasets, "Knee AP")[0])
    left.SOPInstanceUID, left.SeriesInstanceUID, left.SeriesNumber = generate_uid(), generate_uid(), 3
    left.ImageLaterality = "L"
    assert_finding(only(judge(rules, facts_of([*datasets, left]))), "xray.views", "JJJ-DR-KNEE", (),
                   "DR knee AP and lateral: no lateral view of the left side")


def test_no_thin_series(rules: RuleSet) -> None:
    judgement = judge(rules, facts_of(without(study("JJJ-CT-HEAD"), "Head 1mm")))
    assert_finding(only(judgement), "ct.thin_series", "JJJ-CT-HEAD", (),
                   "CT head, plain: no thin-slice series (≤ 1.5 mm); thinnest series is 5 mm")


def test_no_thick_series(rules: RuleSet) -> None:
    judgement = judge(rules, facts_of(without(study("JJJ-CT-HEAD"), "Head 5mm")))
    assert_finding(only(judgement), "ct.thick_series", "JJJ-CT-HEAD", (),
                   "CT head, plain: no thick-slice series (≥ 5 mm); thickest series is 1 mm")


def test_series_between_thresholds_is_neither(rules: RuleSet) -> None:
    datasets = study("JJJ-CT-ABDOMEN")
    for ds in series_of(datasets, "Abdomen 1.25mm"):
        ds.SliceThickness = 3
    assert_finding(only(judge(rules, facts_of(datasets))), "ct.thin_series", "JJJ-CT-ABDOMEN", (),
                   "CT upper abdomen, plain: no thin-slice series (≤ 1.5 mm); thinnest series is 3 mm")


def test_thin_series_must_cover_the_thick_one(rules: RuleSet) -> None:
    datasets = study("JJJ-CT-HEAD")
    datasets = [ds for ds in datasets if ds.SeriesDescription != "Head 1mm" or ds.ImagePositionPatient[2] >= 90]
    assert_finding(only(judge(rules, facts_of(datasets))), "ct.coverage", "JJJ-CT-HEAD",
                   uids(datasets, "Head 1mm", "Head 5mm"),
                   "CT head, plain: thin-slice series 3 (90 to 150 mm) does not cover thick-slice series 2 "
                   "(30 to 150 mm) within 5 mm")


def test_gap_in_slice_positions(rules: RuleSet) -> None:
    datasets = study("JJJ-CT-HEAD")
    thick = series_of(datasets, "Head 5mm")
    datasets.remove(thick[10])  # the slice at 100 mm, numbered on as if it had never been made
    for ds in thick[11:]:
        ds.InstanceNumber -= 1
    assert_finding(only(judge(rules, facts_of(datasets))), "ct.slice_gap", "JJJ-CT-HEAD", uids(datasets, "Head 5mm"),
                   "CT head, plain: series 2 (Head 5mm) has a 10 mm gap between slices after 95 mm "
                   "(median spacing 5 mm; 1 gap(s))")


def test_missing_ct_slice_is_a_number_and_a_position_gap(rules: RuleSet) -> None:
    datasets = study("JJJ-CT-HEAD")
    datasets.remove(series_of(datasets, "Head 1mm")[50])
    judgement = judge(rules, facts_of(datasets))
    assert [(f.rule, f.series) for f in judgement.findings] == [
        ("images.missing", uids(datasets, "Head 1mm")), ("ct.slice_gap", uids(datasets, "Head 1mm"))]


def test_no_post_processed_images(rules: RuleSet) -> None:
    datasets = without(without(study("JJJ-CT-CHEST-ENH"), "MPR 冠状位 3mm"), "MPR 矢状位 3mm")
    assert_finding(only(judge(rules, facts_of(datasets))), "ct.post_processed", "JJJ-CT-CHEST-ENH", (),
                   "CT chest, contrast-enhanced: no post-processed images (MPR, MIP, VR reconstructions)")


def test_missing_mr_sequence(rules: RuleSet) -> None:
    judgement = judge(rules, facts_of(without(study("JJJ-MR-HEAD"), "t2_tirm_tra_dark-fluid")))
    assert_finding(only(judgement), "mr.sequences", "JJJ-MR-HEAD", (), "MR head, plain: no FLAIR sequence")


def test_dwi_without_adc_map(rules: RuleSet) -> None:
    datasets = without(study("JJJ-MR-HEAD"), "ep2d_diff_3scan_trace_ADC")
    assert_finding(only(judge(rules, facts_of(datasets))), "mr.post_processed", "JJJ-MR-HEAD",
                   uids(datasets, "ep2d_diff_3scan_trace"),
                   "MR head, plain: diffusion-weighted (DWI) (series 5) comes without its post-processed images: "
                   "ADC map")


def test_mra_without_mip(rules: RuleSet) -> None:
    datasets = without(study("JJJ-MR-MRA"), "tof_3d_multi-slab_MIP_SAG")
    assert_finding(only(judge(rules, facts_of(datasets))), "mr.post_processed", "JJJ-MR-MRA",
                   uids(datasets, "tof_3d_multi-slab"),
                   "MR angiography of the head (TOF): time-of-flight angiography (TOF) (series 2) comes without "
                   "its post-processed images: maximum intensity projection (MIP)")


def test_redundant_data_is_flagged_and_still_passes(rules: RuleSet) -> None:
    datasets = study("JJJ-DR-CHEST", for_processing=True, capture="Dose Report")
    facts = facts_of(datasets)
    copied = {**facts[0], "sop_uid": generate_uid()}  # the PA image sent again under a new UID
    judgement = judge(rules, [*facts, copied])
    assert judgement.verdict == "pass" and [item.verdict for item in judgement.items] == ["pass"]
    raw = tuple(dict.fromkeys(ds.SeriesInstanceUID for ds in datasets
                              if ds.get("PresentationIntentType") == "FOR PROCESSING"))
    for_processing, duplicate, capture = judgement.findings
    assert_finding(for_processing, "redundant.for_processing", None, raw,
                   "2 FOR PROCESSING image(s) in series 3, 4 beside the FOR PRESENTATION ones: no need to send them",
                   outcome="flag")
    assert_finding(duplicate, "redundant.duplicate", None, uids(datasets, "Chest PA"),
                   "1 instance(s) in series 1 are byte-identical copies of others", outcome="flag")
    assert_finding(capture, "redundant.capture", None, uids(datasets, "Dose Report"),
                   "series 5 (Dose Report) is a screen capture or a dose/protocol page, of no clinical value",
                   outcome="flag")
    assert [item.series for item in judgement.items] == [uids(datasets, "Chest PA", "Chest LAT")]


def test_protocol_page_of_a_ct_is_flagged_not_judged(rules: RuleSet) -> None:
    datasets = study("JJJ-CT-HEAD", capture="Patient Protocol")
    finding = only(judge(rules, facts_of(datasets)), verdict="pass")
    assert_finding(finding, "redundant.capture", None, uids(datasets, "Patient Protocol"),
                   "series 4 (Patient Protocol) is a screen capture or a dose/protocol page, of no clinical value",
                   outcome="flag")


def test_head_and_chest_ct_in_one_study(rules: RuleSet) -> None:
    datasets = study("JJJ-CT-HEAD", "JJJ-CT-CHEST")
    judgement = judge(rules, facts_of(datasets))
    assert (judgement.verdict, judgement.findings) == ("pass", ())
    assert [(item.code, item.series) for item in judgement.items] == [
        ("JJJ-CT-HEAD", uids(datasets, "Head 5mm", "Head 1mm")),
        ("JJJ-CT-CHEST", uids(datasets, "Chest 5mm", "Chest 1.25mm"))]


def test_head_ct_missing_thin_fails_only_the_head(rules: RuleSet) -> None:
    judgement = judge(rules, facts_of(without(study("JJJ-CT-HEAD", "JJJ-CT-CHEST"), "Head 1mm")))
    assert judgement.verdict == "fail"
    assert [(item.code, item.verdict) for item in judgement.items] == [
        ("JJJ-CT-HEAD", "fail"), ("JJJ-CT-CHEST", "pass")]


def test_mr_head_and_mra_in_one_study(rules: RuleSet) -> None:
    datasets = study("JJJ-MR-HEAD", "JJJ-MR-MRA")
    judgement = judge(rules, facts_of(datasets))
    assert (judgement.verdict, [item.code for item in judgement.items]) == ("pass", ["JJJ-MR-HEAD", "JJJ-MR-MRA"])
    assert judgement.items[1].series == uids(datasets, "tof_3d_multi-slab", "tof_3d_multi-slab_MIP_SAG")


def test_unrecognised_study_is_not_applicable(rules: RuleSet) -> None:
    datasets = study("JJJ-CT-HEAD", BodyPartExamined="ANKLE", StudyDescription="CT踝关节平扫",
                     RequestedProcedureDescription=None)
    judgement = judge(rules, facts_of(rename(datasets, {"Head 5mm": "Ankle 5mm", "Head 1mm": "Ankle 1mm"})))
    assert (judgement.verdict, judgement.items, judgement.findings) == ("not_applicable", (), ())


def test_chinese_only_descriptions(rules: RuleSet) -> None:
    bare: dict[str, Any] = {"BodyPartExamined": None, "StudyDescription": None,
                            "RequestedProcedureDescription": None}
    head = rename(study("JJJ-CT-HEAD", **bare), {"Head 5mm": "头颅平扫 5mm", "Head 1mm": "头颅平扫 1mm 薄层重建"})
    assert [(i.code, i.verdict) for i in judge(rules, facts_of(head)).items] == [("JJJ-CT-HEAD", "pass")]
    chest = rename(study("JJJ-DR-CHEST", ViewPosition=None, **bare), {"Chest PA": "胸部正位", "Chest LAT": "胸部侧位"})
    assert [(i.code, i.verdict) for i in judge(rules, facts_of(chest)).items] == [("JJJ-DR-CHEST", "pass")]
    # The views come from the words too: two frontal images are no lateral one.
    judgement = judge(rules, facts_of(rename(chest, {"胸部侧位": "胸部正位"})))
    assert_finding(only(judgement), "xray.views", "JJJ-DR-CHEST", (), "DR chest PA and lateral: no lateral view")


def test_study_words_and_procedure_codes_name_unnamed_series(rules: RuleSet) -> None:
    bare = rename(study("JJJ-CT-HEAD", BodyPartExamined=None, StudyDescription="头颅CT平扫"),
                  {"Head 5mm": "5mm", "Head 1mm": "1mm"})
    assert [item.code for item in judge(rules, facts_of(bare)).items] == ["JJJ-CT-HEAD"]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "JJJ-CT-HEAD", "JJJ", "头颅CT平扫"
    for ds in bare:
        ds.StudyDescription, ds.RequestedProcedureDescription = "CT", "CT"
        ds.ProcedureCodeSequence = [code]
    assert [item.code for item in judge(rules, facts_of(bare)).items] == ["JJJ-CT-HEAD"]
    for ds in bare:
        del ds.ProcedureCodeSequence
    assert judge(rules, facts_of(bare)).verdict == "not_applicable"


def test_plain_and_enhanced_told_apart(rules: RuleSet) -> None:
    assert [c.item.code for c in classify(rules, facts_of(study("JJJ-CT-CHEST-ENH")))] == ["JJJ-CT-CHEST-ENH"]
    assert [c.item.code for c in classify(rules, facts_of(study("JJJ-CT-CHEST")))] == ["JJJ-CT-CHEST"]
    agent = facts_of(study("JJJ-CT-CHEST", ContrastBolusAgent="Iohexol"))
    assert [c.item.code for c in classify(rules, agent)] == ["JJJ-CT-CHEST-ENH"]
    words = rename(study("JJJ-CT-CHEST", StudyDescription="胸部CT"), {"Chest 5mm": "Chest C+ 5mm"})
    assert [c.item.code for c in classify(rules, facts_of(words))] == ["JJJ-CT-CHEST-ENH"]
    plain = rename(study("JJJ-CT-CHEST"), {"Chest 5mm": "Chest NON-CONTRAST 5mm"})
    assert [c.item.code for c in classify(rules, facts_of(plain))] == ["JJJ-CT-CHEST"]


def test_judgement_round_trips_as_json(rules: RuleSet) -> None:
    judgement = judge(rules, facts_of(without(study("JJJ-CT-HEAD", "JJJ-CT-CHEST", report=None), "Head 1mm")))
    data = json.loads(json.dumps(judgement.to_json(), ensure_ascii=False))
    assert data["verdict"] == "fail" and data["items"][0]["series"] and data["findings"][0]["rule"] == "study.report"
    assert Judgement.from_json(data) == judgement


def enhanced(slices: list[Dataset], *, drop: int | None = None) -> Dataset:
    """One Enhanced CT image (PS3.3 A.38) made of the classic slices of a series: its
    geometry in functional groups, one frame per slice (frame `drop` left out)."""
    first = slices[0]
    ds = copy.deepcopy(first)
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2.1", generate_uid()
    for keyword in ("SliceThickness", "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation"):
        delattr(ds, keyword)
    measures, orientation = Dataset(), Dataset()
    measures.SliceThickness, measures.PixelSpacing = first.SliceThickness, first.PixelSpacing
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    frames = []
    for n, classic in enumerate(slices):
        if n == drop:
            continue
        position, frame = Dataset(), Dataset()
        position.ImagePositionPatient = classic.ImagePositionPatient
        frame.PlanePositionSequence = [position]
        frames.append(frame)
    ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence = [shared], frames
    ds.NumberOfFrames, ds.InstanceNumber = len(frames), 1
    return ds


def as_enhanced(datasets: list[Dataset], drop: int | None = None) -> list[Dataset]:
    """The head CT study with its thick and thin series each made one Enhanced CT image."""
    stacks = ("Head 5mm", "Head 1mm")
    return [*without(without(datasets, stacks[0]), stacks[1]),
            enhanced(series_of(datasets, stacks[0]), drop=drop), enhanced(series_of(datasets, stacks[1]))]


def test_enhanced_multiframe_ct_is_judged_from_its_functional_groups(rules: RuleSet) -> None:
    judgement = judge(rules, facts_of(as_enhanced(study("JJJ-CT-HEAD"))))
    assert (judgement.verdict, judgement.findings) == ("pass", ())


def test_enhanced_multiframe_ct_with_a_missing_frame_has_a_gap(rules: RuleSet) -> None:
    datasets = as_enhanced(study("JJJ-CT-HEAD"), drop=10)
    finding = only(judge(rules, facts_of(datasets)))
    assert (finding.rule, finding.item) == ("ct.slice_gap", "JJJ-CT-HEAD")
    assert "10 mm gap between slices after 95 mm" in finding.message["en"]
