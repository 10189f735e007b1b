"""The rule-set loader: the shipped Jing-Jin-Ji file, and bad files named precisely."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from archive.guideline.judge import judge
from archive.guideline.rules import RuleSetError, load_rule_set
from tests.guideline_studies import RULES, facts_of, study


def raw_rules() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))


def write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "city.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def refused(tmp_path: Path, raw: dict[str, Any]) -> str:
    path = write(tmp_path, raw)
    with pytest.raises(RuleSetError) as caught:
        load_rule_set(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_shipped_rule_set_loads() -> None:
    rules = load_rule_set(RULES)
    assert (rules.id, rules.version, rules.report_required) == ("JJJ", "2017-trial-1", True)
    assert rules.name.zh == "京津冀医学影像检查图像资料共享指南(试行)"
    categories = [item.category for item in rules.items]
    assert len(rules.items) == 17
    assert sum(c in ("xray", "gi", "mammography") for c in categories) == 7
    assert (categories.count("ct"), categories.count("mr")) == (5, 5)
    assert len({item.code for item in rules.items}) == 17
    assert all(item.validity_days == 30 for item in rules.items)
    assert [scope.code for scope in rules.scopes] == ["BJHR", "TJHR", "HEHR", "JJJHR"]
    assert rules.scopes[-1].regions == ["BJ", "TJ", "HE"] and rules.scopes[-1].name.zh == "京津冀HR"
    assert rules.assessments == []
    assert [reason.code for reason in rules.reexamination_reasons] == [f"R{n:02}" for n in range(1, 12)]
    assert rules.recognition.levels[0] == "三级甲等" and rules.recognition.bands[1][0] == "二级乙等"
    assert rules.recognition.lower_accepts_higher and rules.recognition.alliance_recognises_all


def test_item_lookup_and_defaults_merged() -> None:
    rules = load_rule_set(RULES)
    chest = rules.item("JJJ-CT-CHEST-ENH")
    assert chest.name.en == "CT chest, contrast-enhanced" and chest.match.contrast == "enhanced"
    assert chest.ct is not None and (chest.ct.thin_max_mm, chest.ct.thick_min_mm, chest.ct.post_processed) == (
        1.5, 5, True)
    head = rules.item("JJJ-CT-HEAD")
    assert head.ct is not None and head.ct.post_processed is False
    with pytest.raises(KeyError):
        rules.item("JJJ-CT-FOOT")


def test_item_overrides_defaults(tmp_path: Path) -> None:
    raw = raw_rules()
    raw["items"][7].update(validity_days=7, ct={"thin_max_mm": 0.625, "thick_min_mm": 3})
    raw["assessments"] = [{"hospital": "bj-demo-1", "item": "JJJ-CT-HEAD", "scope": "JJJHR", "since": "2017-01-01"}]
    rules = load_rule_set(write(tmp_path, raw))
    head = rules.item("JJJ-CT-HEAD")
    assert head.validity_days == 7 and head.ct is not None
    assert (head.ct.thin_max_mm, head.ct.thick_min_mm, head.ct.gap_factor) == (0.625, 3, 1.5)
    assert rules.assessments[0].since == datetime.date(2017, 1, 1)


def test_a_second_rule_set_is_one_more_file(tmp_path: Path) -> None:
    raw = raw_rules()
    raw.update(id="JN", version="2023-1", name={"zh": "济南市互认项目", "en": "Jinan recognised items"},
               scopes=[{"code": "JNHR", "name": {"zh": "济南HR", "en": "Jinan HR"}, "regions": ["JN"]}])
    raw["items"] = [{**raw["items"][7], "code": "JN-CT-0001", "validity_days": 14}]
    rules = load_rule_set(write(tmp_path, raw))
    verdict = judge(rules, facts_of(study("JJJ-CT-HEAD")))
    assert (verdict.rule_set, verdict.version, verdict.verdict) == ("JN", "2023-1", "pass")
    assert [(item.code, item.validity_days) for item in verdict.items] == [("JN-CT-0001", 14)]


@pytest.mark.parametrize(("change", "error"), [
    (lambda r: r["items"][2].update(modalty=["DX"]), "items[2] (JJJ-DR-LSPINE): modalty: unknown key"),
    (lambda r: r["items"][8].update(ct={"thin_max_mm": -1}),
     "items[8] (JJJ-CT-CHEST): ct.thin_max_mm: must be greater than 0"),
    (lambda r: r["items"][7].update(ct={"thin_max_mm": 5}),
     "items[7] (JJJ-CT-HEAD): ct: thin_max_mm (5) must be less than thick_min_mm (5)"),
    (lambda r: r["items"][7].update(validity_days=0),
     "items[7] (JJJ-CT-HEAD): validity_days: must be greater than 0"),
    (lambda r: r["items"][0].update(category="us"),
     "items[0] (JJJ-DR-CHEST): category: must be 'xray', 'gi', 'mammography', 'ct' or 'mr'"),
    (lambda r: r["items"][0].pop("name"), "items[0] (JJJ-DR-CHEST): name: required"),
    (lambda r: r["items"][0].update(views=["FRONTAL", "OBLIQUE"]),
     "items[0] (JJJ-DR-CHEST): views: unknown view 'OBLIQUE'"),
    (lambda r: r["items"][12].update(views=["FRONTAL"]),
     "items[12] (JJJ-MR-HEAD): views: only for X-ray, GI and mammography items"),
    (lambda r: r["items"][0].update(sequences=["T1"]), "items[0] (JJJ-DR-CHEST): sequences: only for MR items"),
    (lambda r: r["items"][12].update(sequences=["T1", "SWI"]),
     "items[12] (JJJ-MR-HEAD): sequences: unknown sequence 'SWI'"),
    (lambda r: r["items"].append(dict(r["items"][7])), "items: duplicate item code 'JJJ-CT-HEAD'"),
    (lambda r: r["assessments"].append({"hospital": "h1", "item": "JJJ-CT-FOOT", "scope": "JJJHR",
                                        "since": "2017-01-01"}),
     "assessments[0]: item: unknown item code 'JJJ-CT-FOOT'"),
    (lambda r: r["assessments"].append({"hospital": "h1", "item": "JJJ-CT-HEAD", "scope": "SHHR",
                                        "since": "2017-01-01"}),
     "assessments[0]: scope: unknown scope code 'SHHR'"),
    (lambda r: r["recognition"]["bands"][1].append("四级甲等"), "recognition: bands[1]: unknown level '四级甲等'"),
    (lambda r: r["defaults"]["ct"].update(gap_factor=1), "defaults.ct.gap_factor: must be greater than 1"),
    (lambda r: r["messages"]["ct.thin_series"].update(en="{item}: thickest is {thickest}"),
     "messages.ct.thin_series.en: unknown placeholder {thickest} (known: item, thin_max, thinnest)"),
    (lambda r: r["messages"].pop("mr.sequence"), "messages: missing mr.sequence"),
    (lambda r: r["reexamination_reasons"][1].update(code="R01"), "reexamination_reasons: duplicate code 'R01'"),
])
def test_bad_rule_file_names_item_and_key(tmp_path: Path, change: Any, error: str) -> None:
    raw = raw_rules()
    change(raw)
    assert refused(tmp_path, raw).split("; ")[0] == error


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("items: [unclosed\n", encoding="utf-8")
    with pytest.raises(RuleSetError, match=rf"^{bad}: not valid YAML: "):
        load_rule_set(bad)
    bad.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(RuleSetError, match=rf"^{bad}: the top level must be a mapping$"):
        load_rule_set(bad)
    with pytest.raises(RuleSetError, match=rf"^{tmp_path / 'none.yaml'}: cannot read: No such file or directory$"):
        load_rule_set(tmp_path / "none.yaml")
