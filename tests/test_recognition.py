"""The guideline end to end: studies sent with DCMTK to ``huren serve`` are judged
once quiet, by exactly one of two servers sharing a PostgreSQL index; the
recognition look-up, compliance records and QIDO attributes over HTTP; the
``huren guideline`` commands; rule files refused at start.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dicomweb_client.api import DICOMwebClient
from sqlalchemy import create_engine, text

from tests.conftest import ROOT, Huren, huren_config
from tests.guideline_studies import RULES, series_of, study, without
from tests.test_compliance import ASSESSMENTS, HOSPITALS, NATIONAL_ID, NATIONAL_ISSUER, RECENT

QUIET = 1.0


def guideline_config(workdir: Path, **more: Any) -> dict[str, Any]:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    rules["assessments"] = ASSESSMENTS
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    return huren_config(workdir, hospitals=HOSPITALS, guideline={
        "rule_sets": ["rules.yaml"], "quiet_period": QUIET, "poll_interval": 0.2,
    }, **more)


def send(huren: Huren, datasets: list, folder: Path, calling: str = "CT_A") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(datasets):
        ds.save_as(folder / f"{n:05d}.dcm", enforce_file_format=True)
    result = huren.storescu(*sorted(folder.iterdir()), calling=calling)
    assert result.returncode == 0, result.stderr
    return datasets[0].StudyInstanceUID


_admins: dict[Path, str] = {}


def as_admin(huren: Huren) -> dict[str, str]:
    """Authorization headers of an admin token of `huren` (made once per server folder)."""
    if huren.workdir not in _admins:
        _admins[huren.workdir] = huren.token(admin=True)
    return {"Authorization": f"Bearer {_admins[huren.workdir]}"}


def as_hospital(huren: Huren, hospital: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {huren.token(hospital)}"}


def record(huren: Huren, study_uid: str) -> dict[str, Any]:
    answer = httpx.get(f"{huren.url}/api/studies/{study_uid}/compliance", timeout=10,
                       headers=as_admin(huren))
    assert answer.status_code == 200, answer.text
    return answer.json()


def judged(huren: Huren, study_uid: str, timeout: float = 60) -> dict[str, Any]:
    """The study's record once it has been judged and nothing is pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = record(huren, study_uid)
        if found["verdict"] is not None and not found["pending"]:
            return found
        time.sleep(0.2)
    raise AssertionError(f"study {study_uid} was not judged within {timeout}s: {found}")


@pytest.fixture
def server(tmp_path: Path):
    huren = Huren(tmp_path, guideline_config(tmp_path)).start()
    yield huren
    huren.stop()


def test_two_servers_judge_each_study_once_and_a_late_series_turns_it(tmp_path: Path, postgres_url: str) -> None:
    """Realistic CT (512×512 slices) through two servers on one index: each study is
    judged by one of them, and judged again when its missing series arrives."""
    first = Huren(tmp_path / "one", guideline_config(_mkdir(tmp_path / "one"), index_url=postgres_url))
    second_dir = _mkdir(tmp_path / "two")
    config = guideline_config(second_dir, index_url=postgres_url)
    config["storage"] = first.config["storage"]
    second = Huren(second_dir, config)
    first.start()
    second.start()
    try:
        head = study("JJJ-CT-HEAD", pixels=True, StudyDate=RECENT)
        thin = series_of(head, "Head 1mm")
        uid = send(first, without(head, "Head 1mm"), tmp_path / "head")
        chests = [send(server, study("JJJ-DR-CHEST", pixels=True, StudyDate=RECENT), tmp_path / f"dr{n}",
                       calling=calling)
                  for n, (server, calling) in enumerate([(first, "CT_A"), (second, "CT_B"), (second, "CT_A")])]
        failing = judged(second, uid)
        assert failing["verdict"] == "fail"
        assert any(f["rule"] == "ct.thin_series" for f in failing["judgements"][0]["findings"])
        for chest in chests:
            assert judged(first, chest)["verdict"] == "pass"

        send(second, thin, tmp_path / "thin")
        deadline = time.monotonic() + 60
        while (passing := judged(first, uid))["verdict"] != "pass" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert passing["verdict"] == "pass"
        assert [h["verdict"] for h in passing["history"]] == ["fail"]
        engine = create_engine(postgres_url)
        with engine.connect() as conn:
            counts = dict(conn.execute(text(
                "SELECT s.study_uid, count(j.pk) FROM studies s JOIN judgements j ON j.study_pk = s.pk "
                "GROUP BY s.study_uid")).all())
        engine.dispose()
        assert counts == {uid: 2, **{chest: 1 for chest in chests}}  # never judged twice at once
        logs = first.log.read_text() + second.log.read_text()
        assert logs.count('"study judged"') == 5
    finally:
        first.stop()
        second.stop()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_recognition_api(server: Huren, tmp_path: Path) -> None:
    at_a = send(server, study("JJJ-DR-CHEST", pixels=True, StudyDate=RECENT, PatientID="A-1",
                              IssuerOfPatientID="BJA-HIS"), tmp_path / "a", "CT_A")
    at_b = send(server, study("JJJ-DR-CHEST", pixels=True, StudyDate=RECENT, PatientID="B-1",
                              IssuerOfPatientID="TJB-HIS"), tmp_path / "b", "CT_B")
    for uid in (at_a, at_b):
        judged(server, uid)
    api = f"{server.url}/api/recognition"
    admin, tj_b = as_admin(server), as_hospital(server, "tj-b")
    answer = httpx.get(api, params={"patient_id": NATIONAL_ID, "issuer": NATIONAL_ISSUER}, headers=admin)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["days"] == 30 and body["patient"] == {"patient_id": NATIONAL_ID, "issuer": NATIONAL_ISSUER}
    assert {r["study_instance_uid"] for r in body["results"]} == {at_a, at_b}
    result = next(r for r in body["results"] if r["study_instance_uid"] == at_a)
    assert result["item"]["code"] == "JJJ-DR-CHEST" and result["item"]["name"]["zh"]
    assert result["mark"] == "JJJHR" and result["hospital"] == {"id": "bj-a", "name": "北京甲医院"}
    assert result["study_date"] == datetime.datetime.strptime(RECENT, "%Y%m%d").date().isoformat()
    assert result["url"] == f"{server.dicomweb}/studies/{at_a}"
    assert httpx.get(result["url"] + "/metadata", headers=tj_b).status_code == 200  # recognised: visible
    assert [r["code"] for r in body["reexamination_reasons"]["JJJ"]][:3] == ["R01", "R02", "R03"]
    assert len(body["reexamination_reasons"]["JJJ"]) == 11

    # Hospital B asks with its own local ID, as itself (its token names it).
    mine = httpx.get(api, params={"patient_id": "B-1", "issuer": "TJB-HIS"}, headers=tj_b).json()
    assert mine["asking_hospital"] == "tj-b"
    assert {r["study_instance_uid"] for r in mine["results"]} == {at_a, at_b}
    as_other = httpx.get(api, params={"patient_id": "B-1", "issuer": "TJB-HIS", "hospital": "bj-a"}, headers=tj_b)
    assert as_other.status_code == 400 and as_other.json()["parameter"] == "hospital"
    for_b = httpx.get(api, params={"patient_id": "B-1", "issuer": "TJB-HIS", "hospital": "tj-b"}, headers=admin)
    assert for_b.json()["asking_hospital"] == "tj-b"
    only_a = httpx.get(api, params={"patient_id": "B-1", "issuer": "TJB-HIS", "source": "bj-a"}, headers=tj_b).json()
    assert [r["study_instance_uid"] for r in only_a["results"]] == [at_a]
    other_item = httpx.get(api, params={"patient_id": "B-1", "issuer": "TJB-HIS", "item": "JJJ-CT-HEAD"},
                           headers=tj_b)
    assert httpx.get(api, params={"patient_id": "B-1", "issuer": "TJB-HIS"}).status_code == 401
    assert other_item.status_code == 200 and other_item.json()["results"] == []


@pytest.mark.parametrize("params, parameter", [
    ({"issuer": "X"}, "patient_id"),
    ({"patient_id": "1"}, "issuer"),
    ({"patient_id": "1", "issuer": "X", "days": "0"}, "days"),
    ({"patient_id": "1", "issuer": "X", "days": "thirty"}, "days"),
    ({"patient_id": "1", "issuer": "X", "item": "NO-SUCH-ITEM"}, "item"),
    ({"patient_id": "1", "issuer": "X", "hospital": "nowhere"}, "hospital"),
    ({"patient_id": "1", "issuer": "X", "patientid": "1"}, "patientid"),
])
def test_recognition_api_refuses_bad_parameters(server: Huren, params: dict[str, str], parameter: str) -> None:
    answer = httpx.get(f"{server.url}/api/recognition", params=params, headers=as_admin(server))
    assert answer.status_code == 400
    assert answer.json()["parameter"] == parameter and answer.json()["error"]


def test_compliance_on_demand_and_in_qido(server: Huren, tmp_path: Path) -> None:
    admin = as_admin(server)
    assert httpx.get(f"{server.url}/api/studies/1.2.3.999/compliance", headers=admin).status_code == 404
    assert httpx.post(f"{server.url}/api/studies/1.2.3.999/compliance", headers=admin).status_code == 404
    datasets = study("JJJ-DR-CHEST", pixels=True, StudyDate=RECENT, AccessionNumber=None)
    uid = send(server, datasets, tmp_path / "dr")
    now = httpx.post(f"{server.url}/api/studies/{uid}/compliance", timeout=30, headers=admin)
    assert now.status_code == 200
    assert now.json()["verdict"] == "fail"
    [finding] = [f for f in now.json()["judgements"][0]["findings"] if f["rule"] == "study.accession_number"]
    assert finding["message"]["zh"] and finding["message"]["en"]
    web = DICOMwebClient(server.dicomweb, headers=admin)
    [found] = web.search_for_studies(search_filters={"StudyInstanceUID": uid})
    assert found["00111001"]["Value"] == ["FAIL"]
    assert "00111002" not in found  # failing: no mark
    assert found["00111003"]["Value"] == ["JJJ-DR-CHEST"]


def huren_command(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "huren", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def written(datasets: list, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for n, ds in enumerate(datasets):
        ds.save_as(folder / f"{n:03d}.dcm", enforce_file_format=True)
    return folder


def test_guideline_check_command(tmp_path: Path) -> None:
    good = written(study("JJJ-DR-CHEST", pixels=True), tmp_path / "good")
    passed = huren_command("guideline", "check", str(good), "--lang", "en")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "JJJ-DR-CHEST" in passed.stdout and "pass" in passed.stdout

    bad = written(study("JJJ-DR-CHEST", pixels=True, report=None), tmp_path / "bad")
    failed = huren_command("guideline", "check", str(bad), str(good), "--json")
    assert failed.returncode == 1, failed.stderr
    studies = json.loads(failed.stdout)["studies"]
    verdicts = sorted(j["verdict"] for s in studies for j in s["judgements"])
    assert verdicts == ["fail", "pass"]
    chinese = huren_command("guideline", "check", str(bad))
    assert chinese.returncode == 1 and "不通过" in chinese.stdout

    assert huren_command("guideline", "check", str(tmp_path / "missing")).returncode == 2
    assert huren_command("guideline", "check").returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    nothing = huren_command("guideline", "check", str(empty))
    assert nothing.returncode == 2 and "no DICOM" in nothing.stderr
    own_rules = huren_command("guideline", "check", str(good), "--rules", str(RULES), "--lang", "en")
    assert own_rules.returncode == 0


def test_rejudge_command(server: Huren, tmp_path: Path) -> None:
    uid = send(server, study("JJJ-DR-CHEST", pixels=True, StudyDate=RECENT), tmp_path / "dr")
    judged(server, uid)
    server.stop()
    done = huren_command("guideline", "rejudge", "--config", str(server.workdir / "huren.yaml"),
                         cwd=server.workdir)
    assert done.returncode == 0, done.stderr
    assert "rejudged 1 studies" in done.stdout and "1/1" in done.stderr  # the progress bar
    server.start()
    assert len(record(server, uid)["history"]) == 1


def bad_rules(tmp_path: Path, change) -> Path:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    change(rules)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("change, words", [
    (lambda r: r["items"][7].update(modalty=["CT"]),
     ["rules.yaml", "items[7] (JJJ-CT-HEAD)", "modalty", "unknown key"]),
    (lambda r: r["defaults"]["ct"].update(thin_max_mm=-1), ["rules.yaml", "thin_max_mm"]),
    (lambda r: r["items"][1].update(code="JJJ-DR-CHEST"), ["rules.yaml", "duplicate", "JJJ-DR-CHEST"]),
    (lambda r: r.update(assessments=[{"hospital": "nowhere", "item": "JJJ-DR-CHEST", "scope": "JJJHR",
                                      "since": "2020-01-01"}]), ["rules.yaml", "assessments[0].hospital", "nowhere"]),
])
def test_bad_rule_files_are_refused_at_start(tmp_path: Path, change, words: list[str]) -> None:
    bad_rules(tmp_path, change)
    config = huren_config(tmp_path, hospitals=HOSPITALS, guideline={"rule_sets": ["rules.yaml"]})
    path = tmp_path / "huren.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    for command in (["check-config", str(path)], ["serve", "--config", str(path)]):
        result = huren_command(*command, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        for word in words:
            assert word in result.stderr, result.stderr
