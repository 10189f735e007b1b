"""What a blob store holds, as the sweep and ``huren verify`` need to see it.

The :class:`~archive.storage.BlobStore` protocol serves the ingest and
retrieve paths (put, read, delete, keys); keeping the archive in order also
needs each object's size and age, the uploads that never completed, and a
place to set aside what is not an instance. Those are read here from each
backend's own listing: a folder's ``stat``, S3's ``ListObjectsV2`` and
``ListMultipartUploads``.

Objects moved aside live under the ``quarantine/`` key prefix (beside the
study folders, whose names are UIDs and so never clash) and are never listed
as archive objects.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from archive.digests import file_sha256
from archive.storage import BlobNotFound, BlobStore
from archive.storage.filesystem import PART_SUFFIX, FilesystemStore
from archive.storage.s3 import S3Store

QUARANTINE = "quarantine/"


@dataclass(frozen=True)
class Blob:
    """An archive object: its key, size in bytes and last change (seconds since the epoch)."""

    key: str
    size: int
    modified: float


@dataclass(frozen=True)
class Upload:
    """An upload that has not completed: an S3 multipart upload or a folder's ``.part`` file."""

    key: str
    started: float
    upload_id: str = ""


def objects(store: BlobStore) -> Iterator[Blob]:
    """Yield every complete object of the archive (not those in quarantine)."""
    if isinstance(store, S3Store):
        pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=store.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"][len(store.prefix):]
                if not key.startswith(QUARANTINE):
                    yield Blob(key, item["Size"], item["LastModified"].timestamp())
        return
    assert isinstance(store, FilesystemStore)
    for folder, dirs, files in os.walk(store.root):
        if folder == str(store.root) and QUARANTINE.rstrip("/") in dirs:
            dirs.remove(QUARANTINE.rstrip("/"))
        for name in files:
            if name.endswith(PART_SUFFIX):
                continue
            path = Path(folder, name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # deleted while we walked
            yield Blob(path.relative_to(store.root).as_posix(), stat.st_size, stat.st_mtime)


def incomplete_uploads(store: BlobStore, older_than: float) -> Iterator[Upload]:
    """Yield the uploads begun more than `older_than` seconds ago that never completed."""
    cutoff = time.time() - older_than
    if isinstance(store, S3Store):
        pages = store.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=store.bucket, Prefix=store.prefix)
        for page in pages:
            for item in page.get("Uploads", []):
                started = item["Initiated"].timestamp()
                if started < cutoff:
                    yield Upload(item["Key"], started, item["UploadId"])
        return
    assert isinstance(store, FilesystemStore)
    for folder, _dirs, files in os.walk(store.root):
        for name in files:
            path = Path(folder, name)
            begun = _mtime(path) if name.endswith(PART_SUFFIX) else None
            if begun is not None and begun < cutoff:
                yield Upload(path.relative_to(store.root).as_posix(), begun)


def abort(store: BlobStore, upload: Upload) -> None:
    """Abort an incomplete upload, freeing what its parts hold."""
    if isinstance(store, S3Store):
        store.client.abort_multipart_upload(Bucket=store.bucket, Key=upload.key, UploadId=upload.upload_id)
    else:
        assert isinstance(store, FilesystemStore)
        (store.root / upload.key).unlink(missing_ok=True)


def exists(store: BlobStore, key: str) -> bool:
    """Whether an object is stored under `key`."""
    try:
        next(iter(store.read(key, 0, 1)), None)
    except BlobNotFound:
        return False
    return True


def sha256(store: BlobStore, key: str) -> str:
    """The SHA-256 of the object's bytes, as hex (raises BlobNotFound)."""
    digest = hashlib.sha256()
    for chunk in store.read(key):
        digest.update(chunk)
    return digest.hexdigest()


def fetch(store: BlobStore, key: str, folder: Path) -> Path:
    """Copy the object to a new file in `folder` and return its path (raises BlobNotFound)."""
    handle, name = tempfile.mkstemp(suffix=".dcm", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in store.read(key):
                out.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def quarantine(store: BlobStore, key: str, folder: Path) -> str:
    """Move the object to ``quarantine/<key>`` and return that key."""
    target = QUARANTINE + key
    path = fetch(store, key, folder)
    try:
        store.put(target, path, file_sha256(path))
    finally:
        path.unlink(missing_ok=True)
    store.delete(key)
    return target


def restore_version(store: BlobStore, key: str, sha256: str) -> bool:
    """Make the newest earlier version of the object whose recorded SHA-256 is
    `sha256` the current one; return whether there was such a version.

    Only a bucket with versioning keeps earlier versions (S3 ``PutBucketVersioning``);
    the digest is the one each upload records in the object's metadata.
    """
    if not isinstance(store, S3Store):
        return False
    name = store.prefix + key
    versions = [version for page in store.client.get_paginator("list_object_versions").paginate(
                    Bucket=store.bucket, Prefix=name)
                for version in page.get("Versions", [])
                if version.get("Key") == name and not version.get("IsLatest")]
    versions.sort(key=lambda version: version["LastModified"], reverse=True)
    for version in versions:
        head = store.client.head_object(Bucket=store.bucket, Key=name, VersionId=version["VersionId"])
        if head.get("Metadata", {}).get("sha256") == sha256:
            store.client.copy_object(Bucket=store.bucket, Key=name, MetadataDirective="COPY", CopySource={
                "Bucket": store.bucket, "Key": name, "VersionId": version["VersionId"]})
            return True
    return False


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None
