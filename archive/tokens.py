"""Hospital API tokens: bearer credentials for the HTTP door, kept only as hashes.

A token reads ``huren_<token id>_<secret>``. The token id is public (lists,
logs, the audit trail); the whole string is shown once, when it is made, and
the index keeps only its SHA-256, so a copy of the index lets nobody call as a
hospital. The secret is 32 bytes from :mod:`secrets` (RFC 6750 §5.2: bearer
tokens must be unguessable), in hex so that it survives copying and
double-click selection intact.

A token speaks for one hospital (its ``hospital_id``); an admin token may
name none and sees everything (:mod:`archive.policy`).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import Row, insert, select, update

from archive.index.database import Database
from archive.index.schema import tokens

PREFIX = "huren_"
_FORMAT = re.compile(PREFIX + r"([0-9a-f]{16})_[0-9a-f]{64}")


@dataclass(frozen=True)
class TokenInfo:
    """What the index knows of a token; never its secret."""

    token_id: str
    hospital_id: str | None
    admin: bool
    label: str
    created_at: datetime.datetime
    expires_at: datetime.datetime | None
    revoked_at: datetime.datetime | None

    def valid_at(self, now: datetime.datetime) -> bool:
        """Whether the token may be used at `now`: not revoked, not expired."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def digest(presented: str) -> str:
    """The SHA-256 (hex) of a whole token string, as the index keeps it."""
    return hashlib.sha256(presented.encode()).hexdigest()


def create(db: Database, *, hospital_id: str | None, admin: bool, expires_days: int | None,
           label: str = "") -> tuple[TokenInfo, str]:
    """Make a token; returns its info and the token string, which nothing keeps.

    Raises
    ------
    ValueError
        If the token names no hospital and is not an admin token, or
        `expires_days` is less than 1.
    """
    if hospital_id is None and not admin:
        raise ValueError("a token needs a hospital unless it is an admin token")
    if expires_days is not None and expires_days < 1:
        raise ValueError(f"expires_days must be at least 1, not {expires_days}")
    now = datetime.datetime.now(datetime.UTC)
    info = TokenInfo(
        token_id=secrets.token_hex(8), hospital_id=hospital_id, admin=admin, label=label, created_at=now,
        expires_at=None if expires_days is None else now + datetime.timedelta(days=expires_days),
        revoked_at=None,
    )
    presented = f"{PREFIX}{info.token_id}_{secrets.token_hex(32)}"
    with db.writing() as conn:
        conn.execute(insert(tokens).values(
            token_id=info.token_id, secret_sha256=digest(presented), hospital_id=hospital_id, admin=admin,
            label=label, created_at=now, expires_at=info.expires_at,
        ))
    return info, presented


def list_tokens(db: Database) -> list[TokenInfo]:
    """Every token ever made, oldest first, revoked and expired ones included."""
    with db.reading() as conn:
        rows = conn.execute(select(tokens).order_by(tokens.c.created_at, tokens.c.pk)).all()
    return [_info(row) for row in rows]


def revoke(db: Database, token_id: str) -> bool:
    """Revoke a token from now on; ``False`` if no token has that id.

    Revoking a revoked token keeps the time it was first revoked.
    """
    now = datetime.datetime.now(datetime.UTC)
    with db.writing() as conn:
        conn.execute(update(tokens).where(tokens.c.token_id == token_id, tokens.c.revoked_at.is_(None))
                     .values(revoked_at=now))
        return conn.execute(select(tokens.c.pk).where(tokens.c.token_id == token_id)).first() is not None


def token_id(presented: str) -> str | None:
    """The public id of a string shaped like a Huren token; ``None`` if it is not one."""
    match = _FORMAT.fullmatch(presented)
    return None if match is None else match[1]


def verify(db: Database, presented: str, now: datetime.datetime) -> TokenInfo | None:
    """The token `presented` stands for, if it is genuine and valid at `now`; else ``None``.

    The row is found by the public token id; the hashes are compared in
    constant time so the time taken tells nothing about how much of a guessed
    secret is right. (Whether a token id exists is not hidden: ids are public.)
    """
    public_id = token_id(presented)
    if public_id is None:
        return None
    with db.reading() as conn:
        row = conn.execute(select(tokens).where(tokens.c.token_id == public_id)).first()
    if row is None or not hmac.compare_digest(row.secret_sha256, digest(presented)):
        return None
    info = _info(row)
    return info if info.valid_at(now) else None


def _info(row: Row) -> TokenInfo:
    return TokenInfo(
        token_id=row.token_id, hospital_id=row.hospital_id, admin=row.admin, label=row.label,
        created_at=_utc(row.created_at),
        expires_at=None if row.expires_at is None else _utc(row.expires_at),
        revoked_at=None if row.revoked_at is None else _utc(row.revoked_at),
    )


def _utc(value: datetime.datetime) -> datetime.datetime:
    # SQLite keeps no UTC offset: the times we wrote there are UTC.
    return value.replace(tzinfo=datetime.UTC) if value.tzinfo is None else value.astimezone(datetime.UTC)
