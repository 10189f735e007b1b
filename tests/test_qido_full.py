"""QIDO-RS in full: fuzzy and pinyin person names, includefield=all, computed
attributes under the sharing policy, sequence keys and Warning headers
(PS3.18 §8.3.4, §10.6; PS3.4 §C.2.2.2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select

from archive import names
from archive.index.database import MIGRATIONS
from archive.index.query import Level, Query, parse_attribute, search
from archive.index.schema import patients
from archive.ingest import Source
from tests.conftest import ROOT_URL, Archive, Huren
from tests.factory import instance

# The same patient, 王小东, as three kinds of sender write him.
CHINESE = [
    ("GB18030", "Wang^Xiaodong=王^小东"),
    ("GBK", "=王^小东"),          # only the ideographic group
    ("ISO_IR 192", "王小东"),      # Han characters in the first group, no ^
]


@pytest.fixture
def archive(index_url: str, tmp_path: Path):
    archive = Archive(index_url, tmp_path)
    yield archive
    archive.db.dispose()


def find(archive: Archive, level: Level = Level.STUDY, fuzzy: bool = False, include_all: bool = False,
         include: tuple[str, ...] = (), **matches: str) -> list[dict[str, Any]]:
    query = Query(level=level, matches={parse_attribute(k): v for k, v in matches.items()},
                  include={parse_attribute(k) for k in include}, include_all=include_all, fuzzy=fuzzy)
    with archive.db.reading() as conn:
        return search(conn, query, ROOT_URL)


def study_uids(results: list[dict[str, Any]]) -> set[str]:
    return {r["0020000D"]["Value"][0] for r in results}


def migrate_again(archive: Archive, revision: str) -> None:
    """Take the index back to `revision` (keeping the rows it has), then migrate it to the newest."""
    settings = AlembicConfig()
    settings.set_main_option("script_location", str(MIGRATIONS))
    with archive.db.engine.begin() as connection:
        settings.attributes["connection"] = connection
        command.downgrade(settings, revision)
    archive.db.migrate()


def test_pinyin_of_names() -> None:
    assert names.pinyin("王^小东") == "WANG^XIAODONG"
    assert names.pinyin("=王^小东") == "WANG^XIAODONG"
    assert names.pinyin("王小东") == "WANG^XIAODONG"
    assert names.pinyin("欧阳娜娜") == "OUYANG^NANA"     # a compound surname
    assert names.pinyin("曾^小贤") == "ZENG^XIAOXIAN"    # a surname's own reading
    assert names.pinyin("吕^红") == "LV^HONG"
    assert names.pinyin("Wang^Xiao-Dong") == "WANG^XIAODONG"
    assert names.pinyin("") == ""
    assert names.query_pinyin("wang xiaodong") == "WANG^XIAODONG"
    assert names.query_pinyin("Lyu*") == "LV*"
    assert names.query_pinyin("王晓东") == "WANG^XIAODONG"  # a homophone
    # Typed into a viewer's search box: wildcards round it and no ^ says where the surname ends.
    assert names.query_pinyin("*王小东*") == "*WANG*XIAO*DONG*"
    assert names.query_pinyin("王小?") == "WANG*XIAO?"
    assert names.query_pinyin("王^小*") == "WANG^XIAO*"


@pytest.mark.parametrize(("charset", "name"), CHINESE)
def test_fuzzy_pinyin_finds_chinese_names(archive: Archive, charset: str, name: str) -> None:
    ds = instance(SpecificCharacterSet=charset, PatientName=name)
    archive.add(ds)
    other = instance(PatientName="WANGER^ANNA", PatientID="P0002")
    archive.add(other)
    mine = {ds.StudyInstanceUID}
    for query in ("wang^*", "WANG^XIAO*", "wang xiaodong", "Wang^Xiao-Dong", "王晓东", "*xiaodong", "*王小东*"):
        assert study_uids(find(archive, fuzzy=True, PatientName=query)) == mine, query
    # Without fuzzy matching only the groups as written match.
    assert study_uids(find(archive, PatientName="wang^*")) == (mine if charset == "GB18030" else set())
    assert study_uids(find(archive, PatientName="王*")) == mine
    assert study_uids(find(archive, fuzzy=True, PatientName="wang*")) == mine | {other.StudyInstanceUID}
    # Case does not matter either way; the ideographic group matches without fuzzy matching.
    assert study_uids(find(archive, fuzzy=True, PatientName="WaNgEr^*")) == {other.StudyInstanceUID}


def test_fuzzy_group_by_group(archive: Archive) -> None:
    ds = instance(SpecificCharacterSet="GB18030", PatientName="=王^小东")
    archive.add(ds)
    assert study_uids(find(archive, fuzzy=True, PatientName="wang*=王*")) == {ds.StudyInstanceUID}
    assert study_uids(find(archive, fuzzy=True, PatientName="li*=王*")) == set()
    assert study_uids(find(archive, PatientName="wang*=王*")) == set()


def test_migration_fills_pinyin_of_stored_patients(archive: Archive) -> None:
    ds = instance(SpecificCharacterSet="GB18030", PatientName="=欧阳^娜娜")
    archive.add(ds)
    migrate_again(archive, "0004")
    with archive.db.reading() as conn:
        assert conn.execute(select(patients.c.name_pinyin)).scalar_one() == "OUYANG^NANA"
    assert study_uids(find(archive, fuzzy=True, PatientName="ouyang*")) == {ds.StudyInstanceUID}


def test_pinyin_match_uses_the_index(archive: Archive) -> None:
    archive.add(instance(SpecificCharacterSet="GB18030", PatientName="王^小东"))
    query = Query(level=Level.STUDY, matches={parse_attribute("PatientName"): "wang*"}, include=set(),
                  fuzzy=True)
    statement_sql = _explain(archive, query)
    assert "ix_patients_name_pinyin" in statement_sql


def _explain(archive: Archive, query: Query) -> str:
    from archive.index import query as module

    condition = module._condition(parse_attribute("PatientName"), query.matches[parse_attribute("PatientName")],
                                  query.fuzzy)
    statement = select(patients.c.pk).where(condition)
    with archive.db.reading() as conn:
        if archive.db.is_sqlite:
            compiled = statement.compile(conn, compile_kwargs={"literal_binds": True})
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
            return " ".join(str(row) for row in plan)
        conn.exec_driver_sql("SET enable_seqscan = off")
        compiled = statement.compile(conn, compile_kwargs={"literal_binds": True})
        return " ".join(str(row) for row in conn.exec_driver_sql(f"EXPLAIN {compiled}").all())


def test_include_all_by_level(archive: Archive) -> None:
    ds = instance(PatientAge="054Y", Manufacturer="ACME", InstitutionName="Hospital A", SliceThickness=1.25)
    archive.add(ds)
    study = find(archive, include_all=True)[0]
    assert study["00101010"]["Value"] == ["054Y"]          # PatientAge: the patient study module
    assert study["00080062"]["Value"] == [ds.SOPClassUID]   # SOPClassesInStudy, computed
    assert "00080070" not in study and "00180050" not in study  # series and instance attributes
    series = find(archive, Level.SERIES, include_all=True)[0]
    assert series["00080070"]["Value"] == ["ACME"] and series["00080080"]["Value"] == ["Hospital A"]
    assert "00180050" not in series and "00080018" not in series
    one = find(archive, Level.INSTANCE, include_all=True)[0]
    assert one["00180050"]["Value"] == [1.25] and one["00080070"]["Value"] == ["ACME"]
    plain = find(archive)[0]
    assert "00101010" not in plain and "00080062" not in plain


def test_computed_attributes_and_modalities(archive: Archive) -> None:
    study = generate_uid()
    ct = generate_uid()
    for number in (1, 2, 3):
        archive.add(instance(StudyInstanceUID=study, SeriesInstanceUID=ct, InstanceNumber=number))
    archive.add(instance(StudyInstanceUID=study, Modality="MR", SOPClassUID=MRImageStorage))
    archive.add(instance(StudyInstanceUID=study, Modality="OT", SOPClassUID=SecondaryCaptureImageStorage))
    archive.add(instance(Modality="US"))
    [found] = find(archive, include=("SOPClassesInStudy",), ModalitiesInStudy="MR")
    assert found["00201206"]["Value"] == [3] and found["00201208"]["Value"] == [5]
    assert found["00080061"]["Value"] == ["CT", "MR", "OT"]
    assert sorted(found["00080062"]["Value"]) == sorted(
        ["1.2.840.10008.5.1.4.1.1.2", MRImageStorage, SecondaryCaptureImageStorage])
    assert study_uids(find(archive, ModalitiesInStudy="CT\\US")) == {study} | study_uids(
        find(archive, ModalitiesInStudy="US"))
    [series] = find(archive, Level.SERIES, SeriesInstanceUID=ct)
    assert series["00201209"]["Value"] == [3]


def test_counts_under_the_sharing_policy(archive: Archive) -> None:
    from archive.config import Config
    from archive.policy import Caller, visible

    config = Config(hospitals=[{"id": "hosp-a", "name": "A"}, {"id": "hosp-b", "name": "B"}])
    mine, first = generate_uid(), generate_uid()
    for series_uid in (first, first, generate_uid()):
        archive.add(instance(StudyInstanceUID=mine, SeriesInstanceUID=series_uid))
    archive.add(instance(PatientID="P0002"), source=Source("dimse", "hosp-b", "CT_B"))
    query = Query(level=Level.STUDY, matches={}, include=set())
    with archive.db.reading() as conn:
        as_a = search(conn, query, ROOT_URL, visible(config, Caller("http", "t", "hosp-a")))
        everyone = search(conn, query, ROOT_URL, visible(config, Caller("http", "t", None, admin=True)))
    assert study_uids(as_a) == {mine}
    assert as_a[0]["00201208"]["Value"] == [3] and as_a[0]["00201206"]["Value"] == [2]
    assert len(everyone) == 2


# Over HTTP: dicomweb-client and the Warning headers.

def test_dicomweb_client_fuzzy_search(huren: Huren, tmp_path: Path) -> None:
    client = DICOMwebClient(huren.dicomweb)
    sent = []
    for charset, name in CHINESE:
        ds = instance(SpecificCharacterSet=charset, PatientName=name)
        client.store_instances([ds])
        sent.append(ds.StudyInstanceUID)
    found = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "wang*"})
    assert {r["0020000D"]["Value"][0] for r in found} == set(sent)
    assert client.search_for_studies(search_filters={"PatientName": "wang*"}) \
        == client.search_for_studies(search_filters={"PatientName": "WANG^XIAODONG"})
    everything = client.search_for_studies(get_remaining=True, fields=["all"])
    assert all("00080062" in study for study in everything)


def test_warning_headers(huren: Huren) -> None:
    ds = instance(ReferringPhysicianName="LI^SI")
    assert httpx.post(huren.dicomweb + "/studies", content=_stow(ds), headers=_STOW_HEADERS).status_code == 200
    answer = httpx.get(huren.dicomweb + "/studies", params={
        "fuzzymatching": "true", "ReferringPhysicianName": "li*", "PatientName": "test*"})
    assert answer.status_code == 200 and len(answer.json()) == 1
    assert "Fuzzy matching is not supported for ReferringPhysicianName" in answer.headers["warning"]
    assert answer.headers["warning"].startswith("299 ")
    answer = httpx.get(huren.dicomweb + "/studies", params={"fuzzymatching": "true", "PatientName": "test*"})
    assert "warning" not in answer.headers
    answer = httpx.get(huren.dicomweb + "/studies", params={"OtherPatientIDsSequence.PatientID": "1"})
    assert "OtherPatientIDsSequence.PatientID" in answer.headers["warning"]
    answer = httpx.get(huren.dicomweb + "/studies", params={"fuzzymatching": "maybe"})
    assert answer.status_code == 400 and answer.json()["parameter"] == "fuzzymatching"


_BOUNDARY = "qido-test"
_STOW_HEADERS = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}'}


def _stow(ds: Any) -> bytes:
    from io import BytesIO

    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return (f"--{_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + out.getvalue()
            + f"\r\n--{_BOUNDARY}--\r\n".encode())


def test_stored_names_keep_their_pinyin(archive: Archive) -> None:
    archive.add(instance(SpecificCharacterSet="ISO_IR 192", PatientName="曾小贤"))
    with archive.db.reading() as conn:
        assert conn.execute(select(patients.c.name_pinyin)).scalar_one() == "ZENG^XIAOXIAN"


def requested(procedure: str, step: str, accession: str = "") -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = procedure
    item.ScheduledProcedureStepID = step
    if accession:
        item.AccessionNumber = accession
    return item


def test_request_attributes_sequence_keys(archive: Archive) -> None:
    study = generate_uid()
    chest, head, plain = generate_uid(), generate_uid(), generate_uid()
    archive.add(instance(StudyInstanceUID=study, SeriesInstanceUID=chest,
                         RequestAttributesSequence=[requested("RP-CHEST", "SPS-1", "ACC-9"),
                                                    requested("RP-X", "SPS-2")]))
    archive.add(instance(StudyInstanceUID=study, SeriesInstanceUID=chest, InstanceNumber=2,
                         RequestAttributesSequence=[requested("RP-CHEST", "SPS-1", "ACC-9")]))
    archive.add(instance(StudyInstanceUID=study, SeriesInstanceUID=head, RequestAttributesSequence=[
        requested("RP-HEAD", "SPS-3")]))
    archive.add(instance(StudyInstanceUID=study, SeriesInstanceUID=plain))
    procedure = (parse_attribute("RequestAttributesSequence"), parse_attribute("RequestedProcedureID"))
    step = (procedure[0], parse_attribute("ScheduledProcedureStepID"))
    accession = (procedure[0], parse_attribute("AccessionNumber"))

    def series_uids(level: Level = Level.SERIES, **keys: str) -> set[str]:
        paths = {"procedure": procedure, "step": step, "accession": accession}
        query = Query(level=level, matches={}, include=set(),
                      sequence_matches={paths[name]: value for name, value in keys.items()})
        with archive.db.reading() as conn:
            return {r["0020000E"]["Value"][0] for r in search(conn, query, ROOT_URL)}

    assert series_uids(procedure="RP-CHEST") == {chest}
    assert series_uids(procedure="RP-X") == {chest}             # any item matches
    assert series_uids(procedure="RP-*") == {chest, head}
    assert series_uids(step="SPS-3") == {head}
    assert series_uids(procedure="RP-CHEST", step="SPS-3") == set()
    assert series_uids(accession="ACC-9") == {chest}
    assert series_uids(Level.INSTANCE, procedure="RP-HEAD") == {head}
    assert series_uids(procedure="*") == {chest, head, plain}  # universal matching
    # Series archived before the table existed get their rows from the migration.
    migrate_again(archive, "0006")
    assert series_uids(procedure="RP-*") == {chest, head}
    assert series_uids(step="SPS-2") == {chest}


def test_sequence_keys_over_http(huren: Huren) -> None:
    client = DICOMwebClient(huren.dicomweb)
    ds = instance(RequestAttributesSequence=[requested("RP-7", "SPS-7")])
    client.store_instances([ds, instance()])
    found = client.search_for_series(search_filters={"RequestAttributesSequence.RequestedProcedureID": "RP-7"})
    assert [s["0020000E"]["Value"][0] for s in found] == [ds.SeriesInstanceUID]
    assert found[0]["00400275"]["Value"][0]["00401001"]["Value"] == ["RP-7"]
    answer = httpx.get(huren.dicomweb + "/series", params={"00400275.00400009": "SPS-7"})
    assert [s["0020000E"]["Value"][0] for s in answer.json()] == [ds.SeriesInstanceUID]
    assert "warning" not in answer.headers
    # At the study level they are not keys (PS3.18 §10.6 lists them for series): ignored, with a warning.
    answer = httpx.get(huren.dicomweb + "/studies", params={"RequestAttributesSequence.RequestedProcedureID": "x"})
    assert len(answer.json()) == 2 and "RequestAttributesSequence.RequestedProcedureID" in answer.headers["warning"]
    answer = httpx.get(huren.dicomweb + "/series", params={"RequestAttributesSequence.NoSuchThing": "x"})
    assert answer.status_code == 400 and answer.json()["parameter"] == "NoSuchThing"
