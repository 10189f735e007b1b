"""Blob stores: a local folder and a real S3-compatible server over HTTP, through one interface."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from archive.config import S3Storage
from archive.storage import BlobNotFound, BlobStore
from archive.storage.filesystem import FilesystemStore, start_writeback
from archive.storage.s3 import S3Store


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "filesystem":
        return FilesystemStore(tmp_path / "archive")
    settings: dict[str, Any] = request.getfixturevalue("s3_storage")
    return S3Store(S3Storage.model_validate(settings))


def staged(tmp_path: Path, data: bytes, name: str = "obj") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_put_read_delete(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path, digest = staged(tmp_path, data)
    store.will_put(path)  # a hint, which changes nothing
    assert path.read_bytes() == data
    blob = store.put("1.2/1.2.3/1.2.3.4.dcm", path, digest)
    assert blob.size == len(data) and blob.sha256 == digest
    assert path.read_bytes() == data  # the store left the file to the caller, unchanged
    assert b"".join(store.read("1.2/1.2.3/1.2.3.4.dcm", chunk_size=65536)) == data
    assert b"".join(store.read("1.2/1.2.3/1.2.3.4.dcm", 1000, 5000)) == data[1000:6000]
    assert b"".join(store.read("1.2/1.2.3/1.2.3.4.dcm", 299_990)) == data[299_990:]
    assert list(store.keys()) == ["1.2/1.2.3/1.2.3.4.dcm"]
    store.delete("1.2/1.2.3/1.2.3.4.dcm")
    store.delete("1.2/1.2.3/1.2.3.4.dcm")  # a missing object is not an error
    assert list(store.keys()) == []


def test_missing_object_raises(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        store.read("no/such/object.dcm")


def test_put_replaces(store: BlobStore, tmp_path: Path) -> None:
    for data in (b"first" * 100, b"second" * 100):
        path, digest = staged(tmp_path, data)
        store.put("a/b/c.dcm", path, digest)
    assert b"".join(store.read("a/b/c.dcm")) == b"second" * 100


def test_s3_multipart_upload_with_checksum(s3_storage: dict[str, Any], tmp_path: Path) -> None:
    store = S3Store(S3Storage.model_validate(s3_storage))
    data = os.urandom(12 * 1024 * 1024)  # above the 5 MiB threshold: three parts
    path, digest = staged(tmp_path, data)
    store.put("s/se/big.dcm", path, digest)
    client = boto3.client("s3", endpoint_url=s3_storage["endpoint_url"], region_name="us-east-1")
    head = client.head_object(Bucket=s3_storage["bucket"], Key="pilot/s/se/big.dcm")
    assert head["ContentLength"] == len(data)
    assert head["Metadata"]["sha256"] == digest
    assert head["ETag"].strip('"').endswith("-3")  # uploaded in parts
    assert hashlib.sha256(b"".join(store.read("s/se/big.dcm"))).hexdigest() == digest


def test_filesystem_lists_no_half_written_files(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "archive")
    (tmp_path / "archive" / "s").mkdir()
    (tmp_path / "archive" / "s" / ".x.dcm.1234.part").write_bytes(b"half")
    assert list(store.keys()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range(2) is Linux's")
def test_writeback_is_started_on_linux(tmp_path: Path) -> None:
    path, _ = staged(tmp_path, os.urandom(1 << 20))
    assert start_writeback(path)  # the kernel took the call (its binding and arguments are right)
    assert not start_writeback(tmp_path / "gone")


def test_filesystem_refuses_keys_outside_the_root(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "archive")
    path, digest = staged(tmp_path, b"x")
    with pytest.raises(ValueError):
        store.put("../escape.dcm", path, digest)
