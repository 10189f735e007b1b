"""Receive folders: where each serving process writes what it is receiving.

A C-STORE's data set and a STOW-RS body's parts are written to files before
they are archived (:mod:`archive.ingest` consumes them). A process killed
mid-receive leaves them behind, and with several workers (or several servers
on one disk) a file's age says nothing about whether a live process is still
writing it. So each process receives into a folder of its own, named
``receiving-<host>-<pid>-<random>``, and holds an exclusive ``flock`` on it
for as long as it lives. The kernel drops the lock when the process ends,
however it ends (``kill -9`` too), so a folder whose lock can be taken
belongs to nobody and everything in it may go: it was never acknowledged,
and the sender sends it again.

``huren serve`` keeps its metrics (:mod:`dicomweb.metrics`) in a folder held
the same way, ``metrics-…``, so a killed server's goes too.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("huren.sweep")

PREFIX = "receiving-"
KINDS = (PREFIX, "metrics-")  # the held folders a sweep may remove
# What earlier versions wrote at the top of the folder itself: pynetdicom's
# received data sets and STOW-RS parts, named by :mod:`tempfile`.
_LOOSE_SUFFIXES = (".dcm", ".part", ".p10")


class ReceiveFolder:
    """This process's receive folder under `root` (or, with `kind` "metrics", its
    metrics folder), locked until :meth:`close`."""

    def __init__(self, root: Path, kind: str = "receiving") -> None:
        assert f"{kind}-" in KINDS
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self) -> None:
        """Remove the folder and what is left in it, and release it."""
        if self._fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = None


@dataclass
class Swept:
    """What a sweep of a receive root removed."""

    files: int = 0
    bytes: int = 0


def sweep_receive(root: Path) -> Swept:
    """Remove the receive folders under `root` that no live process holds.

    Also removes received files that earlier versions left at the top of
    `root` (they were written there by processes that are gone: this version
    writes only in locked folders). Other files and folders are not touched.
    """
    swept = Swept()
    if not root.is_dir():
        return swept
    for entry in root.iterdir():
        if entry.name.startswith(KINDS) and entry.is_dir() and not entry.is_symlink():
            _remove_if_unheld(entry, swept)
        elif entry.name.startswith("tmp") and entry.name.endswith(_LOOSE_SUFFIXES) and entry.is_file():
            _count(entry, swept)
            entry.unlink(missing_ok=True)
    if swept.files:
        log.info("received files of ended processes removed",
                 extra={"folder": str(root), "files": swept.files, "bytes": swept.bytes})
    return swept


def _remove_if_unheld(folder: Path, swept: Swept) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return  # its owner closed it a moment ago
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live process receives here
        for path in folder.rglob("*"):
            if path.is_file():
                _count(path, swept)
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)


def _count(path: Path, swept: Swept) -> None:
    try:
        swept.bytes += path.stat().st_size
        swept.files += 1
    except FileNotFoundError:
        pass
