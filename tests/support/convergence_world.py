"""The running system a convergence scenario acts on: server, worker, remote accounts, clients.

One world serves many scenarios (each gets fresh techs), because starting
processes is the slow part. Layout: ``lockstep serve --no-workers`` plus one
``lockstep worker`` process that a fault can SIGKILL and restart, both on the
same database (SQLite file or a PostgreSQL schema).

A world kind names one provider ("google") or several joined by "+"
("google+microsoft"): every tech is then connected to each far end in that
order, so bookings go to the first one's primary calendar (Lockstep's default
target) and every account's personal events block the tech's time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import sqlalchemy

from server import techs
from server.techs import Settings
from tests.support.api import Api, api_for
from tests.support.lockstep_server import PG_ENV, LockstepServer, postgres_schema, skip_without_postgresql
from tests.support.lockstep_worker import LockstepWorker
from tests.support.remote_accounts import RemoteAccount, open_account

UTC = timezone.utc
TECH_ZONE = "America/Los_Angeles"
# The scenario window: five weeks without a DST change, far enough ahead for every booking.
WINDOW_START = datetime(2027, 2, 1, 8, 0, tzinfo=UTC)  # Monday 00:00 in Los Angeles
WINDOW_DAYS = 35
POLL_SECONDS = 3
LEASE_SECONDS = 4
SEPARATOR = "+"  # joins the providers of a world kind: "google+microsoft"
DUAL = "google+microsoft"  # bookings to Google, Lockstep's default target (the first account connected)
DUAL_OUTLOOK_FIRST = "microsoft+google"  # the same two accounts, bookings to Outlook


@dataclass
class Tech:
    user: str
    password: str
    dav: requests.Session

    @property
    def email(self) -> str:
        return f"{self.user}@example.com"


@dataclass
class World:
    server: LockstepServer
    accounts: list[RemoteAccount]  # in the order each tech connects them; the first holds the bookings
    api: Api
    backend: str
    worker: LockstepWorker
    app_name: str = ""  # PostgreSQL application_name of every process of this world
    techs: list[Tech] = field(default_factory=list)

    @property
    def account(self) -> RemoteAccount:
        """The account bookings are written to (the first connected)."""
        return self.accounts[0]

    @property
    def provider(self) -> str:
        """The world kind: "google", "microsoft", or "google+microsoft"."""
        return SEPARATOR.join(account.provider for account in self.accounts)

    def side(self, provider: str) -> RemoteAccount:
        """The account of ``provider`` (LookupError when the world has none)."""
        for account in self.accounts:
            if account.provider == provider:
                return account
        raise LookupError(f"this {self.provider} world has no {provider} account")

    @property
    def window(self) -> tuple[datetime, datetime]:
        return WINDOW_START, WINDOW_START + timedelta(days=WINDOW_DAYS)

    def add_tech(self) -> Tech:
        """A tech whose policy makes every side's busy time comparable exactly:
        tentative blocks, and all-day blocks whole local days (not working hours)."""
        user, password = self.server.add_tech(tz=TECH_ZONE)
        techs.update_tech(self.server.database, user, settings=Settings(tentative_blocks=True, allday="whole_day"))
        for account in self.accounts:
            account.connect(self.server, user)
        session = requests.Session()
        session.auth = (user, password)
        tech = Tech(user, password, session)
        self.techs.append(tech)
        return tech

    def mirror_url(self, tech: Tech, account: RemoteAccount | None = None) -> str:
        """The tech's mirror calendar of ``account`` (default: the first account's)."""
        return f"{self.server.dav_url}{tech.user}/{(account or self.account).mirror_slug}/"

    # -- faults on our side ------------------------------------------------------------
    def kill_worker(self) -> None:
        """SIGKILL the worker process: its claimed jobs stay leased until the lease runs out."""
        if self.worker.process is not None:
            self.worker.kill()

    def ensure_worker(self) -> None:
        if self.worker.process is None or self.worker.process.poll() is not None:
            self.worker.process = None
            self.worker.start()

    def drop_database_connections(self) -> int:
        """PostgreSQL: terminate every backend of this world's processes (not other tests')."""
        if self.backend != "postgresql":
            return 0
        engine = sqlalchemy.create_engine(self.server.database_url)
        try:
            with engine.begin() as connection:
                killed = connection.execute(sqlalchemy.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"), {"name": self.app_name}).scalar()
        finally:
            engine.dispose()
        return int(killed or 0)


def module_world(factory: pytest.TempPathFactory, backend: str, provider: str) -> Iterator[World]:
    """A world for one test module's fixture (PostgreSQL only where it is configured)."""
    if backend == "postgresql":
        skip_without_postgresql()
    with open_world(factory.mktemp(f"convergence-{provider}-{backend}"), backend, provider) as world:
        yield world


@contextlib.contextmanager
def open_world(data_dir: Path, backend: str, provider: str = "google") -> Iterator[World]:
    """Server (web only) + one worker process + each provider's far end, all stopped afterwards."""
    with contextlib.ExitStack() as stack:
        accounts = [stack.enter_context(open_account(name)) for name in provider.split(SEPARATOR)]
        app_name = ""
        if backend == "postgresql":
            app_name = "lockstep-conv-" + secrets.token_hex(4)
            base = stack.enter_context(postgres_schema(os.environ[PG_ENV]))
            database_url = f"{base}&application_name={app_name}"
        else:
            database_url = f"sqlite:///{data_dir / 'lockstep.db'}"
        env = {**{k: v for account in accounts for k, v in account.env().items()},
               "LOCKSTEP_SYNC_POLL_SECONDS": str(POLL_SECONDS),
               "LOCKSTEP_SYNC_LEASE_SECONDS": str(LEASE_SECONDS)}
        server = LockstepServer(data_dir=data_dir, database_url=database_url, extra_env=env)
        stack.callback(server.stop)
        server.start("--no-workers")
        worker = LockstepWorker(data_dir=data_dir, database_url=database_url, public_url=server.url, extra_env=env)
        stack.callback(worker.stop)
        worker.start()
        yield World(server=server, accounts=accounts, api=api_for(server, "bookings"), backend=backend,
                    worker=worker, app_name=app_name)
