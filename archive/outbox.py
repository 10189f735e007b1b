"""The outage queue: objects the blob store did not take in time wait here, durably.

Ingest puts each object in the store with a deadline (``storage.queue.after``).
When the store fails or does not answer in time, the object is hard-linked
(or copied) into the queue folder, fsynced with the folder, and its index row
is committed together with a ``queued_objects`` row: the instance is archived,
readable from the queue, and "not yet in the store". Nothing in the queue is
ever acknowledged without its row, and a row is only deleted once the store has
confirmed the upload; the file goes after the row.

A re-driver (``huren serve`` runs one per process, :mod:`huren.redrive`)
claims queued objects through the index with a compare-and-set on
``claimed_until`` (as judging claims studies), so one process uploads each.
Each machine has its own queue folder: a row names the host whose folder holds
its file, and only processes on that host upload it.

While the store is known to be down (a put failed or timed out lately),
ingest queues at once instead of waiting for it again; the re-driver's first
successful upload ends that.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select, update

from archive.config import OutageQueue
from archive.index.database import Database
from archive.index.schema import queued_objects
from archive.storage import BlobNotFound, BlobStore, StoredBlob, StoreUnavailable
from archive.storage.filesystem import PART_SUFFIX, fsync_dir, link_or_copy, read_chunks

log = logging.getLogger("huren.queue")
REDRIVE_PARALLEL = 4  # uploads a process runs at once while draining the queue


class QueueFull(Exception):
    """The store did not take the object and the queue has no room for it."""


@dataclass(frozen=True)
class Queued:
    """An object placed in the queue folder, not yet in the store."""

    key: str
    file: str
    size: int
    sha256: str


class Outbox:
    """The store with a deadline in front of it, and the queue behind it.

    Safe to share between threads; every process opens its own.
    """

    def __init__(self, db: Database, store: BlobStore, settings: OutageQueue,
                 host: str | None = None) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.folder = settings.path.resolve()
        self.host = host or socket.gethostname()
        self.enabled = settings.max_bytes > 0
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
        # Puts (and reads' opening) run here so that a store that does not answer costs
        # the caller `after` seconds, not the store's own timeouts; a call still running
        # then is abandoned (the queue has the object) and ends within those timeouts.
        self._calls = ThreadPoolExecutor(16, thread_name_prefix="store-call")
        self._lock = threading.Lock()
        self._down_until = 0.0    # time.monotonic(): until then the store is taken as down
        self._used: int | None = None
        self._used_at = 0.0

    # Ingest's side.

    def put(self, key: str, path: Path, sha256: str, *, behind_queue: bool = False) -> StoredBlob | Queued:
        """Put the file at `path` in the store within ``after`` seconds, else in the queue.

        Returns the stored blob, or the queued object (whose row the caller commits
        with the instance's, :meth:`add_row`). `path` is left in place.
        `behind_queue` queues at once (an older version of the object is queued).

        Raises
        ------
        StoreUnavailable
            The store failed and there is no queue (``max_bytes: 0``).
        QueueFull
            The store did not take the object and the queue has no room.
        OSError
            The queue folder cannot be written.
        """
        if not self.enabled:
            try:
                return self.store.put(key, path, sha256)
            except Exception as exc:
                raise StoreUnavailable(f"store unavailable: {_summary(exc)}") from None
        if behind_queue:
            cause = "an older version is queued"
        elif self.store_down():
            cause = "failed lately"
        else:
            future = self._calls.submit(self.store.put, key, path, sha256)
            try:
                return future.result(timeout=self.settings.after)
            except TimeoutError:
                future.cancel()
                cause = f"no answer within {self.settings.after:g} s"
            except Exception as exc:
                cause = _summary(exc)
            self.mark_down()
            log.warning("blob store unavailable; queueing", extra={"key": key, "error": cause})
        return self._enqueue(key, path, sha256, cause)

    def store_down(self) -> bool:
        """Whether the store failed lately (ingest then queues without trying it)."""
        return time.monotonic() < self._down_until

    def mark_down(self) -> None:
        """Take the store as down for long enough that the re-driver tries it first."""
        self._down_until = time.monotonic() + 2 * (self.settings.after + self.settings.redrive_interval)

    def _enqueue(self, key: str, path: Path, sha256: str, cause: str) -> Queued:
        size = os.stat(path).st_size
        with self._lock:
            used = self._bytes_used()
            if used + size > self.settings.max_bytes:
                log.error("blob store unavailable and the queue is full; refusing",
                          extra={"key": key, "used": used, "max_bytes": self.settings.max_bytes, "error": cause})
                raise QueueFull(f"store unavailable and queue full ({used} of {self.settings.max_bytes} "
                                f"bytes); the store: {cause}")
            self._used = used + size
        name = f"{key.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:12]}"
        part = self.folder / (name + PART_SUFFIX)
        try:
            link_or_copy(path, part)
            os.replace(part, self.folder / name)
            fsync_dir(self.folder)
        except OSError:
            part.unlink(missing_ok=True)
            self._used = None
            raise
        log.info("object queued", extra={"key": key, "study": key.split("/", 1)[0], "file": name,
                                         "size": size, "error": cause})
        return Queued(key, name, size, sha256)

    def _bytes_used(self) -> int:
        # Summed from the folder at most once a second (other workers share it), with
        # what this process queued since added.
        if self._used is None or time.monotonic() - self._used_at > 1.0:
            self._used = sum(_stat(entry).st_size for entry in os.scandir(self.folder) if entry.is_file())
            self._used_at = time.monotonic()
        return self._used

    def held(self, conn: Connection, key: str) -> str | None:
        """The queue file of `key` (on any host), or ``None`` when the store has it."""
        return conn.execute(
            select(queued_objects.c.file).where(queued_objects.c.blob_key == key)
        ).scalar_one_or_none()

    def add_row(self, conn: Connection, queued: Queued) -> str | None:
        """Record `queued` in the instance's transaction; returns the file of the
        version it supersedes (to remove once committed), if any."""
        previous = self.held(conn, queued.key)
        values: dict[str, Any] = {"file": queued.file, "host": self.host, "size": queued.size,
                                  "sha256": queued.sha256, "queued_at": datetime.now(UTC),
                                  "attempts": 0, "last_error": None}
        if previous is None:
            conn.execute(insert(queued_objects).values(blob_key=queued.key, **values))
        else:
            # A claim on the older version stays: its upload ends, finds the file
            # changed, and leaves this one to the next turn (so versions land in order).
            conn.execute(update(queued_objects).where(queued_objects.c.blob_key == queued.key).values(values))
        return previous

    def discard(self, file: str) -> None:
        """Remove a queue file that no row points at (any more)."""
        (self.folder / file).unlink(missing_ok=True)

    # Readers' side.

    def read(self, key: str, start: int = 0, length: int | None = None,
             chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Read an archived object from the queue while it is there, else from the store.

        Raises :class:`BlobNotFound`, or :class:`StoreUnavailable` when the store fails.
        """
        if self.enabled and _has_files(self.folder):
            with self.db.reading() as conn:
                row = conn.execute(
                    select(queued_objects.c.file, queued_objects.c.host).where(queued_objects.c.blob_key == key)
                ).first()
            if row is not None and row.host == self.host:
                try:
                    handle = open(self.folder / row.file, "rb")
                except FileNotFoundError:
                    pass  # uploaded and removed since the row was read: the store has it now
                else:
                    return read_chunks(handle, start, length, chunk_size)
            elif row is not None:
                raise StoreUnavailable(f"not yet in the store: queued on {row.host}")
        # Opened with the same deadline as a put: a store that does not answer is a prompt
        # 503, not a wait as long as its timeouts and attempts (a minute or more).
        opening = self._calls.submit(self.store.read, key, start, length, chunk_size)
        try:
            return opening.result(timeout=self.settings.after)
        except BlobNotFound:
            raise
        except TimeoutError:
            opening.cancel()
            self.mark_down()
            raise StoreUnavailable(f"store unavailable: no answer within {self.settings.after:g} s") from None
        except Exception as exc:
            raise StoreUnavailable(f"store unavailable: {_summary(exc)}") from None

    def depth(self) -> tuple[int, int]:
        """How many objects, and bytes, this host's queue holds."""
        with self.db.reading() as conn:
            count, size = conn.execute(
                select(func.count(), func.coalesce(func.sum(queued_objects.c.size), 0))
                .where(queued_objects.c.host == self.host)
            ).one()
        return int(count), int(size)

    # The re-driver's side.

    def redrive(self, owner: str, limit: int = 100) -> int:
        """Upload the queued objects this process can claim, oldest first, ``REDRIVE_PARALLEL``
        at a time; returns how many reached the store. Stops after a store failure."""
        now = datetime.now(UTC)
        with self.db.reading() as conn:
            due = conn.execute(
                select(queued_objects.c.pk).where(
                    queued_objects.c.host == self.host,
                    or_(queued_objects.c.claimed_until.is_(None), queued_objects.c.claimed_until < now),
                ).order_by(queued_objects.c.queued_at).limit(limit)
            ).scalars().all()
        done = 0
        for start in range(0, len(due), REDRIVE_PARALLEL):
            claimed = self._claim(due[start:start + REDRIVE_PARALLEL], owner)
            started = time.monotonic()
            uploads = [(item, self._calls.submit(self.store.put, item.blob_key, self.folder / item.file,
                                                item.sha256)) for item in claimed]
            finished, failures = [], []
            for item, future in uploads:
                try:
                    future.result(timeout=max(0.0, started + self.settings.after - time.monotonic()))
                except Exception as exc:
                    future.cancel()
                    failures.append((item, exc))
                else:
                    finished.append(item)
            self._uploaded(finished, owner, started)
            done += len(finished)
            if self._failed(failures, owner):
                break
        return done

    def _claim(self, pks: Sequence[int], owner: str) -> list[Any]:
        """Claim those of the queued objects `pks` nobody else holds, in one transaction."""
        now = datetime.now(UTC)
        with self.db.writing() as conn:
            conn.execute(update(queued_objects).where(
                queued_objects.c.pk.in_(pks),
                or_(queued_objects.c.claimed_until.is_(None), queued_objects.c.claimed_until < now),
            ).values(claimed_until=now + timedelta(seconds=self.settings.claim_timeout), claimed_by=owner))
            return list(conn.execute(select(queued_objects).where(
                queued_objects.c.pk.in_(pks), queued_objects.c.claimed_by == owner,
            ).order_by(queued_objects.c.queued_at)).all())

    def _failed(self, failures: list[tuple[Any, Exception]], owner: str) -> bool:
        """Release the claims of objects whose upload failed; whether the store was at fault
        (not only queue files gone missing)."""
        if not failures:
            return False
        store_failed = False
        with self.db.writing() as conn:
            for item, exc in failures:
                error = (f"no answer within {self.settings.after:g} s" if isinstance(exc, TimeoutError)
                         else _summary(exc))
                conn.execute(update(queued_objects).where(
                    queued_objects.c.pk == item.pk, queued_objects.c.claimed_by == owner,
                ).values(attempts=queued_objects.c.attempts + 1, last_error=error[:500],
                         claimed_until=None, claimed_by=None))
                if isinstance(exc, FileNotFoundError):
                    log.error("queue file missing; the object cannot be re-driven",
                              extra={"key": item.blob_key, "file": item.file})
                    continue
                store_failed = True
                log.warning("re-drive failed; the object stays queued",
                            extra={"key": item.blob_key, "attempts": item.attempts + 1, "error": error})
        if store_failed:
            self.mark_down()
        return store_failed

    def _uploaded(self, items: list[Any], owner: str, started: float) -> None:
        """Forget objects the store has confirmed, in one transaction, then remove their queue files."""
        if not items:
            return
        gone = []
        with self.db.writing() as conn:
            for item in items:
                # Only the version uploaded: a newer one queued meanwhile waits for its own turn.
                if conn.execute(delete(queued_objects).where(
                    queued_objects.c.pk == item.pk, queued_objects.c.claimed_by == owner,
                    queued_objects.c.file == item.file,
                )).rowcount == 1:
                    gone.append(item)
                else:
                    conn.execute(update(queued_objects).where(
                        queued_objects.c.pk == item.pk, queued_objects.c.claimed_by == owner,
                    ).values(claimed_until=None, claimed_by=None))
        self._down_until = 0.0
        for item in gone:
            self.discard(item.file)
            log.info("object re-driven to the store", extra={
                "key": item.blob_key, "study": item.blob_key.split("/", 1)[0], "size": item.size,
                "queued_for": round((datetime.now(UTC) - _aware(item.queued_at)).total_seconds(), 1),
                "duration": round(time.monotonic() - started, 3),
            })

    def sweep(self, older_than: float = 3600.0) -> int:
        """Tidy the queue folder: claim the rows of files found here that name another host
        (a container restarted under a new host name with the same folder), and remove
        files no row points at that are older than `older_than` seconds (left by a crash
        between queueing and the index commit, so never acknowledged). Returns how many
        files were removed."""
        if not self.enabled:
            return 0
        here = {e.name: _stat(e).st_mtime for e in os.scandir(self.folder)
                if e.is_file() and not e.name.endswith(PART_SUFFIX)}
        with self.db.reading() as conn:
            rows = dict(conn.execute(select(queued_objects.c.file, queued_objects.c.host)).all())
        moved = [name for name, host in rows.items() if host != self.host and name in here]
        if moved:
            with self.db.writing() as conn:
                conn.execute(update(queued_objects).where(queued_objects.c.file.in_(moved)).values(host=self.host))
            log.warning("queued objects of another host name found in this queue folder; re-driven from here",
                        extra={"objects": len(moved), "host": self.host})
        cutoff = time.time() - older_than
        orphans = [name for name, modified in here.items() if name not in rows and 0 < modified < cutoff]
        orphans += [e.name for e in os.scandir(self.folder)
                    if e.name.endswith(PART_SUFFIX) and 0 < _stat(e).st_mtime < cutoff]
        for name in orphans:
            self.discard(name)
            log.info("queue file without a row removed", extra={"file": name})
        return len(orphans)

    def close(self) -> None:
        self._calls.shutdown(wait=False, cancel_futures=True)


class QueueingStore:
    """The blob store as the doors see it: queued objects are read from the queue."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.store = outbox.store

    def will_put(self, path: Path) -> None:
        self.store.will_put(path)

    def put(self, key: str, path: Path, sha256: str) -> StoredBlob:
        return self.store.put(key, path, sha256)

    def read(self, key: str, start: int = 0, length: int | None = None,
             chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        return self.outbox.read(key, start, length, chunk_size)

    def delete(self, key: str) -> None:
        self.store.delete(key)

    def keys(self) -> Iterator[str]:
        return self.store.keys()

    def check(self) -> None:
        self.store.check()


def _stat(entry: os.DirEntry) -> os.stat_result:
    """An entry's stat, or zeros when it went between listing and looking (another
    thread renamed its ``.part`` into place, or the re-driver removed it)."""
    try:
        return entry.stat()
    except FileNotFoundError:
        return os.stat_result((0,) * 10)


def _has_files(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is not None


def _summary(exc: BaseException) -> str:
    """An error's first line (botocore's messages lead with what happened), or its kind."""
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def _aware(when: datetime) -> datetime:
    # SQLite gives back naive datetimes (stored as UTC).
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
