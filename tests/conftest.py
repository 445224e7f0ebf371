"""Shared fixtures: every server-level test runs on SQLite and, when
LOCKSTEP_TEST_DATABASE_URL is set, on PostgreSQL too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server import horizon
from server.db import Database
from tests.support.lockstep_server import (
    TEST_HORIZON_PAST_DAYS, LockstepServer, migrated_database, running_server, skip_without_postgresql,
)

BACKENDS = ["sqlite", "postgresql"]
# In-process indexing too keeps the fixed-date fixtures inside the horizon (as the test servers do).
horizon.configure(TEST_HORIZON_PAST_DAYS, horizon.DEFAULT_FUTURE_DAYS)


# The slowest modules, longest first (seconds summed over a full run, 2026-12-03). With
# ``--dist loadfile --no-loadscope-reorder`` (Makefile) xdist hands out whole modules in this
# order, so the long ones start at once on different workers instead of last on one.
SLOWEST_MODULES = (
    "test_convergence.py", "test_sync_providers.py", "test_sync_microsoft.py", "test_hostile_input.py",
    "test_cli.py", "test_sync_google.py", "test_vdirsyncer.py", "test_convergence_dual.py",
    "test_notify_delivery.py", "test_tls_and_proxy.py", "test_sync_caldav.py", "test_nodes.py",
    "test_freebusy_fast_path.py", "test_sync_crash.py", "test_admin_browser.py", "test_api.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slowest modules first; a stable sort keeps each module's own order (and fixture grouping)."""
    rank = {name: place for place, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_MODULES)))


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        skip_without_postgresql()
    return str(request.param)


@pytest.fixture(scope="module")
def server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    """One running ``lockstep serve`` per test module and backend."""
    with running_server(tmp_path_factory.mktemp(f"lockstep-{backend}"), backend) as started:
        yield started


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[Database]:
    """An empty, migrated database of the backend, for in-process tests."""
    with migrated_database(backend, tmp_path) as migrated:
        yield migrated


@pytest.fixture
def tech(server: LockstepServer) -> tuple[str, str]:
    """A fresh tech (user name, app password) on the module's server."""
    return server.add_tech()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="module")
def two_nodes(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LockstepServer, LockstepServer]]:
    """Two ``lockstep serve`` processes on one database, as behind a load balancer."""
    with running_server(tmp_path_factory.mktemp(f"node-a-{backend}"), backend) as first:
        second = LockstepServer(data_dir=tmp_path_factory.mktemp(f"node-b-{backend}"),
                                database_url=first.database_url)
        try:
            yield first, second.start()
        finally:
            second.stop()
