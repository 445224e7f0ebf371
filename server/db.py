"""Engine, transactions and migrations for SQLite (embedded) and PostgreSQL (scale-out).

Writers serialise per tech home: on PostgreSQL with a transaction-scoped
advisory lock, on SQLite with ``BEGIN IMMEDIATE`` (SQLite has one writer).
That is what keeps change-log revisions, and so sync tokens, monotonic for
every reader on every node.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from server.config import Config

_sqlite_begin: contextvars.ContextVar[str] = contextvars.ContextVar(
    "sqlite_begin", default="BEGIN"
)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

Query = tuple[Any, Mapping[str, Any]]  # a Core SELECT and its parameters
Rows = list[tuple[Any, ...]]


class Database:
    """One engine plus the transaction helpers every part of Lockstep uses."""

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}
            )
            _configure_sqlite(self.engine)
        else:
            # No server-side prepared statements: PostgreSQL's generic plan for
            # "href = ANY(:list)" filters row by row (see docs/BENCHMARKS.md).
            self.engine = create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                connect_args={"prepare_threshold": None},
            )
            # read_many's own connections: autocommit, no pre-ping (a dead one is retried once).
            self._batch_engine = create_engine(
                url, pool_size=max(1, pool_size // 4), max_overflow=pool_size // 2,
                isolation_level="AUTOCOMMIT", connect_args={"prepare_threshold": None},
            )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A consistent snapshot for one request's reads."""
        token = _sqlite_begin.set("BEGIN")
        try:
            with self._sessions() as session, session.begin():
                if not self.is_sqlite:
                    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                yield session
        finally:
            _sqlite_begin.reset(token)

    @contextlib.contextmanager
    def write(self, lock_keys: Iterable[str] = ("",)) -> Iterator[Session]:
        """A transaction holding the write locks of ``lock_keys`` (tech homes) until commit."""
        token = _sqlite_begin.set("BEGIN IMMEDIATE")
        try:
            with self._sessions() as session, session.begin():
                if not self.is_sqlite:
                    for key in sorted(set(lock_keys)):
                        session.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key(key)}
                        )
                yield session
        finally:
            _sqlite_begin.reset(token)

    def read_many(self, queries: Sequence[Query]) -> list[Rows]:
        """The rows of several SELECTs read in one snapshot, as the driver's tuples.

        A free/busy request is nothing but a few reads. Through a session on PostgreSQL they
        cost seven round trips (pre-ping, BEGIN, each statement, COMMIT), and on a busy machine
        each trip waits for two processes to be scheduled. Here they travel in one psycopg
        pipeline, ``BEGIN REPEATABLE READ READ ONLY``, the queries (prepared), ``COMMIT``: one
        round trip. SQLite reads in-process, in one read transaction.
        """
        if self.is_sqlite:
            with self.read() as session:
                return [plain_rows(session, statement, params) for statement, params in queries]
        return _pipelined_reads(self._batch_engine, queries)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        with self.engine.begin() as connection:
            if not self.is_sqlite:  # several nodes may start at once on a new database
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key("migrate")})
            config = alembic_config(self.url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()
        if not self.is_sqlite:
            self._batch_engine.dispose()


def open_database(config: Config, *, migrate: bool = True) -> Database:
    """The configured database, its schema brought up to date. Here, not beside the web app, so
    that a CLI command does not import Flask, Radicale and the metrics to reach it."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(config.database_url)
    if migrate:
        database.migrate()
    return database


def plain_rows(session: Session, statement: Any, params: Mapping[str, Any]) -> Rows:
    """Rows as the driver's own tuples, in the session's transaction.

    A year of a busy calendar is ~25,000 index rows; making a SQLAlchemy ``Row`` of each costs
    as much as the scan itself. The statement is still compiled by SQLAlchemy for the dialect,
    so the SQL is the same either way.
    """
    connection = session.connection()
    sql, args = _bound(statement, connection.dialect, params)
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, args)
        return cursor.fetchall()
    finally:
        cursor.close()


def _pipelined_reads(engine: Engine, queries: Sequence[Query]) -> list[Rows]:
    """PostgreSQL: every query in one pipeline and one snapshot. These connections are not
    pinged on checkout (that would be a round trip of its own): one the server has dropped
    (restart, failover, pg_terminate_backend) fails before anything is read, and then the
    whole pool is replaced, as its other connections are likely gone too, and the read retried."""
    import psycopg

    try:
        return _one_pipeline(engine, queries)
    except psycopg.OperationalError:
        engine.dispose()
        return _one_pipeline(engine, queries)


def _one_pipeline(engine: Engine, queries: Sequence[Query]) -> list[Rows]:
    """BEGIN REPEATABLE READ READ ONLY, the queries, COMMIT: one Sync, so one round trip. The
    queries are prepared on the connection (psycopg keeps them), so PostgreSQL plans each
    shape once per connection; their parameters are equalities and ranges, whose generic
    plans are the index scans (unlike the ``= ANY(list)`` that turned prepared statements off
    for sessions)."""
    pooled = engine.raw_connection()
    connection = pooled.driver_connection
    try:
        with connection.pipeline():
            connection.execute(_SNAPSHOT)
            cursors = []
            for statement, params in queries:
                cursor = connection.cursor()
                cursor.execute(*_bound(statement, engine.dialect, params), prepare=True)
                cursors.append(cursor)
            connection.execute("COMMIT")
        return [cursor.fetchall() for cursor in cursors]
    except BaseException:
        pooled.invalidate()  # dead, or left inside a failed transaction
        raise
    finally:
        pooled.close()


_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


def _bound(statement: Any, dialect: Any, params: Mapping[str, Any]) -> tuple[str, Any]:
    """(SQL, driver parameters) of ``statement``, expanding IN lists."""
    state = _compiled(statement, dialect).construct_expanded_state(dict(params))
    values = {name: state.processors[name](value) if name in state.processors else value
              for name, value in state.parameters.items()}
    if state.positiontup is not None:
        return state.statement, tuple(values[name] for name in state.positiontup)
    return state.statement, values


@lru_cache(maxsize=128)
def _compiled(statement: Any, dialect: Any) -> Any:
    return statement.compile(dialect=dialect)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock``."""
    digest = hashlib.sha256(("lockstep:" + name).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def alembic_config(url: str) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _configure_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers; we issue BEGIN ourselves to choose IMMEDIATE."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        connection.exec_driver_sql(_sqlite_begin.get())
