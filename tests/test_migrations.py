"""Schema migrations: applied at start, safe when several nodes start at once."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect, text

from server.db import Database
from tests.support.lockstep_server import PG_ENV, postgres_schema, skip_without_postgresql


def test_nodes_starting_together_on_an_empty_postgresql_database(tmp_path: Path) -> None:
    skip_without_postgresql()
    with postgres_schema(os.environ[PG_ENV]) as url:
        env = {**os.environ, "LOCKSTEP_DATABASE_URL": url}
        processes = [
            subprocess.Popen([sys.executable, "-m", "server.cli", "--data", str(tmp_path / f"n{n}"), "tech", "list"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in range(4)
        ]
        results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in processes]
        assert [code for code, _ in results] == [0, 0, 0, 0], results
        database = Database(url)
        try:
            assert {"techs", "dav_items", "dav_changes", "busy_intervals"} <= set(inspect(database.engine).get_table_names())
        finally:
            database.dispose()


def test_migrations_downgrade_and_upgrade_cleanly(tmp_path: Path) -> None:
    from alembic import command

    from server.db import alembic_config

    url = f"sqlite:///{tmp_path / 'm.db'}"
    database = Database(url)
    database.migrate()
    command.downgrade(alembic_config(url), "base")
    assert "techs" not in inspect(database.engine).get_table_names()
    database.migrate()
    assert "busy_intervals" in inspect(database.engine).get_table_names()
    database.dispose()


def test_upgrade_builds_the_islands_of_rows_indexed_before_them(tmp_path: Path) -> None:
    """0008 adds the merged pieces: a database indexed by an earlier version answers from them at once."""
    from alembic import command
    from sqlalchemy import insert, select

    from server.db import alembic_config
    from server.models import BusyInterval, BusyIsland

    url = f"sqlite:///{tmp_path / 'm.db'}"
    command.upgrade(alembic_config(url), "0007")
    database = Database(url)
    rows = [("ann", 0, 3600, "busy"), ("ann", 1800, 7200, "busy"), ("ann", 82800, 90000, "tentative"),
            ("bob", 600, 1200, "busy")]
    with database.engine.begin() as connection:
        connection.execute(insert(BusyInterval), [
            {"tech": tech, "collection_id": 1, "href": f"{n}.ics", "start_utc": a, "end_utc": b, "kind": kind}
            for n, (tech, a, b, kind) in enumerate(rows)])
    database.migrate()
    with database.engine.connect() as connection:
        stored = connection.execute(select(BusyIsland.tech, BusyIsland.start_utc, BusyIsland.end_utc,
                                           BusyIsland.kind)).all()
    database.dispose()
    assert sorted(stored) == [("ann", 0, 7200, "busy"), ("ann", 82800, 86400, "tentative"),
                              ("ann", 86400, 90000, "tentative"), ("bob", 600, 1200, "busy")]


def test_upgrade_keeps_the_outbox_mark_on_changes_logged_before_it(backend: str, tmp_path: Path) -> None:
    """0009 adds the changes' transaction ids: what the outbox dispatched before stays dispatched,
    what it had not yet reached is dispatched after."""
    with contextlib.ExitStack() as stack:
        if backend == "postgresql":
            url = stack.enter_context(postgres_schema(os.environ[PG_ENV]))
        else:
            url = f"sqlite:///{tmp_path / 'm.db'}"
        _upgrade_past_0009_with_a_mark(url)


def _upgrade_past_0009_with_a_mark(url: str) -> None:
    from alembic import command
    from sqlalchemy import insert, select

    from server.caldav_bridge import outbox
    from server.caldav_bridge.engine import JOB_PUSH
    from server.db import alembic_config
    from server.models import Job, Marker

    command.upgrade(alembic_config(url), "0008")
    database = Database(url)
    with database.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO dav_changes (id, collection_id, collection_path, href, uid, operation, created_at) "
            "VALUES (:id, 1, 'ann/bookings', :href, :href, 'put', '2026-12-04 00:00:00')"),
            [{"id": n, "href": f"{n}.ics"} for n in (1, 2, 3)])
        connection.execute(insert(Marker), [{"name": outbox.MARK_ID, "value": 2}])
    database.migrate()
    assert outbox.dispatch_changes(database, JOB_PUSH) == 1
    with database.read() as session:
        assert [p for p in session.scalars(select(Job.payload))] == ['{"href": "3.ics", "path": "ann/bookings"}']
    database.dispose()
