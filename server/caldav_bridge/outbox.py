"""Turns the change log into push jobs, exactly once, whichever worker gets there first.

The mark is the (transaction, id) of the last change dispatched, and only changes of finished
transactions are read (server/commit_order.py): a booking whose change id was taken before
another tech's but committed after it is still dispatched.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, select, tuple_

from server import jobs
from server.commit_order import oldest_running_transaction
from server.db import Database, Query
from server.models import DavChange, Marker, RemoteCalendarRow

MARK_ID, MARK_TXID = "dispatched_changes", "dispatched_changes_txid"
BATCH = 500


def _mark(name: str) -> ColumnElement[int]:
    return func.coalesce(select(Marker.value).where(Marker.name == name).scalar_subquery(), 0)


# Changes past the mark whose transactions have all finished, in commit order.
_DISPATCHABLE = (
    tuple_(DavChange.txid, DavChange.id) > tuple_(_mark(MARK_TXID), _mark(MARK_ID)),
    DavChange.txid < oldest_running_transaction(),
)
# What an idle worker reads before taking the outbox's write lock.
_WAITING = select(DavChange.id).where(*_DISPATCHABLE).limit(1)


def waiting_query() -> Query:
    """Is there a change the outbox has not dispatched? For ``Database.read_many``."""
    return _WAITING, {}


def dispatch_changes(database: Database, job_kind: str) -> int:
    """Queue a push for every changed item in a calendar that syncs outward; returns how many."""
    with database.write(["outbox"]) as session:
        changes = session.execute(
            select(DavChange.txid, DavChange.id, DavChange.collection_path, DavChange.href)
            .where(*_DISPATCHABLE).order_by(DavChange.txid, DavChange.id).limit(BATCH)).all()
        if not changes:
            return 0
        mirrored = set(session.scalars(select(RemoteCalendarRow.local_path).where(
            RemoteCalendarRow.selected.is_(True))))
        queued = 0
        for _, _, path, href in changes:
            if path.endswith("/bookings") or path in mirrored:
                if jobs.enqueue(session, job_kind, {"path": path, "href": href},
                                dedupe_key=f"push:{path}/{href}") is not None:
                    queued += 1
        last_txid, last_id = changes[-1][0], changes[-1][1]
        for name, value in ((MARK_TXID, last_txid), (MARK_ID, last_id)):
            session.merge(Marker(name=name, value=value))
        return queued
