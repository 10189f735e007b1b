"""A sharing guideline as data: the model of a rule file and its loader.

A rule set (``conf/guideline/*.yaml``) says which exam items are shared, how each is
recognised in a study, what a shareable study of it must hold, and how results are
recognised between hospitals. Every threshold, keyword and finding message is in the
file, so a second programme (a city's 300-item list) is one more file and no code.
Unknown keys are refused, so a misspelt rule never silently falls back to a default;
errors name the file, the item (by index and code) and the key.
"""

from __future__ import annotations

import datetime
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Category = Literal["xray", "gi", "mammography", "ct", "mr"]

LEVELS = ["三级甲等", "三级乙等", "三级丙等", "二级甲等", "二级乙等", "二级丙等", "一级甲等", "一级乙等", "一级丙等"]

# The values the judge gives each finding message; a template may use these and no other.
PLACEHOLDERS: dict[str, frozenset[str]] = {key: frozenset(names.split()) for key, names in {
    "study.attribute_missing": "attribute", "study.attribute_partly_missing": "attribute series count total",
    "study.lossy_transfer_syntax": "syntax uid series", "study.unknown_transfer_syntax": "uid series",
    "study.no_report": "", "study.unverified_report": "series flag", "xray.view": "item view",
    "images.missing_numbers": "item series description numbers", "xray.view_side": "item view side",
    "images.missing_count": "item series description count declared", "ct.post_processed": "item",
    "ct.thin_series": "item thin_max thinnest", "ct.thin_series_none": "item thin_max",
    "ct.thick_series": "item thick_min thickest", "ct.thick_series_none": "item thick_min",
    "ct.coverage": "item thin_series thin_from thin_to thick_series thick_from thick_to tolerance",
    "ct.slice_gap": "item series description gap at median gaps", "mr.sequence": "item sequence",
    "mr.post_processed": "item sequence series needed", "redundant.capture": "series description",
    "redundant.for_processing": "count series", "redundant.duplicate": "count series",
}.items()}


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Text(Rule):
    """The same words in Chinese and English."""

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class Pattern(Rule):
    """Any of `keywords` and none of `exclude`, case-insensitive; a Latin letter at a
    keyword's edge must not touch another letter (``MPR`` is not in ``MPRAGE``)."""

    keywords: list[str] = []
    exclude: list[str] = []


class Side(Pattern):
    """A body side, by (Image) Laterality or else by description words."""

    name: Text


class View(Side):
    """An X-ray view, by View Position (0018,5101) or else by description words."""

    view_positions: list[str] = []


class Sequence(Pattern):
    """An MR sequence kind; `needs` are the post-processed kinds it must come with."""

    name: Text
    needs: list[str] = []


class CtRule(Rule):
    thin_max_mm: float = Field(gt=0)
    thick_min_mm: float = Field(gt=0)
    gap_factor: float = Field(gt=1)  # × the median slice spacing
    coverage_tolerance_mm: float = Field(ge=0)
    post_processed: bool

    @model_validator(mode="after")
    def _thin_below_thick(self) -> CtRule:
        if self.thin_max_mm >= self.thick_min_mm:
            raise ValueError(f"thin_max_mm ({self.thin_max_mm:g}) must be less than "
                             f"thick_min_mm ({self.thick_min_mm:g})")
        return self


class Match(Pattern):
    """How an item is recognised in a series: one of `keywords` (if given), one of `also`
    (if given), none of `exclude`; or a procedure code value or meaning in `codes`."""

    also: list[str] = []
    codes: list[str] = []
    contrast: Literal["plain", "enhanced", "any"] = "any"


class Item(Rule):
    """One shared exam item and what a shareable study of it holds."""

    code: str = Field(min_length=1)
    name: Text
    category: Category
    modality: list[str] = Field(min_length=1)
    match: Match = Match()
    validity_days: int = Field(gt=0)
    views: list[str] = []
    laterality: Literal["none", "each", "both"] = "none"
    ct: CtRule | None = None
    sequences: list[str] = []

    @model_validator(mode="after")
    def _fits_category(self) -> Item:
        if (self.ct is None) == (self.category == "ct"):
            raise ValueError("ct: required for CT items, and only for them")
        if self.sequences and self.category != "mr":
            raise ValueError("sequences: only for MR items")
        if (self.views or self.laterality != "none") and self.category not in ("xray", "gi", "mammography"):
            raise ValueError("views: only for X-ray, GI and mammography items")
        return self


class Scope(Rule):
    """Where a recognition mark is valid (北京HR = BJHR: Beijing; 京津冀HR = JJJHR: all three)."""

    code: str = Field(min_length=1)
    name: Text
    regions: list[str] = Field(min_length=1)


class Assessment(Rule):
    """A hospital's item passed quality assessment for a scope on a date."""

    hospital: str = Field(min_length=1)
    item: str
    scope: str
    since: datetime.date


class Recognition(Rule):
    """Which hospital levels accept each other's results."""

    levels: list[str] = LEVELS
    bands: list[list[str]] = [LEVELS[:4], LEVELS[4:]]
    lower_accepts_higher: bool = True
    alliance_recognises_all: bool = True

    @model_validator(mode="after")
    def _known_levels(self) -> Recognition:
        if unknown := [(n, level) for n, band in enumerate(self.bands) for level in band if level not in self.levels]:
            raise ValueError(f"bands[{unknown[0][0]}]: unknown level {unknown[0][1]!r}")
        return self


class Reason(Text):
    """A situation in which a doctor may still order the exam again."""

    code: str = Field(pattern=r"^R\d\d$")


class Attribute(Rule):
    """A fact every study must carry; a missing one is finding ``study.<id>``."""

    id: str = Field(pattern=r"^[a-z_]+$")
    fact: str
    name: Text


class Report(Rule):
    sr_classes: list[str] = Field(min_length=1)
    pdf_classes: list[str] = []
    verified: list[str] = Field(min_length=1)


class TransferSyntaxes(Rule):
    """Transfer syntax UIDs and their names; any UID in neither list fails too."""

    lossless: dict[str, str]
    lossy: dict[str, str]


class StudyRules(Rule):
    attributes: list[Attribute]
    report: Report
    transfer_syntaxes: TransferSyntaxes


class Contrast(Rule):
    plain: list[str]
    enhanced: list[str]
    no_agent: list[str] = []


class SeriesRules(Rule):
    localizer: Pattern
    contrast: Contrast
    post_processed: dict[Category, Pattern]
    secondary_capture_classes: list[str]


class Captures(Pattern):
    """Screen captures and dose/protocol pages: by `keywords`, or by Conversion
    Type unless the description shows a post-processed image (`unless`)."""

    conversion_types: list[str] = []
    unless: list[str] = []


class Redundant(Rule):
    for_processing_modalities: list[str]
    captures: Captures


class Defaults(Rule):
    validity_days: int = Field(gt=0)
    ct: CtRule | None = None


class RuleSet(Rule):
    id: str = Field(min_length=1)
    version: str = Field(min_length=1)
    name: Text
    report_required: bool
    defaults: Defaults
    recognition: Recognition = Recognition()
    scopes: list[Scope]
    assessments: list[Assessment] = []
    reexamination_reasons: list[Reason]
    study: StudyRules
    series: SeriesRules
    redundant: Redundant
    views: dict[str, View] = {}
    sides: dict[Literal["R", "L"], Side] = {}
    sequences: dict[str, Sequence] = {}
    messages: dict[str, Text]
    items: list[Item]

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, raw: Any) -> Any:
        defaults = raw.get("defaults") if isinstance(raw, dict) else None
        if not isinstance(defaults, dict) or not isinstance(raw.get("items"), list):
            return raw
        items = [{"validity_days": defaults.get("validity_days"), **item} if isinstance(item, dict) else item
                 for item in raw["items"]]
        for item in items:
            if isinstance(item, dict) and item.get("category") == "ct" and isinstance(defaults.get("ct"), dict) \
                    and isinstance(item.get("ct", {}), dict):
                item["ct"] = {**defaults["ct"], **item.get("ct", {})}
        return {**raw, "items": items}

    @model_validator(mode="after")
    def _consistent(self) -> RuleSet:
        for key, what, values in (
            ("items", "item code", [item.code for item in self.items]),
            ("scopes", "scope code", [scope.code for scope in self.scopes]),
            ("reexamination_reasons", "code", [reason.code for reason in self.reexamination_reasons]),
            ("study.attributes", "id", [attribute.id for attribute in self.study.attributes]),
        ):
            if twice := [value for value in values if values.count(value) > 1]:
                raise ValueError(f"{key}: duplicate {what} {twice[0]!r}")
        codes, scopes = {item.code for item in self.items}, {scope.code for scope in self.scopes}
        for n, assessment in enumerate(self.assessments):
            if assessment.item not in codes:
                raise ValueError(f"assessments[{n}]: item: unknown item code {assessment.item!r}")
            if assessment.scope not in scopes:
                raise ValueError(f"assessments[{n}]: scope: unknown scope code {assessment.scope!r}")
        for n, item in enumerate(self.items):
            where = f"items[{n}] ({item.code})"
            if unknown := [view for view in item.views if view not in self.views]:
                raise ValueError(f"{where}: views: unknown view {unknown[0]!r}")
            if unknown := [kind for kind in item.sequences if kind not in self.sequences]:
                raise ValueError(f"{where}: sequences: unknown sequence {unknown[0]!r}")
            if item.laterality != "none" and set(self.sides) != {"R", "L"}:
                raise ValueError(f"{where}: laterality: needs sides R and L")
        for name, kind in self.sequences.items():
            if unknown := [need for need in kind.needs if need not in self.sequences]:
                raise ValueError(f"sequences.{name}.needs: unknown sequence {unknown[0]!r}")
        _check_messages(self.messages)
        return self

    def item(self, code: str) -> Item:
        """Return the item with `code`; raises KeyError for an unknown code."""
        return {item.code: item for item in self.items}[code]


class RuleSetError(Exception):
    """A rule file cannot be used; the message names the file, the item and the key."""


def load_rule_set(path: str | Path) -> RuleSet:
    """Read and validate a rule file (YAML).

    Raises
    ------
    RuleSetError
        If the file is missing, is not YAML, or a key, type or value is wrong.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RuleSetError(f"{path}: cannot read: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RuleSetError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RuleSetError(f"{path}: the top level must be a mapping")
    try:
        return RuleSet.model_validate(raw)
    except ValidationError as exc:
        raise RuleSetError(f"{path}: " + "; ".join(_describe(err, raw) for err in exc.errors())) from None


def _check_messages(messages: dict[str, Text]) -> None:
    """Every message the judge gives, each using only the values it is given."""
    if missing := sorted(PLACEHOLDERS.keys() - messages.keys()):
        raise ValueError(f"messages: missing {', '.join(missing)}")
    for key, text in messages.items():
        if key not in PLACEHOLDERS:
            raise ValueError(f"messages.{key}: unknown message")
        for lang, template in (("zh", text.zh), ("en", text.en)):
            try:
                fields = [field[1:] for field in string.Formatter().parse(template) if field[1] is not None]
            except ValueError as exc:
                raise ValueError(f"messages.{key}.{lang}: {exc}") from None
            for name, spec, conversion in fields:
                if name not in PLACEHOLDERS[key]:
                    raise ValueError(f"messages.{key}.{lang}: unknown placeholder {{{name}}} "
                                     f"(known: {', '.join(sorted(PLACEHOLDERS[key])) or 'none'})")
                if spec or conversion:
                    raise ValueError(f"messages.{key}.{lang}: {{{name}}} takes no format or conversion")


def _describe(error: Any, raw: dict[str, Any]) -> str:
    """One pydantic error as ``<key path>: <message>``, the item named by its code."""
    loc = list(error["loc"])
    message = {"extra_forbidden": "unknown key", "missing": "required"}.get(
        error["type"], error["msg"].removeprefix("Value error, ").replace("Input should be", "must be"))
    where, items = "", raw.get("items")
    if loc[:1] == ["items"] and len(loc) > 1 and isinstance(items, list) and isinstance(loc[1], int) \
            and isinstance(item := items[loc[1]], dict) and item.get("code"):
        where, loc = f"items[{loc[1]}] ({item['code']})", loc[2:]
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return ": ".join(part for part in (where, key, message) if part)
