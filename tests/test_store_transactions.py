"""In-process checks of the store: item writes and change rows commit together or not at all, and
the outbox turns every committed change into a push, whatever order the writers commit in."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from server.caldav_bridge import outbox
from server.caldav_bridge.engine import JOB_PUSH
from server.dav import store
from server.db import Database
from server.models import DavChange, DavItem, Job, Marker
from server.techs import add_tech
from tests.support.lockstep_server import migrated_database, skip_without_postgresql


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


# -- the outbox ---------------------------------------------------------------------------------
def _book(database: Database, tech: str, href: str) -> None:
    with database.write([tech]) as session:
        store.put_item(session, store.get_collection(session, f"{tech}/bookings"), href, _item(href[:-4]))


def _pushes(database: Database) -> list[tuple[str, str]]:
    with database.read() as session:
        payloads = session.scalars(select(Job.payload).where(Job.kind == JOB_PUSH).order_by(Job.id))
        return [(p["path"], p["href"]) for p in map(json.loads, payloads)]


def _waiting(database: Database) -> bool:
    [rows] = database.read_many([outbox.waiting_query()])
    return bool(rows)


def _dispatch_everything(database: Database) -> None:
    """Dispatch until the mark covers the newest change. On PostgreSQL an open transaction anywhere
    in the cluster (another test worker's, in CI) holds finished changes back until it ends, so an
    empty batch does not mean the outbox is done; the changes wait, and so does this."""
    deadline = time.monotonic() + 30
    while True:
        outbox.dispatch_changes(database, JOB_PUSH)
        with database.read() as session:
            newest = session.execute(select(DavChange.txid, DavChange.id)
                                     .order_by(DavChange.txid.desc(), DavChange.id.desc()).limit(1)).one()
            marks: dict[str, int] = dict(session.execute(select(Marker.name, Marker.value)).all())
        if (marks.get(outbox.MARK_TXID), marks.get(outbox.MARK_ID)) == tuple(newest):
            return
        assert time.monotonic() < deadline, f"changes up to {tuple(newest)} still undispatched, mark {marks}"
        time.sleep(0.05)


def test_a_change_committed_after_a_later_one_is_still_dispatched(tmp_path: Path) -> None:
    """PostgreSQL: Ana's write takes its change id first and commits last, after Ben's has been
    dispatched. With a mark on ids alone her booking was never pushed (CI, test_nodes.py)."""
    skip_without_postgresql()
    with migrated_database("postgresql", tmp_path) as database:
        for tech in ("ana", "ben"):
            add_tech(database, tech, name=tech, email=f"{tech}@example.com", tz="UTC", password="pw")
        with database.write(["ana"]) as slow:
            store.put_item(slow, store.get_collection(slow, "ana/bookings"), "early.ics", _item("early"))
            _book(database, "ben", "late.ics")  # commits while Ana's transaction is still open
            # Ben's change waits behind Ana's open transaction instead of moving the mark past her.
            assert not _waiting(database)
            assert outbox.dispatch_changes(database, JOB_PUSH) == 0
        _dispatch_everything(database)
        assert sorted(_pushes(database)) == [("ana/bookings", "early.ics"), ("ben/bookings", "late.ics")]
        assert not _waiting(database) and outbox.dispatch_changes(database, JOB_PUSH) == 0


def test_concurrent_writers_have_every_booking_dispatched_once(database: Database) -> None:
    """Four techs write at once while the outbox dispatches; in the end each booking was queued
    exactly once (the push job's dedupe key absorbs nothing: every href is new)."""
    techs = [f"t{n}" for n in range(4)]
    for tech in techs:
        add_tech(database, tech, name=tech, email=f"{tech}@example.com", tz="UTC", password="pw")
    done = threading.Event()
    errors: list[BaseException] = []

    def write(tech: str) -> None:
        try:
            for n in range(15):
                _book(database, tech, f"{tech}-{n}.ics")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def dispatch() -> None:
        while not done.is_set():
            outbox.dispatch_changes(database, JOB_PUSH)

    writers = [threading.Thread(target=write, args=(tech,)) for tech in techs]
    dispatcher = threading.Thread(target=dispatch)
    dispatcher.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    dispatcher.join()
    assert not errors, errors
    _dispatch_everything(database)
    expected = sorted((f"{tech}/bookings", f"{tech}-{n}.ics") for tech in techs for n in range(15))
    assert sorted(_pushes(database)) == expected
