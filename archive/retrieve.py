"""Finding archived instances and their metadata for retrieval (WADO-RS, C-GET/C-MOVE)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, select

from archive.dicomjson import ROOT_MARK
from archive.index.database import Database
from archive.index.schema import instances, series, studies


@dataclass(frozen=True)
class Located:
    """Where one archived instance is, and what it is."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    blob_key: str
    size: int
    frames: str | None
    bulk: str | None
    sha256: str = ""  # of the stored object: names its content (HTTP entity tags)


def locate(db: Database, study_uid: str, series_uid: str | None = None,
           sop_uid: str | None = None, visible: ColumnElement[bool] | None = None) -> list[Located]:
    """The archived instances of a study, series or single instance, in series and instance order.

    `visible` is the caller's sharing policy (:func:`archive.policy.visible`):
    a study outside it is as absent as one never archived.
    """
    statement = _scoped(
        [studies.c.study_uid, series.c.series_uid, instances.c.sop_uid, instances.c.sop_class_uid,
         instances.c.transfer_syntax, instances.c.blob_key, instances.c.size, instances.c.frames,
         instances.c.bulk, instances.c.sha256],
        study_uid, series_uid, sop_uid, visible,
    )
    with db.reading() as conn:
        return [Located(*row) for row in conn.execute(statement)]


def metadata(db: Database, root_url: str, study_uid: str, series_uid: str | None = None,
             sop_uid: str | None = None, visible: ColumnElement[bool] | None = None,
             batch: int = 500) -> Iterator[bytes]:
    """Yield the stored DICOM JSON of each matching instance, BulkDataURIs under `root_url`.

    Rows are fetched in batches so a 3,000-instance study never sits whole in memory.
    """
    statement = _scoped([instances.c.metadata], study_uid, series_uid, sop_uid, visible)
    mark, root = ROOT_MARK.encode(), root_url.encode()
    with db.reading() as conn:
        result = conn.execution_options(yield_per=batch).execute(statement)
        for (document,) in result:
            yield document.replace(mark, root)


def _scoped(columns: list, study_uid: str, series_uid: str | None, sop_uid: str | None,
            visible: ColumnElement[bool] | None) -> Select:
    """Select `columns` of the instances in a study, series or one instance, in display order."""
    statement = (
        select(*columns)
        .select_from(instances.join(series, instances.c.series_pk == series.c.pk)
                     .join(studies, series.c.study_pk == studies.c.pk))
        .where(studies.c.study_uid == study_uid)
        .order_by(series.c.series_number, series.c.pk, instances.c.instance_number, instances.c.pk)
    )
    if series_uid is not None:
        statement = statement.where(series.c.series_uid == series_uid)
    if sop_uid is not None:
        statement = statement.where(instances.c.sop_uid == sop_uid)
    if visible is not None:
        statement = statement.where(visible)
    return statement
