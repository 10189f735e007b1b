"""The sharing policy in SQL (archive.policy): own, recognised, shared, not visible —
through the index's search and retrieval, on SQLite and PostgreSQL.
(Through both doors, with tokens and AE titles: test_access.)
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import select

from archive import shares
from archive.index.database import MIGRATIONS
from archive.index.query import Level, Query, search
from archive.index.schema import studies
from archive.policy import Caller, visible
from archive.retrieve import locate, metadata
from tests.conftest import ROOT_URL
from tests.test_compliance import CHEST, RECENT, Site, study


@pytest.fixture
def site(index_url: str, tmp_path: Path):
    site = Site(index_url, tmp_path)
    yield site
    site.archive.db.dispose()


def hospital(site: Site, hospital_id: str | None, admin: bool = False) -> Caller:
    return Caller("http", f"token-of-{hospital_id}", hospital_id=hospital_id, admin=admin)


def found(site: Site, caller: Caller, level: Level = Level.STUDY, **query) -> list[str]:
    tag = {Level.STUDY: "0020000D", Level.SERIES: "0020000E", Level.INSTANCE: "00080018"}[level]
    with site.archive.db.reading() as conn:
        results = search(conn, Query(level=level, matches={}, include=set(), **query), ROOT_URL,
                         visible(site.config, caller))
    return [r[tag]["Value"][0] for r in results]


@pytest.fixture
def three(site: Site) -> dict[str, str]:
    """Studies of bj-a (marked JJJHR), tj-b (marked JJJHR), he-c (never assessed: no mark)
    and a failing one of bj-a."""
    uids = {
        "a": site.send(study(CHEST, StudyDate=RECENT), "bj-a"),
        "b": site.send(study(CHEST, StudyDate=RECENT), "tj-b"),
        "c": site.send(study(CHEST, StudyDate=RECENT), "he-c"),
        "a_fail": site.send(study(CHEST, StudyDate=RECENT, report=None), "bj-a"),
    }
    site.judge_all()
    return uids


def test_each_hospital_sees_its_own_and_what_it_recognises(site: Site, three: dict[str, str]) -> None:
    assert set(found(site, hospital(site, "bj-a"))) == {three["a"], three["a_fail"], three["b"]}
    assert set(found(site, hospital(site, "tj-b"))) == {three["b"], three["a"]}
    # he-c (二级乙等, HE): accepts higher levels' JJJHR results; nobody accepts its unmarked one.
    assert set(found(site, hospital(site, "he-c"))) == {three["c"], three["a"], three["b"]}
    assert set(found(site, hospital(site, "he-d"))) == {three["a"], three["b"]}
    admin = hospital(site, None, admin=True)
    assert set(found(site, admin)) == set(three.values())
    assert set(found(site, hospital(site, "he-c", admin=True))) == set(three.values())


def test_paging_and_counts_follow_the_policy(site: Site, three: dict[str, str]) -> None:
    caller = hospital(site, "tj-b")
    assert len(found(site, caller, limit=1)) == 1
    assert found(site, caller, limit=1) + found(site, caller, limit=1, offset=1) == found(site, caller)
    assert found(site, caller, offset=2) == []
    series = found(site, caller, Level.SERIES)
    instances = found(site, caller, Level.INSTANCE)
    assert len(series) == 2 * 3 and len(instances) == 2 * 3  # two images and a report per study


def test_retrieval_sees_what_search_sees(site: Site, three: dict[str, str]) -> None:
    caller = visible(site.config, hospital(site, "tj-b"))
    assert locate(site.archive.db, three["a"], visible=caller)
    assert locate(site.archive.db, three["c"], visible=caller) == []
    assert list(metadata(site.archive.db, ROOT_URL, three["c"], visible=caller)) == []
    assert len(list(metadata(site.archive.db, ROOT_URL, three["a"], visible=caller))) == 3


def test_a_share_shows_a_study_until_it_expires_or_is_revoked(site: Site, three: dict[str, str]) -> None:
    caller = hospital(site, "tj-b")
    assert three["c"] not in found(site, caller)
    with site.archive.db.reading() as conn:
        study_pk = conn.execute(select(studies.c.pk).where(studies.c.study_uid == three["c"])).scalar_one()
    now = datetime.datetime.now(datetime.UTC)
    share = shares.create(site.archive.db, study_pk, "tj-b", now + datetime.timedelta(days=7), "token-of-he-c")
    assert three["c"] in found(site, caller)
    assert three["c"] not in found(site, hospital(site, "he-d"))  # shared with tj-b only
    assert shares.revoke(site.archive.db, study_pk, share.id)
    assert not shares.revoke(site.archive.db, study_pk, share.id)
    assert three["c"] not in found(site, caller)
    shares.create(site.archive.db, study_pk, "tj-b", now - datetime.timedelta(seconds=1), "x")
    assert three["c"] not in found(site, caller)  # expired
    assert [s.hospital_id for s in shares.of_study(site.archive.db, study_pk)] == ["tj-b", "tj-b"]


def test_judging_writes_the_marks_the_policy_reads(site: Site, three: dict[str, str]) -> None:
    with site.archive.db.reading() as conn:
        recognition = dict(conn.execute(select(studies.c.study_uid, studies.c.recognition)).all())
    assert recognition == {three["a"]: " JJJ:JJJHR ", three["b"]: " JJJ:JJJHR ", three["c"]: None,
                           three["a_fail"]: None}


def test_upgrading_an_older_index_fills_in_the_marks(site: Site, three: dict[str, str]) -> None:
    """An index judged before studies carried their marks (migration 0008) is filled in from its item results."""
    seen = {h: set(found(site, hospital(site, h))) for h in ("bj-a", "tj-b", "he-c", "he-d")}
    settings = AlembicConfig()
    settings.set_main_option("script_location", str(MIGRATIONS))
    before = ScriptDirectory.from_config(settings).get_revision("0008").down_revision
    for step, target in ((command.downgrade, before), (command.upgrade, "head")):
        with site.archive.db.engine.begin() as conn:
            settings.attributes["connection"] = conn
            step(settings, target)
    assert {h: set(found(site, hospital(site, h))) for h in seen} == seen
    test_judging_writes_the_marks_the_policy_reads(site, three)
