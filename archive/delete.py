"""Deleting a study, series or instance: index rows and objects together, crash-safe.

Order of work, which is what makes a crash harmless:

1. one transaction removes the instances' rows (and the series and study they
   leave empty, with the study's compliance records, shares and identities,
   and its patient when no other study names it) and writes each removed
   object's key into the ``deletions`` journal;
2. the objects are deleted from the blob store;
3. their journal rows are removed.

A crash before 1 commits changes nothing. After it, nothing deleted is
visible: no row points at the objects, and the journal names those still to
remove; :meth:`Deleter.resume` (run before every deletion and when ``huren
serve`` starts) finishes them. An object is removed only while no row points
at it, so a retrieve never finds a row without its object. Deleting some of
a study's series or instances makes its compliance record stale: the current
judgement becomes history, its exam items stop counting for recognition, and
the study is judged again (the guideline's quiet period applies).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Connection, delete, exists, insert, select, update

from archive.index.database import Database
from archive.index.schema import (
    deletions,
    instances,
    item_results,
    judgements,
    patients,
    queued_objects,
    series,
    series_requests,
    shares,
    studies,
    study_identities,
)
from archive.retrieve import _scoped
from archive.storage import BlobStore

log = logging.getLogger("huren.delete")

BATCH = 500  # rows removed per statement: a 3,000-instance study is a few statements


class NothingToDelete(LookupError):
    """No such study, series or instance (or none the caller may see)."""


class StillQueued(RuntimeError):
    """Some of the instances are still in the outage queue, not yet in the blob store."""


@dataclass(frozen=True)
class Deleted:
    """What one deletion removed."""

    study_uid: str
    series_uid: str | None
    sop_uid: str | None
    instances: int
    study_removed: bool      # the study is gone (all of it, or its last series or instance)


class Deleter:
    """Delete studies, series and instances from the index and the blob store."""

    def __init__(self, db: Database, store: BlobStore) -> None:
        self.db = db
        self.store = store

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None,
               visible: ColumnElement[bool] | None = None) -> Deleted:
        """Delete a study, one of its series, or one instance of a series.

        `visible` is the caller's sharing policy: a study outside it is as
        absent as one never archived.

        Raises
        ------
        NothingToDelete
            If nothing matches.
        StillQueued
            If an instance's object is still waiting for the blob store (the
            outage queue): the deletion is refused whole; try again later.
        """
        self._resume_or_leave(study_uid)
        now = datetime.now(UTC)
        with self.db.writing() as conn:
            # The instances a retrieve of the same URL would find.
            scope = _scoped([instances.c.pk, instances.c.blob_key, series.c.pk.label("series_pk"),
                             studies.c.pk.label("study_pk"), studies.c.patient_pk],
                            study_uid, series_uid, sop_uid, visible)
            rows = conn.execute(scope).all()
            if not rows:
                raise NothingToDelete(_what(series_uid, sop_uid))
            keys = [row.blob_key for row in rows]
            if any(conn.execute(select(queued_objects.c.pk).where(queued_objects.c.blob_key.in_(chunk))).first()
                   for chunk in _chunks(keys)):
                raise StillQueued("some of its instances are still waiting in the outage queue for the "
                                  "blob store; try again once they are uploaded")
            conn.execute(insert(deletions), [{"blob_key": key, "study_uid": study_uid, "requested_at": now}
                                             for key in keys])
            for chunk in _chunks([row.pk for row in rows]):
                conn.execute(delete(instances).where(instances.c.pk.in_(chunk)))
            study_pk, patient_pk = rows[0].study_pk, rows[0].patient_pk
            emptied = select(series.c.pk).where(series.c.pk.in_({row.series_pk for row in rows}),
                                                ~exists().where(instances.c.series_pk == series.c.pk))
            conn.execute(delete(series_requests).where(series_requests.c.series_pk.in_(emptied)))
            conn.execute(delete(series).where(series.c.pk.in_(emptied)))
            removed = conn.execute(select(series.c.pk).where(series.c.study_pk == study_pk).limit(1)).first() is None
            if removed:
                _remove_study(conn, study_pk, patient_pk)
            else:
                _stale(conn, study_pk, now)
        log.info("deleted", extra={"study": study_uid, "series": series_uid, "sop": sop_uid,
                                   "instances": len(rows), "study_removed": removed})
        self._resume_or_leave(study_uid)
        return Deleted(study_uid, series_uid, sop_uid, len(rows), removed)

    def _resume_or_leave(self, study_uid: str) -> None:
        """:meth:`resume`, but a store that does not answer leaves the journal for later:
        the rows are what a deletion is, and nothing points at the journalled objects."""
        try:
            self.resume()
        except Exception as exc:
            log.warning("objects left to delete later", extra={"study": study_uid, "error": str(exc)})

    def resume(self) -> int:
        """Delete the objects the journal still names; returns how many journal rows were cleared.

        An object whose key an instance row names again (the instance was sent
        again after its deletion) is kept.
        """
        cleared = 0
        while True:
            with self.db.reading() as conn:
                pending = conn.execute(select(deletions.c.pk, deletions.c.blob_key)
                                       .order_by(deletions.c.pk).limit(BATCH)).all()
                if not pending:
                    return cleared
                live = set(conn.execute(select(instances.c.blob_key).where(
                    instances.c.blob_key.in_({row.blob_key for row in pending}))).scalars())
            for row in pending:
                if row.blob_key not in live:
                    self.store.delete(row.blob_key)
            with self.db.writing() as conn:
                conn.execute(delete(deletions).where(deletions.c.pk.in_([row.pk for row in pending])))
            cleared += len(pending)


def _remove_study(conn: Connection, study_pk: int, patient_pk: int) -> None:
    """Remove an emptied study with everything that hangs on it, and its patient if no
    other study names it. Audit events name it by UID and stay."""
    for table in (item_results, judgements, shares, study_identities):
        conn.execute(delete(table).where(table.c.study_pk == study_pk))
    conn.execute(delete(studies).where(studies.c.pk == study_pk))
    conn.execute(delete(patients).where(patients.c.pk == patient_pk,
                                        ~exists().where(studies.c.patient_pk == patients.c.pk)))


def _stale(conn: Connection, study_pk: int, now: datetime) -> None:
    """A study that lost some instances: its record is history, and it is judged again."""
    conn.execute(update(judgements).where(judgements.c.study_pk == study_pk, judgements.c.current.is_(True))
                 .values(current=False))
    conn.execute(delete(item_results).where(item_results.c.study_pk == study_pk))
    conn.execute(update(studies).where(studies.c.pk == study_pk)
                 .values(revision=studies.c.revision + 1, judge_pending=True, updated_at=now))


def _what(series_uid: str | None, sop_uid: str | None) -> str:
    return "instance" if sop_uid else "series" if series_uid else "study"


def _chunks(values: list) -> list[list]:
    return [values[i:i + BATCH] for i in range(0, len(values), BATCH)]
