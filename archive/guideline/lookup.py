"""The recognition look-up: which recognised results a patient already has.

What a hospital information system asks when a patient registers (the Jinan
platform's reminder): results of the last N days, from any hospital, that
passed the guideline, carry a mark, and that the asking hospital accepts.
The person is found through every identifier their studies carry (see
``study_identities``): the identifier asked for finds the studies that carry
it, and their other identifiers (a resident ID number with its issuer) find
the same person's studies at other hospitals.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, select, tuple_

from archive.config import Config, Hospital
from archive.guideline.marks import recognises
from archive.guideline.rules import RuleSet
from archive.index.schema import item_results, studies, study_identities


@dataclass(frozen=True)
class Result:
    """One recognisable result: a passing, marked exam item of a study."""

    rule_set: RuleSet
    item: str
    mark: str
    study_uid: str
    study_date: datetime.date
    hospital: Hospital
    valid_until: datetime.date


def same_person(conn: Connection, patient_id: str, issuer: str) -> list[int]:
    """The study keys of the person known as `patient_id` of `issuer`, at any hospital."""
    seeds = select(study_identities.c.study_pk).where(
        study_identities.c.patient_id == patient_id, study_identities.c.issuer == issuer)
    ids = select(study_identities.c.patient_id, study_identities.c.issuer).where(
        study_identities.c.study_pk.in_(seeds))
    return list(conn.execute(
        select(study_identities.c.study_pk).distinct().where(
            tuple_(study_identities.c.patient_id, study_identities.c.issuer).in_(ids))
    ).scalars())


def recognised(conn: Connection, config: Config, patient_id: str, issuer: str, *, days: int,
               today: datetime.date, asker: Hospital | None = None, item: str | None = None,
               source: str | None = None) -> list[Result]:
    """Recognisable results of a person from the last `days` days, newest first.

    Each item's own validity window (``validity_days``) shortens `days` when it
    is shorter. With `asker`, only results that hospital accepts (levels,
    alliances, the mark's scope, the source hospital's status); without, every
    marked result of a hospital in good standing. `item` keeps one exam item
    code, `source` one source hospital.
    """
    study_pks = same_person(conn, patient_id, issuer)
    if not study_pks:
        return []
    since = (today - datetime.timedelta(days=days)).strftime("%Y%m%d")
    conditions = [item_results.c.study_pk.in_(study_pks), item_results.c.verdict == "pass",
                  item_results.c.mark.is_not(None), item_results.c.study_date >= since]
    if item is not None:
        conditions.append(item_results.c.item == item)
    if source is not None:
        conditions.append(item_results.c.hospital_id == source)
    rows = conn.execute(
        select(item_results.c.rule_set, item_results.c.item, item_results.c.mark,
               item_results.c.study_date, item_results.c.hospital_id, studies.c.study_uid)
        .join(studies, studies.c.pk == item_results.c.study_pk)
        .where(and_(*conditions))
        .order_by(item_results.c.study_date.desc(), studies.c.study_uid)
    ).all()
    rule_sets = {rule_set.id: rule_set for rule_set in config.rule_sets}
    results = []
    for row in rows:
        rule_set, hospital = rule_sets.get(row.rule_set), config.hospital(row.hospital_id)
        if rule_set is None or hospital is None:
            continue  # a rule set or hospital no longer configured recognises nothing
        study_date = datetime.datetime.strptime(row.study_date, "%Y%m%d").date()
        valid_until = study_date + datetime.timedelta(days=rule_set.item(row.item).validity_days)
        if valid_until < today:
            continue
        if asker is not None:
            if not recognises(rule_set, asker, hospital, row.mark, today):
                continue
        elif not hospital.recognised_on(today):
            continue
        results.append(Result(rule_set, row.item, row.mark, row.study_uid, study_date, hospital,
                              valid_until))
    return results


def describe(result: Result, study_url: str) -> dict[str, Any]:
    """A result as the look-up API's JSON."""
    item = result.rule_set.item(result.item)
    return {
        "item": {"code": item.code, "name": item.name.model_dump()},
        "rule_set": result.rule_set.id,
        "mark": result.mark,
        "study_date": result.study_date.isoformat(),
        "valid_until": result.valid_until.isoformat(),
        "hospital": {"id": result.hospital.id, "name": result.hospital.name},
        "study_instance_uid": result.study_uid,
        "url": study_url,
    }
