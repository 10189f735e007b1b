"""The connection to the index: engine set-up, schema migrations, transactions.

SQLite runs in WAL mode with full synchronous commits (a committed row
survives power loss) and takes the write lock at BEGIN, so concurrent
associations queue instead of failing with "database is locked". Writers
queue on locks of ours first, a thread lock in the process and an advisory
file lock (``flock``) beside the database across worker processes: SQLite's
own busy handler waits by sleeping, up to 100 ms a turn, where a lock is
handed over the moment it is released.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from archive.config import IndexConfig

MIGRATIONS = Path(__file__).with_name("migrations")


class Database:
    """The index database; one per process, safe to share between threads."""

    def __init__(self, url: str, pool_size: int = 8, *, connect_timeout: float = 5.0,
                 statement_timeout: float = 60.0, connect_attempts: int = 3) -> None:
        """Open the index at `url`; every wait is bounded.

        `connect_timeout` bounds the wait for a pooled connection and for PostgreSQL's
        answer to a new one; `statement_timeout` bounds one statement on PostgreSQL
        and SQLite's wait for its write lock. A new PostgreSQL connection that fails
        is tried again, `connect_attempts` times in all, while the attempts fit in
        `connect_timeout`: a server restarting is waited for, briefly.
        """
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self._writer: threading.Lock | _FileLock | nullcontext = nullcontext()
        if self.is_sqlite:
            self._writer = threading.Lock()
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                self._writer = _FileLock(Path(f"{parsed.database}.writer"), statement_timeout)
            self.engine = create_engine(
                parsed, pool_size=pool_size, max_overflow=pool_size, pool_timeout=connect_timeout,
                connect_args={"timeout": statement_timeout, "check_same_thread": False},
            )
            _sqlite_pragmas(self.engine, statement_timeout)
        else:
            self.engine = create_engine(
                parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                pool_timeout=connect_timeout,
                connect_args={
                    "connect_timeout": max(1, round(connect_timeout)),  # libpq takes whole seconds
                    "options": f"-c statement_timeout={round(statement_timeout * 1000)}",
                    # A server gone silent (host down, network cut) is found by TCP keepalives.
                    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                    "keepalives_count": 3,
                },
            )
            _bounded_connect_attempts(self.engine, connect_attempts, connect_timeout)

    @classmethod
    def open(cls, index: IndexConfig) -> Database:
        """The index an ``index`` configuration section names, with its timeouts."""
        return cls(index.url, index.pool_size, connect_timeout=index.connect_timeout,
                   statement_timeout=index.statement_timeout, connect_attempts=index.connect_attempts)

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic ``upgrade head``)."""
        settings = AlembicConfig()
        settings.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            settings.attributes["connection"] = connection
            command.upgrade(settings, "head")

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for queries."""
        with self.engine.connect() as connection:
            yield connection

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A transaction that commits when the block ends and rolls back on error."""
        with self._writer, self.engine.connect() as connection:
            if self.is_sqlite:
                connection = connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with connection.begin():
                yield connection

    def dispose(self) -> None:
        self.engine.dispose()


class _FileLock:
    """The index's write lock across processes (and threads): a thread lock, then
    ``flock`` on a file of its own beside the database.

    A waiter for another process tries again every 0.1 to 1 ms: not a kernel
    hand-over, which could not be bounded, but two orders finer than SQLite's
    busy handler, and given up after `timeout` seconds as SQLite would.
    Each process opens the file itself (after a fork too), since ``flock`` locks
    belong to the open file: one inherited across a fork would be shared.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        if not self._threads.acquire(timeout=self.timeout):
            raise _locked(f"no write lock within {self.timeout:g} s")
        try:
            if self._pid != os.getpid():
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                self._pid = os.getpid()
            assert self._fd is not None
            deadline, pause = time.monotonic() + self.timeout, 0.0001
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise _locked(f"another process held the write lock for {self.timeout:g} s") from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.001)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


def _locked(message: str) -> OperationalError:
    """The error SQLite's busy handler would end with, as the callers already handle it."""
    return OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(f"database is locked: {message}"))


def _bounded_connect_attempts(engine: Engine, attempts: int, within: float) -> None:
    """Connect up to `attempts` times, waiting a little longer before each, all within `within` seconds."""
    @event.listens_for(engine, "do_connect")
    def _connect(dialect, _record, cargs, cparams):
        deadline = time.monotonic() + within
        for attempt in range(1, attempts + 1):
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                pause = 0.25 * attempt
                if attempt == attempts or time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)


def _sqlite_pragmas(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN, so writers can take the lock up front.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={round(busy_timeout * 1000)}")
        # Upper-cased name columns are matched with LIKE; case-sensitive LIKE can use their index.
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))
