"""Checking, before serving, that the index and the blob store answer and are
the ones configured: a wrong bucket, credentials or database is named at start,
with the key to fix, instead of being found by every C-STORE that follows."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from archive.config import Config, FilesystemStorage
from archive.index.database import Database
from archive.ingest import first_line
from archive.storage import open_store


def problems(config: Config, db: Database) -> list[str]:
    """What keeps Huren from serving: each problem names the key to change. Migrates the index."""
    found = []
    try:
        db.migrate()
    except DBAPIError as exc:
        url = make_url(config.index.url)
        message = f"index.url ({url.render_as_string(hide_password=True)}): {first_line(exc)}"
        if "does not exist" in message and url.get_backend_name() == "postgresql":
            message += (f"; create it with: createdb -h {url.host or 'localhost'} -p {url.port or 5432}"
                        f" -U {url.username or 'postgres'} {url.database}")
        found.append(message)
    try:
        open_store(config).check()
    except Exception as exc:  # each store raises its own kind; all of them mean "not usable"
        storage = config.storage
        if isinstance(storage, FilesystemStorage):
            found.append(f"storage.path ({storage.path}): {first_line(exc)}")
        else:
            found.append(f"storage (bucket {storage.bucket!r} at {storage.endpoint_url or 'AWS'}): "
                         f"{first_line(exc)}; check storage.bucket, storage.endpoint_url and the "
                         "credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or ~/.aws)")
    return found
