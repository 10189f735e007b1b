"""Group commit (archive.index.groupcommit) and the SQLite write lock across processes."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import OperationalError

from archive.index.database import Database
from archive.index.groupcommit import GroupCommit
from archive.index.schema import instances, studies, tokens
from archive.ingest import Failure, IngestError, Outcome
from tests import factory
from tests.conftest import Archive


def _token(conn: Connection, name: str) -> int:
    """Write one row (a token: a table without foreign keys) and return its key."""
    return conn.execute(insert(tokens).values(
        token_id=name, secret_sha256="0" * 64, hospital_id="h", label=name, admin=False,
        created_at=datetime.now(UTC),
    ).returning(tokens.c.pk)).scalar_one()


def _names(db: Database) -> set[str]:
    with db.reading() as conn:
        return set(conn.execute(select(tokens.c.token_id)).scalars())


@pytest.fixture
def db(index_url: str) -> Database:
    database = Database(index_url)
    database.migrate()
    return database


def _observed(db: Database) -> tuple[GroupCommit, list[int]]:
    """Group commit over `db`, and the number of writes of each of its commits."""
    commits = GroupCommit(db)
    sizes: list[int] = []
    commits.observers.append(sizes.append)
    return commits, sizes


def _held_write(commits: GroupCommit, pool: ThreadPoolExecutor, name: str) -> tuple[Future, threading.Event]:
    """A write that keeps its commit open until the event is set, so that others queue behind it."""
    running, release = threading.Event(), threading.Event()

    def hold(conn: Connection) -> int:
        running.set()
        assert release.wait(10)
        return _token(conn, name)

    future = pool.submit(commits.write, hold)
    assert running.wait(10)
    return future, release


def test_writers_arriving_during_a_commit_share_the_next_one(db: Database) -> None:
    commits, sizes = _observed(db)
    with ThreadPoolExecutor(9) as pool:
        first, release = _held_write(commits, pool, "first")
        rest = [pool.submit(commits.write, lambda conn, n=n: _token(conn, f"w{n}")) for n in range(8)]
        time.sleep(0.2)  # the eight queue behind the first commit
        assert not any(future.done() for future in rest)
        release.set()
        keys = [first.result(10)] + [future.result(10) for future in rest]
    assert len(set(keys)) == 9
    assert sizes == [1, 8]
    assert _names(db) == {"first", *(f"w{n}" for n in range(8))}


def test_a_failing_write_fails_alone(db: Database) -> None:
    commits, sizes = _observed(db)

    def failing(conn: Connection) -> int:
        _token(conn, "half-written")
        raise ValueError("refused")

    with ThreadPoolExecutor(4) as pool:
        held, release = _held_write(commits, pool, "hold")
        good = [pool.submit(commits.write, lambda conn, n=n: _token(conn, f"good{n}")) for n in range(2)]
        bad = pool.submit(commits.write, failing)
        time.sleep(0.2)
        release.set()
        held.result(10)
        for future in good:
            future.result(10)
        with pytest.raises(ValueError, match="refused"):
            bad.result(10)
    # The batch of three rolled back, then each ran alone: two commits, the third refused.
    assert sizes == [1, 1, 1]
    assert _names(db) == {"hold", "good0", "good1"}


class _Stop(BaseException):
    """Not an Exception, as SystemExit and KeyboardInterrupt are not."""


def test_a_write_raising_a_base_exception_leaves_no_writer_waiting(db: Database) -> None:
    commits, sizes = _observed(db)

    def stopping(conn: Connection) -> int:
        raise _Stop

    pool = ThreadPoolExecutor(4)
    try:
        held, release = _held_write(commits, pool, "hold")
        good = pool.submit(commits.write, lambda conn: _token(conn, "good"))
        bad = pool.submit(commits.write, stopping)
        time.sleep(0.2)
        release.set()
        held.result(10)
        assert good.result(10)  # a batch writer: answered, not left waiting (TimeoutError otherwise)
        with pytest.raises(_Stop):
            bad.result(10)
    finally:
        pool.shutdown(wait=False)  # a writer left waiting would hold the test for ever
    assert _names(db) == {"hold", "good"}
    assert sizes == [1, 1]


def test_no_writer_is_answered_before_its_commit(db: Database) -> None:
    """Whenever ``write`` returns, another connection already sees the row."""
    commits, sizes = _observed(db)
    unseen: list[str] = []

    def writer(n: int) -> None:
        for i in range(15):
            name = f"t{n}-{i}"
            commits.write(lambda conn, name=name: _token(conn, name))
            with db.reading() as conn:
                if conn.execute(select(tokens.c.pk).where(tokens.c.token_id == name)).first() is None:
                    unseen.append(name)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert unseen == []
    assert sum(sizes) == 90


def test_instances_of_several_senders_share_commits_and_all_arrive(tmp_path: Path, index_url: str) -> None:
    archive = Archive(index_url, tmp_path)
    sizes: list[int] = []
    archive.ingest.commits.observers.append(sizes.append)
    study = factory.instance().StudyInstanceUID
    series = [factory.instance().SeriesInstanceUID for _ in range(4)]
    datasets = [factory.instance(StudyInstanceUID=study, SeriesInstanceUID=series[n % 4], InstanceNumber=n)
                for n in range(80)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda ds: archive.add(ds), datasets))
    assert {result.outcome for result in results} == {Outcome.STORED}
    assert sum(sizes) == 80
    assert max(sizes) > 1
    with archive.db.reading() as conn:
        # Every instance counted once in its study's revision, whether batched or not.
        assert conn.execute(select(studies.c.revision).where(studies.c.study_uid == study)).scalar_one() == 80
        stored = set(conn.execute(select(instances.c.sop_uid)).scalars())
    assert stored == {ds.SOPInstanceUID for ds in datasets}


def test_a_refusal_in_a_batch_reaches_only_its_sender(tmp_path: Path, index_url: str) -> None:
    """An instance naming a series of another study, racing instances of good ones."""
    archive = Archive(index_url, tmp_path)
    first = factory.instance()
    archive.add(first)
    intruder = factory.instance(SeriesInstanceUID=first.SeriesInstanceUID)  # another study
    good = [factory.instance(StudyInstanceUID=first.StudyInstanceUID, SeriesInstanceUID=first.SeriesInstanceUID,
                             InstanceNumber=n) for n in range(2, 30)]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(archive.add, ds) for ds in [*good[:14], intruder, *good[14:]]]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(30).outcome)
            except IngestError as exc:
                outcomes.append(exc.failure)
    assert outcomes.count(Failure.SERIES_OF_ANOTHER_STUDY) == 1
    assert outcomes.count(Outcome.STORED) == len(good)


def _hold_the_lock(url: str, held, released, seconds: float) -> None:
    db = Database(url)
    with db.writing():
        held.set()
        time.sleep(seconds)
        released.value = time.time()  # the last thing before letting go
    time.sleep(1)  # still alive: the lock is handed over, not freed by the process's end


def _lock_held_elsewhere(tmp_path: Path, seconds: float):
    """An index, and another process holding its write lock for `seconds`."""
    url = f"sqlite:///{tmp_path / 'index.db'}"
    Database(url).migrate()
    context = multiprocessing.get_context("spawn")
    held, released = context.Event(), context.Value("d", 0.0)
    holder = context.Process(target=_hold_the_lock, args=(url, held, released, seconds))
    holder.start()
    assert held.wait(30)
    return url, holder, released


def test_a_writer_in_another_process_gets_the_lock_as_soon_as_it_is_free(tmp_path: Path) -> None:
    url, holder, released = _lock_held_elsewhere(tmp_path, 0.5)
    db = Database(url)
    with db.writing() as conn:
        got = time.time()
        _token(conn, "after")
    holder.join(10)
    assert holder.exitcode == 0
    assert "after" in _names(db)
    # Taken after the holder let go and well before it ended (SQLite's busy handler sleeps
    # up to 100 ms a turn; the lock is tried again every millisecond at most).
    assert released.value <= got < released.value + 0.5


def test_a_write_lock_held_too_long_is_a_database_error(tmp_path: Path) -> None:
    url, holder, _released = _lock_held_elsewhere(tmp_path, 5)
    try:
        impatient = Database(url, statement_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"), impatient.writing():
            pass
        assert time.monotonic() - started < 3
    finally:
        holder.join(10)
