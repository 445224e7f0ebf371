"""Start a real ``lockstep serve`` process (SQLite or PostgreSQL) and drive its CLI."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from server import techs
from server.config import normalize_database_url
from server.db import Database
from server.models import RemoteCalendarRow

PG_ENV = "LOCKSTEP_TEST_DATABASE_URL"


def skip_without_postgresql() -> None:
    """Skip a PostgreSQL case when no database is configured.

    The README's test command must work on a machine without PostgreSQL; ``.ci/run`` always sets
    ``LOCKSTEP_TEST_DATABASE_URL``, so in CI these cases run and never skip.
    """
    if not os.environ.get(PG_ENV):
        pytest.skip(f"{PG_ENV} not set")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Fixtures are written on fixed dates (2026-12 and on): a long past horizon keeps them inside the
# busy index and provider listings as the calendar moves on. Benchmarks pass None (the default).
TEST_HORIZON_PAST_DAYS = 3650


def horizon_env(past_days: int | None) -> dict[str, str]:
    return {} if past_days is None else {"LOCKSTEP_FREEBUSY_HORIZON_PAST_DAYS": str(past_days)}


@contextlib.contextmanager
def postgres_schema(base_url: str, keep: bool = False) -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards unless ``keep`` (a benchmark's
    data kept for a later run); yields a URL using it."""
    import sqlalchemy

    url = normalize_database_url(base_url)
    schema = "lockstep_t_" + secrets.token_hex(6)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        if not keep:
            with engine.begin() as connection:
                connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@contextlib.contextmanager
def migrated_database(backend: str, directory: Path) -> Iterator[Database]:
    """An empty, migrated database of ``backend``: a fresh PostgreSQL schema, or a SQLite file in
    ``directory``; for in-process tests that drive the store and the queues without a server."""
    with contextlib.ExitStack() as stack:
        if backend == "postgresql":
            url = stack.enter_context(postgres_schema(os.environ[PG_ENV]))
        else:
            url = f"sqlite:///{directory / 'lockstep.db'}"
        database = Database(url)
        stack.callback(database.dispose)
        database.migrate()
        yield database


@dataclass
class LockstepServer:
    data_dir: Path
    database_url: str
    port: int = field(default_factory=free_port)
    auth_delay: float = 0.3
    extra_env: dict[str, str] = field(default_factory=dict)
    horizon_past_days: int | None = TEST_HORIZON_PAST_DAYS
    process: subprocess.Popen[bytes] | None = None
    _database: Database | None = None
    # "https" when started with --tls-cert/--tls-key; ``verify`` is what requests
    # checks the certificate against (a CA bundle path) while waiting for /healthz.
    scheme: str = "http"
    verify: bool | str = True

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def dav_url(self) -> str:
        return f"{self.url}/dav/"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"server-{self.port}.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            **horizon_env(self.horizon_past_days),
            "LOCKSTEP_DATABASE_URL": self.database_url,
            "LOCKSTEP_SERVER_AUTH_DELAY": str(self.auth_delay),
            "LOCKSTEP_SERVER_PUBLIC_URL": self.url,
            **self.extra_env,
        })
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "server.cli", "--data", str(self.data_dir), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"lockstep {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    @property
    def database(self) -> Database:
        """The server's database, opened in the test process (the CLI's service functions)."""
        if self._database is None:
            self._database = Database(normalize_database_url(self.database_url))
        return self._database

    def add_tech(self, username: str | None = None, password: str | None = None, tz: str = "America/Los_Angeles") -> tuple[str, str]:
        """Same service call as ``lockstep tech add`` (tests of the command itself are in test_cli)."""
        username = username or "t" + secrets.token_hex(4)
        password = password or secrets.token_urlsafe(12)
        techs.add_tech(self.database, username, name=f"Tech {username}", email=f"{username}@example.com",
                       tz=tz, password=password)
        return username, password

    def create_token(self, name: str | None = None, scope: str = "bookings") -> tuple[str, str]:
        name = name or "app" + secrets.token_hex(4)
        credential = techs.create_token(self.database, name, scope)
        return credential.name, credential.secret

    def start(self, *extra_args: str) -> LockstepServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "--data", str(self.data_dir), "serve",
             "--port", str(self.port), *extra_args],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90  # generous: CI runs four workers on two cores
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lockstep serve exited:\n{self.log_file.read_text()}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(self.url + "/healthz", timeout=2, verify=self.verify).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"lockstep serve did not come up:\n{self.log_file.read_text()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        if self._database is not None:
            self._database.dispose()
            self._database = None


@contextlib.contextmanager
def running_server(
    data_dir: Path, backend: str, *, start_args: Sequence[str] = (), keep_data: bool = False, **kwargs: object
) -> Iterator[LockstepServer]:
    """A started server on ``backend`` ("sqlite" or "postgresql"), stopped afterwards.

    ``start_args`` are extra ``lockstep serve`` arguments (e.g. ``--tls-cert``). ``keep_data``
    keeps a PostgreSQL schema too, its URL written to ``DATA/database_url`` (a benchmark's
    data); with ``keep_data``, a ``DATA/database_url`` already there is that schema, reused.
    """
    kept = data_dir / "database_url"
    with contextlib.ExitStack() as stack:
        if backend == "postgresql" and keep_data and kept.exists():
            database_url = kept.read_text().strip()
        elif backend == "postgresql":
            database_url = stack.enter_context(postgres_schema(os.environ[PG_ENV], keep=keep_data))
            if keep_data:
                data_dir.mkdir(parents=True, exist_ok=True)
                kept.write_text(database_url + "\n")
        else:
            database_url = f"sqlite:///{data_dir / 'lockstep.db'}"
        server = LockstepServer(data_dir=data_dir, database_url=database_url, **kwargs)  # type: ignore[arg-type]
        stack.callback(server.stop)
        yield server.start(*start_args)


def recorded_channels(server: LockstepServer) -> set[str]:
    """Push channel (Google) and subscription (Graph) ids the server has recorded: the ones its hooks trust."""
    with server.database.read() as session:
        return {c for c in session.scalars(select(RemoteCalendarRow.watch_channel)) if c}
