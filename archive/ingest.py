"""The one ingest path: C-STORE and STOW-RS both end in :meth:`Ingest.ingest`.

Order of work, which is what makes a crash harmless:

1. the received file is hashed (as it arrived, or now) and its header parsed,
   and one query finds what the index holds of the instance, its study and
   its series (nothing written yet);
2. the object is put in the blob store, durably, under its final key — or,
   when the store fails or takes longer than ``storage.queue.after``, in the
   outage queue (:mod:`archive.outbox`), durably, to be uploaded later;
3. the index rows are committed (with the queue's row when queued), in a
   commit shared with the instances arriving meanwhile
   (:mod:`archive.index.groupcommit`).

A crash before 3 leaves no index row, so the instance is not visible and the
sender, having had no success status, sends it again; the second put simply
overwrites the same key. Success is answered only after 3.

The disk flushes that remain per instance, each needed for that promise: the
object's file (its bytes), its folder (the rename that names it), the folders
above a series folder this process has not seen before, and the index commit
(SQLite's WAL, PostgreSQL's log), which group commit shares. The received
file is never flushed: until step 3 a crash may lose it.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from pynetdicom import AllStoragePresentationContexts
from sqlalchemy import Connection, Insert, Select, Table, and_, bindparam, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError

from archive.config import OutageQueue
from archive.digests import file_digests
from archive.header import InstanceHeader, UnreadableInstance, read_header
from archive.index.database import Database
from archive.index.groupcommit import GroupCommit
from archive.index.schema import instances, patients, series, series_requests, studies
from archive.outbox import Outbox, Queued, QueueFull
from archive.storage import BlobStore, StoreUnavailable, instance_key

log = logging.getLogger("huren.ingest")

STORAGE_SOP_CLASSES = frozenset(cx.abstract_syntax for cx in AllStoragePresentationContexts)


class Failure(enum.Enum):
    """Why an instance was not archived, with its DIMSE status (PS3.4 B.2.3)
    and STOW-RS FailureReason (PS3.18 §10.5.3), which use the same codes."""

    CANNOT_UNDERSTAND = 0xC000
    DATASET_MISMATCH = 0xA900
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    STUDY_MISMATCH = 0xC409
    # A Series Instance UID names one series of one study (PS3.3 C.7.3.1); an
    # instance putting it in another study is refused, never filed under either.
    # Implementation-specific, in the "cannot understand" range Cxxx (PS3.4 B.2.3).
    SERIES_OF_ANOTHER_STUDY = 0xC40A
    # A hospital stores only into its own studies (the study's hospital is the
    # one whose instance created it); implementation-specific, like 0xC40A.
    STUDY_OF_ANOTHER_HOSPITAL = 0xC40B
    DUPLICATE_REJECTED = 0x0111
    OUT_OF_RESOURCES = 0xA700
    PROCESSING_FAILURE = 0x0110
    # STOW-RS only (PS3.18 Table I.2-2): a transfer syntax the server does not take.
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


class IngestError(Exception):
    """The instance was refused; nothing was stored and nothing stored was touched."""

    def __init__(self, failure: Failure, message: str, *, sop_class_uid: str = "",
                 sop_uid: str = "") -> None:
        super().__init__(message)
        self.failure = failure
        self.sop_class_uid = sop_class_uid
        self.sop_uid = sop_uid


class _Misplaced(Exception):
    """Raised inside the index transaction so that it rolls back; says which failure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.name)
        self.failure = failure


class Known(NamedTuple):
    """What the index holds of an arriving instance, its study and its series
    (``None`` where it holds nothing)."""

    instance_pk: int | None
    sha256: str | None
    dataset_sha256: str | None
    blob_key: str | None
    study_pk: int | None
    owner: str | None            # the study's hospital
    series_pk: int | None
    series_study_pk: int | None  # the study the series is filed under
    requests_found: int          # how many of the instance's requested procedures the series has


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"      # the same bytes again: nothing written
    KEPT = "kept"                # different bytes, policy "keep": the first stays
    REPLACED = "replaced"        # different bytes, policy "replace"


@dataclass(frozen=True)
class Source:
    """Who sent an instance, for the index and the logs."""

    door: str                    # "dimse" or "stow"
    hospital_id: str | None = None
    calling_ae: str | None = None


@dataclass(frozen=True)
class Stored:
    outcome: Outcome
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str


class Ingest:
    """Archive received Part-10 files: blob store first, then the index."""

    def __init__(self, db: Database, store: BlobStore, on_conflict: str = "reject",
                 queue: OutageQueue | None = None) -> None:
        """`queue` is the outage queue's settings; ``None``: no queue (a store that
        fails refuses the instance, 0xA700)."""
        self.db = db
        self.store = store
        self.on_conflict = on_conflict
        self.outbox = Outbox(db, store, queue or OutageQueue(max_bytes=0))
        self._upserts = _upserts(db.is_sqlite)
        self._look_ups: dict[int, Select] = {}  # by the number of requested procedures
        self._study_touch = (
            update(studies).where(studies.c.pk == bindparam("study_pk"))
            .values(updated_at=bindparam("touched_at"), revision=studies.c.revision + 1, judge_pending=True)
            .returning(studies.c.hospital_id)
        )
        self.commits = GroupCommit(db)
        # Told of every ingest's source, result, file size and seconds taken (metrics).
        self.observers: list[Callable[[Source, Stored | IngestError, int, float], None]] = []

    def ingest(self, path: Path, source: Source, *, expected_study: str | None = None,
               check_meta: bool = False, digests: tuple[str, str] | None = None) -> Stored:
        """Archive the complete Part-10 file at `path`, which this call consumes.

        `expected_study` refuses instances of another study (STOW-RS on
        ``/studies/{uid}``). `check_meta` refuses a dataset whose SOP Instance
        UID differs from the file meta's (C-STORE: the meta comes from the
        request's Affected SOP Instance UID). `digests` are the file's and its data
        set's SHA-256 (:class:`archive.digests.Digests`) when the receiver took them
        as it wrote the file; otherwise the file is read to take them.

        Raises
        ------
        IngestError
            With the failure to report; the file is removed.
        """
        started, size = time.perf_counter(), _size(path)
        result: Stored | IngestError | None = None
        try:
            result = self._ingest(path, source, expected_study, check_meta, digests)
            return result
        except DBAPIError as exc:
            # Before anything was stored (after, _ingest reports it itself): the sender retries.
            log.error("index unavailable", extra={"path": str(path), "error": first_line(exc)})
            result = IngestError(Failure.OUT_OF_RESOURCES, f"index unavailable: {first_line(exc)}")
            raise result from None
        except IngestError as exc:
            result = exc
            raise
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            if result is not None:
                for observe in self.observers:
                    observe(source, result, size, time.perf_counter() - started)

    def _ingest(self, path: Path, source: Source, expected_study: str | None,
                check_meta: bool, digests: tuple[str, str] | None) -> Stored:
        sha256, dataset_sha256 = digests or file_digests(path)
        self.store.will_put(path)  # under way while the header is read and the index asked
        try:
            header = read_header(path)
        except UnreadableInstance as exc:
            failure = Failure.DATASET_MISMATCH if exc.missing_uid else Failure.CANNOT_UNDERSTAND
            raise IngestError(failure, str(exc)) from None
        ids = {"sop_class_uid": header.sop_class_uid, "sop_uid": header.sop_uid}
        if header.sop_class_uid not in STORAGE_SOP_CLASSES:
            raise IngestError(Failure.SOP_CLASS_NOT_SUPPORTED,
                              f"SOP Class {header.sop_class_uid} is not a storage SOP class", **ids)
        if check_meta and header.meta_sop_uid != header.sop_uid:
            raise IngestError(Failure.DATASET_MISMATCH,
                              f"SOP Instance UID {header.sop_uid} differs from the request's "
                              f"{header.meta_sop_uid}", **ids)
        if expected_study is not None and header.study_uid != expected_study:
            raise IngestError(Failure.STUDY_MISMATCH,
                              f"instance belongs to study {header.study_uid}, not {expected_study}", **ids)

        known = self._look_up(header)
        existing = known if known.instance_pk is not None else None
        if existing is not None:
            if _same(existing, sha256, dataset_sha256):
                return self._result(Outcome.DUPLICATE, header)
            if self.on_conflict == "keep":
                log.warning("conflict kept", extra=_log_fields(header, source, sha256=sha256))
                return self._result(Outcome.KEPT, header)
            if self.on_conflict == "reject":
                log.warning("conflict rejected", extra=_log_fields(header, source, sha256=sha256))
                raise IngestError(Failure.DUPLICATE_REJECTED,
                                  f"a different instance with SOP Instance UID {header.sop_uid} "
                                  "is already archived", **ids)

        # Refused before the put (and checked again on commit), so that a refused
        # object never overwrites a stored one.
        if source.hospital_id is not None and known.owner not in (None, source.hospital_id):
            log.warning("instance refused: study of another hospital", extra=_log_fields(header, source))
            raise IngestError(Failure.STUDY_OF_ANOTHER_HOSPITAL,
                              f"study {header.study_uid} belongs to another hospital", **ids)
        if known.series_study_pk is not None and known.series_study_pk != known.study_pk:
            log.warning("instance refused: series_of_another_study", extra=_log_fields(header, source))
            raise IngestError(Failure.SERIES_OF_ANOTHER_STUDY, self._misfiled(header), **ids)
        key = instance_key(header.study_uid, header.series_uid, header.sop_uid)
        # A new version of an object still queued queues behind it, so versions reach the store in order.
        behind = existing is not None and self.outbox.enabled and self._queued(key)
        try:
            placed = self.outbox.put(key, path, sha256, behind_queue=behind)
        except (StoreUnavailable, QueueFull) as exc:
            log.error("instance refused: %s", exc, extra=_log_fields(header, source))
            raise IngestError(Failure.OUT_OF_RESOURCES, str(exc), **ids) from None
        except OSError as exc:
            log.error("instance refused: cannot write the object", extra=_log_fields(header, source, error=str(exc)))
            raise IngestError(Failure.OUT_OF_RESOURCES, f"cannot write the object: {exc}", **ids) from None
        queued = placed if isinstance(placed, Queued) else None

        row = {
            **header.instance,
            "sop_uid": header.sop_uid,
            "sop_class_uid": header.sop_class_uid,
            "transfer_syntax": header.transfer_syntax,
            "blob_key": key,
            "size": placed.size,
            "sha256": sha256,
            "dataset_sha256": dataset_sha256,
            "frames": None if header.frames is None else orjson.dumps(header.frames).decode(),
            "bulk": orjson.dumps(header.bulk).decode() if header.bulk else None,
            "metadata": header.metadata,
            "facts": header.facts,
            "hospital_id": source.hospital_id,
            "calling_ae": source.calling_ae,
            "received_at": datetime.now(UTC),
        }
        try:
            superseded = self.commits.write(partial(self._index, header, source, row, known,
                                                    replace=existing is not None, queued=queued))
        except _Misplaced as exc:
            if queued is not None:
                self.outbox.discard(queued.file)
            elif existing is None or existing.blob_key != key:
                # The key holds this study's UID and no row points at it: the object is nobody else's.
                self.store.delete(key)
            log.warning("instance refused: %s", exc.failure.name.lower(), extra=_log_fields(header, source))
            if exc.failure is Failure.SERIES_OF_ANOTHER_STUDY:
                message = self._misfiled(header)
            else:
                message = f"study {header.study_uid} belongs to another hospital"
            raise IngestError(exc.failure, message, **ids) from None
        except IntegrityError:
            # Another association archived the same SOP Instance UID a moment ago.
            if queued is not None:
                self.outbox.discard(queued.file)
            again = self._look_up(header)
            if again.instance_pk is not None and _same(again, sha256, dataset_sha256):
                return self._result(Outcome.DUPLICATE, header)
            raise IngestError(Failure.PROCESSING_FAILURE,
                              f"SOP Instance UID {header.sop_uid} was archived concurrently", **ids) from None
        except DBAPIError as exc:
            # The sender is told to retry. The object (or queue file) stays: a commit whose
            # answer was lost may have happened, and its row would then point at nothing.
            log.error("index unavailable; instance not archived",
                      extra=_log_fields(header, source, error=first_line(exc)))
            raise IngestError(Failure.OUT_OF_RESOURCES, f"index unavailable: {first_line(exc)}",
                              **ids) from None
        if superseded is not None:
            self.outbox.discard(superseded)
        if existing is not None and existing.blob_key not in (None, key):
            self.store.delete(str(existing.blob_key))
        outcome = Outcome.REPLACED if existing is not None else Outcome.STORED
        # Per instance at DEBUG: the doors log each association's and request's counts at INFO.
        log.debug("instance %s%s", outcome.value, " (queued: not yet in the store)" if queued else "",
                  extra=_log_fields(header, source, size=placed.size))
        return self._result(outcome, header)

    def _queued(self, key: str) -> bool:
        with self.db.reading() as conn:
            return self.outbox.held(conn, key) is not None

    def _look_up(self, header: InstanceHeader) -> Known:
        """What the index holds of the instance, its study and its series, in one query."""
        statement = self._look_ups.get(len(header.requests))
        if statement is None:
            statement = self._look_ups.setdefault(len(header.requests), _look_up(len(header.requests)))
        values = {"sop_uid": header.sop_uid, "study_uid": header.study_uid, "series_uid": header.series_uid}
        for i, (procedure, step, accession) in enumerate(header.requests):
            values |= {f"procedure_{i}": procedure, f"step_{i}": step, f"accession_{i}": accession}
        with self.db.reading() as conn:
            row = conn.execute(statement, values).one()
        return Known(*row)

    def _misfiled(self, header: InstanceHeader) -> str:
        with self.db.reading() as conn:
            study_uid = conn.execute(
                select(studies.c.study_uid).join(series, series.c.study_pk == studies.c.pk)
                .where(series.c.series_uid == header.series_uid)
            ).scalar_one_or_none() or "?"
        return f"Series Instance UID {header.series_uid} belongs to study {study_uid}, not {header.study_uid}"

    def _index(self, header: InstanceHeader, source: Source, row: dict, known: Known, conn: Connection, *,
               replace: bool, queued: Queued | None = None) -> str | None:
        """Write the instance's rows (and its queue row) in `conn`'s transaction; returns
        the queue file of a version this one supersedes, to remove once committed.

        When the look-up found the study and the series (every instance of a series
        but the first), two statements: the study's revision, the instance's row.
        """
        now = row["received_at"]
        owner_hospital = None
        if known.series_pk is not None and known.series_study_pk == known.study_pk:
            # The study may have been deleted since the look-up: then it is written anew below.
            owner_hospital = conn.execute(self._study_touch, {"study_pk": known.study_pk, "touched_at": now}).first()
        if owner_hospital is not None:
            series_pk = known.series_pk
            owner_hospital = owner_hospital[0]
        else:
            patient = dict(header.patient)
            patient["id_scope"] = patient.pop("issuer") or source.hospital_id or ""
            patient_pk = conn.execute(self._upserts[patients], patient).scalar_one()
            study_pk, owner_hospital = conn.execute(self._upserts[studies], {
                "study_uid": header.study_uid, "patient_pk": patient_pk,
                "hospital_id": source.hospital_id, "created_at": now, "updated_at": now,
                "revision": 1, "judge_pending": True, **header.study,
            }).one()
            series_pk, owner = conn.execute(self._upserts[series], {
                "series_uid": header.series_uid, "study_pk": study_pk, **header.series,
            }).one()
            if owner != study_pk:
                raise _Misplaced(Failure.SERIES_OF_ANOTHER_STUDY)
        if source.hospital_id is not None and owner_hospital not in (None, source.hospital_id):
            raise _Misplaced(Failure.STUDY_OF_ANOTHER_HOSPITAL)
        row = {**row, "series_pk": series_pk}
        if header.requests and known.requests_found < len(header.requests):
            conn.execute(self._upserts[series_requests], [
                {"series_pk": series_pk, "requested_procedure_id": procedure,
                 "scheduled_procedure_step_id": step, "accession_number": accession}
                for procedure, step, accession in header.requests])
        if replace:
            conn.execute(update(instances).where(instances.c.sop_uid == header.sop_uid).values(row))
        else:
            conn.execute(instances.insert(), row)
        return None if queued is None else self.outbox.add_row(conn, queued)

    @staticmethod
    def _result(outcome: Outcome, header: InstanceHeader) -> Stored:
        return Stored(outcome, header.sop_class_uid, header.sop_uid, header.study_uid, header.series_uid)


def _look_up(requests: int) -> Select:
    """The query behind :class:`Known`: each table joined on its unique UID to one
    row, so that what is missing comes back as ``NULL`` and the query as one row.
    `requests` is the number of (procedure, step, accession) triples to count."""
    one = select(literal(1).label("one")).subquery()
    found: Any = literal(0)
    if requests:
        found = (
            select(func.count()).select_from(series_requests)
            .where(series_requests.c.series_pk == series.c.pk, or_(*(
                and_(series_requests.c.requested_procedure_id == bindparam(f"procedure_{i}"),
                     series_requests.c.scheduled_procedure_step_id == bindparam(f"step_{i}"),
                     series_requests.c.accession_number == bindparam(f"accession_{i}"))
                for i in range(requests))))
            .correlate(series).scalar_subquery()
        )
    return (
        select(instances.c.pk, instances.c.sha256, instances.c.dataset_sha256, instances.c.blob_key,
               studies.c.pk, studies.c.hospital_id, series.c.pk, series.c.study_pk, found)
        .select_from(one
                     .outerjoin(instances, instances.c.sop_uid == bindparam("sop_uid"))
                     .outerjoin(studies, studies.c.study_uid == bindparam("study_uid"))
                     .outerjoin(series, series.c.series_uid == bindparam("series_uid")))
    )


def _upserts(is_sqlite: bool) -> dict[Table, Insert]:
    """One statement per level that inserts a row, or finds the row already there, and
    returns its key — one round trip where select-insert-select took three.

    The first instance of a patient, study or series sets its attributes. Each
    instance bumps its study's revision and marks it for judging, and the
    study's ``updated_at`` follows its newest instance (the quiet period counts
    from it). A study answers with its hospital, so another hospital's
    instance is caught; a series answers with the study it belongs to, so an instance
    naming a series of another study is caught. Built once: executed with a
    parameter dict, SQLAlchemy reuses the compiled form.
    """
    insert = sqlite_insert if is_sqlite else pg_insert
    statements: dict[Table, Insert] = {}
    patient = insert(patients)
    statements[patients] = patient.on_conflict_do_update(
        index_elements=["patient_id", "id_scope"], set_={"patient_id": patient.excluded.patient_id},
    ).returning(patients.c.pk)
    study = insert(studies)
    statements[studies] = study.on_conflict_do_update(
        index_elements=["study_uid"],
        set_={"updated_at": study.excluded.updated_at, "revision": studies.c.revision + 1,
              "judge_pending": True},
    ).returning(studies.c.pk, studies.c.hospital_id)
    serie = insert(series)
    statements[series] = serie.on_conflict_do_update(
        index_elements=["series_uid"], set_={"series_uid": serie.excluded.series_uid},
    ).returning(series.c.pk, series.c.study_pk)
    # A series' requested procedures (QIDO-RS sequence matching), each kept once.
    statements[series_requests] = insert(series_requests).on_conflict_do_nothing()
    return statements


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # refused as unreadable; its size does not matter


def first_line(exc: Exception) -> str:
    """A database error's first line: the driver's message, without SQL and parameters."""
    message = str(getattr(exc, "orig", None) or exc)
    return message.strip().splitlines()[0] if message.strip() else type(exc).__name__


def _same(existing: Any, sha256: str, dataset_sha256: str) -> bool:
    """Whether an archived instance is the one received again (its data set, or
    for rows kept before data set digests existed, its file)."""
    if existing.dataset_sha256 is not None:
        return existing.dataset_sha256 == dataset_sha256
    return existing.sha256 == sha256


def _log_fields(header: InstanceHeader, source: Source, **more) -> dict:
    return {
        "study": header.study_uid, "series": header.series_uid, "sop": header.sop_uid,
        "hospital": source.hospital_id, "ae": source.calling_ae, "door": source.door, **more,
    }
