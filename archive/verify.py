"""Index against store: does every index row have its object, byte for byte, and
does every object have its row? (``huren verify [--repair]``)

Findings:

- *missing*: a row whose object is not in the store. The bytes are gone;
  repair takes the row out of the index (the index no longer promises what it
  cannot serve) and names the instance, for its sender to send it again.
- *orphan*: an object without a row, older than the grace period (younger
  ones may be an ingest between its put and its commit, and are only
  counted). Repair adopts it or moves it to quarantine, as the sweep does
  (:mod:`archive.sweep`).
- *queued*: a row whose object is still in the outage queue
  (:mod:`archive.outbox`) is not missing while its queue file is there; the
  files of this machine's queue are checked, other machines' are counted.
  A queue file that is gone (and not in the store either) is *missing*.
- *mismatch*: an object whose size or SHA-256 differs from what the row
  recorded at ingest. Repair restores the newest earlier version of the
  object whose SHA-256 is the recorded one, when the bucket keeps versions;
  otherwise it cannot, and says so.

Memory stays bounded: objects are looked up in the index a page at a time,
and rows are looked up in the store only when the counts disagree.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, select, update

from archive import inventory
from archive.index.database import Database
from archive.index.schema import deletions, instances, queued_objects, series, studies
from archive.storage import BlobStore
from archive.sweep import PAGE, Sweeper, SweepReport

log = logging.getLogger("huren.verify")


@dataclass(frozen=True)
class Finding:
    """One disagreement between the index and the store."""

    key: str
    detail: str
    study_uid: str = ""
    sop_uid: str = ""


@dataclass
class Report:
    """What :func:`verify` found."""

    objects: int = 0
    rows: int = 0
    missing: list[Finding] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    recent: list[str] = field(default_factory=list)   # orphans within the grace period
    mismatches: list[Finding] = field(default_factory=list)
    queued: int = 0            # rows whose objects wait in an outage queue
    queued_elsewhere: int = 0  # ... of another machine, whose files are not checked here

    @property
    def agree(self) -> bool:
        return not (self.missing or self.orphans or self.mismatches)


@dataclass
class Repairs:
    """What :func:`repair` did, and what it could not do (each with the reason)."""

    fixed: list[str] = field(default_factory=list)
    not_fixed: list[str] = field(default_factory=list)


def verify(db: Database, store: BlobStore, *, queue: Path | None = None, checksums: bool = True,
           grace: float = 900.0, progress: Callable[[int], None] = lambda _n: None) -> Report:
    """Compare the index with the store.

    `queue` is this machine's outage queue folder (``storage.queue.path``).
    `checksums` reads every object and compares its SHA-256 (otherwise sizes
    only). `progress` is called with the number of objects checked since its
    last call.
    """
    report = Report()
    with db.reading() as conn:
        queued = {row.blob_key: row for row in conn.execute(
            select(queued_objects.c.blob_key, queued_objects.c.file, queued_objects.c.host))}
    report.queued = len(queued)
    with db.reading() as conn:
        report.rows = conn.execute(select(func.count()).select_from(instances)).scalar_one()
    cutoff = time.time() - grace
    matched = 0
    page: list[inventory.Blob] = []

    def check(blobs: list[inventory.Blob]) -> int:
        rows = _rows(db, [blob.key for blob in blobs])
        with db.reading() as conn:  # journalled for deletion (archive.delete): not orphans
            deleting = set(conn.execute(select(deletions.c.blob_key)
                                        .where(deletions.c.blob_key.in_([blob.key for blob in blobs]))).scalars())
        found = 0
        for blob in blobs:
            row = rows.get(blob.key)
            if row is None and blob.key in deleting:
                continue
            if row is None:
                (report.orphans if blob.modified < cutoff else report.recent).append(blob.key)
                continue
            found += 1
            if blob.size != row.size:
                report.mismatches.append(Finding(blob.key, f"{blob.size} bytes, the index says {row.size}",
                                                 row.study_uid, row.sop_uid))
            elif checksums and (digest := inventory.sha256(store, blob.key)) != row.sha256:
                report.mismatches.append(Finding(blob.key, f"SHA-256 {digest}, the index says {row.sha256}",
                                                 row.study_uid, row.sop_uid))
        progress(len(blobs))
        return found

    for blob in inventory.objects(store):
        report.objects += 1
        page.append(blob)
        if len(page) == PAGE:
            matched += check(page)
            page = []
    if page:
        matched += check(page)
    if matched != report.rows:
        report.missing = _missing(db, store, queued)
    host = socket.gethostname()
    for key, row in queued.items():
        if row.host != host:
            report.queued_elsewhere += 1
        elif (queue is None or not (queue / row.file).is_file()) and not inventory.exists(store, key):
            found = _rows(db, [key]).get(key)
            report.missing.append(Finding(key, "queued, but its queue file is gone",
                                          found.study_uid if found else "", found.sop_uid if found else ""))
    return report


def repair(db: Database, store: BlobStore, report: Report, sweeper: Sweeper) -> Repairs:
    """Fix what `report` found, as far as it can be fixed (see the module docstring)."""
    repairs = Repairs()
    settled = SweepReport()
    for key in report.orphans:
        sweeper.settle(key, settled)
    repairs.fixed += [f"{key}: orphan adopted into the index" for key in settled.adopted]
    repairs.fixed += [f"{key}: not an instance, moved to {inventory.QUARANTINE}" for key in settled.quarantined]
    repairs.not_fixed += [f"{key}: orphan left: {why}" for key, why in settled.left.items()]
    for finding in report.missing:
        _forget(db, finding.key)
        log.warning("index row of a missing object removed", extra={
            "key": finding.key, "study": finding.study_uid, "sop": finding.sop_uid})
        repairs.fixed.append(f"{finding.key}: the object is gone; its row was removed from the index "
                             f"(send SOP Instance {finding.sop_uid} of study {finding.study_uid} again)")
    for finding in report.mismatches:
        expected = _rows(db, [finding.key])[finding.key].sha256
        if inventory.restore_version(store, finding.key, expected):
            log.warning("object restored from an earlier version", extra={"key": finding.key})
            repairs.fixed.append(f"{finding.key}: restored the bucket's earlier version with the recorded SHA-256")
        else:
            repairs.not_fixed.append(f"{finding.key}: {finding.detail}; no earlier version holds the "
                                     "recorded bytes (send the instance again, or restore it from a backup)")
    return repairs


def _rows(db: Database, keys: list[str]) -> dict:
    with db.reading() as conn:
        return {row.blob_key: row for row in conn.execute(
            select(instances.c.blob_key, instances.c.size, instances.c.sha256, instances.c.sop_uid,
                   studies.c.study_uid)
            .join(series, series.c.pk == instances.c.series_pk)
            .join(studies, studies.c.pk == series.c.study_pk)
            .where(instances.c.blob_key.in_(keys)))}


def _missing(db: Database, store: BlobStore, queued: dict) -> list[Finding]:
    """The rows whose object is not in the store (and not queued), looked up a page of rows at a time."""
    missing: list[Finding] = []
    last = 0
    while True:
        with db.reading() as conn:
            rows = conn.execute(
                select(instances.c.pk, instances.c.blob_key, instances.c.sop_uid, studies.c.study_uid)
                .join(series, series.c.pk == instances.c.series_pk)
                .join(studies, studies.c.pk == series.c.study_pk)
                .where(instances.c.pk > last).order_by(instances.c.pk).limit(PAGE)).all()
        if not rows:
            return missing
        last = rows[-1].pk
        missing += [Finding(row.blob_key, "no object", row.study_uid, row.sop_uid)
                    for row in rows if row.blob_key not in queued and not inventory.exists(store, row.blob_key)]


def _forget(db: Database, key: str) -> None:
    """Remove the row of an object that is gone, and its series if it was the last;
    its study is judged again (its contents changed)."""
    with db.writing() as conn:
        series_pk = conn.execute(select(instances.c.series_pk).where(instances.c.blob_key == key)).scalar()
        if series_pk is None:
            return
        conn.execute(delete(instances).where(instances.c.blob_key == key))
        conn.execute(delete(queued_objects).where(queued_objects.c.blob_key == key))
        study_pk = conn.execute(select(series.c.study_pk).where(series.c.pk == series_pk)).scalar_one()
        if conn.execute(select(instances.c.pk).where(instances.c.series_pk == series_pk).limit(1)).first() is None:
            conn.execute(delete(series).where(series.c.pk == series_pk))
        conn.execute(update(studies).where(studies.c.pk == study_pk)
                     .values(revision=studies.c.revision + 1, judge_pending=True))
