"""Deleting studies, series and instances: index rows and objects together,
healing after a crash, compliance rows, the audit trail, DICOMweb ``DELETE``
(dicomweb-client's ``delete_*``) and ``huren delete`` — on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError
from sqlalchemy import func, insert, select

from archive import inventory, shares
from archive.config import load_config
from archive.delete import Deleter, NothingToDelete, StillQueued
from archive.index.query import Level
from archive.index.schema import (
    audit_events,
    deletions,
    instances,
    item_results,
    judgements,
    patients,
    queued_objects,
    series,
    studies,
)
from archive.storage import open_store
from archive.sweep import orphans
from tests.conftest import ROOT, Archive, Huren, huren_config
from tests.factory import instance
from tests.guideline_studies import study
from tests.test_compliance import RECENT, Site


@pytest.fixture
def archive(index_url: str, tmp_path: Path):
    archive = Archive(index_url, tmp_path)
    yield archive
    archive.db.dispose()


def three_series(archive: Archive, patient: str = "P0001") -> tuple[str, list[str], list[str]]:
    """A study of three series with two instances each; returns its UIDs and the object keys."""
    study_uid = generate_uid()
    series_uids = [generate_uid() for _ in range(3)]
    for series_uid in series_uids:
        for number in (1, 2):
            archive.add(instance(StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, InstanceNumber=number,
                                 PatientID=patient))
    keys = [key for key in archive.store.keys() if key.startswith(study_uid)]
    return study_uid, series_uids, keys


def count(archive: Archive, table) -> int:
    with archive.db.reading() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_delete_instance_series_study(archive: Archive) -> None:
    kept = archive.add(instance(PatientID="P0002"))
    study_uid, series_uids, keys = three_series(archive)
    deleter = Deleter(archive.db, archive.store)
    one = [key for key in keys if key.startswith(f"{study_uid}/{series_uids[0]}/")][0]
    sop_uid = one.rsplit("/", 1)[1].removesuffix(".dcm")
    gone = deleter.delete(study_uid, series_uids[0], sop_uid)
    assert (gone.instances, gone.study_removed) == (1, False)
    assert one not in set(archive.store.keys())
    assert archive.uids(Level.INSTANCE, StudyInstanceUID=study_uid) == {
        key.rsplit("/", 1)[1].removesuffix(".dcm") for key in keys if key != one}
    gone = deleter.delete(study_uid, series_uids[1])
    assert gone.instances == 2 and not gone.study_removed
    assert archive.uids(Level.SERIES, StudyInstanceUID=study_uid) == {series_uids[0], series_uids[2]}
    [found] = archive.find(StudyInstanceUID=study_uid)
    assert found["00201206"]["Value"] == [2] and found["00201208"]["Value"] == [3]
    gone = deleter.delete(study_uid)
    assert gone.instances == 3 and gone.study_removed
    assert archive.uids(StudyInstanceUID=study_uid) == set()
    assert set(archive.store.keys()) == {f"{kept.study_uid}/{kept.series_uid}/{kept.sop_uid}.dcm"}
    assert count(archive, patients) == 1 and count(archive, studies) == 1 and count(archive, series) == 1
    assert count(archive, deletions) == 0


def test_last_instance_takes_its_series_and_study(archive: Archive) -> None:
    stored = archive.add(instance())
    gone = Deleter(archive.db, archive.store).delete(stored.study_uid, stored.series_uid, stored.sop_uid)
    assert gone.study_removed
    assert count(archive, studies) == count(archive, series) == count(archive, patients) == 0
    assert list(archive.store.keys()) == []


def test_unknown_uids(archive: Archive) -> None:
    stored = archive.add(instance())
    deleter = Deleter(archive.db, archive.store)
    with pytest.raises(NothingToDelete, match="study"):
        deleter.delete(generate_uid())
    with pytest.raises(NothingToDelete, match="series"):
        deleter.delete(stored.study_uid, generate_uid())
    with pytest.raises(NothingToDelete, match="instance"):
        deleter.delete(stored.study_uid, stored.series_uid, generate_uid())
    with pytest.raises(NothingToDelete):  # a series of another study
        deleter.delete(generate_uid(), stored.series_uid)
    assert count(archive, instances) == 1 and len(list(archive.store.keys())) == 1


def test_refused_while_in_the_outage_queue(archive: Archive) -> None:
    stored = archive.add(instance())
    key = f"{stored.study_uid}/{stored.series_uid}/{stored.sop_uid}.dcm"
    with archive.db.writing() as conn:  # as archive.outbox records an object the store has not taken yet
        conn.execute(insert(queued_objects).values(blob_key=key, file="x.dcm", host="here", size=1, sha256="0" * 64,
                                                   queued_at=datetime.datetime.now(datetime.UTC)))
    with pytest.raises(StillQueued, match="outage queue"):
        Deleter(archive.db, archive.store).delete(stored.study_uid)
    assert archive.uids() == {stored.study_uid} and list(archive.store.keys()) == [key]
    assert count(archive, deletions) == 0


def test_compliance_rows(index_url: str, tmp_path: Path) -> None:
    site = Site(index_url, tmp_path)
    datasets = study("JJJ-DR-CHEST", StudyDate=RECENT)
    study_uid = site.send(datasets)
    site.judge_all()
    archive = site.archive
    assert count(archive, judgements) == 1 and count(archive, item_results) >= 1
    with archive.db.reading() as conn:
        study_pk = conn.execute(select(studies.c.pk)).scalar_one()
    shares.create(archive.db, study_pk, "tj-b", datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1),
                  "test")
    deleter = Deleter(archive.db, archive.store)
    # A series goes: the record is history, the items no longer recognised, the study judged again.
    deleter.delete(study_uid, datasets[0].SeriesInstanceUID)
    with archive.db.reading() as conn:
        assert conn.execute(select(judgements.c.current)).scalars().all() == [False]
        assert conn.execute(select(studies.c.judge_pending)).scalar_one() is True
    assert count(archive, item_results) == 0
    assert site.record(study_uid)["pending"] is True
    site.judge_all()
    assert count(archive, judgements) == 2
    # The whole study goes, with its records, shares and identities.
    deleter.delete(study_uid)
    assert site.compliance.record(study_uid) is None
    assert count(archive, judgements) == count(archive, item_results) == count(archive, studies) == 0
    assert list(archive.store.keys()) == []


CRASH = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from archive import delete
    from archive.index.database import Database
    from archive.storage.filesystem import FilesystemStore

    url, folder, where, study_uid = sys.argv[1:]
    store = FilesystemStore(Path(folder) / "archive")
    deleted = []
    if where == "before-commit":
        # Killed inside the transaction, after its rows were removed but before it commits.
        delete._remove_study = lambda *args: os._exit(9)
    else:
        real = store.delete
        def dying(key):
            real(key)
            deleted.append(key)
            if len(deleted) == 2:
                os._exit(9)  # killed after the commit, with two objects deleted and the rest not
        store.delete = dying
    delete.Deleter(Database(url), store).delete(study_uid)
""")


@pytest.mark.parametrize("where", ["before-commit", "after-commit"])
def test_killed_mid_deletion_heals(archive: Archive, index_url: str, tmp_path: Path, where: str) -> None:
    study_uid, _series, keys = three_series(archive)
    other = archive.add(instance(PatientID="P0002"))
    crashed = subprocess.run([sys.executable, "-c", CRASH, index_url, str(tmp_path), where, study_uid],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 9, crashed.stderr
    left = set(archive.store.keys())
    if where == "before-commit":
        # Nothing happened: every row and every object is there, and nothing is journalled.
        assert archive.uids(Level.INSTANCE, StudyInstanceUID=study_uid) and set(keys) <= left
        assert count(archive, instances) == 7 and count(archive, deletions) == 0
        return
    # Committed: nothing of the study is visible, and the journal names what is left to delete.
    assert archive.uids(StudyInstanceUID=study_uid) == set()
    assert len(left & set(keys)) == 4 and count(archive, deletions) == 6
    assert Deleter(archive.db, archive.store).resume() == 6
    assert set(archive.store.keys()) == {f"{other.study_uid}/{other.series_uid}/{other.sop_uid}.dcm"}
    assert count(archive, deletions) == 0


def test_resume_keeps_an_instance_sent_again(archive: Archive) -> None:
    ds = instance()
    stored = archive.add(ds)
    key = f"{stored.study_uid}/{stored.series_uid}/{stored.sop_uid}.dcm"
    deleter = Deleter(archive.db, archive.store)

    def store_down(key: str) -> None:
        raise OSError("the store does not answer")

    archive.store.delete = store_down  # the objects stay, journalled, as after a crash
    assert deleter.delete(stored.study_uid).study_removed
    del archive.store.delete
    assert count(archive, deletions) == 1 and list(archive.store.keys()) == [key]
    # The sweep for objects without a row does not adopt it back meanwhile.
    assert list(orphans(archive.db, inventory.objects(archive.store))) == []
    archive.add(ds)  # sent again before the journal was worked off
    assert deleter.resume() == 1
    assert list(archive.store.keys()) == [key]
    assert archive.uids() == {stored.study_uid}


# Over HTTP and on the command line.

def _server(tmp_path: Path, **sections) -> Huren:
    return Huren(tmp_path, huren_config(tmp_path, **sections)).start()


@pytest.mark.parametrize("backend", ["filesystem+sqlite", "s3+postgresql"])
def test_dicomweb_client_deletes(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    more = {}
    if backend == "s3+postgresql":
        more = {"storage": request.getfixturevalue("s3_storage"), "index_url": request.getfixturevalue("postgres_url")}
    server = _server(tmp_path, delete={"enabled": True}, **more)
    store = open_store(load_config(server.workdir / "huren.yaml"))
    try:
        client = DICOMwebClient(server.dicomweb)
        study_uid, series_uids = generate_uid(), [generate_uid(), generate_uid()]
        datasets = [instance(StudyInstanceUID=study_uid, SeriesInstanceUID=uid, InstanceNumber=n)
                    for uid in series_uids for n in (1, 2)]
        client.store_instances(datasets)
        client.delete_instance(study_uid, series_uids[0], datasets[0].SOPInstanceUID)
        assert len(client.search_for_instances(study_uid)) == 3
        client.delete_series(study_uid, series_uids[0])
        assert [s["0020000E"]["Value"][0] for s in client.search_for_series(study_uid)] == [series_uids[1]]
        client.delete_study(study_uid)
        assert client.search_for_studies() == []
        assert list(store.keys()) == []
        with pytest.raises(HTTPError) as raised:
            client.delete_study(study_uid)
        assert raised.value.response.status_code == 404
        answer = httpx.delete(f"{server.dicomweb}/studies/{generate_uid()}/series/{generate_uid()}")
        assert answer.status_code == 404 and answer.json()["error"] == "no such series in the archive"
    finally:
        server.stop()


def test_disabled_by_default(huren: Huren) -> None:
    ds = instance()
    DICOMwebClient(huren.dicomweb).store_instances([ds])
    answer = httpx.delete(f"{huren.dicomweb}/studies/{ds.StudyInstanceUID}")
    assert answer.status_code == 405 and "delete.enabled" in answer.json()["error"]
    assert answer.headers["allow"] == "GET, POST"
    assert len(httpx.get(f"{huren.dicomweb}/studies").json()) == 1


def test_admin_only_once_access_is_on(tmp_path: Path) -> None:
    hospitals = [{"id": "bj-a", "name": "A", "ae_titles": ["CT_A"]}, {"id": "tj-b", "name": "B"}]
    server = _server(tmp_path, delete={"enabled": True}, hospitals=hospitals)
    try:
        tokens = {name: server.token(name) for name in ("bj-a", "tj-b")}
        admin = server.token(admin=True)
        ds = instance()
        assert server.storescu(write_to(tmp_path, ds), calling="CT_A").returncode == 0
        url = f"{server.dicomweb}/studies/{ds.StudyInstanceUID}"

        def delete(token: str) -> httpx.Response:
            return httpx.delete(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

        assert delete(tokens["bj-a"]).status_code == 403   # its own study: seen, not deletable
        refused = delete(tokens["tj-b"])                     # not seen: as if never archived
        assert refused.status_code == 404
        assert refused.json() == delete_unknown(server, tokens["tj-b"]).json()
        assert httpx.delete(url).status_code == 401
        answer = delete(admin)
        assert answer.status_code == 200 and answer.json()["instances"] == 1
        assert answer.json()["study_removed"] is True
    finally:
        server.stop()
    from archive.index.database import Database

    db = Database(server.config["index"]["url"])
    with db.reading() as conn:
        outcomes = conn.execute(select(audit_events.c.outcome, audit_events.c.hospital_id)
                                .where(audit_events.c.action == "delete").order_by(audit_events.c.pk)).all()
    db.dispose()
    assert [tuple(row) for row in outcomes] == [("denied", "bj-a"), ("success", None)]


def delete_unknown(server: Huren, token: str) -> httpx.Response:
    return httpx.delete(f"{server.dicomweb}/studies/{generate_uid()}", headers={"Authorization": f"Bearer {token}"})


def write_to(folder: Path, ds) -> Path:
    from tests.factory import write

    return write(ds, folder / "send" / f"{ds.SOPInstanceUID}.dcm")


def test_huren_delete_command(tmp_path: Path) -> None:
    server = _server(tmp_path)
    try:
        datasets = [instance(), instance()]
        DICOMwebClient(server.dicomweb).store_instances(datasets)
    finally:
        server.stop()
    config = str(tmp_path / "huren.yaml")

    def huren(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "huren", "delete", *args, "--config", config],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    target = datasets[0].StudyInstanceUID
    asked = huren("--study", target)
    assert asked.returncode == 0 and "would delete 1 instance(s)" in asked.stderr and "--yes" in asked.stderr
    assert len(list((tmp_path / "archive").rglob("*.dcm"))) == 2
    done = huren("--study", target, "--yes")
    assert done.returncode == 0, done.stderr
    assert "deleted 1 instance(s)" in done.stderr
    assert [p.name for p in (tmp_path / "archive").rglob("*.dcm")] == [f"{datasets[1].SOPInstanceUID}.dcm"]
    missing = huren("--study", target, "--yes")
    assert missing.returncode == 1 and "no study" in missing.stderr
    assert huren("--study", target, "--instance", "1.2.3").returncode == 2


def test_serve_finishes_interrupted_deletions(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path)  # the folder and index huren_config names
    stored = archive.add(instance())

    def store_down(key: str) -> None:
        raise OSError("the store does not answer")

    archive.store.delete = store_down
    Deleter(archive.db, archive.store).delete(stored.study_uid)
    assert count(archive, deletions) == 1 and len(list((tmp_path / "archive").rglob("*.dcm"))) == 1
    server = _server(tmp_path)
    try:
        assert count(archive, deletions) == 0
        assert not list((tmp_path / "archive").rglob("*.dcm"))
    finally:
        server.stop()
        archive.db.dispose()
