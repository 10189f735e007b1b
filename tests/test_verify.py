"""Index against store: ``huren verify`` finds missing objects, orphans, checksum
mismatches and lost queue files, ``--repair`` fixes what can be fixed, and
``huren reindex`` rebuilds an index from the bucket alone that answers QIDO-RS
exactly as the index that filled the bucket."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import insert

from archive.config import S3Storage
from archive.index.query import Level
from archive.index.schema import queued_objects
from archive.ingest import Ingest
from archive.storage import BlobStore
from archive.storage.filesystem import FilesystemStore
from archive.storage.s3 import S3Store
from archive.sweep import Sweeper
from archive.verify import repair, verify
from tests.conftest import PG_ADMIN_URL, PYDICOM_FILES, Archive, Huren, huren_config
from tests.factory import instance, write


@pytest.fixture(params=["filesystem", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "filesystem":
        return FilesystemStore(tmp_path / "archive")
    return S3Store(S3Storage.model_validate(request.getfixturevalue("s3_storage")))


def _archive(index_url: str, store: BlobStore, folder: Path) -> Archive:
    archive = Archive(index_url, folder)
    archive.store = store
    archive.ingest = Ingest(archive.db, store)
    return archive


def _put(store: BlobStore, key: str, data: bytes, folder: Path) -> None:
    path = folder / "upload"
    path.write_bytes(data)
    store.put(key, path, hashlib.sha256(data).hexdigest())
    path.unlink(missing_ok=True)


def _sweeper(archive: Archive, folder: Path) -> Sweeper:
    work = folder / "work"
    work.mkdir(exist_ok=True)
    return Sweeper(archive.db, archive.store, folder / "spool", work, upload_age=3600, orphan_grace=0)


def test_verify_finds_each_disagreement_and_repair_fixes_what_it_can(
        index_url: str, any_store: BlobStore, tmp_path: Path) -> None:
    archive = _archive(index_url, any_store, tmp_path)
    lost, corrupt, whole = (archive.add() for _ in range(3))
    report = verify(archive.db, any_store, grace=0)
    assert report.agree and (report.objects, report.rows) == (3, 3)

    def key(stored: Any) -> str:
        return f"{stored.study_uid}/{stored.series_uid}/{stored.sop_uid}.dcm"

    any_store.delete(key(lost))
    original = b"".join(any_store.read(key(corrupt)))
    flipped = original[:-1] + bytes([original[-1] ^ 0xFF])  # same size, one bit pattern changed
    _put(any_store, key(corrupt), flipped, tmp_path)
    orphan = instance()
    orphan_key = f"{orphan.StudyInstanceUID}/{orphan.SeriesInstanceUID}/{orphan.SOPInstanceUID}.dcm"
    _put(any_store, orphan_key, write(orphan, tmp_path / "orphan.dcm").read_bytes(), tmp_path)

    quick = verify(archive.db, any_store, checksums=False, grace=0)
    assert [f.key for f in quick.missing] == [key(lost)] and quick.orphans == [orphan_key]
    assert quick.mismatches == []  # the size is right: only the SHA-256 tells
    assert verify(archive.db, any_store, grace=3600).orphans == []  # within the grace period: only counted

    report = verify(archive.db, any_store, grace=0)
    assert [(f.key, f.sop_uid) for f in report.missing] == [(key(lost), lost.sop_uid)]
    assert report.orphans == [orphan_key]
    assert [f.key for f in report.mismatches] == [key(corrupt)] and "SHA-256" in report.mismatches[0].detail

    repairs = repair(archive.db, any_store, report, _sweeper(archive, tmp_path))
    assert len(repairs.fixed) == 2 and len(repairs.not_fixed) == 1
    assert key(corrupt) in repairs.not_fixed[0] and "no earlier version" in repairs.not_fixed[0]
    after = verify(archive.db, any_store, grace=0)
    assert not after.missing and not after.orphans and [f.key for f in after.mismatches] == [key(corrupt)]
    assert archive.uids(Level.INSTANCE) == {corrupt.sop_uid, whole.sop_uid, orphan.SOPInstanceUID}


def test_a_corrupt_object_is_restored_from_the_buckets_earlier_version(
        s3_storage: dict[str, Any], tmp_path: Path) -> None:
    store = S3Store(S3Storage.model_validate(s3_storage))
    store.client.put_bucket_versioning(Bucket=store.bucket, VersioningConfiguration={"Status": "Enabled"})
    archive = _archive(f"sqlite:///{tmp_path / 'index.db'}", store, tmp_path)
    stored = archive.add()
    key = f"{stored.study_uid}/{stored.series_uid}/{stored.sop_uid}.dcm"
    original = b"".join(store.read(key))
    _put(store, key, b"overwritten by mistake", tmp_path)

    report = verify(archive.db, store, grace=0)
    assert [f.key for f in report.mismatches] == [key]
    repairs = repair(archive.db, store, report, _sweeper(archive, tmp_path))
    assert repairs.not_fixed == [] and "earlier version" in repairs.fixed[0]
    assert verify(archive.db, store, grace=0).agree
    assert b"".join(store.read(key)) == original


def test_queued_objects_are_not_missing_while_their_queue_file_is_there(index_url: str, tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "archive")
    archive = _archive(index_url, store, tmp_path)
    stored = archive.add()
    key = f"{stored.study_uid}/{stored.series_uid}/{stored.sop_uid}.dcm"
    queue = tmp_path / "queue"
    queue.mkdir()
    # The state an ingest leaves while the store is down: the row committed, the object in the queue.
    shutil.move(store.path_of(key), queue / "q1.dcm")
    data = (queue / "q1.dcm").read_bytes()
    with archive.db.writing() as conn:
        conn.execute(insert(queued_objects).values(
            blob_key=key, file="q1.dcm", host=socket.gethostname(), size=len(data),
            sha256=hashlib.sha256(data).hexdigest(), queued_at=datetime.now(UTC)))
    report = verify(archive.db, store, queue=queue, grace=0)
    assert report.agree and report.queued == 1

    (queue / "q1.dcm").unlink()
    report = verify(archive.db, store, queue=queue, grace=0)
    assert [(f.key, f.detail) for f in report.missing] == [(key, "queued, but its queue file is gone")]
    repair(archive.db, store, report, _sweeper(archive, tmp_path))
    after = verify(archive.db, store, queue=queue, grace=0)
    assert after.agree and after.queued == 0 and after.rows == 0


def _huren(*args: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "huren", *args, "--config", str(config)],
                          cwd=config.parent, capture_output=True, text=True, timeout=600)


def _qido(server: Huren, path: str) -> list[Any]:
    answer = httpx.get(f"{server.dicomweb}{path}", params={"includefield": "all"}, timeout=60)
    assert answer.status_code in (200, 204), answer.text
    rows = answer.json() if answer.status_code == 200 else []
    return sorted(rows, key=lambda row: str(sorted((k, str(v)) for k, v in row.items())))


def _another_database(url: str, request: pytest.FixtureRequest) -> str:
    """A second empty database beside the fixture's, dropped after the test."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{make_url(url).database}_b"

    def run(statement: str) -> None:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(statement))
        admin.dispose()

    run(f'CREATE DATABASE "{name}"')
    request.addfinalizer(lambda: run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.mark.parametrize("backends", ["filesystem+sqlite", "s3+postgresql"])
def test_reindex_from_the_bucket_alone_answers_qido_as_before(
        backends: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    if backends == "filesystem+sqlite":
        storage: dict[str, Any] = {"backend": "filesystem", "path": str(tmp_path / "archive")}
        urls = [f"sqlite:///{first / 'index.db'}", f"sqlite:///{second / 'index.db'}"]
    else:
        storage = request.getfixturevalue("s3_storage")
        first_url = request.getfixturevalue("postgres_url")
        urls = [first_url, _another_database(first_url, request)]
    public = {"public_url": "http://archive.example"}
    original = Huren(first, huren_config(first, storage=storage, index_url=urls[0], http=public)).start()
    try:
        files = [PYDICOM_FILES / name for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm")]
        study = [write(instance(StudyInstanceUID="1.2.826.0.1.3680043.8.498.1", InstanceNumber=n),
                       tmp_path / f"gen{n}.dcm") for n in range(1, 4)]
        assert original.storescu(*files, *study, tool="dcmsend").returncode == 0
        paths = ["/studies", "/series", "/instances", "/studies/1.2.826.0.1.3680043.8.498.1/series"]
        before = {path: _qido(original, path) for path in paths}
    finally:
        original.stop()
    assert len(before["/instances"]) == 7

    config = huren_config(second, storage=storage, index_url=urls[1], http=public)
    (second / "huren.yaml").write_text(yaml.safe_dump(config))
    rebuilt = _huren("reindex", config=second / "huren.yaml")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "7 instances indexed, 0 duplicate copies, 0 refused" in rebuilt.stdout
    again = _huren("reindex", config=second / "huren.yaml")
    assert again.returncode == 2 and "empty database" in again.stderr
    checked = _huren("verify", config=second / "huren.yaml")
    assert checked.returncode == 0 and "the index and the store agree" in checked.stdout, checked.stdout

    server = Huren(second, config).start()
    try:
        assert {path: _qido(server, path) for path in paths} == before
    finally:
        server.stop()


def test_huren_repair_is_verify_with_repairs(tmp_path: Path) -> None:
    config = huren_config(tmp_path, sweep={"orphan_grace": 0})
    (tmp_path / "huren.yaml").write_text(yaml.safe_dump(config))
    orphan = instance()
    key = f"{orphan.StudyInstanceUID}/{orphan.SeriesInstanceUID}/{orphan.SOPInstanceUID}.dcm"
    store = FilesystemStore(Path(config["storage"]["path"]))
    _put(store, key, write(orphan, tmp_path / "orphan.dcm").read_bytes(), tmp_path)
    found = _huren("verify", config=tmp_path / "huren.yaml")
    assert found.returncode == 1 and f"orphan object (no index row): {key}" in found.stdout, found.stdout
    assert "run with --repair" in found.stdout
    repaired = _huren("repair", config=tmp_path / "huren.yaml")
    assert repaired.returncode == 0 and "repaired: " in repaired.stdout, repaired.stdout + repaired.stderr
    assert _huren("verify", config=tmp_path / "huren.yaml").returncode == 0
