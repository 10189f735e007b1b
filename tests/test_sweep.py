"""No leaks: receive folders of ended processes, incomplete uploads and objects
without index rows are cleared; nothing a live process or the index holds is touched."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from archive import inventory
from archive.config import S3Storage
from archive.index.query import Level
from archive.ingest import Ingest
from archive.receiving import PREFIX, ReceiveFolder, sweep_receive
from archive.storage import BlobStore, instance_key
from archive.storage.filesystem import FilesystemStore
from archive.storage.s3 import S3Store
from archive.sweep import Sweeper
from tests.conftest import Archive
from tests.factory import instance, write

HOLD = """
import sys
from pathlib import Path
from archive.receiving import ReceiveFolder
folder = ReceiveFolder(Path(sys.argv[1]))
(folder.path / "tmpabc.dcm").write_bytes(b"x" * 1000)
print(folder.path, flush=True)
sys.stdin.read()
"""


def test_receive_folder_of_a_killed_process_goes_and_a_live_ones_stays(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    mine = ReceiveFolder(root)
    (mine.path / "tmp1.dcm").write_bytes(b"received")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        theirs = Path(holder.stdout.readline().strip())  # type: ignore[union-attr]
        (root / "tmpold.dcm").write_bytes(b"left by an earlier version")
        (root / "notes.txt").write_text("not ours")
        swept = sweep_receive(root)
        assert swept.files == 1  # the loose received file only
        assert theirs.is_dir() and (mine.path / "tmp1.dcm").exists()
        assert not (root / "tmpold.dcm").exists() and (root / "notes.txt").exists()
    finally:
        holder.kill()
        holder.wait(10)
    swept = sweep_receive(root)  # the holder is gone: its folder and file go, ours stays
    assert (swept.files, swept.bytes) == (1, 1000)
    assert not theirs.exists() and mine.path.is_dir()
    mine.close()
    assert not mine.path.exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(PREFIX)] == []


def _s3(settings: dict[str, Any]) -> S3Store:
    return S3Store(S3Storage.model_validate(settings))


def test_incomplete_multipart_uploads_are_aborted_once_old(s3_storage: dict[str, Any], tmp_path: Path) -> None:
    store = _s3(s3_storage)
    key = store.prefix + "1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=key)
    store.client.upload_part(Bucket=store.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1,
                             Body=b"x" * 5 * 1024**2)
    db_folder = tmp_path / "db"
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", db_folder)
    work = tmp_path / "work"
    work.mkdir()

    def sweeper(upload_age: float) -> Sweeper:
        return Sweeper(archive.db, store, tmp_path / "spool", work, upload_age=upload_age, orphan_grace=0)

    # (moto dates every upload 2010-11-10, so the age bound itself is tested on the folder store.)
    report = sweeper(0).run()
    assert report is not None and report.uploads_aborted == 1
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


def test_part_files_of_a_folder_store_are_removed_once_old(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "archive")
    part = store.root / "1.2" / ".x.dcm.abc.part"
    part.parent.mkdir()
    part.write_bytes(b"half")
    assert [u.key for u in inventory.incomplete_uploads(store, 0)] == ["1.2/.x.dcm.abc.part"]
    assert list(inventory.incomplete_uploads(store, 3600)) == []
    inventory.abort(store, next(inventory.incomplete_uploads(store, 0)))
    assert not part.exists()


@pytest.fixture(params=["filesystem", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "filesystem":
        return FilesystemStore(tmp_path / "archive")
    return _s3(request.getfixturevalue("s3_storage"))


def _put(store: BlobStore, key: str, data: bytes, folder: Path) -> None:
    path = folder / "upload"
    path.write_bytes(data)
    store.put(key, path, hashlib.sha256(data).hexdigest())
    path.unlink(missing_ok=True)


def test_orphans_are_adopted_or_quarantined(index_url: str, any_store: BlobStore, tmp_path: Path) -> None:
    archive = Archive(index_url, tmp_path)
    archive.store = any_store
    archive.ingest = Ingest(archive.db, any_store)
    kept = archive.add()
    work = tmp_path / "work"
    work.mkdir()
    # An instance whose commit never happened (its study is indexed: it joins its owner)...
    orphan = instance(StudyInstanceUID=kept.study_uid, SeriesInstanceUID=kept.series_uid)
    orphan_key = instance_key(orphan.StudyInstanceUID, orphan.SeriesInstanceUID, orphan.SOPInstanceUID)
    _put(any_store, orphan_key, write(orphan, tmp_path / "orphan.dcm").read_bytes(), tmp_path)
    # ... one of a new study, filed under a wrong key...
    stray = instance()
    _put(any_store, "9.9/9.9.9/misfiled.dcm", write(stray, tmp_path / "stray.dcm").read_bytes(), tmp_path)
    # ... and bytes that are no instance at all.
    _put(any_store, "1.2.3/4.5.6/7.8.9.dcm", b"not DICOM at all" * 10, tmp_path)

    patient = Sweeper(archive.db, any_store, tmp_path / "spool", work, upload_age=3600, orphan_grace=3600)
    report = patient.run()
    assert report is not None and not (report.adopted or report.quarantined)  # within the grace period

    report = Sweeper(archive.db, any_store, tmp_path / "spool", work, upload_age=3600, orphan_grace=0).run()
    assert report is not None
    assert sorted(report.adopted) == sorted([orphan_key, "9.9/9.9.9/misfiled.dcm"])
    assert report.quarantined == ["1.2.3/4.5.6/7.8.9.dcm"] and not report.left
    keys = set(any_store.keys())
    stray_key = instance_key(stray.StudyInstanceUID, stray.SeriesInstanceUID, stray.SOPInstanceUID)
    assert {orphan_key, stray_key, "quarantine/1.2.3/4.5.6/7.8.9.dcm"} <= keys
    assert "9.9/9.9.9/misfiled.dcm" not in keys and "1.2.3/4.5.6/7.8.9.dcm" not in keys
    assert archive.uids(Level.INSTANCE) == {kept.sop_uid, orphan.SOPInstanceUID, stray.SOPInstanceUID}
    assert list(work.iterdir()) == []  # fetched copies are not left behind
    again = Sweeper(archive.db, any_store, tmp_path / "spool", work, upload_age=3600, orphan_grace=0).run()
    assert again is not None and not (again.adopted or again.quarantined)


def test_one_sweep_at_a_time(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    sweeper = Sweeper(archive.db, archive.store, tmp_path / "spool", work, upload_age=0, orphan_grace=0)
    (tmp_path / "spool").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"),
        str(tmp_path / "spool" / ".sweep.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        assert sweeper.run() is None
    finally:
        holder.kill()
        holder.wait(10)
    deadline = time.monotonic() + 10
    while (report := sweeper.run()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert report is not None
