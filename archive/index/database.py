"""The connection to the index: engine set-up, schema migrations, transactions.

SQLite runs in WAL mode with full synchronous commits (a committed row
survives power loss) and takes the write lock at BEGIN, so concurrent
associations queue instead of failing with "database is locked". Writers in
one process queue on a lock of ours first: SQLite's own busy handler waits by
sleeping, up to 100 ms a turn, where a lock hands over at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

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
        self._writer = threading.Lock() if self.is_sqlite else nullcontext()
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
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
