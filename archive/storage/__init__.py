"""Blob stores: where archived objects live, behind one interface.

A store knows keys and bytes, never who asked or what the bytes mean. The key
of an instance is ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
(the backend adds its own prefix), so the archive stays readable without Huren.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from archive.config import Config, FilesystemStorage, S3Storage


@dataclass(frozen=True)
class StoredBlob:
    key: str
    size: int
    sha256: str


class BlobNotFound(KeyError):
    """No object is stored under the key."""


class StoreUnavailable(Exception):
    """The blob store did not answer, or failed; the message leads with what happened."""


class BlobStore(Protocol):
    """What the archive asks of a storage backend."""

    def put(self, key: str, path: Path, sha256: str) -> StoredBlob:
        """Store the local file at `path` durably under `key`, replacing any object there.

        The file is left where it is, unchanged (it may be hard-linked): the
        caller removes it. Returns only once the object is durable.
        """

    def will_put(self, path: Path) -> None:
        """Hear that the local file at `path` is about to be put; returns at once.

        A store may start on it: the folder store starts writing it to disk, so
        that the fsync in :meth:`put` has less left to wait for.
        """

    def read(self, key: str, start: int = 0, length: int | None = None,
             chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Yield the object's bytes from `start`, `length` bytes or to the end.

        Raises :class:`BlobNotFound` (before the first chunk) if there is no such object.
        """

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""

    def keys(self) -> Iterator[str]:
        """Yield every complete object's key (never a half-written one)."""

    def check(self) -> None:
        """Prove the store answers and is the one configured (for readiness probes).

        Raises an exception saying what is wrong (``OSError``, botocore's errors).
        """


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The object key of an instance, per the design's object layout."""
    return f"{study_uid}/{series_uid}/{sop_uid}.dcm"


def open_store(config: Config) -> BlobStore:
    """Build the blob store the configuration names."""
    storage = config.storage
    if isinstance(storage, FilesystemStorage):
        from archive.storage.filesystem import FilesystemStore

        return FilesystemStore(storage.path)
    assert isinstance(storage, S3Storage)
    from archive.storage.s3 import S3Store

    return S3Store(storage)
