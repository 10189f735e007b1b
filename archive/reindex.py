"""Rebuild the whole index from the bucket alone (``huren reindex``).

The object layout (``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``,
plain Part-10 files) keeps the archive readable without Huren, and this is
the proof: every object goes through the one ingest path into an empty index,
which then answers every query as the index that was lost would have.

What only the index knew is not in the bucket and does not come back: the
hospital each instance came from (studies belong to no hospital, so only
admins see them, until reassigned), the calling AE title, the time received
(it becomes the time reindexed), shares, tokens, the audit trail and
compliance records (studies are judged again once quiet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from archive import inventory
from archive.index.database import Database
from archive.index.schema import instances
from archive.ingest import IngestError, Outcome, Source
from archive.storage import BlobNotFound, BlobStore
from archive.sweep import adopt


class IndexNotEmpty(Exception):
    """Reindexing needs an empty index; the message says how many instances it holds."""


@dataclass
class Reindexed:
    """What :func:`reindex` did: instances indexed, duplicates, and the objects refused (with why)."""

    indexed: int = 0
    duplicates: int = 0
    refused: dict[str, str] = field(default_factory=dict)


def check_empty(db: Database) -> None:
    """Raise :class:`IndexNotEmpty` if `db` holds instances."""
    with db.reading() as conn:
        held = conn.execute(select(func.count()).select_from(instances)).scalar_one()
    if held:
        raise IndexNotEmpty(f"the index holds {held} instances; reindex into an empty database")


def reindex(db: Database, store: BlobStore, work: Path,
            progress: Callable[[int], None] = lambda _n: None) -> Reindexed:
    """Index every object of `store` into the empty index `db`; `work` is a folder for fetched copies.

    Raises
    ------
    IndexNotEmpty
        If `db` already holds instances.
    """
    check_empty(db)
    done = Reindexed()
    source = Source("reindex")
    for blob in inventory.objects(store):
        try:
            outcome = adopt(db, store, blob.key, work, source)
        except IngestError as exc:
            done.refused[blob.key] = f"0x{exc.failure.value:04X} {exc}"
        except BlobNotFound:
            done.refused[blob.key] = "deleted while reindexing"
        else:
            if outcome is Outcome.STORED:
                done.indexed += 1
            else:
                done.duplicates += 1  # a second copy of an instance, under another key
        progress(1)
    return done
