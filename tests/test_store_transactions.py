"""In-process checks of the store: item writes and change rows commit together or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from server.dav import store
from server.db import Database
from server.models import DavChange, DavItem
from server.techs import add_tech
from tests.support.lockstep_server import PG_ENV, postgres_schema


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[Database]:
    if backend == "postgresql":
        with postgres_schema(os.environ[PG_ENV]) as url:
            db = Database(url)
            db.migrate()
            yield db
            db.dispose()
    else:
        db = Database(f"sqlite:///{tmp_path / 'lockstep.db'}")
        db.migrate()
        yield db
        db.dispose()


def _item(uid: str) -> store.ItemData:
    return store.ItemData(text=f"BEGIN:VCALENDAR\r\nUID:{uid}\r\nEND:VCALENDAR\r\n", uid=uid,
                          etag=f'"{uid}"', component_name="VEVENT", range_start=0, range_end=10)


def _counts(database: Database) -> tuple[int, int]:
    with database.read() as session:
        return (session.scalar(select(func.count()).select_from(DavItem)) or 0,
                session.scalar(select(func.count()).select_from(DavChange)) or 0)


def test_failed_transaction_leaves_no_item_and_no_change_row(database: Database) -> None:
    add_tech(database, "ana", name="Ana", email="ana@example.com", tz="Europe/Berlin", password="pw")
    before = _counts(database)
    with pytest.raises(RuntimeError, match="boom"):
        with database.write(["ana"]) as session:
            calendar = store.get_collection(session, "ana/bookings")
            assert calendar is not None
            store.put_item(session, calendar, "one.ics", _item("one"))
            store.put_item(session, calendar, "two.ics", _item("two"))
            raise RuntimeError("boom")
    assert _counts(database) == before


def test_every_write_logs_one_change_with_increasing_revision(database: Database) -> None:
    add_tech(database, "ben", name="Ben", email="ben@example.com", tz="UTC", password="pw")
    with database.write(["ben"]) as session:
        calendar = store.get_collection(session, "ben/bookings")
        assert calendar is not None
        start = store.current_revision(session, calendar.id)
        store.put_item(session, calendar, "a.ics", _item("a"))
        store.put_item(session, calendar, "a.ics", _item("a"))
        store.delete_item(session, calendar, "a.ics")
        changes = session.execute(
            select(DavChange.operation, DavChange.href).where(
                DavChange.collection_id == calendar.id, DavChange.id > start).order_by(DavChange.id)
        ).all()
        assert [tuple(c) for c in changes] == [("put", "a.ics"), ("put", "a.ics"), ("delete", "a.ics")]
        assert store.changed_hrefs(session, calendar.id, start) == ["a.ics"]
        assert store.current_revision(session, calendar.id) > start


def test_deleting_a_home_logs_each_item(database: Database) -> None:
    add_tech(database, "cy", name="Cy", email="cy@example.com", tz="UTC", password="pw")
    with database.write(["cy"]) as session:
        calendar = store.get_collection(session, "cy/bookings")
        assert calendar is not None
        for uid in ("x", "y"):
            store.put_item(session, calendar, f"{uid}.ics", _item(uid))
    with database.write(["cy"]) as session:
        store.delete_collection_tree(session, "cy")
    with database.read() as session:
        assert store.get_collection(session, "cy") is None
        assert store.get_collection(session, "cy/bookings") is None
        deletes = session.scalars(select(DavChange.href).where(
            DavChange.collection_path == "cy/bookings", DavChange.operation == "delete")).all()
        assert sorted(deletes) == ["x.ics", "y.ics"]
