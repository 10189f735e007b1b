"""The quality report: counts, failure reasons and weekly trends per hospital and exam item,
as JSON (``/api/quality``) and as an HTML page (``/quality``), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import event, insert
from starlette.applications import Starlette
from starlette.testclient import TestClient

from archive import tokens
from archive.config import Config, config_with_rule_sets
from archive.guideline.compliance import Compliance
from archive.guideline.marks import recognition
from archive.guideline.quality import Filters, quality
from archive.index.database import Database
from archive.index.schema import item_results, judgements, patients, studies
from archive.ingest import Ingest
from archive.storage.filesystem import FilesystemStore
from dicomweb.app import build_app
from tests.conftest import ROOT, audit_trail

NOW = datetime.datetime(2026, 11, 30, 8, 0, tzinfo=datetime.UTC)
UNTIL = "20261129"  # a Sunday: the trend's last week is 2026-W48 (Nov 23-29)
CT, DR, MR = "JJJ-CT-CHEST", "JJJ-DR-CHEST", "JJJ-MR-KNEE"
PUH_NAME = '北京协和医院<东院> & "西院"'


def make_config() -> Config:
    """Two hospitals and the shipped Jing-Jin-Ji rule set (its 17 items' names)."""
    return config_with_rule_sets(Config.model_validate({
        "hospitals": [
            {"id": "bj-puh", "name": PUH_NAME, "region": "BJ", "level": "三级甲等"},
            {"id": "tj-gh", "name": "天津医科大学总医院", "region": "TJ"},
        ],
        "guideline": {"rule_sets": [str(ROOT / "conf" / "guideline" / "jjj.yaml")]},
    }))


class Judged:
    """Writes judged studies into the index as the judging step would: a study, its
    current compliance record and one item result."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.uids = itertools.count(1)
        with db.writing() as conn:
            self.patient_pk = conn.execute(insert(patients).values(
                patient_id="P1", id_scope="bj-puh", patient_name="WANG^LI", name_alphabetic="WANG^LI",
                name_ideographic="王^力", name_phonetic="", birth_date="19700101", sex="F",
            ).returning(patients.c.pk)).scalar_one()

    def add(self, hospital: str | None, item: str, study_date: str, verdict: str, failed: str = "",
            mark: str | None = None, message: str = "") -> int:
        """One study judged for `item`; each failing rule's message is ``<rule>: <message>``."""
        n = next(self.uids)
        findings = [{"rule": rule, "outcome": "fail", "item": item, "series": [],
                     "message": {"zh": f"{rule}：{message}", "en": f"{rule}: {message}"}}
                    for rule in failed.split()]
        with self.db.writing() as conn:
            study_pk = conn.execute(insert(studies).values(
                study_uid=f"1.2.826.0.1.3680043.8.498.{n}", patient_pk=self.patient_pk,
                hospital_id=hospital, study_date=study_date, study_time="", accession_number=f"A{n}",
                study_id="", study_description="", referring_physician="", created_at=NOW,
                updated_at=NOW, judged_revision=0,
                recognition=recognition([("JJJ", mark)] if verdict == "pass" and mark else []),
            ).returning(studies.c.pk)).scalar_one()
            record = {"rule_set": "JJJ", "verdict": verdict, "findings": findings,
                      "items": [{"code": item, "verdict": verdict}], "marks": {item: mark}}
            judgement_pk = conn.execute(insert(judgements).values(
                study_pk=study_pk, rule_set="JJJ", version="1", verdict=verdict,
                record=orjson.dumps(record), judged_at=NOW, current=True,
            ).returning(judgements.c.pk)).scalar_one()
            conn.execute(insert(item_results).values(
                judgement_pk=judgement_pk, study_pk=study_pk, hospital_id=hospital, rule_set="JJJ",
                item=item, verdict=verdict, mark=mark, study_date=study_date, failed_rules=failed,
                judged_at=NOW,
            ))
        return study_pk


@pytest.fixture
def db(index_url: str) -> Iterator[Database]:
    db = Database(index_url)
    db.migrate()
    yield db
    db.dispose()


@pytest.fixture
def judged(db: Database) -> Judged:
    """Two hospitals, three items, four weeks of study dates and one older study."""
    judged = Judged(db)
    add = judged.add
    # bj-puh, CT chest: W48 3 of 4 pass, W47 none of 2, W45 1 of 1, June 1 failing, one undated.
    add("bj-puh", CT, "20261123", "pass", mark="JJJHR")
    add("bj-puh", CT, "20261125", "pass", mark="JJJHR")
    add("bj-puh", CT, "20261129", "pass")
    add("bj-puh", CT, "20261124", "fail", "ct.thin_series study.accession_number", message="W48")
    add("bj-puh", CT, "20261116", "fail", "ct.post_processed ct.thin_series", message="W47a")
    add("bj-puh", CT, "20261120", "fail", "ct.thin_series", message="W47b")
    add("bj-puh", CT, "20261102", "pass")
    add("bj-puh", CT, "20260601", "fail", "ct.thin_series", message="June")
    add("bj-puh", CT, "", "pass")
    # bj-puh, DR chest: two marked passes in W48.
    add("bj-puh", DR, "20261126", "pass", mark="JJJHR")
    add("bj-puh", DR, "20261127", "pass", mark="JJJHR")
    # tj-gh: CT chest one failure in W48 and two passes in W46; MR knee one failure in W47.
    add("tj-gh", CT, "20261128", "fail", "study.accession_number", message="<script>alert(1)</script>")
    add("tj-gh", CT, "20261110", "pass", mark="BJHR")
    add("tj-gh", CT, "20261111", "pass")
    add("tj-gh", MR, "20261118", "fail", "mr.sequences", message="缺少T2序列")
    # From no known hospital, and from one no longer configured.
    add(None, DR, "20261123", "pass")
    add("old-hosp", DR, "20261123", "fail", "dr.dose", message="gone")
    return judged


def make_app(db: Database, config: Config, folder: Path) -> Starlette:
    """The application huren serve runs, over `db`."""
    store = FilesystemStore(folder / "archive")
    return build_app(config, db, store, Ingest(db, store), folder / "spool", Compliance(db, config),
                     audit_trail(db))


def bearer(db: Database, hospital: str | None = None) -> dict[str, str]:
    """Headers with a new token: an admin's, or a hospital's."""
    token = tokens.create(db, hospital_id=hospital, admin=hospital is None, expires_days=None)[1]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(db: Database, judged: Judged, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(db, make_config(), tmp_path), headers=bearer(db)) as client:
        yield client


def get(client: TestClient, **params: str) -> dict:
    response = client.get("/api/quality", params={"until": UNTIL, **params})
    assert response.status_code == 200, response.text
    return response.json()


def hospital(report: dict, hospital_id: str | None) -> dict:
    return next(h for h in report["hospitals"] if h["hospital"]["id"] == hospital_id)


def item(report: dict, hospital_id: str | None, code: str) -> dict:
    return next(i for i in hospital(report, hospital_id)["items"] if i["item"]["code"] == code)


def test_counts_per_hospital_and_item(client: TestClient) -> None:
    report = get(client, since="20260101")
    assert [h["hospital"]["id"] for h in report["hospitals"]] == ["bj-puh", "tj-gh", "old-hosp", None]
    puh = hospital(report, "bj-puh")
    assert puh["hospital"] == {"id": "bj-puh", "name": PUH_NAME, "region": "BJ", "level": "三级甲等"}
    assert [i["item"]["code"] for i in puh["items"]] == [DR, CT]  # rule set order
    ct = item(report, "bj-puh", CT)
    # The undated study does not count once a date bound is set.
    assert (ct["judged"], ct["passed"], ct["failed"], ct["marked"]) == (8, 4, 4, 2)
    assert ct["pass_rate"] == 0.5
    assert ct["rule_set"] == "JJJ"
    assert ct["item"] == {"code": CT, "name": {"zh": "胸部CT平扫", "en": "CT chest, plain"}}
    assert [puh[n] for n in ("judged", "passed", "failed", "marked", "pass_rate")] == [10, 6, 4, 4, 0.6]
    gone = hospital(report, "old-hosp")
    assert gone["hospital"] == {"id": "old-hosp", "name": None, "region": None, "level": None}
    assert gone["pass_rate"] == 0.0
    assert report["totals"] == {"judged": 16, "passed": 9, "failed": 7, "marked": 5, "pass_rate": 0.5625}
    assert get(client)["totals"] == report["totals"]  # until alone leaves the undated study out too

    unbounded = client.get("/api/quality").json()
    assert (item(unbounded, "bj-puh", CT)["judged"], item(unbounded, "bj-puh", CT)["passed"]) == (9, 5)


def test_top_failure_reasons(client: TestClient) -> None:
    report = get(client)
    ct = item(report, "bj-puh", CT)
    assert [(r["rule"], r["count"], r["share"]) for r in ct["reasons"]] == [
        ("ct.thin_series", 4, 1.0), ("ct.post_processed", 1, 0.25), ("study.accession_number", 1, 0.25),
    ]
    # The example message is the latest failing judgement's.
    assert ct["reasons"][0]["message"] == {"zh": "ct.thin_series：June", "en": "ct.thin_series: June"}
    assert item(report, "bj-puh", DR)["reasons"] == []
    mr = item(report, "tj-gh", MR)
    assert mr["reasons"] == [{"rule": "mr.sequences", "count": 1, "share": 1.0,
                              "message": {"zh": "mr.sequences：缺少T2序列", "en": "mr.sequences: 缺少T2序列"}}]
    # Bounded to November, June's failure neither counts nor gives the example.
    november = item(get(client, since="20261101"), "bj-puh", CT)
    assert [(r["rule"], r["count"]) for r in november["reasons"]][:1] == [("ct.thin_series", 3)]
    assert november["reasons"][0]["message"]["en"] == "ct.thin_series: W47b"


def test_weekly_trend(client: TestClient, judged: Judged) -> None:
    judged.add("tj-gh", MR, "20261100", "pass")  # no such day: in the totals, in no week
    report = get(client)
    assert item(report, "tj-gh", MR)["judged"] == 2
    assert sum(w["judged"] for w in item(report, "tj-gh", MR)["trend"]) == 1
    assert len(report["weeks"]) == 12
    assert report["weeks"][-4:] == ["2026-W45", "2026-W46", "2026-W47", "2026-W48"]
    ct = item(report, "bj-puh", CT)
    assert [w["week"] for w in ct["trend"]] == report["weeks"]
    assert ct["trend"][-4:] == [
        {"week": "2026-W45", "judged": 1, "passed": 1, "pass_rate": 1.0},
        {"week": "2026-W46", "judged": 0, "passed": 0, "pass_rate": None},
        {"week": "2026-W47", "judged": 2, "passed": 0, "pass_rate": 0.0},
        {"week": "2026-W48", "judged": 4, "passed": 3, "pass_rate": 0.75},
    ]
    assert sum(w["judged"] for w in ct["trend"]) == 7  # June and the undated study are outside
    tj = hospital(report, "tj-gh")
    assert [(w["judged"], w["passed"]) for w in tj["trend"][-3:]] == [(2, 2), (1, 0), (1, 0)]

    short = get(client, weeks="2", until="20261118")  # a Wednesday: W46 and W47 up to it
    assert short["weeks"] == ["2026-W46", "2026-W47"]
    assert [(w["judged"], w["passed"]) for w in item(short, "bj-puh", CT)["trend"]] == [(0, 0), (1, 0)]


def test_trend_ends_this_week_without_until(db: Database, judged: Judged) -> None:
    with db.reading() as conn:
        report = quality(conn, make_config(), Filters(weeks=3), today=datetime.date(2026, 11, 25))
    assert report.weeks == ["2026-W46", "2026-W47", "2026-W48"]
    assert [w.judged for w in report.hospitals[0].trend] == [0, 2, 6]
    with db.reading() as conn:
        year_end = quality(conn, make_config(), Filters(weeks=3), today=datetime.date(2027, 1, 2))
    assert year_end.weeks == ["2026-W51", "2026-W52", "2026-W53"]  # 2026 has an ISO week 53


def test_filters(client: TestClient) -> None:
    only_tj = get(client, hospital="tj-gh")
    assert [h["hospital"]["id"] for h in only_tj["hospitals"]] == ["tj-gh"]
    assert only_tj["filters"] == {"hospital": "tj-gh", "item": None, "rule_set": None, "since": None,
                                  "until": UNTIL, "weeks": 12}
    dr = get(client, item=DR)
    assert [(h["hospital"]["id"], [i["item"]["code"] for i in h["items"]]) for h in dr["hospitals"]] == [
        ("bj-puh", [DR]), ("old-hosp", [DR]), (None, [DR])]
    w48 = get(client, since="20261123")
    assert w48["totals"]["judged"] == 9
    assert get(client, until="20261101")["totals"]["judged"] == 1  # June
    assert get(client, rule_set="BJ")["hospitals"] == []
    assert get(client, hospital="nowhere")["totals"] == {
        "judged": 0, "passed": 0, "failed": 0, "marked": 0, "pass_rate": None}
    # The page's form sends empty fields for "all".
    assert get(client, hospital="", item="", since="")["totals"]["judged"] == 16


@pytest.mark.parametrize(("query", "parameter"), [
    ("weeks=0", "weeks"), ("weeks=105", "weeks"), ("weeks=x", "weeks"), ("weeks=-3", "weeks"),
    ("weeks=%C2%B2", "weeks"), ("since=２０２６１１０１", "since"),  # digits, but not ASCII ones
    ("since=2026-11-01", "since"), ("since=20261301", "since"), ("until=2026113", "until"),
    ("since=20261130&until=20261101", "since"), ("hospital=bj%20puh", "hospital"),
    ("item=" + "X" * 65, "item"), ("rule_set=a%20b", "rule_set"), ("hospitals=bj-puh", "hospitals"),
    ("hospital=bj-puh&hospital=tj-gh", "hospital"),
])
def test_bad_parameters(client: TestClient, query: str, parameter: str) -> None:
    for path in ("/api/quality", "/quality"):
        response = client.get(f"{path}?{query}")
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["status"] == 400 and body["parameter"] == parameter and body["error"]


def test_page(client: TestClient) -> None:
    response = client.get("/quality", params={"until": UNTIL})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    assert page.startswith("<!DOCTYPE html>")
    assert "北京协和医院&lt;东院&gt; &amp; &quot;西院&quot;" in page and "<东院>" not in page
    assert "天津医科大学总医院" in page
    assert "胸部CT平扫" in page and "膝关节MR平扫" in page and "CT chest, plain" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "ct.thin_series：June" in page
    assert "old-hosp" in page and "no known hospital" in page
    # Charts: 4 in the overview, one per hospital section and one per item row (6 items).
    assert page.count("<svg") == 14
    assert page.count('<a href="#hospital-') == 4 and 'id="hospital-bj-puh"' in page
    assert 'title="ct.thin_series: June (ct.thin_series)"' in page
    assert "2026-W48: 3/4" in page  # bj-puh CT's last bar's tooltip
    # Nothing is fetched from elsewhere.
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<link" not in page
    # The form shows the filters it was given.
    assert 'name="until" value="20261129"' in page
    assert '<option value="bj-puh">北京协和医院&lt;东院&gt; &amp; &quot;西院&quot;</option>' in page


def test_page_without_results(client: TestClient) -> None:
    response = client.get("/quality", params={"rule_set": "BJ"})
    assert response.status_code == 200
    assert "No judged studies match" in response.text and "<svg" not in response.text


def test_statements_do_not_grow_with_studies(db: Database, judged: Judged) -> None:
    """The report is a fixed number of GROUP BY queries, however many studies there are."""
    for n in range(200):
        judged.add("tj-gh", CT, f"202611{1 + n % 28:02d}", "fail" if n % 3 else "pass",
            "ct.thin_series" if n % 3 else "", message=str(n))
    statements = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with db.reading() as conn:
        report = quality(conn, make_config(), Filters(), today=datetime.date(2026, 11, 30))
    queries = [s for s in statements if "FROM item_results" in s or "FROM judgements" in s]
    assert len(queries) == 3, queries  # counts with reasons, days, example messages
    ct = next(i for h in report.hospitals if h.hospital.id == "tj-gh" for i in h.items if i.item.code == CT)
    assert ct.judged == 203 and ct.failed == 134 and ct.reasons[0].count == 133


def test_through_the_application(db: Database, judged: Judged, tmp_path: Path) -> None:
    """The routes dicomweb.app serves, over the state it builds."""
    judged.add("bj-puh", "JJJ-OLD-ITEM", "20261124", "pass")  # an item no rule set names any more
    with TestClient(make_app(db, make_config(), tmp_path), headers=bearer(db)) as client:
        report = client.get("/api/quality", params={"until": UNTIL, "hospital": "bj-puh"}).json()
        page = client.get("/quality", params={"until": UNTIL, "hospital": "bj-puh"})
        bad = client.get("/api/quality", params={"weeks": "0"})
    assert [i["item"] for i in report["hospitals"][0]["items"]] == [
        {"code": DR, "name": {"zh": "DR胸部正侧位", "en": "DR chest PA and lateral"}},
        {"code": CT, "name": {"zh": "胸部CT平扫", "en": "CT chest, plain"}},
        {"code": "JJJ-OLD-ITEM", "name": None},
    ]
    assert page.status_code == 200 and "DR胸部正侧位" in page.text and "JJJ-OLD-ITEM" in page.text
    assert '<option value="bj-puh" selected>' in page.text
    assert bad.status_code == 400 and bad.json()["parameter"] == "weeks"


def test_a_hospital_sees_its_own_figures(db: Database, judged: Judged, tmp_path: Path) -> None:
    with TestClient(make_app(db, make_config(), tmp_path), headers=bearer(db, "tj-gh")) as client:
        own = client.get("/api/quality", params={"until": UNTIL})
        other = client.get("/api/quality", params={"until": UNTIL, "hospital": "bj-puh"})
        anonymous = client.get("/api/quality", headers={"Authorization": ""})
    assert [h["hospital"]["id"] for h in own.json()["hospitals"]] == ["tj-gh"]
    assert other.status_code == 400 and other.json()["parameter"] == "hospital"
    assert anonymous.status_code == 401
