"""Bookings: create, move and cancel events in a tech's bookings calendar, never double-booked.

Each operation runs in one write transaction holding the tech's lock: the
conflict check against the busy index, the item write, its change row and its
busy rows commit together, so of N concurrent requests for overlapping time
exactly one wins — on SQLite and across PostgreSQL nodes alike.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import icalendar
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.dav import store
from server.dav.rights import BOOKINGS_CALENDAR
from server.db import Database
from server.freebusy import index as busy_index
from server.freebusy.expand import Span
from server.models import DavCollection, DavItem, IdempotentResponse

UTC = timezone.utc
PRODID = "-//Lockstep//Bookings//EN"


class BookingError(Exception):
    """A refused booking request: HTTP status, error code and a sentence for a person."""

    def __init__(self, status: int, code: str, message: str, conflicts: list[Span] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.conflicts = conflicts or []


@dataclass(frozen=True)
class BookingRequest:
    tech: str
    start: datetime
    end: datetime
    summary: str
    description: str = ""
    location: str = ""
    customer: dict[str, str] | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def create_booking(database: Database, request: BookingRequest, *, token: str, idempotency_key: str | None) -> Answer:
    fingerprint = _fingerprint(request)
    with database.write([request.tech]) as session:
        if idempotency_key:
            replay = _replay(session, token, idempotency_key, fingerprint)
            if replay is not None:
                return replay
        calendar = _bookings_calendar(session, request.tech)
        _refuse_conflicts(session, request.tech, request.start, request.end, ignore_href=None)
        uid = f"lockstep-{uuid.uuid4().hex}"
        href = f"{uid}.ics"
        store.put_item(session, calendar, href, store.item_data_from_text(_ics(uid, request), calendar.path))
        answer = Answer(201, booking_body(request.tech, uid, request.start, request.end))
        if idempotency_key:
            session.add(IdempotentResponse(token_name=token, key=idempotency_key, request_hash=fingerprint,
                                           status=answer.status, body=json.dumps(answer.body)))
        return answer


def move_booking(database: Database, tech: str, uid: str, changes: dict[str, Any]) -> Answer:
    with database.write([tech]) as session:
        calendar = _bookings_calendar(session, tech)
        item = _booking_item(session, calendar, uid)
        event = icalendar.Calendar.from_ical(item.text).walk("VEVENT")[0]
        start = changes.get("start") or event["DTSTART"].dt.astimezone(UTC)
        end = changes.get("end") or event["DTEND"].dt.astimezone(UTC)
        if end <= start:
            raise BookingError(400, "invalid_range", "end must be after start")
        _refuse_conflicts(session, tech, start, end, ignore_href=item.href)
        request = BookingRequest(
            tech=tech, start=start, end=end,
            summary=changes.get("summary", str(event.get("SUMMARY", ""))),
            description=changes.get("description", str(event.get("DESCRIPTION", ""))),
            location=changes.get("location", str(event.get("LOCATION", ""))),
        )
        sequence = int(event.get("SEQUENCE", 0)) + 1
        text = _ics(uid, request, sequence=sequence, extra=_customer_props(event))
        store.put_item(session, calendar, item.href, store.item_data_from_text(text, calendar.path))
        return Answer(200, booking_body(tech, uid, start, end))


def cancel_booking(database: Database, tech: str, uid: str) -> None:
    with database.write([tech]) as session:
        calendar = _bookings_calendar(session, tech)
        item = _booking_item(session, calendar, uid)
        store.delete_item(session, calendar, item.href)


def find_booking(database: Database, uid: str) -> tuple[str, str] | None:
    """(tech, iCalendar text) of a booking by uid."""
    with database.read() as session:
        for item in store.items_by_uid(session, uid):
            collection = session.get(DavCollection, item.collection_id)
            if collection is not None and collection.path.endswith("/" + BOOKINGS_CALENDAR):
                return collection.path.split("/", 1)[0], item.text
    return None


def booking_body(tech: str, uid: str, start: datetime, end: datetime) -> dict[str, Any]:
    return {"uid": uid, "tech": tech, "start": rfc3339(start), "end": rfc3339(end),
            "href": f"/dav/{tech}/{BOOKINGS_CALENDAR}/{uid}.ics"}


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bookings_calendar(session: Session, tech: str) -> DavCollection:
    calendar = store.get_collection(session, f"{tech}/{BOOKINGS_CALENDAR}")
    if calendar is None:
        raise BookingError(404, "unknown_tech", f"no tech named {tech!r}")
    return calendar


def _booking_item(session: Session, calendar: DavCollection, uid: str) -> DavItem:
    items = [i for i in store.items_by_uid(session, uid) if i.collection_id == calendar.id]
    if not items:
        raise BookingError(404, "unknown_booking", f"no booking {uid!r} for this tech")
    return items[0]


def _refuse_conflicts(session: Session, tech: str, start: datetime, end: datetime, ignore_href: str | None) -> None:
    policy = busy_index.policy_for(session, tech)
    if policy is None:
        raise BookingError(404, "unknown_tech", f"no tech named {tech!r}")
    guard_start = start - timedelta(minutes=policy.buffer_before_min)
    guard_end = end + timedelta(minutes=policy.buffer_after_min)
    busy, _ = busy_index.busy_for(session, tech, policy, guard_start, guard_end, ignore_href=ignore_href)
    if busy:
        raise BookingError(409, "conflict", f"{tech} is busy during part of that time", conflicts=busy)


def _replay(session: Session, token: str, key: str, fingerprint: str) -> Answer | None:
    stored = session.scalar(select(IdempotentResponse).where(
        IdempotentResponse.token_name == token, IdempotentResponse.key == key))
    if stored is None:
        return None
    if stored.request_hash != fingerprint:
        raise BookingError(422, "idempotency_key_reused",
                           "this Idempotency-Key was already used for a different request")
    return Answer(stored.status, json.loads(stored.body))


def _fingerprint(request: BookingRequest) -> str:
    payload = json.dumps({**request.__dict__, "start": rfc3339(request.start), "end": rfc3339(request.end)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _customer_props(event: Any) -> dict[str, str]:
    return {key: str(value) for key, value in event.items() if key.startswith("X-LOCKSTEP-CUSTOMER-")}


def _ics(uid: str, request: BookingRequest, *, sequence: int = 0, extra: dict[str, str] | None = None) -> str:
    calendar = icalendar.Calendar()
    calendar.add("PRODID", PRODID)
    calendar.add("VERSION", "2.0")
    event = icalendar.Event()
    event.add("UID", uid)
    event.add("DTSTAMP", datetime.now(UTC))
    event.add("DTSTART", request.start.astimezone(UTC))
    event.add("DTEND", request.end.astimezone(UTC))
    event.add("SUMMARY", request.summary)
    event.add("SEQUENCE", sequence)
    event.add("STATUS", "CONFIRMED")
    event.add("TRANSP", "OPAQUE")
    description = request.description
    customer = {k: v for k, v in (request.customer or {}).items() if v}
    if customer:
        lines = [f"{k.capitalize()}: {v}" for k, v in customer.items()]
        description = "\n".join(filter(None, [description, "Customer:", *lines]))
    if description:
        event.add("DESCRIPTION", description)
    if request.location:
        event.add("LOCATION", request.location)
    # vText: escaped like any TEXT value (an X- property would otherwise take a line break raw).
    for key, value in customer.items():
        event.add(f"X-LOCKSTEP-CUSTOMER-{key.upper()}", icalendar.vText(value))
    for key, value in (extra or {}).items():  # as read back from a stored booking: already escaped
        event.add(key, value)
    calendar.add_component(event)
    return calendar.to_ical().decode()
