"""What the guideline needs to know of one instance, taken at ingest.

Judging a study must never read its blobs (a 3,000-slice CT would be read
again for every rejudge), so the attributes any rule may look at are pulled
from the instance's DICOM JSON once, when it arrives, into a small JSON object
kept on its index row. :func:`instance_facts` is that extraction; it is also
used by ``huren guideline check`` on local files, so both judge the same facts.

The keys are plain names (not DICOM keywords) because they are the
vocabulary of the rule files' reasons, not of the standard.
"""

from __future__ import annotations

from typing import Any

from archive.dicomjson import first_text, first_value, person_name

# Tags read, by DICOM keyword in the comment.
_TEXT = {
    "modality": "00080060",             # Modality
    "body_part": "00180015",            # BodyPartExamined
    "study_description": "00081030",    # StudyDescription
    "series_description": "0008103E",   # SeriesDescription
    "protocol_name": "00181030",        # ProtocolName
    "requested_description": "00321060",  # RequestedProcedureDescription
    "sequence_name": "00180024",        # SequenceName
    "presentation_intent": "00080068",  # PresentationIntentType
    "view_position": "00185101",        # ViewPosition
    "laterality": "00200062",           # ImageLaterality
    "series_laterality": "00200060",    # Laterality
    "verification_flag": "0040A493",    # VerificationFlag (SR)
    "completion_flag": "0040A491",      # CompletionFlag (SR)
    "conversion_type": "00080064",      # ConversionType (secondary capture)
    "derivation": "00082111",           # DerivationDescription
    "contrast_agent": "00180010",       # ContrastBolusAgent
    "institution": "00080080",          # InstitutionName
    "patient_id": "00100020",           # PatientID
    "issuer": "00100021",               # IssuerOfPatientID
    "birth_date": "00100030",           # PatientBirthDate
    "sex": "00100040",                  # PatientSex
    "study_date": "00080020",           # StudyDate
    "study_time": "00080030",           # StudyTime
    "accession": "00080050",            # AccessionNumber
}
_NUMBER = {
    "instance_number": "00200013",      # InstanceNumber
    "series_number": "00200011",        # SeriesNumber
    "slice_thickness": "00180050",      # SliceThickness
    "spacing": "00180088",              # SpacingBetweenSlices
    "frames": "00280008",               # NumberOfFrames
    "images_in_acquisition": "00201002",  # ImagesInAcquisition
}
_LIST = {
    "image_type": "00080008",           # ImageType
    "scanning_sequence": "00180020",    # ScanningSequence
    "sequence_variant": "00180021",     # SequenceVariant
    "scan_options": "00180022",         # ScanOptions
    "position": "00200032",             # ImagePositionPatient
    "orientation": "00200037",          # ImageOrientationPatient
}
_CODES = ("00081032", "00321064")       # ProcedureCodeSequence, RequestedProcedureCodeSequence
# Enhanced multi-frame images (PS3.3 C.7.6.16) keep geometry in functional groups.
_SHARED_GROUPS, _PER_FRAME_GROUPS = "52009229", "52009230"
_PIXEL_MEASURES, _PLANE_ORIENTATION, _PLANE_POSITION = "00289110", "00209116", "00209113"
_OTHER_IDS = "00101002"                 # OtherPatientIDsSequence
_PATIENT_NAME = "00100010"


def instance_facts(body: dict[str, Any]) -> dict[str, Any]:
    """Return the guideline facts of one instance from its DICOM JSON (PS3.18 F.2).

    Absent attributes are left out, so a fact's absence is what a rule sees.
    Keys: the names of ``_TEXT``, ``_NUMBER`` and ``_LIST`` above, plus
    ``series_uid``, ``sop_class``, ``patient_name`` (``Alphabetic=Ideographic=
    Phonetic``), ``procedure_codes`` (``[code, scheme, meaning]`` lists from the
    procedure and requested procedure code sequences) and ``other_ids``
    (``[id, issuer]`` lists from OtherPatientIDsSequence); for enhanced
    multi-frame images, geometry from their functional groups (see
    :func:`_functional_groups`).
    """
    facts: dict[str, Any] = {
        "series_uid": first_text(body, "0020000E"),
        "sop_class": first_text(body, "00080016"),
    }
    for name, tag in _TEXT.items():
        if value := first_text(body, tag):
            facts[name] = value
    for name, tag in _NUMBER.items():
        number = _number(body, tag)
        if number is not None:
            facts[name] = number
    for name, tag in _LIST.items():
        values = _values(body, tag)
        if values:
            facts[name] = values
    _functional_groups(body, facts)
    if name := person_name(body, _PATIENT_NAME):
        facts["patient_name"] = name
    codes = [
        [first_text(item, "00080100"), first_text(item, "00080102"), first_text(item, "00080104")]
        for tag in _CODES for item in _items(body, tag)
    ]
    if codes := [code for code in codes if code[0] or code[2]]:
        facts["procedure_codes"] = codes
    other = [[first_text(item, "00100020"), first_text(item, "00100021")] for item in _items(body, _OTHER_IDS)]
    if other := [pair for pair in other if pair[0]]:
        facts["other_ids"] = other
    return facts


def _functional_groups(body: dict[str, Any], facts: dict[str, Any]) -> None:
    """Slice thickness, orientation and each frame's position of an enhanced
    multi-frame image (Enhanced CT/MR), from its shared and per-frame functional
    groups, where the classic top-level attributes are absent.

    Frame positions go to ``frame_positions``, in frame order.
    """
    shared = next(iter(_items(body, _SHARED_GROUPS)), {})
    frames = _items(body, _PER_FRAME_GROUPS)
    first = frames[0] if frames else {}

    def group_value(macro: str, tag: str) -> list[Any]:
        for groups in (shared, first):
            for item in _items(groups, macro):
                if values := _values(item, tag):
                    return values
        return []

    if "slice_thickness" not in facts and (thickness := group_value(_PIXEL_MEASURES, "00180050")):
        facts["slice_thickness"] = thickness[0]
    if "orientation" not in facts and (orientation := group_value(_PLANE_ORIENTATION, "00200037")):
        facts["orientation"] = orientation
    positions = [next((_values(item, "00200032") for item in _items(frame, _PLANE_POSITION)), [])
                 for frame in frames]
    if positions and all(len(position) == 3 for position in positions):
        facts["frame_positions"] = positions


def _values(body: dict[str, Any], tag: str) -> list[Any]:
    values = body.get(tag, {}).get("Value") or []
    return [v.strip() if isinstance(v, str) else v for v in values]


def _number(body: dict[str, Any], tag: str) -> float | int | None:
    value = first_value(body, tag)
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # absent, or an IS/DS that is not a number: the same to a rule


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return [item for item in _values(body, tag) if isinstance(item, dict)]
