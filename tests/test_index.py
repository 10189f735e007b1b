"""The ingest path and the index's matching rules, on SQLite and on PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydicom import dcmread
from pydicom.uid import MRImageStorage, generate_uid
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from archive.index.database import Database
from archive.index.query import Level, Query, QueryError, search
from archive.index.schema import instances, patients, series, studies
from archive.ingest import Failure, IngestError, Outcome
from tests.conftest import PG_ADMIN_URL, PYDICOM_FILES, ROOT_URL, Archive
from tests.factory import instance, write

SOURCE = Archive.source


@pytest.fixture
def archive(index_url: str, tmp_path: Path):
    archive = Archive(index_url, tmp_path)
    yield archive
    archive.db.dispose()


def test_ingest_writes_blob_and_rows(archive: Archive) -> None:
    ds = instance()
    stored = archive.add(ds)
    assert stored.outcome is Outcome.STORED
    key = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    assert list(archive.store.keys()) == [key]
    with archive.db.reading() as conn:
        row = conn.execute(select(instances)).one()
    assert row.blob_key == key and row.hospital_id == "hosp-a" and row.calling_ae == "CT_A"
    assert row.size == archive.store.path_of(key).stat().st_size
    frames = orjson.loads(row.frames)
    assert len(frames) == 1 and frames[0][0][1] == 16 * 16 * 2
    data = archive.store.path_of(key).read_bytes()
    offset, length = frames[0][0]
    assert data[offset:offset + length] == ds.PixelData
    meta = orjson.loads(row.metadata)
    assert meta["00100010"]["Value"][0]["Alphabetic"] == "TEST^PATIENT"
    assert meta["7FE00010"]["BulkDataURI"].endswith(f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010")


def test_multiframe_and_encapsulated_frame_offsets(archive: Archive) -> None:
    ds = instance(rows=8, columns=8, frames=5)
    archive.add(ds)
    archive.add(path=PYDICOM_FILES / "SC_rgb_rle_2frame.dcm")
    with archive.db.reading() as conn:
        rows = conn.execute(select(instances.c.blob_key, instances.c.frames)).all()
    by_frames = {len(orjson.loads(r.frames)): r for r in rows}
    native = orjson.loads(by_frames[5].frames)
    data = archive.store.path_of(by_frames[5].blob_key).read_bytes()
    assert b"".join(data[o:o + n] for frame in native for o, n in frame) == ds.PixelData
    rle = orjson.loads(by_frames[2].frames)
    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    original = list(generate_frames(dcmread(PYDICOM_FILES / "SC_rgb_rle_2frame.dcm").PixelData,
                                    number_of_frames=2))
    data = archive.store.path_of(by_frames[2].blob_key).read_bytes()
    assert [b"".join(data[o:o + n] for o, n in frame) for frame in rle] == original


def test_same_instance_twice_is_stored_once(archive: Archive, tmp_path: Path) -> None:
    path = write(instance(), tmp_path / "one.dcm")
    assert archive.add(path=path).outcome is Outcome.STORED
    assert archive.add(path=path).outcome is Outcome.DUPLICATE
    with archive.db.reading() as conn:
        assert conn.execute(select(func.count()).select_from(instances)).scalar() == 1
    assert len(list(archive.store.keys())) == 1


@pytest.mark.parametrize("policy, outcome, kept_name", [
    ("keep", Outcome.KEPT, "FIRST^ONE"),
    ("replace", Outcome.REPLACED, "SECOND^ONE"),
])
def test_conflict_policies(index_url: str, tmp_path: Path, policy: str, outcome: Outcome,
                           kept_name: str) -> None:
    archive = Archive(index_url, tmp_path, on_conflict=policy)
    first = instance(PatientName="FIRST^ONE")
    archive.add(first)
    second = instance(PatientName="SECOND^ONE", SOPInstanceUID=first.SOPInstanceUID,
                      StudyInstanceUID=first.StudyInstanceUID, SeriesInstanceUID=first.SeriesInstanceUID)
    assert archive.add(second).outcome is outcome
    with archive.db.reading() as conn:
        meta = orjson.loads(conn.execute(select(instances.c.metadata)).scalar_one())
    assert meta["00100010"]["Value"][0]["Alphabetic"] == kept_name
    archive.db.dispose()


def test_conflict_rejected_by_default(archive: Archive) -> None:
    first = instance()
    archive.add(first)
    second = instance(SOPInstanceUID=first.SOPInstanceUID, PatientID="OTHER")
    with pytest.raises(IngestError) as caught:
        archive.add(second)
    assert caught.value.failure is Failure.DUPLICATE_REJECTED
    with archive.db.reading() as conn:
        assert conn.execute(select(func.count()).select_from(instances)).scalar() == 1
    assert len(list(archive.store.keys())) == 1


def test_same_data_set_under_other_file_meta_is_a_duplicate(archive: Archive, tmp_path: Path) -> None:
    """C-STORE and STOW-RS wrap one instance in different file meta information."""
    first = write(instance(), tmp_path / "first.dcm")
    archive.add(path=first)
    again = dcmread(first)
    again.file_meta.ImplementationClassUID = "1.2.3.4"
    again.file_meta.ImplementationVersionName = "OTHER_SENDER"
    again.save_as(tmp_path / "again.dcm", enforce_file_format=True)
    assert archive.add(path=tmp_path / "again.dcm").outcome is Outcome.DUPLICATE
    with archive.db.reading() as conn:
        assert conn.execute(select(func.count()).select_from(instances)).scalar() == 1


@pytest.mark.parametrize("make, failure", [
    (lambda p: p.write_bytes(b"garbage" * 100), Failure.CANNOT_UNDERSTAND),
    (lambda p: p.write_bytes(write(instance(rows=64, columns=64), p).read_bytes()[:-1000]),
     Failure.CANNOT_UNDERSTAND),
    (lambda p: write(instance(SOPInstanceUID=None), p), Failure.DATASET_MISMATCH),
    (lambda p: write(instance(StudyInstanceUID=None), p), Failure.DATASET_MISMATCH),
    (lambda p: write(instance(SOPClassUID="1.2.3.4"), p), Failure.SOP_CLASS_NOT_SUPPORTED),
], ids=["garbage", "truncated", "no-sop-uid", "no-study-uid", "unknown-sop-class"])
def test_bad_files_are_refused_and_nothing_is_stored(archive: Archive, tmp_path: Path, make,
                                                      failure: Failure) -> None:
    archive.add(instance())
    path = tmp_path / "bad.dcm"
    make(path)
    with pytest.raises(IngestError) as caught:
        archive.ingest.ingest(path, SOURCE)
    assert caught.value.failure is failure
    assert not path.exists()
    with archive.db.reading() as conn:
        assert conn.execute(select(func.count()).select_from(instances)).scalar() == 1
    assert len(list(archive.store.keys())) == 1


def test_study_mismatch(archive: Archive, tmp_path: Path) -> None:
    path = write(instance(), tmp_path / "x.dcm")
    with pytest.raises(IngestError) as caught:
        archive.ingest.ingest(path, SOURCE, expected_study="1.2.3")
    assert caught.value.failure is Failure.STUDY_MISMATCH


def test_series_of_another_study_is_refused(archive: Archive) -> None:
    """A Series Instance UID belongs to one study: an instance naming it under
    another study is refused, and the first study is served as it was."""
    first = instance(SeriesNumber=1)
    archive.add(first)
    intruder = instance(SeriesInstanceUID=first.SeriesInstanceUID)
    with pytest.raises(IngestError) as caught:
        archive.add(intruder)
    assert caught.value.failure is Failure.SERIES_OF_ANOTHER_STUDY
    assert first.StudyInstanceUID in str(caught.value)
    assert archive.uids(StudyInstanceUID=intruder.StudyInstanceUID) == set()
    assert archive.uids(Level.INSTANCE, SeriesInstanceUID=first.SeriesInstanceUID) == {first.SOPInstanceUID}
    with archive.db.reading() as conn:
        assert conn.execute(select(func.count()).select_from(studies)).scalar() == 1
    assert len(list(archive.store.keys())) == 1  # the refused object was not left behind


@pytest.fixture
def populated(archive: Archive) -> dict[str, Any]:
    """Four studies with names in several character sets, dates and modalities."""
    made = {
        "zhang": instance(PatientName="ZHANG^SAN", StudyDate="20250110", PatientID="Z1"),
        "li": instance(SpecificCharacterSet="GB18030", PatientName="Li^Si=李^四", StudyDate="20250220",
                       PatientID="L1", Modality="MR", SOPClassUID=MRImageStorage),
        "wang": instance(SpecificCharacterSet="ISO_IR 192", PatientName="Wang^Wu=王^五", StudyDate="20250305",
                         PatientID="W1"),
        "muller": instance(PatientName="Müller^Hans", StudyDate="20241231", PatientID="M1",
                           AccessionNumber="ACC_%1"),
    }
    for ds in made.values():
        archive.add(ds)
    # A second series (MR) in zhang's study, two instances.
    mr_series = generate_uid()
    for number in (1, 2):
        archive.add(instance(StudyInstanceUID=made["zhang"].StudyInstanceUID, SeriesInstanceUID=mr_series,
                             Modality="MR", SeriesNumber=9, InstanceNumber=number,
                             PatientName="ZHANG^SAN", PatientID="Z1"))
    return {k: v.StudyInstanceUID for k, v in made.items()}


def test_name_matching(archive: Archive, populated: dict[str, str]) -> None:
    assert archive.uids(PatientName="ZHANG^SAN") == {populated["zhang"]}
    assert archive.uids(PatientName="zhang*") == {populated["zhang"]}
    assert archive.uids(PatientName="李*") == {populated["li"]}
    assert archive.uids(PatientName="王^五") == {populated["wang"]}
    assert archive.uids(PatientName="WANG^WU=王^五") == {populated["wang"]}
    assert archive.uids(PatientName="WANG^WU=李*") == set()
    assert archive.uids(PatientName="MÜLLER*") == {populated["muller"]}
    assert archive.uids(PatientName="?I^SI") == {populated["li"]}
    assert archive.uids(PatientName="*") == set(populated.values())


def test_date_and_text_matching(archive: Archive, populated: dict[str, str]) -> None:
    assert archive.uids(StudyDate="20250220") == {populated["li"]}
    assert archive.uids(StudyDate="20250101-20250228") == {populated["zhang"], populated["li"]}
    assert archive.uids(StudyDate="-20250110") == {populated["zhang"], populated["muller"]}
    assert archive.uids(StudyDate="20250301-") == {populated["wang"]}
    # SQL wildcards in values are literal; only DICOM's * and ? are wildcards.
    assert archive.uids(AccessionNumber="ACC_%1") == {populated["muller"]}
    assert archive.uids(AccessionNumber="ACC__1") == set()
    assert archive.uids(PatientID="Z1,L1") == set()  # not a UID: no list matching
    assert archive.uids(StudyInstanceUID=f"{populated['zhang']},{populated['li']}") == {
        populated["zhang"], populated["li"]}
    assert archive.uids(StudyInstanceUID=f"{populated['zhang']}\\{populated['wang']}") == {
        populated["zhang"], populated["wang"]}
    assert archive.uids(ModalitiesInStudy="MR") == {populated["zhang"], populated["li"]}


@pytest.mark.parametrize("key, value", [
    ("StudyDate", "2020-13-45"), ("StudyDate", "20201345"), ("StudyDate", "-"),
    ("StudyTime", "2500"), ("SeriesNumber", "one"), ("StudyInstanceUID", "1.2.x"),
])
def test_malformed_values(archive: Archive, populated: dict[str, str], key: str, value: str) -> None:
    level = Level.SERIES if key == "SeriesNumber" else Level.STUDY
    with pytest.raises(QueryError) as caught:
        archive.find(level, **{key: value})
    assert caught.value.parameter == key


def test_study_results_carry_the_required_attributes(archive: Archive, populated: dict[str, str]) -> None:
    (result,) = archive.find(StudyInstanceUID=populated["zhang"])
    for tag in ("00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00081190",
                "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010",
                "00201206", "00201208"):
        assert tag in result, tag
    assert result["00201206"]["Value"] == [2]
    assert result["00201208"]["Value"] == [3]
    assert result["00080061"]["Value"] == ["CT", "MR"]
    assert result["00081190"]["Value"] == [f"{ROOT_URL}/studies/{populated['zhang']}"]
    (li,) = archive.find(StudyInstanceUID=populated["li"])
    assert li["00100010"]["Value"][0] == {"Alphabetic": "Li^Si", "Ideographic": "李^四"}


def test_series_and_instance_levels(archive: Archive, populated: dict[str, str]) -> None:
    found = archive.find(Level.SERIES, StudyInstanceUID=populated["zhang"])
    assert sorted(r["00201209"]["Value"][0] for r in found) == [1, 2]
    assert {r["00080060"]["Value"][0] for r in archive.find(Level.SERIES, Modality="MR")} == {"MR"}
    assert len(archive.find(Level.SERIES, SeriesNumber="9")) == 1
    numbered = archive.find(Level.INSTANCE, StudyInstanceUID=populated["zhang"], InstanceNumber="2")
    assert len(numbered) == 1 and numbered[0]["00200013"]["Value"] == [2]
    # Instance results outside a series carry the study and series attributes too.
    assert "00100010" in numbered[0] and "0020000E" in numbered[0]


def test_limit_offset_and_includefield(archive: Archive, populated: dict[str, str]) -> None:
    everything = archive.find()
    assert len(everything) == 4
    body_part = 0x00180015
    query = Query(Level.STUDY, {}, {body_part}, limit=2, offset=1)
    with archive.db.reading() as conn:
        page = search(conn, query, ROOT_URL)
    assert [r["0020000D"] for r in page] == [r["0020000D"] for r in everything[1:3]]
    assert all(r["00180015"]["Value"] == ["CHEST"] for r in page)
    assert all("00180015" not in r for r in everything)


def test_patient_rows_are_shared_per_issuer(archive: Archive, populated: dict[str, str]) -> None:
    with archive.db.reading() as conn:
        assert conn.execute(select(func.count()).select_from(patients)).scalar() == 4
        assert conn.execute(select(func.count()).select_from(studies)).scalar() == 4
        assert conn.execute(select(func.count()).select_from(series)).scalar() == 5


def test_migrations_are_repeatable(index_url: str, tmp_path: Path) -> None:
    db = Database(index_url)
    db.migrate()
    db.migrate()
    db.dispose()


def test_an_index_that_does_not_answer_is_out_of_resources_with_a_reason(postgres_url: str,
                                                                          tmp_path: Path) -> None:
    """The index gone (here its database dropped): 0xA700 with a comment that says so, not a crash."""
    archive = Archive(postgres_url, tmp_path)
    archive.add(instance())
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{make_url(postgres_url).database}" WITH (FORCE)'))
    admin.dispose()
    with pytest.raises(IngestError) as caught:
        archive.add(instance())
    assert caught.value.failure is Failure.OUT_OF_RESOURCES
    assert str(caught.value).startswith("index unavailable: ")
    archive.db.dispose()


@pytest.mark.parametrize(("attempts", "within", "expected"), [(3, 5.0, 3), (1, 5.0, 1), (5, 0.3, 2)])
def test_a_failed_postgresql_connection_is_tried_again_within_the_bound(
        attempts: int, within: float, expected: int) -> None:
    """A server that hangs up on every new connection (as one restarting does): tried `attempts`
    times at most, and no longer than `within` seconds, then the driver's error."""
    accepted = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.1)
        stop = threading.Event()

        def hang_up() -> None:
            while not stop.is_set():
                try:
                    connection, _ = server.accept()
                except TimeoutError:
                    continue
                accepted.append(time.monotonic())
                connection.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        db = Database(f"postgresql+psycopg://nobody@127.0.0.1:{server.getsockname()[1]}/none"
                      "?sslmode=disable&gssencmode=disable", connect_timeout=within, connect_attempts=attempts)
        started = time.monotonic()
        try:
            with pytest.raises(OperationalError):
                db.engine.connect()
            elapsed = time.monotonic() - started
        finally:
            db.dispose()
            stop.set()
            thread.join()
    assert len(accepted) == expected and elapsed < within
