"""Group commit: the index writes of instances arriving together share one commit.

A commit is the slow part of a write (SQLite's WAL and PostgreSQL's log are
flushed to disk); each association or STOW-RS part waiting for its own would
wait for the flushes of all those before it. Here the first writer to arrive
commits alone; writers arriving meanwhile queue, and the next of them commits
all queued writes in one transaction. Nobody is answered before the commit
that holds its write, and nobody waits for a timer: a lone writer commits at
once, exactly as without batching.

A write that fails in a batch (an instance refused by the index, a unique key
taken by a concurrent association) rolls the batch back; its writes are then
run again one transaction each, so the failure reaches only its own writer.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import Connection

from archive.index.database import Database

T = TypeVar("T")

# A batch bounded so that one transaction stays short, however many writers queue.
MAX_BATCH = 64


class _Write(Generic[T]):
    """One writer's work, and then its result or its error."""

    __slots__ = ("work", "done", "result", "error")

    def __init__(self, work: Callable[[Connection], T]) -> None:
        self.work = work
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None


class GroupCommit:
    """Runs index writes from many threads, several to a transaction."""

    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: deque[_Write] = deque()
        self._queue_lock = threading.Lock()
        # Held by the thread committing a batch; the others queue meanwhile.
        self._committer = threading.Lock()
        # Told the number of writes of each commit (metrics).
        self.observers: list[Callable[[int], None]] = []

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(connection)`` in a transaction and return its result once committed.

        `work` may run twice (in a batch that rolled back, then alone), so it must
        not act outside the transaction. Its exceptions are raised here, as are
        the database's.
        """
        mine: _Write[T] = _Write(work)
        with self._queue_lock:
            self._queue.append(mine)
        while not mine.done:
            with self._committer:
                if mine.done:  # committed by the batch before
                    break
                with self._queue_lock:
                    batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                self._commit(batch)
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def _commit(self, batch: list[_Write]) -> None:
        if len(batch) > 1:
            try:
                with self.db.writing() as conn:
                    results = [write.work(conn) for write in batch]
            except BaseException:
                # One write failed, with whatever it raised: each runs alone below, to fail
                # alone. (Nothing may leave a write of the batch unfinished: its writer would
                # wait for it for ever.)
                pass
            else:
                for write, result in zip(batch, results, strict=True):
                    write.result, write.done = result, True
                self._observe(len(batch))
                return
        for write in batch:
            try:
                with self.db.writing() as conn:
                    write.result = write.work(conn)
            except BaseException as exc:
                write.error = exc
            else:
                self._observe(1)
            finally:
                write.done = True

    def _observe(self, writes: int) -> None:
        for observe in self.observers:
            observe(writes)
