"""Studies shared with another hospital for a consultation or referral.

The owner of a study (its hospital) or an admin shares it with one hospital
until a date; revoking ends the share at once. The sharing policy
(:mod:`archive.policy`) lets the hospital see the study while the share holds.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from archive.index.database import Database
from archive.index.schema import shares, studies


@dataclass(frozen=True)
class Share:
    id: int
    study_uid: str
    hospital_id: str
    expires_at: datetime.datetime
    created_by: str
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id, "study_instance_uid": self.study_uid, "hospital": self.hospital_id,
            "expires_at": _utc(self.expires_at).isoformat(), "created_by": self.created_by,
            "created_at": _utc(self.created_at).isoformat(),
            "revoked_at": _utc(self.revoked_at).isoformat() if self.revoked_at else None,
        }


def owner_of(db: Database, study_pk: int) -> str | None:
    """The hospital a study belongs to (``None``: stored by an admin or while access was open)."""
    with db.reading() as conn:
        return conn.execute(select(studies.c.hospital_id).where(studies.c.pk == study_pk)).scalar_one()


def create(db: Database, study_pk: int, hospital_id: str, expires_at: datetime.datetime,
           created_by: str) -> Share:
    """Share a study with `hospital_id` until `expires_at`."""
    now = datetime.datetime.now(datetime.UTC)
    with db.writing() as conn:
        share_id = conn.execute(insert(shares).values(
            study_pk=study_pk, hospital_id=hospital_id, expires_at=expires_at, created_by=created_by,
            created_at=now,
        ).returning(shares.c.pk)).scalar_one()
    return _shares(db, study_pk, share_id)[0]


def of_study(db: Database, study_pk: int) -> list[Share]:
    """Every share of a study, newest first, revoked and expired ones included."""
    return _shares(db, study_pk)


def revoke(db: Database, study_pk: int, share_id: int) -> bool:
    """End a share now; ``False`` if the study has no such share or it was revoked already."""
    with db.writing() as conn:
        return conn.execute(
            update(shares).where(shares.c.pk == share_id, shares.c.study_pk == study_pk,
                                 shares.c.revoked_at.is_(None))
            .values(revoked_at=datetime.datetime.now(datetime.UTC))
        ).rowcount == 1


def _shares(db: Database, study_pk: int, share_id: int | None = None) -> list[Share]:
    statement = (
        select(shares.c.pk, studies.c.study_uid, shares.c.hospital_id, shares.c.expires_at,
               shares.c.created_by, shares.c.created_at, shares.c.revoked_at)
        .join(studies, studies.c.pk == shares.c.study_pk)
        .where(shares.c.study_pk == study_pk).order_by(shares.c.pk.desc())
    )
    if share_id is not None:
        statement = statement.where(shares.c.pk == share_id)
    with db.reading() as conn:
        return [Share(*row) for row in conn.execute(statement)]


def _utc(moment: datetime.datetime) -> datetime.datetime:
    # SQLite gives naive datetimes back; every time the index keeps is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
