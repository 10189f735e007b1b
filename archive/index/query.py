"""Searching the index: the matching rules shared by QIDO-RS and C-FIND.

Matching follows PS3.4 §C.2.2.2: single value, wildcard (``*`` and ``?``),
range (dates and times), list of UIDs and universal (empty value) matching.
Person names match case-insensitively on any of their component groups;
with fuzzy matching (PS3.4 §C.2.2.2.1.4, implementation-defined) a patient's
name also matches in Hanyu Pinyin (:func:`archive.names.pinyin`), in SQL on
an indexed column. Results are DICOM JSON objects holding the level's
attributes (PS3.18 Table 10.6.3-3) and any ``includefield`` the caller asks for.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Connection, and_, exists, func, or_, select, true

from archive import names
from archive.dicomjson import ROOT_MARK
from archive.guideline.verdict import summary_verdict
from archive.index.schema import instances, item_results, judgements, patients, series, series_requests, studies


class Level(enum.Enum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class QueryError(ValueError):
    """A query parameter cannot be used; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class Key:
    """A matching key: which level it belongs to and how it is matched."""

    level: Level
    kind: str
    column: Any


# Answers come in reading order: series by number within their study, instances by
# number within their series (ix_instances_series), ties and studies by arrival.
_ORDER = {
    Level.STUDY: (studies.c.pk,),
    Level.SERIES: (series.c.study_pk, series.c.series_number, series.c.pk),
    Level.INSTANCE: (instances.c.series_pk, instances.c.instance_number, instances.c.pk),
}


def _t(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


KEYS: dict[int, Key] = {
    _t("StudyInstanceUID"): Key(Level.STUDY, "uid", studies.c.study_uid),
    _t("StudyDate"): Key(Level.STUDY, "date", studies.c.study_date),
    _t("StudyTime"): Key(Level.STUDY, "time", studies.c.study_time),
    _t("AccessionNumber"): Key(Level.STUDY, "text", studies.c.accession_number),
    _t("StudyID"): Key(Level.STUDY, "text", studies.c.study_id),
    _t("StudyDescription"): Key(Level.STUDY, "text", studies.c.study_description),
    _t("ReferringPhysicianName"): Key(Level.STUDY, "pn1", studies.c.referring_physician),
    _t("ModalitiesInStudy"): Key(Level.STUDY, "modalities", series.c.modality),
    _t("PatientName"): Key(Level.STUDY, "pn", None),
    _t("PatientID"): Key(Level.STUDY, "text", patients.c.patient_id),
    _t("IssuerOfPatientID"): Key(Level.STUDY, "text", patients.c.id_scope),
    _t("PatientBirthDate"): Key(Level.STUDY, "date", patients.c.birth_date),
    _t("PatientSex"): Key(Level.STUDY, "text", patients.c.sex),
    _t("SeriesInstanceUID"): Key(Level.SERIES, "uid", series.c.series_uid),
    _t("Modality"): Key(Level.SERIES, "text", series.c.modality),
    _t("SeriesNumber"): Key(Level.SERIES, "int", series.c.series_number),
    _t("SeriesDescription"): Key(Level.SERIES, "text", series.c.series_description),
    _t("BodyPartExamined"): Key(Level.SERIES, "text", series.c.body_part),
    _t("PerformedProcedureStepStartDate"): Key(Level.SERIES, "date", series.c.performed_date),
    _t("PerformedProcedureStepStartTime"): Key(Level.SERIES, "time", series.c.performed_time),
    _t("SOPInstanceUID"): Key(Level.INSTANCE, "uid", instances.c.sop_uid),
    _t("SOPClassUID"): Key(Level.INSTANCE, "uid", instances.c.sop_class_uid),
    _t("InstanceNumber"): Key(Level.INSTANCE, "int", instances.c.instance_number),
    _t("Rows"): Key(Level.INSTANCE, "int", instances.c.rows),
    _t("Columns"): Key(Level.INSTANCE, "int", instances.c.columns),
    _t("NumberOfFrames"): Key(Level.INSTANCE, "int", instances.c.number_of_frames),
}

# Keys inside a sequence (PS3.18 §8.3.4 attribute paths: ``RequestAttributesSequence.RequestedProcedureID``),
# series-level keys of PS3.18 §10.6: matched on the series' requested procedures.
SEQUENCE_KEYS: dict[tuple[int, int], Any] = {
    (_t("RequestAttributesSequence"), _t("RequestedProcedureID")): series_requests.c.requested_procedure_id,
    (_t("RequestAttributesSequence"), _t("ScheduledProcedureStepID")):
        series_requests.c.scheduled_procedure_step_id,
    (_t("RequestAttributesSequence"), _t("AccessionNumber")): series_requests.c.accession_number,
}

_RANK = {Level.STUDY: 0, Level.SERIES: 1, Level.INSTANCE: 2}


def _tags(*keywords: str) -> tuple[int, ...]:
    return tuple(_t(k) for k in keywords)


# PS3.18 Table 10.6.3-3: what every result of a level carries.
RETURNED: dict[Level, tuple[int, ...]] = {
    Level.STUDY: _tags(
        "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
        "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL",
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: _tags(
        "SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription",
        "RetrieveURL", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "RequestAttributesSequence", "StudyInstanceUID",
    ),
    Level.INSTANCE: _tags(
        "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
        "TimezoneOffsetFromUTC", "RetrieveURL", "InstanceNumber", "Rows", "Columns",
        "BitsAllocated", "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID",
    ),
}


@dataclass
class Query:
    """A parsed search: what to match, what to return, which page."""

    level: Level
    matches: dict[int, str]
    include: set[int]
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    study_uid: str | None = None
    series_uid: str | None = None
    fuzzy: bool = False
    # Keys inside a sequence, by (sequence tag, item attribute tag): see SEQUENCE_KEYS.
    sequence_matches: dict[tuple[int, int], str] = field(default_factory=dict)


# What ``includefield=all`` adds at each level: the attributes of the modules of that
# level (PS3.3 Patient, General Study and Patient Study; General Series, General
# Equipment, Frame of Reference), as the level's sample instance holds them. At the
# instance level every attribute of the instance is returned.
PATIENT_GROUP = 0x0010
LEVEL_ATTRIBUTES: dict[Level, frozenset[int]] = {
    Level.STUDY: frozenset(_tags(
        "SpecificCharacterSet", "TimezoneOffsetFromUTC", "StudyInstanceUID", "StudyDate", "StudyTime",
        "ReferringPhysicianName", "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
        "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
        "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingService", "ReferencedStudySequence",
        "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence", "AdmittingDiagnosesDescription",
        "PatientAge", "PatientSize", "PatientWeight", "Occupation", "AdditionalPatientHistory",
        "SOPClassesInStudy",
    )),
    Level.SERIES: frozenset(_tags(
        "Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate", "SeriesTime",
        "PerformingPhysicianName", "ProtocolName", "SeriesDescription", "SeriesDescriptionCodeSequence",
        "OperatorsName", "ReferencedPerformedProcedureStepSequence", "RelatedSeriesSequence",
        "BodyPartExamined", "PatientPosition", "RequestAttributesSequence", "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "PerformedProcedureStepDescription", "PerformedProtocolCodeSequence", "FrameOfReferenceUID",
        "PositionReferenceIndicator", "Manufacturer", "InstitutionName", "InstitutionAddress", "StationName",
        "InstitutionalDepartmentName", "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions",
    )),
}


def parse_attribute(name: str) -> int:
    """Return the tag of a keyword (``PatientName``) or hex tag (``00100010``).

    Raises :class:`QueryError` if `name` names no DICOM attribute.
    """
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise QueryError(name, "not a DICOM attribute keyword or tag")
    return tag


def parse_path(name: str) -> tuple[int, ...]:
    """Return the tags of a dotted attribute path (``RequestAttributesSequence.RequestedProcedureID``
    or ``00400275.00401001``). Raises :class:`QueryError` if a part names no DICOM attribute."""
    return tuple(parse_attribute(part) for part in name.split("."))


def is_sequence_supported(level: Level, path: tuple[int, ...]) -> bool:
    """Whether a key inside a sequence can be matched on in a query at `level`."""
    return len(path) == 2 and path in SEQUENCE_KEYS and level is not Level.STUDY


def is_supported(level: Level, tag: int) -> bool:
    """Whether `tag` can be matched on in a query at `level`."""
    key = KEYS.get(tag)
    return key is not None and _RANK[key.level] <= _RANK[level]


def search(conn: Connection, query: Query, retrieve_base: str,
           visible: ColumnElement[bool] | None = None) -> list[dict[str, Any]]:
    """Run `query` and return its results as DICOM JSON objects.

    `retrieve_base` is the DICOMweb root URL used for RetrieveURL and BulkDataURIs.
    `visible` is the caller's sharing policy (:func:`archive.policy.visible`),
    a condition on studies; matches outside it are never seen, so paging and
    counts stay right.

    Raises
    ------
    QueryError
        If a matching value is malformed for its attribute.
    """
    level = query.level
    target = {Level.STUDY: studies, Level.SERIES: series, Level.INSTANCE: instances}[level]
    joined = studies.join(patients, studies.c.patient_pk == patients.c.pk)
    if level in (Level.SERIES, Level.INSTANCE):
        joined = series.join(joined, series.c.study_pk == studies.c.pk)
    if level is Level.INSTANCE:
        joined = instances.join(joined, instances.c.series_pk == series.c.pk)
    conditions: list[ColumnElement[bool]] = [] if visible is None else [visible]
    if query.study_uid is not None:
        conditions.append(studies.c.study_uid == query.study_uid)
    if query.series_uid is not None:
        conditions.append(series.c.series_uid == query.series_uid)
    for tag, value in query.matches.items():
        if not is_supported(level, tag):
            continue
        condition = _condition(tag, value, query.fuzzy)
        if condition is not None:
            conditions.append(condition)
    for path, value in query.sequence_matches.items():
        if value not in ("", "*") and is_sequence_supported(level, path):
            conditions.append(exists().where(series_requests.c.series_pk == series.c.pk,
                                             _text_match(SEQUENCE_KEYS[path], value)))
    statement = (
        select(target.c.pk, studies.c.study_uid,
               *([series.c.series_uid] if level is not Level.STUDY else []),
               *([instances.c.sop_uid, instances.c.metadata] if level is Level.INSTANCE else []))
        .select_from(joined).where(and_(true(), *conditions))
        .order_by(*_ORDER[level]).offset(query.offset)
    )
    if query.limit is not None:
        statement = statement.limit(query.limit)
    rows = conn.execute(statement).all()
    if not rows:
        return []
    pks = [row.pk for row in rows]
    if level is Level.INSTANCE:
        samples = {row.pk: row.metadata for row in rows}
    else:
        samples = _sample_metadata(conn, level, pks)
    wanted = _wanted(query)
    extra = _computed(conn, level, pks, sop_classes=wanted(_t("SOPClassesInStudy")))
    results = []
    for row in rows:
        url = f"{retrieve_base}/studies/{row.study_uid}"
        if level is not Level.STUDY:
            url += f"/series/{row.series_uid}"
        if level is Level.INSTANCE:
            url += f"/instances/{row.sop_uid}"
        sample = orjson.loads(samples[row.pk].replace(ROOT_MARK.encode(), retrieve_base.encode()))
        result = {key: value for key, value in sample.items() if wanted(int(key, 16))}
        result["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
        result["00081190"] = {"vr": "UR", "Value": [url]}
        result.update(extra.get(row.pk, {}))
        results.append(dict(sorted(result.items())))
    return results


def _wanted(query: Query) -> Callable[[int], bool]:
    shown = set(RETURNED[query.level]) | query.include
    if query.level is not Level.STUDY and query.study_uid is None:
        shown |= set(RETURNED[Level.STUDY])
    if query.level is Level.INSTANCE and query.series_uid is None:
        shown |= set(RETURNED[Level.SERIES])
    if query.include_all:
        if query.level is Level.INSTANCE:
            return lambda tag: True
        shown |= LEVEL_ATTRIBUTES[Level.STUDY]
        if query.level is Level.SERIES:
            shown |= LEVEL_ATTRIBUTES[Level.SERIES]
        return lambda tag: tag in shown or tag >> 16 == PATIENT_GROUP
    return shown.__contains__


def _sample_metadata(conn: Connection, level: Level, pks: list[int]) -> dict[int, bytes]:
    """One instance's metadata per study or series: the source of its attributes."""
    owner = series.c.study_pk if level is Level.STUDY else instances.c.series_pk
    first = (
        select(owner.label("owner"), func.min(instances.c.pk).label("pk"))
        .select_from(instances.join(series, instances.c.series_pk == series.c.pk))
        .where(owner.in_(pks)).group_by(owner).subquery()
    )
    rows = conn.execute(
        select(first.c.owner, instances.c.metadata).join(first, instances.c.pk == first.c.pk)
    ).all()
    return {row.owner: row.metadata for row in rows}


def _computed(conn: Connection, level: Level, pks: list[int], *,
              sop_classes: bool = False) -> dict[int, dict[str, Any]]:
    """Counts and modalities, computed for the page only (PS3.18 Table 10.6.3-3);
    a study's SOPClassesInStudy when `sop_classes` (asked for by ``includefield``).

    The sharing policy admits or hides whole studies, so a visible study's
    counts are all of its series and instances."""
    computed: dict[int, dict[str, Any]] = {pk: {} for pk in pks}
    if level is Level.STUDY:
        counts = conn.execute(
            select(series.c.study_pk, func.count(func.distinct(series.c.pk)), func.count(instances.c.pk))
            .select_from(series.join(instances, instances.c.series_pk == series.c.pk))
            .where(series.c.study_pk.in_(pks)).group_by(series.c.study_pk)
        ).all()
        for pk, n_series, n_instances in counts:
            computed[pk]["00201206"] = {"vr": "IS", "Value": [n_series]}
            computed[pk]["00201208"] = {"vr": "IS", "Value": [n_instances]}
        modalities: dict[int, list[str]] = {}
        for pk, modality in conn.execute(
            select(series.c.study_pk, series.c.modality).distinct()
            .where(series.c.study_pk.in_(pks)).order_by(series.c.modality)
        ):
            if modality:
                modalities.setdefault(pk, []).append(modality)
        for pk, values in modalities.items():
            computed[pk]["00080061"] = {"vr": "CS", "Value": values}
        if sop_classes:
            classes: dict[int, list[str]] = {}
            for pk, sop_class in conn.execute(
                select(series.c.study_pk, instances.c.sop_class_uid).distinct()
                .select_from(series.join(instances, instances.c.series_pk == series.c.pk))
                .where(series.c.study_pk.in_(pks)).order_by(instances.c.sop_class_uid)
            ):
                classes.setdefault(pk, []).append(sop_class)
            for pk, values in classes.items():
                computed[pk]["00080062"] = {"vr": "UI", "Value": values}
        _guideline(conn, pks, computed)
    elif level is Level.SERIES:
        for pk, count in conn.execute(
            select(instances.c.series_pk, func.count()).where(instances.c.series_pk.in_(pks))
            .group_by(instances.c.series_pk)
        ):
            computed[pk]["00201209"] = {"vr": "IS", "Value": [count]}
    return computed


# The guideline's verdict on a study, as private attributes of study results
# (PS3.5 §7.8): creator "HUREN GUIDELINE" in block 0x10 of group 0x0011.
GUIDELINE_CREATOR = "HUREN GUIDELINE"
GUIDELINE_TAGS = {
    "creator": "00110010",   # LO: the private creator
    "verdict": "00111001",   # CS: PASS, FAIL or NOT_APPLICABLE, over all rule sets
    "marks": "00111002",     # CS: the recognition marks its exam items carry (JJJHR, BJHR)
    "items": "00111003",     # LO: the exam item codes recognised in it
}


def _guideline(conn: Connection, pks: list[int], computed: dict[int, dict[str, Any]]) -> None:
    """Add each judged study's verdict, marks and exam items (``GUIDELINE_TAGS``)."""
    verdicts: dict[int, list[str]] = {}
    for pk, verdict in conn.execute(
        select(judgements.c.study_pk, judgements.c.verdict)
        .where(judgements.c.study_pk.in_(pks), judgements.c.current.is_(True))
    ):
        verdicts.setdefault(pk, []).append(verdict)
    items: dict[int, list[tuple[str, str | None]]] = {}
    for pk, item, mark in conn.execute(
        select(item_results.c.study_pk, item_results.c.item, item_results.c.mark)
        .where(item_results.c.study_pk.in_(pks)).order_by(item_results.c.item)
    ):
        items.setdefault(pk, []).append((item, mark))
    tags = GUIDELINE_TAGS
    for pk, found in verdicts.items():
        result = computed[pk]
        result[tags["creator"]] = {"vr": "LO", "Value": [GUIDELINE_CREATOR]}
        result[tags["verdict"]] = {"vr": "CS", "Value": [str(summary_verdict(found)).upper()]}
        marks = sorted({mark for _item, mark in items.get(pk, []) if mark})
        if marks:
            result[tags["marks"]] = {"vr": "CS", "Value": marks}
        codes = [item for item, _mark in items.get(pk, [])]
        if codes:
            result[tags["items"]] = {"vr": "LO", "Value": codes}


def _condition(tag: int, value: str, fuzzy: bool = False) -> ColumnElement[bool] | None:
    key = KEYS[tag]
    name = keyword_for_tag(tag) or f"{tag:08X}"
    if value in ("", "*"):
        return None
    if key.kind == "uid":
        uids = [u.strip() for u in re.split(r"[,\\]", value) if u.strip()]
        for uid in uids:
            if not re.fullmatch(r"[0-9.]{1,64}", uid):
                raise QueryError(name, f"{uid!r} is not a UID")
        return key.column.in_(uids)
    if key.kind == "date":
        return _range(key.column, value, name, _check_date)
    if key.kind == "time":
        return _range(key.column, value, name, _check_time)
    if key.kind == "int":
        try:
            return key.column == int(value)
        except ValueError:
            raise QueryError(name, f"{value!r} is not an integer") from None
    if key.kind == "modalities":
        wanted = [v for v in re.split(r"[,\\]", value) if v]
        return exists().where(series.c.study_pk == studies.c.pk, series.c.modality.in_(wanted))
    if key.kind == "pn1":
        return _text_match(key.column, names.normalise(value))
    if key.kind == "pn":
        return _name_match(value, fuzzy)
    return _text_match(key.column, value)


def _name_match(value: str, fuzzy: bool) -> ColumnElement[bool]:
    """A patient name query: any group, or group by group when `value` has ``=``.

    Fuzzy, the (alphabetic) query also matches the name's pinyin, which an
    ideographic-only name has too.
    """
    columns = (patients.c.name_alphabetic, patients.c.name_ideographic, patients.c.name_phonetic)

    def match(column: Any, part: str) -> ColumnElement[bool]:
        literal = _text_match(column, names.normalise(part))
        if not fuzzy or column is not patients.c.name_alphabetic:
            return literal
        return or_(literal, _text_match(patients.c.name_pinyin, names.query_pinyin(part)))

    if "=" in value:
        parts = value.split("=")
        return and_(*(match(column, part) for column, part in zip(columns, parts) if part not in ("", "*")))
    return or_(*(match(column, value) for column in columns))


def _text_match(column: Any, value: str) -> ColumnElement[bool]:
    if "*" not in value and "?" not in value:
        return column == value
    pattern = (
        value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        .replace("*", "%").replace("?", "_")
    )
    return column.like(pattern, escape="\\")


def _range(column: Any, value: str, name: str,
           check: Callable[[str, str], None]) -> ColumnElement[bool]:
    if "-" not in value:
        check(value, name)
        return column == value if len(value) >= 6 else column.like(value + "%")
    low, _, high = value.partition("-")
    if not low and not high:
        raise QueryError(name, "a range needs at least one bound")
    conditions = []
    if low:
        check(low, name)
        conditions.append(and_(column >= low, column != ""))
    if high:
        check(high, name)
        # Any longer value starting with the bound still lies within it.
        conditions.append(and_(column <= high + "\x7f", column != ""))
    return and_(*conditions)


def _check_date(value: str, name: str) -> None:
    try:
        if not re.fullmatch(r"\d{8}", value):
            raise ValueError
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise QueryError(name, f"{value!r} is not a date (YYYYMMDD, or a range YYYYMMDD-YYYYMMDD)") from None


def _check_time(value: str, name: str) -> None:
    if not re.fullmatch(r"([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?", value):
        raise QueryError(name, f"{value!r} is not a time (HHMMSS.FFFFFF, or a range)")


def unsupported(level: Level, tags: Iterable[int]) -> list[int]:
    """The tags among `tags` that cannot be matched at `level` (they are ignored)."""
    return [tag for tag in tags if not is_supported(level, tag)]
