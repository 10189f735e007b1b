"""A blob store in an S3-compatible bucket, reached only through boto3.

Objects above ``multipart_threshold`` go up in parts; every upload carries a
SHA-256 checksum that the server verifies, and the hex digest is kept in the
object's metadata so the bucket can be audited without Huren.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from archive.config import S3Storage
from archive.storage import BlobNotFound, StoredBlob, StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import GetObjectRequestTypeDef  # boto3-stubs[s3], a test extra

_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Store:
    def __init__(self, settings: S3Storage) -> None:
        self.bucket = settings.bucket
        self.prefix = f"{settings.prefix}/" if settings.prefix else ""
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            config=BotoConfig(
                max_pool_connections=settings.max_connections,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                retries={"max_attempts": settings.max_attempts, "mode": "standard"},
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunk,
            max_concurrency=4,
        )

    def check(self) -> None:
        # HEAD of the bucket: reachable, credentials accepted, the bucket exists.
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(describe(exc)) from exc

    def will_put(self, path: Path) -> None:
        pass  # the upload reads the file from the page cache: writing it to disk first would waste the disk

    def put(self, key: str, path: Path, sha256: str) -> StoredBlob:
        size = os.stat(path).st_size
        try:
            self.client.upload_file(
                str(path), self.bucket, self.prefix + key,
                ExtraArgs={
                    "ChecksumAlgorithm": "SHA256",
                    "ContentType": "application/dicom",
                    "Metadata": {"sha256": sha256},
                },
                Config=self.transfer,
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise StoreUnavailable(describe(exc)) from exc
        return StoredBlob(key, size, sha256)

    def read(self, key: str, start: int = 0, length: int | None = None,
             chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        if length == 0:
            return iter(())
        request: GetObjectRequestTypeDef = {"Bucket": self.bucket, "Key": self.prefix + key}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            request["Range"] = f"bytes={start}-{end}"
        try:
            body = self.client.get_object(**request)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise BlobNotFound(key) from None
            raise StoreUnavailable(describe(exc)) from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(describe(exc)) from exc
        return _stream(body, chunk_size)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def keys(self) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix):]


def _stream(body, chunk_size: int) -> Iterator[bytes]:
    with body:
        yield from body.iter_chunks(chunk_size)


def describe(exc: Exception) -> str:
    """What went wrong with S3, useful words first and short (a DIMSE Error Comment
    keeps 64 characters): where it could not connect, the server's error code."""
    cause = exc.__cause__ if isinstance(exc, S3UploadFailedError) and exc.__cause__ else exc
    where = urlsplit(str(getattr(cause, "kwargs", {}).get("endpoint_url", ""))).netloc or "the S3 endpoint"
    if isinstance(cause, ConnectTimeoutError):
        return f"no connection to {where} within the connect timeout"
    if isinstance(cause, EndpointConnectionError):
        return f"cannot connect to {where}"
    if isinstance(cause, ReadTimeoutError):
        return f"no answer from {where} within the read timeout"
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        code = error.get("Code") or cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"S3 {code}: {error.get('Message') or cause.operation_name}"
    message = str(cause).strip()
    return message.splitlines()[0] if message else type(cause).__name__
