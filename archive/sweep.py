"""No leaks: what a crash or a lost answer leaves behind is found and dealt with.

Three kinds of leftovers, each safe to clear because none was acknowledged:

- received files of processes that ended (:mod:`archive.receiving`);
- uploads that never completed: S3 multipart uploads (their parts are billed
  and invisible) and a folder store's ``.part`` files, once older than a bound
  no live upload reaches;
- objects without an index row, once older than a grace period that covers an
  ingest between its put and its commit: an upload finished after Huren gave
  up on it, a kill between put and commit, an index that failed to answer a
  commit. A valid instance is *adopted*: it goes through the one ingest path
  (:class:`archive.ingest.Ingest`) as if received again, without being
  uploaded again. Anything else is moved to the ``quarantine/`` prefix, never
  deleted, for an admin to look at.

An adopted instance's sending hospital is not in the object: it joins its
study's owner if the study is indexed, and otherwise belongs to no hospital
(admins see it) until an admin says otherwise.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, text

from archive import inventory
from archive.index.database import Database
from archive.index.schema import deletions, instances, studies
from archive.ingest import Failure, Ingest, IngestError, Outcome, Source
from archive.receiving import Swept, sweep_receive
from archive.storage import BlobNotFound, BlobStore, StoredBlob, instance_key

log = logging.getLogger("huren.sweep")

LOCK_KEY = 0x48757265  # PostgreSQL advisory lock of the sweep ("Hure")
PAGE = 500  # objects looked up in the index per query
# Refusals that say the object is not an instance we archive: it goes to quarantine.
_NOT_AN_INSTANCE = {Failure.CANNOT_UNDERSTAND, Failure.DATASET_MISMATCH, Failure.SOP_CLASS_NOT_SUPPORTED,
                    Failure.SERIES_OF_ANOTHER_STUDY, Failure.STUDY_OF_ANOTHER_HOSPITAL}


@dataclass
class SweepReport:
    """What one sweep found and did."""

    received: Swept = field(default_factory=Swept)
    uploads_aborted: int = 0
    adopted: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    # Keys left for the next sweep, with why (the index or store did not answer).
    left: dict[str, str] = field(default_factory=dict)


class Sweeper:
    """Clears leftovers of the archive at `db` and `store`.

    `receive_root` is the folder holding the processes' receive folders;
    `work` is a folder of this process's for fetched objects (its receive folder).
    """

    def __init__(self, db: Database, store: BlobStore, receive_root: Path, work: Path, *,
                 upload_age: float, orphan_grace: float) -> None:
        self.db = db
        self.store = store
        self.receive_root = receive_root
        self.work = work
        self.upload_age = upload_age
        self.orphan_grace = orphan_grace

    def run(self) -> SweepReport | None:
        """One sweep of every kind of leftover; each kind's failure is logged, not raised.

        Returns None, without sweeping, while another process sweeps.
        """
        with _lease(self.db, self.receive_root) as mine:
            return self._sweep() if mine else None

    def _sweep(self) -> SweepReport:
        report = SweepReport()
        report.received = sweep_receive(self.receive_root)
        try:
            report.uploads_aborted = self.abort_uploads()
        except Exception:
            log.exception("incomplete uploads not swept; trying again at the next sweep")
        try:
            cutoff = time.time() - self.orphan_grace
            old = (blob for blob in inventory.objects(self.store) if blob.modified < cutoff)
            for key in orphans(self.db, old):
                self.settle(key, report)
        except Exception:
            log.exception("orphan objects not swept; trying again at the next sweep")
        if report.uploads_aborted or report.adopted or report.quarantined or report.left:
            log.info("sweep done", extra={
                "uploads_aborted": report.uploads_aborted, "adopted": len(report.adopted),
                "quarantined": len(report.quarantined), "left": len(report.left),
            })
        return report

    def abort_uploads(self) -> int:
        """Abort the uploads older than ``upload_age``; return how many."""
        count = 0
        for upload in inventory.incomplete_uploads(self.store, self.upload_age):
            inventory.abort(self.store, upload)
            log.warning("incomplete upload aborted", extra={
                "key": upload.key, "age": round(time.time() - upload.started)})
            count += 1
        return count

    def settle(self, key: str, report: SweepReport) -> None:
        """Adopt the orphan object at `key`, or move it to quarantine."""
        try:
            outcome = adopt(self.db, self.store, key, self.work)
        except IngestError as exc:
            if exc.failure not in _NOT_AN_INSTANCE:
                report.left[key] = str(exc)
                log.warning("orphan object left for the next sweep: %s", exc, extra={"key": key})
                return
            reason = str(exc)
        except BlobNotFound:
            return  # deleted since it was listed
        else:
            if outcome in (Outcome.STORED, Outcome.REPLACED) or _indexed(self.db, key):
                report.adopted.append(key)
                log.warning("orphan object adopted into the index", extra={"key": key})
                return
            reason = "another instance with its SOP Instance UID is archived"
        if _indexed(self.db, key):  # an ingest committed it meanwhile: it is nobody's orphan
            return
        target = inventory.quarantine(self.store, key, self.work)
        report.quarantined.append(key)
        log.warning("orphan object moved to quarantine: %s", reason, extra={"key": key, "to": target})


@contextmanager
def _lease(db: Database, root: Path) -> Iterator[bool]:
    """Whether this process may sweep now: one process per machine (an ``flock`` on a
    file in the receive root) and, on PostgreSQL, one per index (an advisory lock), so
    that two sweeps never decide differently about one object."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        if db.is_sqlite:
            yield True
            return
        with db.engine.connect() as conn:
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}).scalar())
            conn.commit()
            try:
                yield held
            finally:
                if held:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                    conn.commit()
    finally:
        os.close(fd)


def orphans(db: Database, blobs: Iterable[inventory.Blob]) -> Iterator[str]:
    """Yield the keys of `blobs` that no index row points at, a page at a time."""
    page: list[str] = []
    for blob in blobs:
        page.append(blob.key)
        if len(page) == PAGE:
            yield from _unindexed(db, page)
            page = []
    if page:
        yield from _unindexed(db, page)


def _unindexed(db: Database, keys: list[str]) -> list[str]:
    with db.reading() as conn:
        known = set(conn.execute(select(instances.c.blob_key).where(instances.c.blob_key.in_(keys))).scalars())
        # An object journalled for deletion (archive.delete) lost its row on purpose: never adopted.
        known |= set(conn.execute(select(deletions.c.blob_key).where(deletions.c.blob_key.in_(keys))).scalars())
    return [key for key in keys if key not in known]


def _indexed(db: Database, key: str) -> bool:
    return bool(_unindexed(db, [key]) == [])


def adopt(db: Database, store: BlobStore, key: str, work: Path, source: Source | None = None) -> Outcome:
    """Index the object at `key` through the one ingest path, without uploading it again.

    An instance already archived under its SOP Instance UID is kept (an orphan
    never displaces what the index vouches for). Without `source`, the
    instance joins its study's owner, if its study is indexed.

    Raises
    ------
    IngestError
        The object is not an instance Huren archives, or the index did not answer.
    archive.storage.BlobNotFound
        The object is gone.
    """
    path = inventory.fetch(store, key, work)
    try:
        ingest = Ingest(db, _InPlace(store, key), on_conflict="keep")
        stored = ingest.ingest(path, source or Source("sweep", _owner(db, key)))
    finally:
        path.unlink(missing_ok=True)
    if instance_key(stored.study_uid, stored.series_uid, stored.sop_uid) != key and stored.outcome is Outcome.STORED:
        store.delete(key)  # filed under the key its UIDs give; the misplaced copy is not needed
    return stored.outcome


def _owner(db: Database, key: str) -> str | None:
    study_uid = key.split("/", 1)[0]
    with db.reading() as conn:
        return conn.execute(select(studies.c.hospital_id).where(studies.c.study_uid == study_uid)).scalar()


class _InPlace:
    """The blob store as the ingest of an object already in it sees it: putting
    that object under its own key is a no-op, and nothing deletes it (the sweep
    decides what becomes of it); every other call goes to the store."""

    def __init__(self, store: BlobStore, key: str) -> None:
        self._store = store
        self._key = key

    def will_put(self, path: Path) -> None:
        self._store.will_put(path)

    def put(self, key: str, path: Path, sha256: str) -> StoredBlob:
        if key != self._key:
            return self._store.put(key, path, sha256)
        return StoredBlob(key, os.stat(path).st_size, sha256)

    def delete(self, key: str) -> None:
        if key != self._key:
            self._store.delete(key)

    def read(self, key: str, start: int = 0, length: int | None = None,
             chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        return self._store.read(key, start, length, chunk_size)

    def keys(self) -> Iterator[str]:
        return self._store.keys()

    def check(self) -> None:
        self._store.check()

