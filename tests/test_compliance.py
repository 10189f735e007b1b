"""Judging archived studies: the quiet period, claims shared by processes,
compliance records and marks, and the recognition look-up — in-process, on
SQLite and on PostgreSQL. (End to end through ``huren serve``: test_recognition.)
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from sqlalchemy import func, select

from archive.config import Config, config_with_rule_sets
from archive.guideline.compliance import Compliance
from archive.guideline.lookup import recognised, same_person
from archive.index.schema import judgements, studies
from archive.ingest import Source
from tests.conftest import Archive
from tests.guideline_studies import RULES, series_of, study, without

TODAY = datetime.date.today()
RECENT = (TODAY - datetime.timedelta(days=3)).strftime("%Y%m%d")
NATIONAL_ISSUER = "CN-RESIDENT-ID"
NATIONAL_ID = "110101196603150000"  # what tests.guideline_studies gives every patient

HOSPITALS = [
    {"id": "bj-a", "name": "北京甲医院", "ae_titles": ["CT_A"], "level": "三级甲等", "region": "BJ"},
    {"id": "tj-b", "name": "天津乙医院", "ae_titles": ["CT_B"], "level": "二级甲等", "region": "TJ"},
    {"id": "he-c", "name": "河北丙医院", "ae_titles": ["CT_C"], "level": "二级乙等", "region": "HE",
     "alliances": ["冀北医联体"]},
    {"id": "he-d", "name": "河北丁医院", "ae_titles": ["CT_D"], "level": "一级甲等", "region": "HE",
     "alliances": ["冀北医联体"]},
    {"id": "bj-e", "name": "北京戊医院", "ae_titles": ["CT_E"], "level": "三级甲等", "region": "BJ",
     "status": "suspended", "since": (TODAY - datetime.timedelta(days=1)).isoformat()},
]
ASSESSMENTS = [
    {"hospital": "bj-a", "item": "JJJ-CT-HEAD", "scope": "BJHR", "since": "2020-01-01"},
    {"hospital": "bj-a", "item": "JJJ-DR-CHEST", "scope": "JJJHR", "since": "2020-01-01"},
    {"hospital": "bj-a", "item": "JJJ-DR-CHEST", "scope": "BJHR", "since": "2019-01-01"},
    {"hospital": "bj-a", "item": "JJJ-DR-CSPINE", "scope": "BJHR", "since": "2020-01-01"},
    {"hospital": "tj-b", "item": "JJJ-DR-CHEST", "scope": "JJJHR", "since": "2020-01-01"},
    {"hospital": "he-d", "item": "JJJ-DR-CHEST", "scope": "HEHR", "since": "2020-01-01"},
    {"hospital": "bj-e", "item": "JJJ-DR-CHEST", "scope": "JJJHR", "since": "2020-01-01"},
]
# Most tests send DR studies (two images and a report): quick to archive.
CHEST, SPINE = "JJJ-DR-CHEST", "JJJ-DR-CSPINE"


def rule_file(folder: Path, assessments: list[dict[str, Any]] = ASSESSMENTS) -> Path:
    """The shipped rule set with quality-assessment results for the test hospitals."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    rules["assessments"] = assessments
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    return path


def make_config(folder: Path, **guideline: Any) -> Config:
    config = Config(hospitals=HOSPITALS, guideline={"rule_sets": [rule_file(folder)], **guideline})
    return config_with_rule_sets(config)


class Site:
    """An archive with judging, and the hospitals that send to it."""

    def __init__(self, index_url: str, folder: Path) -> None:
        self.archive = Archive(index_url, folder)
        self.config = make_config(folder)
        self.compliance = Compliance(self.archive.db, self.config)

    def send(self, datasets: list, hospital: str = "bj-a") -> str:
        """Archive `datasets` as sent by `hospital`, each image with 8×8 pixels (rules never look)."""
        source = Source("dimse", hospital, self.config.hospital(hospital).ae_titles[0])
        for ds in datasets:
            if "Rows" in ds and "PixelData" not in ds:
                ds.Rows = ds.Columns = 8
                ds.PixelData = bytes(128)
            self.archive.add(ds, source=source)
        return datasets[0].StudyInstanceUID

    def judge_all(self, owner: str = "test") -> int:
        """Judge every pending study as if its quiet period were over."""
        return self.compliance.run_due(owner, self.quiet())

    def quiet(self) -> datetime.datetime:
        """A moment when every study received so far is quiet."""
        return later(self.config.guideline.quiet_period + 1)

    def record(self, study_uid: str) -> dict[str, Any]:
        record = self.compliance.record(study_uid)
        assert record is not None
        return record

    def look_up(self, patient_id: str = NATIONAL_ID, issuer: str = NATIONAL_ISSUER, *,
                days: int = 30, asker: str | None = None, **more: Any) -> list:
        with self.archive.db.reading() as conn:
            return recognised(conn, self.config, patient_id, issuer, days=days, today=TODAY,
                              asker=self.config.hospital(asker) if asker else None, **more)


def later(seconds: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)


@pytest.fixture
def site(index_url: str, tmp_path: Path):
    site = Site(index_url, tmp_path)
    yield site
    site.archive.db.dispose()


def study_uids(conn: Any, keys: list[int]) -> set[str]:
    return set(conn.execute(select(studies.c.study_uid).where(studies.c.pk.in_(keys))).scalars())


def findings(record: dict[str, Any]) -> set[str]:
    return {f["rule"] for j in record["judgements"] for f in j["findings"] if f["outcome"] == "fail"}


def test_quiet_period_then_a_late_series_turns_fail_into_pass(site: Site) -> None:
    datasets = study("JJJ-CT-HEAD", StudyDate=RECENT)
    thin = series_of(datasets, "Head 1mm")
    uid = site.send(without(datasets, "Head 1mm"))
    # Not quiet yet: nothing is judged.
    assert site.compliance.run_due("test") == 0
    assert site.record(uid)["verdict"] is None and site.record(uid)["pending"]

    assert site.judge_all() == 1
    first = site.record(uid)
    assert first["verdict"] == "fail" and not first["pending"]
    assert "ct.thin_series" in findings(first)
    assert site.judge_all() == 0  # judged once, not again while nothing arrives

    site.send(thin)  # the thin-slice series arrives late
    assert site.record(uid)["pending"]
    assert site.judge_all() == 1
    second = site.record(uid)
    assert second["verdict"] == "pass", findings(second)
    assert second["judgements"][0]["marks"] == {"JJJ-CT-HEAD": "BJHR"}
    assert [h["verdict"] for h in second["history"]] == ["fail"]  # the earlier record is kept


def test_each_study_is_judged_by_one_process(site: Site) -> None:
    uid = site.send(study(CHEST, StudyDate=RECENT))
    other = Compliance(site.archive.db, site.config)
    [pk] = site.compliance.due(site.quiet())
    mine = site.compliance.claim(pk, "one")
    assert mine is not None
    assert other.claim(pk, "two") is None           # held by "one"
    assert other.run_due("two", site.quiet()) == 0
    assert site.compliance.judge(mine, "one")
    assert other.run_due("two", site.quiet()) == 0   # judged: not due any more
    with site.archive.db.reading() as conn:
        assert conn.execute(select(func.count()).select_from(judgements)).scalar() == 1
    assert site.record(uid)["verdict"] == "pass"


def test_a_claim_left_by_a_dead_process_runs_out(site: Site) -> None:
    uid = site.send(study(CHEST, StudyDate=RECENT))
    [pk] = site.compliance.due(site.quiet())
    dead = site.compliance.claim(pk, "dead")  # claimed, then the process died mid-judgement
    assert dead is not None
    assert site.compliance.run_due("next", later(60)) == 0
    timeout = site.config.guideline.claim_timeout
    assert site.compliance.run_due("next", later(timeout + 1)) == 1
    assert not site.compliance.judge(dead, "dead")  # a claim lost is not recorded twice
    assert [j["verdict"] for j in site.record(uid)["judgements"]] == ["pass"]
    assert site.record(uid)["history"] == []


def test_an_instance_arriving_mid_judgement_leaves_the_study_pending(site: Site) -> None:
    datasets = study(CHEST, StudyDate=RECENT)
    uid = site.send(datasets[:-1])
    [pk] = site.compliance.due(site.quiet())
    claim = site.compliance.claim(pk, "one")
    site.send(datasets[-1:])  # the report arrives while the study is being judged
    assert site.compliance.judge(claim, "one")
    assert site.record(uid)["pending"]
    assert site.judge_all() == 1
    assert site.record(uid)["verdict"] == "pass"


def test_compliance_record_names_items_findings_and_rule_set(site: Site) -> None:
    uid = site.send(study(CHEST, SPINE, StudyDate=RECENT, AccessionNumber=None,
                          report=None))
    site.judge_all()
    record = site.record(uid)
    [judgement] = record["judgements"]
    assert judgement["rule_set"] == "JJJ" and judgement["version"] and judgement["judged_at"]
    assert {item["code"] for item in judgement["items"]} == {CHEST, SPINE}
    assert judgement["verdict"] == "fail"
    assert {"study.accession_number", "study.report"} <= findings(record)
    messages = [f["message"]["en"] for f in judgement["findings"] if f["rule"] == "study.accession_number"]
    assert messages and "ccession" in messages[0]
    assert judgement["marks"] == {}  # a study-wide failure: no item may carry a mark
    assert site.compliance.record("1.2.3.4") is None


def test_qido_shows_verdict_marks_and_items(site: Site) -> None:
    uid = site.send(study(CHEST, StudyDate=RECENT))
    site.judge_all()
    [found] = site.archive.find(StudyInstanceUID=uid)
    assert found["00110010"]["Value"] == ["HUREN GUIDELINE"]
    assert found["00111001"]["Value"] == ["PASS"]
    assert found["00111002"]["Value"] == ["JJJHR"]  # the widest of BJHR and JJJHR
    assert found["00111003"]["Value"] == [CHEST]


def test_same_person_across_hospitals_by_resident_id(site: Site) -> None:
    """Two hospitals give one person different local PatientIDs; the resident ID links them."""
    at_a = site.send(study(CHEST, StudyDate=RECENT, PatientID="A-778", IssuerOfPatientID="BJA-HIS"), "bj-a")
    at_b = site.send(study(CHEST, StudyDate=RECENT, PatientID="TJ-0042", IssuerOfPatientID="TJB-HIS"), "tj-b")
    stranger = study(CHEST, StudyDate=RECENT, PatientID="A-779", IssuerOfPatientID="BJA-HIS",
                     OtherPatientIDsSequence=None)
    site.send(stranger, "bj-a")
    # The same local ID at another hospital, sent without an issuer (so it fails the
    # guideline, but is archived): scoped to its hospital, it is nobody else's A-778.
    bare = site.send(study(CHEST, StudyDate=RECENT, PatientID="A-778", IssuerOfPatientID=None,
                           OtherPatientIDsSequence=None), "he-c")
    site.judge_all()
    assert {r.study_uid for r in site.look_up()} == {at_a, at_b}
    # Hospital B asks with its own local ID: the resident ID its study carries finds A's.
    assert {r.study_uid for r in site.look_up("TJ-0042", "TJB-HIS")} == {at_a, at_b}
    assert site.look_up("TJ-0042", "BJA-HIS") == []
    assert {r.study_uid for r in site.look_up("A-779", "BJA-HIS")} == {stranger[0].StudyInstanceUID}
    with site.archive.db.reading() as conn:
        assert bare not in study_uids(conn, same_person(conn, "A-778", "BJA-HIS"))
        assert study_uids(conn, same_person(conn, "A-778", "he-c")) == {bare}


def test_validity_window(site: Site) -> None:
    old = (TODAY - datetime.timedelta(days=40)).strftime("%Y%m%d")
    site.send(study(CHEST, StudyDate=old))
    recent = site.send(study(CHEST, StudyDate=RECENT))
    site.judge_all()
    assert [r.study_uid for r in site.look_up()] == [recent]
    assert len(site.look_up(days=60)) == 1  # the item's own 30-day window still applies
    assert site.look_up(days=2) == []


def test_suspended_hospital_is_no_longer_recognised(site: Site) -> None:
    before = (TODAY - datetime.timedelta(days=5)).strftime("%Y%m%d")
    uid = site.send(study(CHEST, StudyDate=before), "bj-e")
    site.judge_all()
    # Judged as passing and marked (the study predates the suspension)...
    assert site.record(uid)["judgements"][0]["marks"] == {CHEST: "JJJHR"}
    # ...but from the suspension date its results are not recognised.
    assert site.look_up() == []
    assert site.look_up(asker="bj-a") == []


def test_levels_alliances_and_scopes(site: Site) -> None:
    from_a = site.send(study(CHEST, StudyDate=RECENT), "bj-a")     # 三级甲等, BJ, JJJHR
    from_b = site.send(study(CHEST, StudyDate=RECENT), "tj-b")     # 二级甲等, TJ, JJJHR
    from_d = site.send(study(CHEST, StudyDate=RECENT), "he-d")     # 一级甲等, HE, HEHR, alliance
    spine_a = site.send(study(SPINE, StudyDate=RECENT), "bj-a")   # BJHR only
    site.judge_all()

    def seen_by(asker: str) -> set[str]:
        return {r.study_uid for r in site.look_up(asker=asker)}

    # bj-a (三级甲等, BJ): its own, B's (same band, JJJHR covers BJ); not D's (lower band, HEHR).
    assert seen_by("bj-a") == {from_a, from_b, spine_a}
    # tj-b (二级甲等, TJ): A's chest (JJJHR); not A's spine (BJHR is Beijing only).
    assert seen_by("tj-b") == {from_a, from_b}
    # he-c (二级乙等, HE): lower levels accept higher levels' results; D by their alliance.
    assert seen_by("he-c") == {from_a, from_b, from_d}
    assert {r.item for r in site.look_up(asker="bj-a", item=SPINE)} == {SPINE}
    assert {r.study_uid for r in site.look_up(source="tj-b")} == {from_b}


def test_unjudged_and_failing_results_are_not_recognised(site: Site) -> None:
    site.send(study(CHEST, StudyDate=RECENT, report="unverified"))
    assert site.look_up() == []  # not judged yet
    site.judge_all()
    assert site.look_up() == []  # judged, fails: no mark


def test_rejudge_after_a_rule_edit(site: Site) -> None:
    uids = [site.send(study(CHEST, StudyDate=RECENT)) for _ in range(3)]
    site.judge_all()
    seen: list[tuple[int, int]] = []
    assert site.compliance.rejudge("rejudge", lambda done, total: seen.append((done, total)), batch=2) == 3
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)
    for uid in uids:
        record = site.record(uid)
        assert record["verdict"] == "pass" and len(record["history"]) == 1


def test_studies_archived_before_facts_were_recorded_are_judged_from_metadata(site: Site) -> None:
    from archive.index.schema import instances

    uid = site.send(study(CHEST, StudyDate=RECENT))
    with site.archive.db.writing() as conn:
        conn.execute(instances.update().values(facts=None))
    site.judge_all()
    assert site.record(uid)["verdict"] == "pass"
    with site.archive.db.reading() as conn:
        pending = conn.execute(select(studies.c.judge_pending)).scalars().all()
    assert pending == [False]
    assert orjson.loads(orjson.dumps(site.record(uid)))  # the record is plain JSON
