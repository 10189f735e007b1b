"""A blob store in a local folder (the embedded default).

Durability: the file is fsynced, renamed into place atomically, and the folder
entry is fsynced too, so a crash leaves either the whole object or nothing.
Half-written copies carry a ``.part`` suffix and are never listed.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from archive.storage import BlobNotFound, StoredBlob

PART_SUFFIX = ".part"
# Series folders remembered as durable: enough for every series arriving at once.
DURABLE_FOLDERS = 4096

# Linux's sync_file_range(2), which Python's os module does not offer; None elsewhere.
_sync_file_range = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2  # start writing the dirty pages back, without waiting for them


class FilesystemStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)
        self._inside = os.path.join(self._root, "")  # a key's path starts with this
        # Series folders whose entries up to the root are known durable, newest last.
        self._durable: OrderedDict[Path, None] = OrderedDict()
        self._lock = threading.Lock()

    def check(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"the archive folder {self.root} is gone")
        if not os.access(self.root, os.W_OK):
            raise OSError(f"the archive folder {self.root} is not writable")

    def path_of(self, key: str) -> Path:
        """The file of `key`; a key that would lead out of the folder is refused.

        Checked on the text of the path (``..`` taken away), without asking the
        file system for each of its parts, as resolving symbolic links would.
        """
        path = os.path.normpath(os.path.join(self._root, key))
        if not path.startswith(self._inside):
            raise ValueError(f"key {key!r} leaves the archive folder")
        return Path(path)

    def put(self, key: str, path: Path, sha256: str) -> StoredBlob:
        """Store the file at `path` under `key`, durably; `path` is left in place.

        Durable: the file is fsynced before it is renamed into place, and its
        folder after; a folder this process has not yet seen durable has its
        entries up to the root fsynced too (once: made long ago, they cost next to
        nothing). Folders are made only when the link finds them missing, and
        synced after the file, so that one journal commit of the file system
        (ext4's, say) carries them with it.
        """
        target = self.path_of(key)
        size = os.stat(path).st_size
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex}{PART_SUFFIX}")
        made = False
        try:
            link_or_copy(path, part)
        except FileNotFoundError:
            if not path.exists():
                raise
            target.parent.mkdir(parents=True, exist_ok=True)  # a study's or series' first object
            made = True
            link_or_copy(path, part)
        os.replace(part, target)
        fsync_dir(target.parent)
        self._make_durable(target.parent, made)
        return StoredBlob(key, size, sha256)

    def will_put(self, path: Path) -> None:
        """Start writing the file's bytes to disk now: the ingest reads the header and
        asks the index before it puts, and that fsync then finds them written or on
        their way (a 512 KiB slice's fsync: about 0.6 ms without, 0.2 ms with)."""
        start_writeback(path)

    def read(self, key: str, start: int = 0, length: int | None = None,
             chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        try:
            # Unbuffered: read_chunks reads by pread, and skips the buffer's isatty probe.
            handle = open(self.path_of(key), "rb", buffering=0)
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

    def _make_durable(self, folder: Path, made: bool) -> None:
        """Fsync the entries of `folder`'s parents up to the root, unless known durable
        and not just `made` (again, if someone removed it).

        A folder counts as durable only once its entries are synced, so a thread
        that finds a folder another has just made syncs it too, never relying on a
        sync still under way.
        """
        with self._lock:
            if not made and folder in self._durable:
                self._durable.move_to_end(folder)
                return
        for level in (folder, *folder.parents):
            if level == self.root:
                break
            fsync_dir(level.parent)
        with self._lock:
            self._durable[folder] = None
            if len(self._durable) > DURABLE_FOLDERS:
                self._durable.popitem(last=False)


def read_chunks(handle: BinaryIO, start: int, length: int | None, chunk_size: int) -> Iterator[bytes]:
    """Yield `length` bytes (or to the end) of an open file from `start`, then close it.

    Each chunk is one ``pread`` of exactly what is left up to `chunk_size`:
    the end is known from the file's size, so no read is spent finding it,
    and no seek (a whole CT slice is one system call with a large `chunk_size`).
    """
    with handle:
        fd = handle.fileno()
        end = os.fstat(fd).st_size
        if length is not None:
            end = min(end, start + length)
        position = start
        while position < end:
            block = os.pread(fd, min(chunk_size, end - position), position)
            if not block:  # cut short since the size was taken
                return
            position += len(block)
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


def start_writeback(path: Path) -> bool:
    """Have the kernel start writing the file's dirty pages to disk, without waiting.

    A hint: ``False`` when it was not given (the file is gone, or the system has
    no ``sync_file_range``), which costs the later fsync time, nothing else.
    """
    if _sync_file_range is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0
    finally:
        os.close(fd)


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
