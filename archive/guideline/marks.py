"""Recognition marks and who recognises whose results.

A mark is "<scope>HR" (BJHR, JJJHR): the scope a hospital earned for an exam
item in a quality assessment. An item not assessed, or failing its checks,
carries none; of several scopes the widest (most regions) applies. Whether a
hospital accepts another's marked result follows the rule set's recognition
rules (the Beijing plan's, in domain.md): members of one medical alliance
recognise each other; otherwise the mark's scope must cover the asking
hospital's region and, by hospital level, lower levels accept higher levels'
results and hospitals within one band of levels accept each other's.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from archive.config import Hospital
from archive.guideline.rules import RuleSet


def item_mark(rule_set: RuleSet, hospital: Hospital | None, item: str,
              study_date: datetime.date | None) -> str | None:
    """The mark `hospital`'s result for `item` carries, judged as passing; ``None`` if unmarked.

    Only assessments in force on the study date count, and a hospital
    suspended or withdrawn by then earns no mark.
    """
    if hospital is None or study_date is None or not hospital.recognised_on(study_date):
        return None
    scopes = {scope.code: scope for scope in rule_set.scopes}
    earned = [scopes[a.scope] for a in rule_set.assessments
              if a.hospital == hospital.id and a.item == item and a.since <= study_date]
    if not earned:
        return None
    return max(earned, key=lambda scope: len(scope.regions)).code


def recognises(rule_set: RuleSet, asker: Hospital, source: Hospital, mark: str,
               today: datetime.date) -> bool:
    """Whether `asker` accepts `source`'s result carrying `mark`, as of `today`."""
    if not source.recognised_on(today):
        return False
    if asker.id == source.id:
        return True
    rules = rule_set.recognition
    if rules.alliance_recognises_all and set(asker.alliances) & set(source.alliances):
        return True
    scope = next((s for s in rule_set.scopes if s.code == mark), None)
    if scope is None or asker.region not in scope.regions:
        return False
    if asker.level is None or source.level is None:
        return True  # levels not configured: the mark's scope decides alone
    band = {level: n for n, levels in enumerate(rules.bands) for level in levels}
    asker_band, source_band = band.get(asker.level), band.get(source.level)
    if asker_band is None or source_band is None:
        return True
    # Bands are listed highest first: a lower band number is a higher level.
    return source_band == asker_band or (rules.lower_accepts_higher and source_band < asker_band)


def recognition_key(rule_set_id: str, mark: str) -> str:
    """How a study's ``recognition`` column names one passing item's mark: `` JJJ:BJHR ``.

    The spaces delimit it, so that a search for one key never matches
    inside another.
    """
    return f" {rule_set_id}:{mark} "


def recognition(marked: Iterable[tuple[str, str]]) -> str | None:
    """A study's ``recognition`` column: the keys of its passing, marked items (rule set, mark);
    ``None`` when it has none."""
    keys = sorted({recognition_key(rule_set_id, mark).strip() for rule_set_id, mark in marked})
    return f" {' '.join(keys)} " if keys else None
