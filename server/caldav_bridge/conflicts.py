"""A personal event overlapping a booking: the booking keeps the slot; the overlap is recorded once."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.dav.rights import BOOKINGS_CALENDAR
from server.freebusy.index import policy_for
from server.models import BusyInterval, Conflict, DavCollection, DavItem
from server.notify import notify


def record_conflicts(session: Session, tech: str, collection: DavCollection, href: str) -> int:
    """Record (once) every booking that the blocking time of ``collection/href`` overlaps."""
    bookings = session.scalar(select(DavCollection).where(DavCollection.path == f"{tech}/{BOOKINGS_CALENDAR}"))
    if bookings is None:
        return 0
    policy = policy_for(session, tech)  # tentative time blocks (and so conflicts) only if the tech says so
    kinds = ("busy", "tentative") if policy is not None and policy.tentative_blocks else ("busy",)
    mine = session.execute(select(BusyInterval.start_utc, BusyInterval.end_utc).where(
        BusyInterval.collection_id == collection.id, BusyInterval.href == href,
        BusyInterval.kind.in_(kinds))).all()
    found = 0
    for start, end in mine:
        overlapping = session.execute(
            select(DavItem.uid, DavItem.href).join(
                BusyInterval, (BusyInterval.collection_id == DavItem.collection_id) & (BusyInterval.href == DavItem.href))
            .where(BusyInterval.collection_id == bookings.id, BusyInterval.start_utc < end,
                   BusyInterval.end_utc > start).distinct()).all()
        for uid, _ in overlapping:
            reference = f"{collection.path}/{href}"
            exists = session.scalar(select(Conflict.id).where(
                Conflict.tech == tech, Conflict.booking_uid == uid, Conflict.other_ref == reference))
            if exists is not None:
                continue
            try:
                with session.begin_nested():
                    session.add(Conflict(tech=tech, booking_uid=uid, other_ref=reference))
            except IntegrityError:
                continue
            notify(session, tech, "conflict",
                   f"A personal event overlaps booking {uid}; the booking keeps the slot.")
            found += 1
    return found
