"""Who may see what, end to end: ``huren serve`` with three hospitals, their tokens
and AE titles; each study own, recognised, shared or not visible, through QIDO-RS
(counts, paging), every WADO-RS resource, STOW-RS, DIMSE C-STORE and the API.
Absent and forbidden answers are byte-identical.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.conftest import Huren
from tests.guideline_studies import study
from tests.test_compliance import RECENT
from tests.test_dimse import send_raw
from tests.test_recognition import guideline_config, judged, send
from tests.test_stow import body, part10

CHEST = "JJJ-DR-CHEST"


class Hospital:
    """A hospital's view of the server: its token."""

    def __init__(self, server: Huren, hospital: str | None, admin: bool = False) -> None:
        self.server = server
        self.headers = {"Authorization": f"Bearer {server.token(hospital, admin=admin)}"}

    def get(self, path: str, **params: str) -> httpx.Response:
        # No params: keep a query string written into the path (a WADO-URI link).
        return httpx.get(self.server.url + path, params=params or None, headers=self.headers, timeout=30)

    def studies(self, **params: str) -> list[str]:
        answer = self.get("/dicom-web/studies", **params)
        assert answer.status_code == 200, answer.text
        return [s["0020000D"]["Value"][0] for s in answer.json()]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """bj-a's marked study, tj-b's marked study, he-c's unmarked one, sent by DIMSE as each."""
    folder = tmp_path_factory.mktemp("access")
    server = Huren(folder, guideline_config(folder)).start()
    uids = {
        "a": send(server, study(CHEST, pixels=True, StudyDate=RECENT), folder / "a", "CT_A"),
        "b": send(server, study(CHEST, pixels=True, StudyDate=RECENT), folder / "b", "CT_B"),
        "c": send(server, study(CHEST, pixels=True, StudyDate=RECENT), folder / "c", "CT_C"),
    }
    for uid in uids.values():
        judged(server, uid)
    callers = {name: Hospital(server, name) for name in ("bj-a", "tj-b", "he-c")}
    callers["admin"] = Hospital(server, None, admin=True)
    yield server, uids, callers
    server.stop()


def test_search_sees_own_and_recognised_only(site) -> None:
    _, uids, callers = site
    assert set(callers["bj-a"].studies()) == {uids["a"], uids["b"]}
    assert set(callers["tj-b"].studies()) == {uids["a"], uids["b"]}
    assert set(callers["he-c"].studies()) == {uids["a"], uids["b"], uids["c"]}
    assert set(callers["admin"].studies()) == set(uids.values())
    # Paging and per-study counts stay within what the caller sees.
    first, second = callers["bj-a"].studies(limit="1"), callers["bj-a"].studies(limit="1", offset="1")
    assert len(first) == len(second) == 1 and set(first + second) == {uids["a"], uids["b"]}
    assert callers["bj-a"].studies(offset="2") == []
    assert callers["bj-a"].studies(StudyInstanceUID=uids["c"]) == []
    series = callers["bj-a"].get("/dicom-web/series")
    assert {s["0020000D"]["Value"][0] for s in series.json()} == {uids["a"], uids["b"]}
    instances = callers["bj-a"].get(f"/dicom-web/studies/{uids['c']}/instances")
    assert instances.status_code == 200 and instances.json() == []


def resources(admin: Hospital, study_uid: str) -> list[str]:
    """Every WADO-RS resource of the study's first image (rendered and thumbnails too), its WADO-URI
    link and its compliance record, as paths."""
    [image] = [i for i in admin.get(f"/dicom-web/studies/{study_uid}/instances").json()
               if i["00080016"]["Value"][0] != "1.2.840.10008.5.1.4.1.1.88.11"][:1]
    series_uid, sop_uid = image["0020000E"]["Value"][0], image["00080018"]["Value"][0]
    study_path = f"/dicom-web/studies/{study_uid}"
    series_path = f"{study_path}/series/{series_uid}"
    instance_path = f"{series_path}/instances/{sop_uid}"
    return [study_path, study_path + "/metadata", series_path, series_path + "/metadata", instance_path,
            instance_path + "/metadata", instance_path + "/frames/1", instance_path + "/bulkdata/7FE00010",
            f"/api/studies/{study_uid}/compliance",
            *[level + kind for level in (study_path, series_path, instance_path, instance_path + "/frames/1")
              for kind in ("/rendered", "/thumbnail")],
            f"/dicom-web/wado?requestType=WADO&studyUID={study_uid}&seriesUID={series_uid}&objectUID={sop_uid}"]


def test_every_retrieve_resource_follows_the_policy(site) -> None:
    _, uids, callers = site
    for path in resources(callers["admin"], uids["c"]):
        forbidden = callers["bj-a"].get(path)
        assert forbidden.status_code == 404, path
        absent = callers["bj-a"].get(path.replace(uids["c"], "1.2.3.4.5.6.7.8.9"))
        assert (forbidden.status_code, forbidden.content) == (absent.status_code, absent.content), path
        assert callers["he-c"].get(path).status_code == 200, path   # its own
        assert callers["admin"].get(path).status_code == 200, path
    for path in resources(callers["admin"], uids["a"]):
        assert callers["tj-b"].get(path).status_code == 200, path  # recognised: JJJHR


def test_no_token_wrong_token_and_revoked(site) -> None:
    server, uids, _ = site
    for path in ("/dicom-web/studies", f"/dicom-web/studies/{uids['a']}/metadata", "/api/recognition",
                 "/quality"):
        bare = httpx.get(server.url + path)
        assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.get(server.url + path, headers={"Authorization": "Bearer huren_0_nonsense"})
        assert wrong.status_code == 401
    token = server.token("bj-a")
    listed = subprocess.run([sys.executable, "-m", "huren", "token", "list", "--config",
                             str(server.workdir / "huren.yaml")], capture_output=True, text=True, timeout=60)
    assert token.split("_")[1] in listed.stdout and token not in listed.stdout
    subprocess.run([sys.executable, "-m", "huren", "token", "revoke", token.split("_")[1], "--config",
                    str(server.workdir / "huren.yaml")], check=True, capture_output=True, timeout=60)
    assert httpx.get(server.url + "/dicom-web/studies",
                     headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_share_for_a_consultation(site) -> None:
    server, uids, callers = site
    c, a = callers["he-c"], callers["bj-a"]
    path = f"/api/studies/{uids['c']}/shares"
    assert uids["c"] not in a.studies()
    refused = httpx.post(server.url + path, json={"hospital": "bj-a", "days": 7}, headers=a.headers)
    assert refused.status_code == 404  # bj-a cannot see it, so it is absent to bj-a
    made = httpx.post(server.url + path, json={"hospital": "bj-a", "days": 7}, headers=c.headers)
    assert made.status_code == 201, made.text
    assert uids["c"] in a.studies()
    assert a.get(f"/dicom-web/studies/{uids['c']}/metadata").status_code == 200
    not_owner = httpx.post(server.url + f"/api/studies/{uids['a']}/shares",
                           json={"hospital": "he-c", "days": 7}, headers=callers["tj-b"].headers)
    assert not_owner.status_code == 403
    bad = httpx.post(server.url + path, json={"hospital": "nowhere", "days": 7}, headers=c.headers)
    assert bad.status_code == 400 and bad.json()["parameter"] == "hospital"
    revoked = httpx.delete(f"{server.url}{path}/{made.json()['id']}", headers=c.headers)
    assert revoked.status_code == 204
    assert uids["c"] not in a.studies()


def test_stow_stores_as_the_callers_hospital(site) -> None:
    server, uids, callers = site
    datasets = study(CHEST, pixels=True, StudyDate=RECENT)
    headers = {**callers["tj-b"].headers,
               "Content-Type": 'multipart/related; type="application/dicom"; boundary=huren-test-boundary'}
    stored = httpx.post(server.dicomweb + "/studies", content=body(*map(part10, datasets)), headers=headers,
                        timeout=60)
    assert stored.status_code == 200, stored.text
    uid = datasets[0].StudyInstanceUID
    assert uid in callers["tj-b"].studies()
    assert uid not in callers["he-c"].studies()  # not judged yet: tj-b's alone
    # Another hospital's study cannot be added to.
    intruder = study(CHEST, pixels=True, StudyDate=RECENT)[0]
    intruder.StudyInstanceUID = uids["a"]
    intruder.SeriesInstanceUID = generate_uid()
    refused = httpx.post(server.dicomweb + "/studies", content=body(part10(intruder)), headers=headers,
                         timeout=60)
    assert refused.status_code == 409
    assert refused.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC40B]


def test_dimse_stores_as_the_ae_titles_hospital_and_refuses_strangers(site, tmp_path: Path) -> None:
    server, uids, callers = site
    intruder = study(CHEST, pixels=True, StudyDate=RECENT)[:1]
    intruder[0].StudyInstanceUID = uids["b"]
    intruder[0].SeriesInstanceUID = generate_uid()
    (tmp_path / "x").mkdir()
    intruder[0].save_as(tmp_path / "x" / "1.dcm", enforce_file_format=True)
    assert send_raw(server, tmp_path / "x" / "1.dcm", "CT_C", intruder[0].SOPClassUID) == 0xC40B
    stranger = server.storescu(tmp_path / "x" / "1.dcm", calling="NOBODY")
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stderr
    assert len(callers["admin"].get(f"/dicom-web/studies/{uids['b']}/instances").json()) == 3


def test_every_kind_of_access_is_audited(site) -> None:
    """Runs last in this module: the trail holds what the tests above did."""
    server, uids, callers = site
    callers["tj-b"].studies()
    time.sleep(1.5)  # the trail is written in batches, at least every half second
    with sqlite3.connect(server.workdir / "index.db") as db:
        rows = db.execute("SELECT door, action, outcome, hospital_id, actor, study_uid, detail "
                          "FROM audit_events").fetchall()
    kinds = {(door, action, outcome) for door, action, outcome, *_ in rows}
    assert {("dimse", "store", "success"), ("dimse", "store", "failure"), ("dimse", "login", "denied"),
            ("http", "store", "success"), ("http", "store", "failure"), ("http", "query", "success"),
            ("http", "retrieve", "success"), ("http", "retrieve", "failure"), ("http", "share", "success"),
            ("cli", "token", "success")} <= kinds
    stores = [r for r in rows if r[:2] == ("dimse", "store") and r[5] == uids["a"]]
    assert stores and {r[3:5] for r in stores} == {("bj-a", "CT_A")}
    assert any(r[1] == "query" and r[3] == "tj-b" for r in rows)
    assert not any("huren_" in r[4] + (r[6] or "") for r in rows)  # token ids, never the tokens
    assert not any("Wang" in (r[6] or "") or "王" in (r[6] or "") for r in rows)  # no patient names
    exported = subprocess.run([sys.executable, "-m", "huren", "audit", "export", "--since", "2000-01-01",
                               "--config", str(server.workdir / "huren.yaml")],
                              capture_output=True, text=True, timeout=120, cwd=server.workdir)
    assert exported.returncode == 0, exported.stderr
    messages = ElementTree.fromstring(exported.stdout.encode())
    assert len(messages) >= len(rows) - 5  # a few more may be written while exporting
    assert {m.find("EventIdentification/EventID").get("csd-code") for m in messages} >= {"110104", "110112",
                                                                                        "110114", "110113"}
