"""Judging a study against a rule set: is it a shareable result, and of which items?

:func:`judge` takes the study's instance facts (:func:`archive.guideline.facts.
instance_facts` of each instance, plus its ``sop_uid``, ``transfer_syntax``
and ``sha256``) and returns a :class:`Judgement`: one verdict per exam item
found and the findings behind them, each with a message a radiographer can
act on. It is a pure function of the facts and the rule set, so a study is
judged the same at ingest, on rejudge and by ``huren guideline check``.

A failing study-wide check (a missing accession number, a lossy image, no
signed report) fails every item: none of its results may be shared.
Redundant data is flagged, never failed, and not judged as images.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from archive.guideline.classify import (
    Classified,
    Facts,
    Redundant,
    Series,
    classify,
    group_series,
    is_post_processed,
    matches,
    redundant,
    text_of,
)
from archive.guideline.rules import Item, RuleSet, Text, View

SEQUENCE_TEXT = ("series_description", "protocol_name", "sequence_name", "image_type",
                 "scanning_sequence", "sequence_variant", "scan_options")


@dataclass(frozen=True)
class Finding:
    rule: str                      # stable id, e.g. "ct.thin_series"
    outcome: str                   # "fail", or "flag" for redundant data (noted, not failing)
    item: str | None               # the exam item's code; None for the whole study
    series: tuple[str, ...]        # Series Instance UIDs concerned
    message: dict[str, str]        # {"zh": ..., "en": ...}


@dataclass(frozen=True)
class ItemResult:
    code: str
    name: dict[str, str]
    verdict: str                   # "pass" | "fail"
    series: tuple[str, ...]
    validity_days: int


@dataclass(frozen=True)
class Judgement:
    rule_set: str
    version: str
    verdict: str                   # "pass" | "fail" | "not_applicable" (no item recognised)
    items: tuple[ItemResult, ...]
    findings: tuple[Finding, ...]

    def to_json(self) -> dict[str, Any]:
        """The judgement as plain JSON types."""
        return {
            "rule_set": self.rule_set, "version": self.version, "verdict": self.verdict,
            "items": [{**vars(item), "series": list(item.series)} for item in self.items],
            "findings": [{**vars(finding), "series": list(finding.series)} for finding in self.findings],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Judgement:
        """The judgement that :meth:`to_json` gave `data`."""
        return cls(
            data["rule_set"], data["version"], data["verdict"],
            tuple(ItemResult(**{**item, "series": tuple(item["series"])}) for item in data["items"]),
            tuple(Finding(**{**finding, "series": tuple(finding["series"])}) for finding in data["findings"]),
        )


def judge(rule_set: RuleSet, instances: Sequence[Mapping[str, Any]]) -> Judgement:
    """Judge one study: its items, every study-wide check and its redundant data."""
    extra = redundant(rule_set, instances)
    findings = _study(rule_set, [facts for facts in instances if not extra.holds(facts)])
    found_items = classify(rule_set, instances)
    for found_item in found_items:
        check = {"ct": _ct, "mr": _mr}.get(found_item.item.category, _xray)
        findings += check(rule_set, found_item)
    findings += _redundant(rule_set, extra)
    study_fails = any(f.outcome == "fail" and f.item is None for f in findings)
    results = tuple(
        ItemResult(c.item.code, c.item.name.model_dump(),
                   "fail" if study_fails or any(f.outcome == "fail" and f.item == c.item.code for f in findings)
                   else "pass",
                   tuple(s.uid for s in c.series), c.item.validity_days)
        for c in found_items)
    verdict = ("not_applicable" if not results
               else "fail" if any(result.verdict == "fail" for result in results) else "pass")
    return Judgement(rule_set.id, rule_set.version, verdict, results, tuple(findings))


def _finding(rule_set: RuleSet, rule: str, key: str, item: Item | None = None,
             series: Sequence[Series] = (), outcome: str = "fail", **values: Any) -> Finding:
    """A finding with its message `key` filled in each language ({series}: the series' labels)."""
    values.setdefault("series", ", ".join(s.label for s in series))
    if item is not None:
        values["item"] = item.name
    template = rule_set.messages[key]
    message = {lang: getattr(template, lang).format(**{name: _say(value, lang) for name, value in values.items()})
               for lang in ("zh", "en")}
    return Finding(rule, outcome, item.code if item else None, tuple(s.uid for s in series), message)


def _say(value: Any, lang: str) -> str:
    if isinstance(value, Text):
        return str(getattr(value, lang))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _study(rule_set: RuleSet, kept: list[Facts]) -> list[Finding]:
    """Patient and study identity, lossless images and a signed report."""
    series = group_series(kept)
    findings = []
    for attribute in rule_set.study.attributes:
        lacking = [s for s in series if any(not facts.get(attribute.fact) for facts in s.instances)]
        if lacking and len(lacking) == len(series):
            findings.append(_finding(rule_set, f"study.{attribute.id}", "study.attribute_missing",
                                     attribute=attribute.name))
        elif lacking:
            findings.append(_finding(rule_set, f"study.{attribute.id}", "study.attribute_partly_missing",
                                     series=lacking, attribute=attribute.name, count=len(lacking),
                                     total=len(series)))
    syntaxes = rule_set.study.transfer_syntaxes
    stored: dict[str, list[Series]] = {}
    for s in series:
        for uid in dict.fromkeys(str(facts.get("transfer_syntax") or "") for facts in s.instances):
            if uid and uid not in syntaxes.lossless:
                stored.setdefault(uid, []).append(s)
    for uid, where in stored.items():
        if uid in syntaxes.lossy:
            findings.append(_finding(rule_set, "study.transfer_syntax", "study.lossy_transfer_syntax",
                                     series=where, syntax=syntaxes.lossy[uid], uid=uid))
        else:
            findings.append(_finding(rule_set, "study.transfer_syntax", "study.unknown_transfer_syntax",
                                     series=where, uid=uid))
    report = rule_set.study.report
    reports = [s for s in series if s.first.get("sop_class") in report.sr_classes]
    signed = any(s.first.get("sop_class") in report.pdf_classes for s in series) or any(
        str(facts.get("verification_flag", "")).upper() in report.verified for s in reports for facts in s.instances)
    if rule_set.report_required and not signed:
        if reports:
            flags = {str(facts.get("verification_flag") or "—") for s in reports for facts in s.instances}
            findings.append(_finding(rule_set, "study.report", "study.unverified_report", series=reports,
                                     flag=", ".join(sorted(flags))))
        else:
            findings.append(_finding(rule_set, "study.report", "study.no_report"))
    return findings


def _missing_images(rule_set: RuleSet, item: Item, series: Series) -> list[Finding]:
    """Images missing from a series: a gap in its Instance Numbers, or fewer than Images in Acquisition."""
    numbers = {int(n) for facts in series.instances
               if isinstance(n := facts.get("instance_number"), (int, float))}
    gaps = [n for n in range(min(numbers), max(numbers) + 1) if n not in numbers] if numbers else []
    declared = max((int(facts.get("images_in_acquisition") or 0) for facts in series.instances), default=0)
    if gaps:
        return [_finding(rule_set, "images.missing", "images.missing_numbers", item, [series],
                         description=series.description, numbers=_ranges(gaps))]
    if declared > len(series.instances):
        return [_finding(rule_set, "images.missing", "images.missing_count", item, [series],
                         description=series.description, count=len(series.instances), declared=declared)]
    return []


def _ranges(numbers: list[int]) -> str:
    """``[4, 7, 8, 9]`` as ``4, 7-9``."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def _xray(rule_set: RuleSet, found_item: Classified) -> list[Finding]:
    """Conventional X-ray, GI and mammography: every image, and the views the item names."""
    item = found_item.item
    findings = [f for s in found_item.series for f in _missing_images(rule_set, item, s)]
    images = [facts for s in found_item.series for facts in s.instances]
    sides: dict[str, list[Facts]] = {"": images} if item.laterality == "none" else {}
    if item.laterality != "none":
        for facts in images:
            sides.setdefault(_side(rule_set, facts), []).append(facts)
    if item.laterality == "both":
        sides = {side: sides.get(side, []) for side in rule_set.sides}
    for side, group in sides.items():
        for code in item.views:
            view = rule_set.views[code]
            if any(_shows(view, facts) for facts in group):
                continue
            if side:
                findings.append(_finding(rule_set, "xray.views", "xray.view_side", item, view=view.name,
                                         side=rule_set.sides[side].name))  # type: ignore[index]
            else:
                findings.append(_finding(rule_set, "xray.views", "xray.view", item, view=view.name))
    return findings


def _side(rule_set: RuleSet, facts: Facts) -> str:
    laterality = str(facts.get("laterality") or facts.get("series_laterality") or "").upper()
    if laterality in rule_set.sides:
        return laterality
    text = text_of([facts], ("series_description", "protocol_name"))
    return next((code for code, side in rule_set.sides.items() if matches(side, text)), "")


def _shows(view: View, facts: Facts) -> bool:
    # View Position, when sent, is the modality's own word; descriptions are only a fallback.
    if position := str(facts.get("view_position") or "").upper():
        return position in {p.upper() for p in view.view_positions}
    return matches(view, text_of([facts], ("series_description", "protocol_name")))


def _ct(rule_set: RuleSet, found_item: Classified) -> list[Finding]:
    """CT: complete thick- and thin-slice series of the same region, and post-processed images if asked."""
    item, ct = found_item.item, found_item.item.ct
    assert ct is not None  # the rule set requires it of CT items
    stacks = [s for s in found_item.series if not is_post_processed(rule_set, s, "ct")]
    findings = [f for s in stacks for f in _missing_images(rule_set, item, s)]
    thickness = {s.uid: t for s in stacks if (t := _thickness(s)) is not None}
    for s in stacks:
        positions = _along(s, _normal(s))
        steps = [(b - a, a) for a, b in pairwise(positions)]
        if len(steps) < 2:
            continue
        median = statistics.median(step for step, _ in steps)
        gaps = [(step, at) for step, at in steps if step > ct.gap_factor * median]
        if gaps:
            gap, at = max(gaps)
            findings.append(_finding(rule_set, "ct.slice_gap", "ct.slice_gap", item, [s], description=s.description,
                                     gap=round(gap, 1), at=round(at, 1), median=round(median, 2), gaps=len(gaps)))
    thin = [s for s in stacks if thickness.get(s.uid, ct.thin_max_mm + 1) <= ct.thin_max_mm]
    thick = [s for s in stacks if thickness.get(s.uid, 0) >= ct.thick_min_mm]
    if not thin and thickness:
        findings.append(_finding(rule_set, "ct.thin_series", "ct.thin_series", item,
                                 thin_max=ct.thin_max_mm, thinnest=min(thickness.values())))
    elif not thin:
        findings.append(_finding(rule_set, "ct.thin_series", "ct.thin_series_none", item, thin_max=ct.thin_max_mm))
    if not thick and thickness:
        findings.append(_finding(rule_set, "ct.thick_series", "ct.thick_series", item,
                                 thick_min=ct.thick_min_mm, thickest=max(thickness.values())))
    elif not thick:
        findings.append(_finding(rule_set, "ct.thick_series", "ct.thick_series_none", item,
                                 thick_min=ct.thick_min_mm))
    findings += _coverage(rule_set, item, thin, thick)
    if ct.post_processed and len(stacks) == len(found_item.series):
        findings.append(_finding(rule_set, "ct.post_processed", "ct.post_processed", item))
    return findings


def _coverage(rule_set: RuleSet, item: Item, thin: list[Series], thick: list[Series]) -> list[Finding]:
    """Whether some thin series spans some thick series along the scan axis (fine if positions are unknown)."""
    tolerance = item.ct.coverage_tolerance_mm if item.ct else 0.0
    best: tuple[float, Series, list[float], Series, list[float]] | None = None
    for k in thick:
        normal = _normal(k)
        if not (k_at := _along(k, normal)):
            continue
        for t in thin:
            if not (t_at := _along(t, normal)):
                continue
            if t_at[0] <= k_at[0] + tolerance and t_at[-1] >= k_at[-1] - tolerance:
                return []
            overlap = min(t_at[-1], k_at[-1]) - max(t_at[0], k_at[0])
            if best is None or overlap > best[0]:
                best = (overlap, t, t_at, k, k_at)
    if best is None:
        return []
    _, t, t_at, k, k_at = best
    return [_finding(rule_set, "ct.coverage", "ct.coverage", item, [t, k], thin_series=t.label,
                     thin_from=round(t_at[0], 1), thin_to=round(t_at[-1], 1), thick_series=k.label,
                     thick_from=round(k_at[0], 1), thick_to=round(k_at[-1], 1), tolerance=tolerance)]


def _thickness(series: Series) -> float | None:
    values = [float(v) for facts in series.instances if isinstance(v := facts.get("slice_thickness"), (int, float))]
    return statistics.median(values) if values else None


def _normal(series: Series) -> tuple[float, float, float] | None:
    """The scan axis: the normal of Image Orientation (Patient) (PS3.3 C.7.6.2.1.1)."""
    o = series.first.get("orientation")
    if not isinstance(o, list) or len(o) != 6:
        return None
    return (o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3])


def _along(series: Series, normal: tuple[float, float, float] | None) -> list[float]:
    """The distinct slice positions along `normal`, ascending: of single-frame images,
    and of each frame of enhanced multi-frame images (their ``frame_positions``)."""
    if normal is None:
        return []
    positions = []
    for facts in series.instances:
        if (facts.get("frames") or 1) == 1:
            positions.append(facts.get("position"))
        else:
            positions.extend(facts.get("frame_positions") or [])
    return sorted({round(sum(p * n for p, n in zip(position, normal)), 2)
                   for position in positions if isinstance(position, list) and len(position) == 3})


def _mr(rule_set: RuleSet, found_item: Classified) -> list[Finding]:
    """MR: every sequence complete, the sequences the item names, and the post-processed
    images every angiography or functional sequence needs."""
    item = found_item.item
    originals = [s for s in found_item.series if not is_post_processed(rule_set, s, "mr")]
    findings = [f for s in originals for f in _missing_images(rule_set, item, s)]
    texts = {s.uid: s.text(*SEQUENCE_TEXT) for s in found_item.series}

    def having(kind: str) -> list[Series]:
        return [s for s in found_item.series if matches(rule_set.sequences[kind], texts[s.uid])]

    for kind in item.sequences:
        if not having(kind):
            findings.append(_finding(rule_set, "mr.sequences", "mr.sequence", item,
                                     sequence=rule_set.sequences[kind].name))
    for kind, sequence in rule_set.sequences.items():
        present = having(kind) if sequence.needs else []
        for need in sequence.needs:
            if present and not having(need):
                findings.append(_finding(rule_set, "mr.post_processed", "mr.post_processed", item, present,
                                         sequence=sequence.name, needed=rule_set.sequences[need].name))
    return findings


def _redundant(rule_set: RuleSet, extra: Redundant) -> list[Finding]:
    findings = []
    for rule, instances in (("redundant.for_processing", extra.for_processing),
                            ("redundant.duplicate", extra.duplicates)):
        if instances:
            series = group_series(instances)
            findings.append(_finding(rule_set, rule, rule, None, series, "flag", count=len(instances)))
    for s in extra.captures:
        findings.append(_finding(rule_set, "redundant.capture", "redundant.capture", None, [s], "flag",
                                 description=s.description))
    return findings
