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
from collections.abc import Iterable, Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

_sqlite_begin: contextvars.ContextVar[str] = contextvars.ContextVar(
    "sqlite_begin", default="BEGIN"
)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


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
