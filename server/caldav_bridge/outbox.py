"""Turns the change log into push jobs, exactly once, whichever worker gets there first."""

from __future__ import annotations

from sqlalchemy import func, select

from server import jobs
from server.db import Database, Query
from server.models import DavChange, Marker, RemoteCalendarRow

MARKER = "dispatched_changes"
BATCH = 500

# A change past the marker: what an idle worker reads before taking the outbox's write lock.
_WAITING = select(DavChange.id).where(DavChange.id > func.coalesce(
    select(Marker.value).where(Marker.name == MARKER).scalar_subquery(), 0)).limit(1)


def waiting_query() -> Query:
    """Is there a change the outbox has not dispatched? For ``Database.read_many``."""
    return _WAITING, {}


def dispatch_changes(database: Database, job_kind: str) -> int:
    """Queue a push for every changed item in a calendar that syncs outward; returns how many."""
    with database.write(["outbox"]) as session:
        marker = session.get(Marker, MARKER)
        if marker is None:
            marker = Marker(name=MARKER, value=0)
            session.add(marker)
            session.flush()
        changes = session.execute(
            select(DavChange.id, DavChange.collection_path, DavChange.href)
            .where(DavChange.id > marker.value).order_by(DavChange.id).limit(BATCH)).all()
        if not changes:
            return 0
        mirrored = set(session.scalars(select(RemoteCalendarRow.local_path).where(
            RemoteCalendarRow.selected.is_(True))))
        queued = 0
        for _, path, href in changes:
            if path.endswith("/bookings") or path in mirrored:
                if jobs.enqueue(session, job_kind, {"path": path, "href": href},
                                dedupe_key=f"push:{path}/{href}") is not None:
                    queued += 1
        marker.value = changes[-1][0]
        return queued
