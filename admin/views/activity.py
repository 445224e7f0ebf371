"""Conflicts (both events side by side, resolve) and upcoming bookings with their sync status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from flask import Blueprint, abort, flash, redirect, request, url_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from admin.events import EventView, describe
from admin.panel import Panel, page
from admin.web_session import login_required
from server.dav import store
from server.dav.rights import BOOKINGS_CALENDAR
from server.models import Conflict, Connection, DavCollection, EventLink, RemoteCalendarRow, Tech, utcnow

UTC = timezone.utc
UPCOMING_DAYS = 60
MAX_BOOKINGS_PER_TECH = 100


@dataclass(frozen=True)
class ConflictView:
    id: int
    tech: str
    created_at: datetime
    resolved_at: datetime | None
    booking: EventView
    other: EventView
    other_calendar: str


@dataclass(frozen=True)
class BookingView:
    uid: str
    event: EventView
    starts: int
    sync: dict[str, str]  # provider -> synced | pending | changed locally | needs_reauth ...


def register(bp: Blueprint, panel: Panel) -> None:
    @bp.get("/conflicts")
    @login_required
    def conflicts():  # type: ignore[no-untyped-def]
        state = request.args.get("state", "open")
        if state not in ("open", "resolved"):
            state = "open"
        with panel.database.read() as session:
            query = select(Conflict).order_by(Conflict.created_at.desc()).limit(200)
            query = query.where(Conflict.resolved_at.is_(None) if state == "open"
                                else Conflict.resolved_at.is_not(None))
            zones = dict(session.execute(select(Tech.username, Tech.timezone)).all())
            views = [_conflict_view(session, row, zones.get(row.tech, "UTC"))
                     for row in session.scalars(query)]
            open_count = session.scalar(select(func.count()).where(Conflict.resolved_at.is_(None)))
        return page("conflicts.html", conflicts=views, state=state, open_count=open_count)

    @bp.post("/conflicts/<int:conflict_id>/resolve")
    @login_required
    def conflict_resolve(conflict_id: int):  # type: ignore[no-untyped-def]
        with panel.database.read() as session:
            row = session.get(Conflict, conflict_id)
            if row is None:
                abort(404)
            tech = row.tech
        note = request.form.get("note", "").strip()[:500]
        with panel.database.write([tech]) as session:
            row = session.get(Conflict, conflict_id)
            if row is not None and row.resolved_at is None:
                row.resolved_at = utcnow()
        panel.audit("conflict.resolve", tech, f"conflict {conflict_id}" + (f": {note}" if note else ""))
        flash(f"Conflict of {tech} marked resolved.", "notice")
        return redirect(url_for("admin.conflicts"), 303)

    @bp.get("/bookings")
    @login_required
    def bookings():  # type: ignore[no-untyped-def]
        only = request.args.get("tech") or None
        now = datetime.now(UTC)
        with panel.database.read() as session:
            query = select(Tech).order_by(Tech.username)
            if only:
                query = query.where(Tech.username == only)
            techs = list(session.scalars(query))
            per_tech = {t.username: _upcoming(session, t, now) for t in techs}
            all_names = list(session.scalars(select(Tech.username).order_by(Tech.username)))
        return page("bookings.html", techs=techs, per_tech=per_tech, only=only, all_names=all_names,
                    days=UPCOMING_DAYS)


def _conflict_view(session: Session, row: Conflict, zone: str) -> ConflictView:
    booking_text = None
    for item in store.items_by_uid(session, row.booking_uid):
        collection = session.get(DavCollection, item.collection_id)
        if collection is not None and collection.path == f"{row.tech}/{BOOKINGS_CALENDAR}":
            booking_text = item.text
    path, _, href = row.other_ref.rpartition("/")
    other_text = None
    collection = store.get_collection(session, path)
    if collection is not None:
        items = store.get_items(session, collection.id, [href])
        other_text = items[0].text if items else None
    return ConflictView(row.id, row.tech, row.created_at, row.resolved_at, describe(booking_text, zone),
                        describe(other_text, zone), path.split("/", 1)[-1])


def _upcoming(session: Session, tech: Tech, now: datetime) -> list[BookingView]:
    collection = store.get_collection(session, f"{tech.username}/{BOOKINGS_CALENDAR}")
    if collection is None:
        return []
    start, end = int(now.timestamp()), int((now + timedelta(days=UPCOMING_DAYS)).timestamp())
    items = store.items_in_range(session, collection.id, "VEVENT", start, end)
    items = sorted(items, key=lambda i: i.range_start)[:MAX_BOOKINGS_PER_TECH]
    targets = session.execute(
        select(Connection, RemoteCalendarRow)
        .join(RemoteCalendarRow, RemoteCalendarRow.connection_id == Connection.id)
        .where(Connection.tech_id == tech.id, RemoteCalendarRow.selected.is_(True))).all()
    # Where bookings of each connection go: the chosen calendar, else the primary one.
    booking_calendars = {}
    for connection, calendar in targets:
        wanted = connection.booking_calendar
        if (wanted and calendar.remote_id == wanted) or (not wanted and calendar.primary):
            booking_calendars[connection.provider] = (connection, calendar)
    links = {}
    if booking_calendars and items:
        for link in session.scalars(select(EventLink).where(
                EventLink.local_path == collection.path,
                EventLink.local_href.in_([i.href for i in items]),
                EventLink.remote_calendar_id.in_([c.id for _, c in booking_calendars.values()]))):
            links[(link.remote_calendar_id, link.local_href)] = link
    out = []
    for item in items:
        sync: dict[str, str] = {}
        for provider, (connection, calendar) in sorted(booking_calendars.items()):
            link = links.get((calendar.id, item.href))
            if link is None:
                status = "pending"
            elif link.local_etag == item.etag:
                status = "synced"
            else:
                status = "update pending"
            if connection.state != "ok" and status != "synced":
                status += f" ({connection.state})"
            sync[provider] = status
        out.append(BookingView(item.uid, describe(item.text, tech.timezone), item.range_start, sync))
    return out
