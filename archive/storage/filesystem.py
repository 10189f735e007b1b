"""A blob store in a local folder (the embedded default).

Durability: the file is fsynced, renamed into place atomically, and the folder
entry is fsynced too, so a crash leaves either the whole object or nothing.
Half-written copies carry a ``.part`` suffix and are never listed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from archive.storage import BlobNotFound, StoredBlob

PART_SUFFIX = ".part"


class FilesystemStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def check(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"the archive folder {self.root} is gone")
        if not os.access(self.root, os.W_OK):
            raise OSError(f"the archive folder {self.root} is not writable")

    def path_of(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key {key!r} leaves the archive folder")
        return path

    def put(self, key: str, path: Path, sha256: str) -> StoredBlob:
        target = self.path_of(key)
        self._make_folders(target.parent)
        size = os.stat(path).st_size
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex}{PART_SUFFIX}")
        link_or_copy(path, part)
        os.replace(part, target)
        fsync_dir(target.parent)
        return StoredBlob(key, size, sha256)

    def read(self, key: str, start: int = 0, length: int | None = None,
             chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        try:
            handle = open(self.path_of(key), "rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        return read_chunks(handle, start, length, chunk_size)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self.path_of(key))
        except FileNotFoundError:
            pass

    def keys(self) -> Iterator[str]:
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.endswith(PART_SUFFIX):
                    yield Path(folder, name).relative_to(self.root).as_posix()

    def _make_folders(self, folder: Path) -> None:
        if folder.is_dir():
            return
        missing = [folder, *(p for p in folder.parents if not p.exists())]
        folder.mkdir(parents=True, exist_ok=True)
        # A new folder is only durable once its parent's entry is.
        for created in missing:
            fsync_dir(created.parent)


def read_chunks(handle: BinaryIO, start: int, length: int | None, chunk_size: int) -> Iterator[bytes]:
    """Yield `length` bytes (or to the end) of an open file from `start`, then close it."""
    with handle:
        handle.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            block = handle.read(chunk_size if remaining is None else min(chunk_size, remaining))
            if not block:
                return
            if remaining is not None:
                remaining -= len(block)
            yield block


def link_or_copy(source: Path, target: Path) -> None:
    """Make `target` a durable copy of `source`: a hard link (no bytes copied) when
    both are on one file system, else a copy; fsynced either way, `source` kept."""
    try:
        os.link(source, target)
    except OSError:
        # Another file system (e.g. a receive folder on a different disk).
        with open(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
        return
    _fsync_file(target)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (a new, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
