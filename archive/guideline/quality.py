"""The quality report: how each hospital's exam items fare against the sharing guideline.

Per hospital and exam item: the studies judged, passed, failed and marked, the
pass rate, the rules that fail most often, and the weekly pass rate by ISO
week of the study date. It is what the regional quality-control centres
watch before telling a hospital to fix its images, and before the exit
mechanism applies (domain.md, source 000).

Everything is counted with GROUP BY over ``item_results`` (one row per exam
item of each study's current judgement), so the work grows with the number of
hospitals, items and days, not with the number of studies. Compliance records
are read only for the example message of each top failing rule.
"""

from __future__ import annotations

import datetime
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, Row, case, func, select

from archive.config import Config
from archive.index.schema import item_results, judgements

TOP_REASONS = 5
MAX_WEEKS = 104

Key = tuple[str | None, str, str]  # hospital id, rule set id, item code


@dataclass(frozen=True)
class Filters:
    """Which item results count; `weeks` is the trend's length, ending with `until`'s week (or today's)."""

    hospital: str | None = None
    item: str | None = None
    rule_set: str | None = None
    since: datetime.date | None = None
    until: datetime.date | None = None
    weeks: int = 12


@dataclass(frozen=True)
class Week:
    week: str  # ISO week of the study date, "2026-W48"
    judged: int
    passed: int
    pass_rate: float | None


@dataclass(frozen=True)
class Reason:
    """A rule failing items fail: `share` is of the failed items (an item may fail several rules)."""

    rule: str
    count: int
    share: float
    # The newest failing finding's message ({"zh", "en"}), so admins read words, not rule ids.
    message: dict[str, str] | None


@dataclass(frozen=True)
class Item:
    code: str
    name: dict[str, str] | None  # {"zh", "en"}; None for an item no configured rule set names


@dataclass(frozen=True)
class Hospital:
    id: str | None  # None: studies that came from no known hospital
    name: str | None
    region: str | None
    level: str | None


@dataclass(frozen=True)
class Totals:
    judged: int
    passed: int
    failed: int
    marked: int
    pass_rate: float | None


@dataclass(frozen=True)
class ItemQuality:
    rule_set: str
    item: Item
    judged: int
    passed: int
    failed: int
    marked: int
    pass_rate: float | None
    reasons: list[Reason]
    trend: list[Week]


@dataclass(frozen=True)
class HospitalQuality:
    hospital: Hospital
    judged: int
    passed: int
    failed: int
    marked: int
    pass_rate: float | None
    trend: list[Week]
    items: list[ItemQuality]


@dataclass(frozen=True)
class Report:
    weeks: list[str]  # the trend's week labels, oldest first
    totals: Totals
    hospitals: list[HospitalQuality]


def quality(conn: Connection, config: Config, filters: Filters, today: datetime.date) -> Report:
    """Count the current judgements' item results that match `filters`.

    Hospitals come in configuration order, then unconfigured ids, then
    studies of no known hospital; items in rule set order, then by code.
    Study dates that are empty or not dates count in the totals (unless
    `since` or `until` is set) but in no week.
    """
    where = _conditions(filters)
    mondays = _mondays(filters, today)
    combinations = _combinations(conn, where)
    counts = _counts(combinations)
    reasons = _reasons(conn, combinations, counts)
    days = _days(conn, where, mondays[0], mondays[-1] + datetime.timedelta(days=6))

    names = {(rs.id, item.code): {"zh": item.name.zh, "en": item.name.en}
             for rs in config.rule_sets for item in rs.items}
    order = {key: n for n, key in enumerate(names)}
    labels = [_week_label(monday) for monday in mondays]
    items: dict[str | None, list[ItemQuality]] = defaultdict(list)
    for key in sorted(counts, key=lambda k: (order.get(k[1:], len(order)), k[1], k[2])):
        judged, passed, failed, marked = counts[key]
        weeks = days.get(key, {})
        items[key[0]].append(ItemQuality(
            rule_set=key[1], item=Item(key[2], names.get(key[1:])),
            judged=judged, passed=passed, failed=failed, marked=marked,
            pass_rate=_rate(passed, judged), reasons=reasons.get(key, []),
            trend=[_week(label, *weeks.get(label, (0, 0))) for label in labels],
        ))

    positions: dict[str | None, int] = {hospital.id: n for n, hospital in enumerate(config.hospitals)}
    hospitals = [
        _hospital(config, hospital_id, items[hospital_id], labels)
        for hospital_id in sorted(items, key=lambda h: (h is None, positions.get(h, len(positions)), h or ""))
    ]
    return Report(labels, _totals(hospitals), hospitals)


def _conditions(filters: Filters) -> list[ColumnElement[bool]]:
    where = []
    if filters.hospital is not None:
        where.append(item_results.c.hospital_id == filters.hospital)
    if filters.rule_set is not None:
        where.append(item_results.c.rule_set == filters.rule_set)
    if filters.item is not None:
        where.append(item_results.c.item == filters.item)
    # YYYYMMDD strings compare as the dates they are; a bounded report leaves out
    # studies without a date, which would compare as before any bound.
    if filters.since is not None or filters.until is not None:
        where.append(func.length(item_results.c.study_date) == 8)
    if filters.since is not None:
        where.append(item_results.c.study_date >= filters.since.strftime("%Y%m%d"))
    if filters.until is not None:
        where.append(item_results.c.study_date <= filters.until.strftime("%Y%m%d"))
    return where


def _mondays(filters: Filters, today: datetime.date) -> list[datetime.date]:
    """The first days of the trend's ISO weeks, oldest first."""
    end = filters.until or today
    last = end - datetime.timedelta(days=end.weekday())
    return [last - datetime.timedelta(weeks=n) for n in range(filters.weeks - 1, -1, -1)]


def _week_label(day: datetime.date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


_key = (item_results.c.hospital_id, item_results.c.rule_set, item_results.c.item)
_passed = func.sum(case((item_results.c.verdict == "pass", 1), else_=0))


def _combinations(conn: Connection, where: list[ColumnElement[bool]]) -> list[Row[*tuple[Any, ...]]]:
    """Judged, passed, failed and marked items per hospital, item and set of failed rules,
    with the latest failing judgement of each.

    One scan serves both the counts and the failure reasons: grouped by the
    whole ``failed_rules`` string, which takes few distinct values (sets of a
    few dozen rules), the rows are split into rules here, as splitting a
    string into rows is not portable SQL.
    """
    failing = item_results.c.verdict == "fail"
    return list(conn.execute(
        select(*_key, item_results.c.failed_rules, func.count(), _passed,
               func.sum(case((failing, 1), else_=0)), func.count(item_results.c.mark),
               func.max(case((failing, item_results.c.judgement_pk))))
        .where(*where).group_by(*_key, item_results.c.failed_rules)
    ))


def _counts(combinations: list[Row[*tuple[Any, ...]]]) -> dict[Key, tuple[int, int, int, int]]:
    """Judged, passed, failed and marked per hospital and item."""
    counts: dict[Key, tuple[int, int, int, int]] = {}
    for *key, _, judged, passed, failed, marked, _ in combinations:
        before = counts.get(tuple(key), (0, 0, 0, 0))
        counts[tuple(key)] = (before[0] + judged, before[1] + int(passed), before[2] + int(failed),
                              before[3] + marked)
    return counts


def _reasons(conn: Connection, combinations: list[Row[*tuple[Any, ...]]],
             counts: dict[Key, tuple[int, int, int, int]]) -> dict[Key, list[Reason]]:
    """The most frequent failing rules of each hospital's failed items (their
    ``failed_rules`` name the item's own failing rules and the study-wide ones)."""
    rules: dict[Key, Counter[str]] = defaultdict(Counter)
    newest: dict[str, int] = {}  # rule -> the latest judgement it failed in
    for *key, failed_rules, _, _, failed, _, judgement_pk in combinations:
        if not failed:
            continue
        for rule in set(failed_rules.split()):
            rules[tuple(key)][rule] += int(failed)
            newest[rule] = max(newest.get(rule, 0), judgement_pk)
    top = {key: sorted(counted.items(), key=lambda rc: (-rc[1], rc[0]))[:TOP_REASONS]
           for key, counted in rules.items()}
    messages = _messages(conn, {rule: newest[rule] for ranked in top.values() for rule, _ in ranked})
    return {
        key: [Reason(rule, count, round(count / counts[key][2], 4), messages.get(rule))
              for rule, count in ranked]
        for key, ranked in top.items()
    }


def _messages(conn: Connection, judgement_of: dict[str, int]) -> dict[str, dict[str, str]]:
    """Each rule's failure message, from the compliance record of the judgement given for it."""
    if not judgement_of:
        return {}
    records = {
        pk: orjson.loads(record) for pk, record in conn.execute(
            select(judgements.c.pk, judgements.c.record)
            .where(judgements.c.pk.in_(set(judgement_of.values())))
        )
    }
    messages = {}
    for rule, pk in judgement_of.items():
        findings: list[dict[str, Any]] = records.get(pk, {}).get("findings", [])
        message = next((f.get("message") for f in findings
                        if f.get("rule") == rule and f.get("outcome") == "fail"), None)
        if isinstance(message, dict):
            messages[rule] = {"zh": message.get("zh", ""), "en": message.get("en", "")}
    return messages


def _days(conn: Connection, where: list[ColumnElement[bool]], first: datetime.date,
          last: datetime.date) -> dict[Key, dict[str, tuple[int, int]]]:
    """Judged and passed per hospital, item and ISO week from `first` to `last`.

    SQL counts per study date and the days are folded into weeks here: ISO
    weeks are not portable SQL (SQLite's ``%W`` is not the ISO week), and a
    trend spans at most 728 days.
    """
    rows = conn.execute(
        select(*_key, item_results.c.study_date, func.count(), _passed)
        .where(*where, item_results.c.study_date >= first.strftime("%Y%m%d"),
               item_results.c.study_date <= last.strftime("%Y%m%d"))
        .group_by(*_key, item_results.c.study_date)
    )
    days = (first + datetime.timedelta(days=n) for n in range((last - first).days + 1))
    week_of = {day.strftime("%Y%m%d"): _week_label(day) for day in days}
    weeks: dict[Key, dict[str, tuple[int, int]]] = defaultdict(dict)
    for *key, study_date, judged, passed in rows:
        label = week_of.get(study_date)
        if label is None:
            continue  # not a date (e.g. "20261100"): counted in the totals only
        before = weeks[tuple(key)].get(label, (0, 0))
        weeks[tuple(key)][label] = (before[0] + judged, before[1] + int(passed))
    return weeks


def _hospital(config: Config, hospital_id: str | None, items: list[ItemQuality],
              labels: list[str]) -> HospitalQuality:
    known = config.hospital(hospital_id)
    trend = [_week(label, sum(item.trend[n].judged for item in items),
                   sum(item.trend[n].passed for item in items))
             for n, label in enumerate(labels)]
    totals = _totals(items)
    return HospitalQuality(
        hospital=Hospital(hospital_id, known.name if known else None,
                          known.region if known else None, known.level if known else None),
        judged=totals.judged, passed=totals.passed, failed=totals.failed, marked=totals.marked,
        pass_rate=totals.pass_rate, trend=trend, items=items,
    )


def _totals(parts: list[ItemQuality] | list[HospitalQuality]) -> Totals:
    judged = sum(part.judged for part in parts)
    passed = sum(part.passed for part in parts)
    return Totals(judged, passed, sum(part.failed for part in parts), sum(part.marked for part in parts),
                  _rate(passed, judged))


def _week(label: str, judged: int, passed: int) -> Week:
    return Week(label, judged, passed, _rate(passed, judged))


def _rate(passed: int, judged: int) -> float | None:
    return round(passed / judged, 4) if judged else None
