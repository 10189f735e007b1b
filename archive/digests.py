"""The two SHA-256 digests of a Part-10 file, taken as its bytes go by.

The first, of the whole file, checks the object in the store. The second, of
the data set alone, tells whether two files hold the same instance: C-STORE
and STOW-RS (and different senders) write different file meta information
(PS3.10 §7.1) around the same data set. A file whose meta group has no group
length is hashed whole for both.

A receiver feeds :class:`Digests` the bytes it writes, so the file is never
read back to be hashed (:func:`file_digests` reads one that was not).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from archive.part10 import has_magic

# The preamble, "DICM" and the (0002,0000) UL group length element: what must be
# seen before the data set's offset is known.
_HEAD_BYTES = 144


class Digests:
    """SHA-256 of a Part-10 file's bytes and of its data set, fed in order."""

    __slots__ = ("_whole", "_dataset", "_head", "_start", "_position")

    def __init__(self) -> None:
        self._whole = hashlib.sha256()
        self._dataset = hashlib.sha256()
        self._head = bytearray()
        self._start: int | None = None
        self._position = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the file's next bytes."""
        self._whole.update(data)
        if self._start is None:
            self._head += data
            if len(self._head) < _HEAD_BYTES:
                return
            self._start = _dataset_offset(self._head)
            pending, self._head = self._head, bytearray()
            self._feed(pending, self._position)
            self._position += len(pending)
            return
        self._feed(data, self._position)
        self._position += len(data)

    def hexdigests(self) -> tuple[str, str]:
        """``(file, data set)`` digests as hex, for all the bytes fed so far."""
        dataset = self._dataset.copy()
        if self._start is None:  # shorter than a meta header: no meta to leave out
            dataset.update(self._head)
        return self._whole.hexdigest(), dataset.hexdigest()

    def _feed(self, data: bytes | bytearray | memoryview, position: int) -> None:
        assert self._start is not None
        skip = self._start - position
        if skip <= 0:
            self._dataset.update(data)
        elif skip < len(data):
            self._dataset.update(memoryview(data)[skip:])


def file_digests(path: Path) -> tuple[str, str]:
    """The digests of the file at `path` (see :class:`Digests`), in one read."""
    digests = Digests()
    with open(path, "rb") as handle:
        while block := handle.read(1024 * 1024):
            digests.update(block)
    return digests.hexdigests()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    return file_digests(path)[0]


def _dataset_offset(head: bytes | bytearray) -> int:
    """Where the data set starts: after the preamble, ``DICM`` and the group
    length's worth of meta elements (PS3.10 §7.1: (0002,0000) UL comes first)."""
    if not has_magic(head) or head[132:138] != b"\x02\x00\x00\x00UL":
        return 0
    return 144 + int.from_bytes(head[140:144], "little")
