"""What a study holds: its series, its exam items and its redundant data.

Everything here works on instance facts (:mod:`archive.guideline.facts`) and
the rule set's words; nothing reads pixels. A study may hold several items
(a head CT and a chest CT under one accession), so items are recognised
series by series: from the series' own Body Part Examined, Series Description
and Protocol Name first, and only for a series that names nothing the rule
set knows, from the study's description, requested procedure and procedure
codes as well.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from archive.guideline.rules import Item, Pattern, RuleSet

Facts = Mapping[str, Any]

SERIES_TEXT = ("body_part", "series_description", "protocol_name")
STUDY_TEXT = ("study_description", "requested_description")


@functools.lru_cache(maxsize=4096)
def _keyword(word: str) -> re.Pattern[str]:
    # A Latin-letter edge must not touch another letter: "MPR" is no "MPRAGE".
    before = r"(?<![A-Za-z])" if word[:1].isascii() and word[:1].isalpha() else ""
    after = r"(?![A-Za-z])" if word[-1:].isascii() and word[-1:].isalpha() else ""
    return re.compile(before + re.escape(word) + after, re.IGNORECASE)


def found(words: Iterable[str], text: str) -> bool:
    """Whether any of `words` is in `text`, as :class:`~archive.guideline.rules.Pattern` describes."""
    return any(_keyword(word).search(text) for word in words)


def matches(pattern: Pattern, text: str) -> bool:
    """Whether `text` holds one of the pattern's keywords and none of its exclusions."""
    return found(pattern.keywords, text) and not found(pattern.exclude, text)


def text_of(instances: Iterable[Facts], names: Sequence[str]) -> str:
    """The distinct values of facts `names` over `instances`, as one searchable text."""
    values: dict[str, None] = {}
    for facts in instances:
        for name in names:
            value = facts.get(name)
            if isinstance(value, list):
                value = " ".join(str(v) for v in value)
            if value:
                values[str(value)] = None
    return " | ".join(values)


@dataclass(frozen=True)
class Series:
    """The instances of one series, in Instance Number order."""

    uid: str
    instances: tuple[Facts, ...]

    @property
    def first(self) -> Facts:
        return self.instances[0]

    @property
    def modality(self) -> str:
        return str(self.first.get("modality", "")).upper()

    @property
    def label(self) -> str:
        """How a radiographer finds the series: its number, else its UID."""
        number = self.first.get("series_number")
        return str(number) if number is not None else self.uid

    @property
    def description(self) -> str:
        return str(self.first.get("series_description", ""))

    def text(self, *names: str) -> str:
        return text_of(self.instances, names)


@dataclass(frozen=True)
class Classified:
    """One exam item found in a study, with the series that hold it."""

    item: Item
    series: tuple[Series, ...]


@dataclass(frozen=True)
class Redundant:
    """Data of no clinical value in a study (flagged, never judged)."""

    for_processing: tuple[Facts, ...]
    duplicates: tuple[Facts, ...]
    captures: tuple[Series, ...]

    @functools.cached_property
    def _ids(self) -> frozenset[int]:
        # By identity: two facts may be equal (a copy) while only one is redundant.
        return frozenset(id(facts) for facts in (*self.for_processing, *self.duplicates,
                                                 *(f for series in self.captures for f in series.instances)))

    def holds(self, facts: Facts) -> bool:
        """Whether `facts` (this very object) is redundant."""
        return id(facts) in self._ids


def group_series(instances: Iterable[Facts]) -> list[Series]:
    """The instances by series, series in Series Number order (unnumbered last)."""
    groups: dict[str, list[Facts]] = {}
    for facts in instances:
        groups.setdefault(str(facts.get("series_uid", "")), []).append(facts)
    series = [Series(uid, tuple(sorted(group, key=_instance_order))) for uid, group in groups.items()]
    return sorted(series, key=lambda s: (s.first.get("series_number") is None, s.first.get("series_number") or 0))


def is_report(rule_set: RuleSet, facts: Facts) -> bool:
    report = rule_set.study.report
    return facts.get("sop_class") in (*report.sr_classes, *report.pdf_classes)


def is_capture(rule_set: RuleSet, series: Series) -> bool:
    """Whether `series` holds secondary captures (which always count as post-processed)."""
    return series.first.get("sop_class") in rule_set.series.secondary_capture_classes


def is_post_processed(rule_set: RuleSet, series: Series, category: str) -> bool:
    """Whether `series` is a reconstruction (MPR, MIP, VR ...) by the rules of `category`."""
    pattern = rule_set.series.post_processed.get(category)  # type: ignore[call-overload]
    return is_capture(rule_set, series) or (
        pattern is not None and matches(pattern, series.text("image_type", "series_description")))


def redundant(rule_set: RuleSet, instances: Sequence[Facts]) -> Redundant:
    """Find the redundant data of a study: raw FOR PROCESSING images beside FOR
    PRESENTATION ones, byte-identical copies (same ``sha256``, another
    ``sop_uid``) and screen captures or dose/protocol pages."""
    rules = rule_set.redundant
    presented = {str(f.get("modality", "")).upper() for f in instances
                 if str(f.get("presentation_intent", "")).upper() == "FOR PRESENTATION"}
    for_processing = tuple(
        f for f in instances
        if str(f.get("presentation_intent", "")).upper() == "FOR PROCESSING"
        and str(f.get("modality", "")).upper() in presented
        and str(f.get("modality", "")).upper() in _upper(rules.for_processing_modalities))
    seen: dict[str, Any] = {}
    duplicates = []
    for facts in instances:
        digest = facts.get("sha256")
        if digest and seen.setdefault(digest, facts.get("sop_uid")) != facts.get("sop_uid"):
            duplicates.append(facts)
    captures = tuple(s for s in group_series(instances)
                     if s.modality != "SR" and _is_redundant_capture(rule_set, s))
    return Redundant(for_processing, tuple(duplicates), captures)


def _is_redundant_capture(rule_set: RuleSet, series: Series) -> bool:
    rules = rule_set.redundant.captures
    text = series.text("series_description", "protocol_name", "derivation")
    if matches(rules, text):
        return True
    converted = {str(f.get("conversion_type", "")).upper() for f in series.instances}
    return bool(converted & set(rules.conversion_types)) and not found(rules.unless, text)


def classify(rule_set: RuleSet, instances: Sequence[Facts]) -> list[Classified]:
    """Recognise the exam items a study holds and the series of each.

    Reports, localizers and redundant data make no item. A series that matches
    no item by its own words is matched by the study's words as well; a
    secondary capture series that matches nothing goes with every CT and MR
    item found (a workstation's reconstructions of the same study). Where an
    item asks for plain or enhanced, the contrast of its series decides.
    Items come in the rule set's order.
    """
    extra = redundant(rule_set, instances)
    kept = [f for f in instances if not is_report(rule_set, f) and not extra.holds(f)]
    study_text = text_of(kept, STUDY_TEXT)
    codes = {str(value).upper() for f in kept for code in f.get("procedure_codes", [])
             for value in (code[0], code[2]) if value}
    found_in: dict[str, list[Series]] = {item.code: [] for item in rule_set.items}
    leftovers: list[Series] = []
    for series in group_series(kept):
        if matches(rule_set.series.localizer, series.text("image_type", *SERIES_TEXT)):
            continue
        own = series.text(*SERIES_TEXT)
        items = [item for item in rule_set.items if _fits(item, series, own, own)]
        if not items:
            items = [item for item in rule_set.items if _fits(item, series, f"{own} | {study_text}", own)
                     or (series.modality in _upper(item.modality) and bool(codes & _upper(item.match.codes))
                         and not found(item.match.exclude, own))]
        for item in items:
            found_in[item.code].append(series)
        if not items and is_capture(rule_set, series):
            leftovers.append(series)
    result = []
    for item in rule_set.items:
        of_item = found_in[item.code]
        if of_item and _contrast_fits(rule_set, item, of_item, study_text):
            if item.category in ("ct", "mr"):
                of_item = [*of_item, *leftovers]
            result.append(Classified(item, tuple(of_item)))
    return result


def _fits(item: Item, series: Series, text: str, own: str) -> bool:
    """Whether `series` is of `item` by the words in `text` (exclusions in its `own` words)."""
    match = item.match
    return (series.modality in _upper(item.modality)
            and (not match.keywords or found(match.keywords, text))
            and (not match.also or found(match.also, text))
            and not found(match.exclude, own))


def _contrast_fits(rule_set: RuleSet, item: Item, series: list[Series], study_text: str) -> bool:
    if item.match.contrast == "any":
        return True
    words = rule_set.series.contrast
    enhanced = any(_enhanced(rule_set, s.text("series_description", "protocol_name")) for s in series) or any(
        str(f.get("contrast_agent", "")).upper() not in {"", *_upper(words.no_agent)}
        for s in series for f in s.instances)
    if not enhanced and not any(found(words.plain, s.text("series_description", "protocol_name")) for s in series):
        # No series says either way: the study's description and requested procedure decide.
        enhanced = _enhanced(rule_set, study_text)
    return enhanced == (item.match.contrast == "enhanced")


def _enhanced(rule_set: RuleSet, text: str) -> bool:
    words = rule_set.series.contrast
    for word in sorted(words.plain, key=len, reverse=True):
        text = _keyword(word).sub(" ", text)  # "NON-CONTRAST" must not read as "CONTRAST"
    return found(words.enhanced, text)


def _upper(values: Iterable[str]) -> set[str]:
    return {value.upper() for value in values}


def _instance_order(facts: Facts) -> tuple[bool, float]:
    number = facts.get("instance_number")
    return (number is None, number if isinstance(number, (int, float)) else 0)
