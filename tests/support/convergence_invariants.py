"""What must hold once a scenario has quiesced, one function per invariant.

Each takes the :class:`Observed` state of every side (read after quiescence)
and the scenario's :class:`Model`, and returns a list of differences (empty:
holds). Busy time is recomputed independently with tests/support/fb_reference
from the CalDAV items and from each provider's own expansion of the series
(read by tests/support/convergence_observers.py). A tech may be connected to
several providers: each is one :class:`RemoteSide`, and only the bookings
target holds bookings; the checks are written once for any number of sides.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import icalendar

from tests.support import fb_reference as ref
from tests.support.convergence_observers import RemoteItem
from tests.support.convergence_ops import Model
from tests.support.convergence_world import TECH_ZONE

UTC = timezone.utc
Span = tuple[datetime, datetime]
TRANSIENT_DEAD_ALLOWED = "reconnect"  # AuthorizationLost says so; the only kind of failure we expect to stay


@dataclass(frozen=True)
class Item:
    calendar: str  # "<tech>/<slug>"
    href: str  # the item's name in the calendar
    uid: str
    etag: str
    text: str


@dataclass
class RemoteSide:
    """One connected provider account as read back after quiescence."""

    name: str  # the provider, for messages
    mirror_slug: str  # its mirror calendar: /dav/<tech>/<mirror_slug>/
    items: list[RemoteItem]  # live stored remote events (singles, masters, exceptions)
    specs: list[ref.EventSpec]  # the provider's own expansion of the window, described
    bookings: bool  # the bookings target: every live booking belongs here, and only here


@dataclass
class Observed:
    tech: str
    email: str
    window: tuple[datetime, datetime]
    items: list[Item]
    sides: list[RemoteSide]
    api_busy: list[Span]
    conflicts: list[tuple[str, str]]  # (booking uid, other_ref)
    jobs: list[dict[str, Any]]  # the jobs created during the scenario

    @property
    def bookings_calendar(self) -> str:
        return f"{self.tech}/bookings"

    def mirror_calendar(self, side: RemoteSide) -> str:
        return f"{self.tech}/{side.mirror_slug}"


# -- iCalendar as fb_reference descriptions ---------------------------------------
def _frame(value: date | datetime) -> tuple[str, str | None]:
    if not isinstance(value, datetime):
        return "date", None
    if value.tzinfo is None:
        return "floating", None
    key = getattr(value.tzinfo, "key", None) or str(value.tzinfo)
    if value.utcoffset() == timedelta(0) and key in ("UTC", "Etc/UTC", "utc", "Z"):
        return "utc", None
    return "tz", key


def _wall(value: date | datetime, frame: str, tzid: str | None) -> date | datetime:
    """A time as fb_reference wants it: naive wall clock in the event's frame (a date if all-day)."""
    if frame == "date":
        return value.date() if isinstance(value, datetime) else value
    assert isinstance(value, datetime)
    if value.tzinfo is None:
        return value
    zone = UTC if frame == "utc" else ZoneInfo(tzid or "UTC")
    return value.astimezone(zone).replace(tzinfo=None)


def _own_partstat(component: Any, email: str) -> str | None:
    attendees = component.get("ATTENDEE")
    for attendee in attendees if isinstance(attendees, list) else [attendees] if attendees else []:
        if str(attendee).lower().removeprefix("mailto:") == email.lower():
            return str(attendee.params.get("PARTSTAT", "DEFAULT")).upper()
    return None


def _dates(component: Any, name: str) -> list[date | datetime]:
    found = component.get(name)
    out: list[date | datetime] = []
    for entry in found if isinstance(found, list) else [found] if found is not None else []:
        out.extend(d.dt for d in entry.dts)
    return out


def _rule(component: Any, frame: str) -> ref.Rule | None:
    if "RRULE" not in component:
        return None
    rrule = component["RRULE"]
    freq = rrule["FREQ"][0]
    if freq not in ("DAILY", "WEEKLY"):
        raise ValueError(f"the reference knows DAILY and WEEKLY rules, not {freq}")
    until = rrule.get("UNTIL", [None])[0]
    if until is not None and frame == "date" and isinstance(until, datetime):
        until = until.date()
    elif isinstance(until, datetime):
        until = until.astimezone(UTC) if until.tzinfo else until
    return ref.Rule(freq=freq, interval=int(rrule.get("INTERVAL", [1])[0]),
                    count=int(rrule["COUNT"][0]) if "COUNT" in rrule else None, until=until,
                    byday=tuple(str(d) for d in rrule.get("BYDAY", [])))


def ical_to_spec(text: str, email: str) -> ref.EventSpec:
    """One stored calendar object as an fb_reference description (what our scenarios produce:
    single, all-day, weekly series with moved/cancelled instances, attendees, status, transp)."""
    components = list(icalendar.Calendar.from_ical(text).walk("VEVENT"))
    master = next(c for c in components if "RECURRENCE-ID" not in c)
    start = master["DTSTART"].dt
    frame, tzid = _frame(start)

    def length_of(component: Any) -> timedelta:
        begin = _wall(component["DTSTART"].dt, frame, tzid)
        if "DTEND" in component:
            return _wall(component["DTEND"].dt, frame, tzid) - begin  # type: ignore[operator]
        if "DURATION" in component:
            return component["DURATION"].dt
        return timedelta(days=1) if frame == "date" else timedelta(0)

    overrides = []
    for component in components:
        if component is master:
            continue
        recurrence = _wall(component["RECURRENCE-ID"].dt, frame, tzid)
        cancelled = str(component.get("STATUS", "")).upper() == "CANCELLED"
        overrides.append(ref.Override(
            recurrence=recurrence, cancelled=cancelled,
            start=None if cancelled else _wall(component["DTSTART"].dt, frame, tzid),
            length=None if cancelled else length_of(component),
            partstat=_own_partstat(component, email)))
    return ref.EventSpec(
        uid=str(master["UID"]), frame=frame, start=_wall(start, frame, tzid), length=length_of(master),
        tzid=tzid, end_prop="DURATION" if "DURATION" in master and "DTEND" not in master else "DTEND",
        rule=_rule(master, frame), exdates=tuple(_wall(d, frame, tzid) for d in _dates(master, "EXDATE")),
        rdates=tuple(_wall(d, frame, tzid) for d in _dates(master, "RDATE")), overrides=tuple(overrides),
        status=str(master["STATUS"]).upper() if "STATUS" in master else None,
        transp=str(master["TRANSP"]).upper() if "TRANSP" in master else None,
        partstat=_own_partstat(master, email), summary=str(master.get("SUMMARY", "")))


def blocking(specs: list[ref.EventSpec], window: tuple[datetime, datetime]) -> list[Span]:
    """Busy time under the scenario's policy: tentative blocks, all-day blocks whole local days."""
    lo, hi = (moment.astimezone(UTC) for moment in window)
    found = ref.reference_intervals(specs, TECH_ZONE, {}, "whole_day", lo, hi)
    return ref.merge(found["busy"] + found["tentative"])


def _show(spans: list[Span]) -> str:
    return ", ".join(f"{a:%m-%d %H:%M}..{b:%m-%d %H:%M}" for a, b in spans) or "none"


# -- the invariants ---------------------------------------------------------------------------------------
def _booking_times(text: str) -> tuple[datetime, datetime]:
    event = next(iter(icalendar.Calendar.from_ical(text).walk("VEVENT")))
    return event["DTSTART"].dt.astimezone(UTC), event["DTEND"].dt.astimezone(UTC)


def _whole(side: RemoteSide) -> list[RemoteItem]:
    """A side's events that stand alone (exceptions belong to their series' master)."""
    return [e for e in side.items if not e.part]


def no_booking_lost(seen: Observed, model: Model) -> list[str]:
    """Every acknowledged, live booking: once in our bookings calendar and once on the bookings
    target at its time, on no other side; every cancelled one gone from every side."""
    problems = []
    local = [item for item in seen.items if item.calendar == seen.bookings_calendar]
    local_by_uid = Counter(item.uid for item in local)
    for uid, booking in sorted(model.bookings.items()):
        want = (booking.start.astimezone(UTC), booking.end.astimezone(UTC))
        if local_by_uid[uid] != 1:
            problems.append(f"booking {uid} is {local_by_uid[uid]} time(s) in {seen.bookings_calendar}")
        else:
            got = _booking_times(next(i.text for i in local if i.uid == uid))
            if got != want:
                problems.append(f"booking {uid} locally at {_show([got])}, acknowledged {_show([want])}")
        for side in seen.sides:
            found = [e for e in _whole(side) if e.uid == uid]
            if len(found) != int(side.bookings):
                problems.append(f"booking {uid} is {len(found)} time(s) in the {side.name} calendar "
                                f"(want {int(side.bookings)})")
            elif found and found[0].span != want:
                span = found[0].span
                problems.append(f"booking {uid} in {side.name} at {_show([span] if span else [])}, "
                                f"acknowledged {_show([want])}")
    for uid in sorted(model.ever_booked - set(model.bookings)):
        remote = {side.name: n for side in seen.sides if (n := sum(e.uid == uid for e in _whole(side)))}
        if local_by_uid[uid] or remote:
            problems.append(f"cancelled booking {uid} still present (local {local_by_uid[uid]}, remote {remote})")
    for uid in sorted(set(local_by_uid) - model.ever_booked):
        problems.append(f"{seen.bookings_calendar} holds {uid}, which the API never acknowledged")
    return problems


def no_duplicates(seen: Observed, model: Model) -> list[str]:
    """One object per UID across the tech's calendars, one event per UID on each side, and each
    side's mirror holding exactly that side's personal events (same UIDs, same titles)."""
    problems = []
    for uid, count in sorted(Counter(item.uid for item in seen.items).items()):
        if count > 1:
            where = [f"{i.calendar}/{i.href}" for i in seen.items if i.uid == uid]
            problems.append(f"UID {uid} stored {count} times: {where}")
    for side in seen.sides:
        remote = _whole(side)
        for uid, count in sorted(Counter(e.uid for e in remote).items()):
            if count > 1:
                ids = [e.id for e in remote if e.uid == uid]
                problems.append(f"UID {uid} is {count} events in {side.name}: {ids}")
        mirror = {i.uid: i for i in seen.items if i.calendar == seen.mirror_calendar(side)}
        personal = {e.uid: e for e in remote if e.uid not in model.ever_booked}
        for uid in sorted(set(mirror) - set(personal)):
            problems.append(f"mirror item {side.mirror_slug}/{mirror[uid].href} (UID {uid}) has no event "
                            f"in {side.name}")
        for uid in sorted(set(personal) - set(mirror)):
            problems.append(f"{side.name} event {personal[uid].id} (UID {uid}) is missing from its mirror")
        for uid in sorted(set(mirror) & set(personal)):
            local_summary = ical_to_spec(mirror[uid].text, seen.email).summary
            remote_summary = personal[uid].summary
            if local_summary != remote_summary:
                problems.append(f"UID {uid}: mirror says {local_summary!r}, {side.name} says {remote_summary!r}")
    return problems


def busy_time_equal(seen: Observed, model: Model) -> list[str]:
    """/api/v1/freebusy == reference over the CalDAV items == reference over the union of every
    provider's own instances (the bookings among them, on the target side)."""
    local = blocking([ical_to_spec(i.text, seen.email) for i in seen.items], seen.window)
    remote = blocking([spec for side in seen.sides for spec in side.specs], seen.window)
    problems = []
    if seen.api_busy != local:
        problems.append(f"API busy [{_show(seen.api_busy)}] != reference over CalDAV items [{_show(local)}]")
    if remote != local:
        names = "+".join(side.name for side in seen.sides)
        problems.append(f"reference over {names} instances [{_show(remote)}] != over CalDAV items [{_show(local)}]")
    return problems


def conflicts_once(seen: Observed, model: Model) -> list[str]:
    """No conflict row twice; every overlap of a live booking with blocking personal time recorded."""
    problems = [f"conflict {pair} recorded {count} times"
                for pair, count in sorted(Counter(seen.conflicts).items()) if count > 1]
    recorded = set(seen.conflicts)
    bookings = {i.uid: _booking_times(i.text) for i in seen.items if i.calendar == seen.bookings_calendar}
    for item in seen.items:
        if item.calendar == seen.bookings_calendar:
            continue
        spans = blocking([ical_to_spec(item.text, seen.email)], seen.window)
        for uid, (start, end) in sorted(bookings.items()):
            if any(a < end and start < b for a, b in spans):
                reference = f"{item.calendar}/{item.href}"
                if (uid, reference) not in recorded:
                    problems.append(f"booking {uid} {_show([(start, end)])} overlaps {reference} "
                                    f"[{_show(spans)}] but no conflict is recorded")
    return problems


def no_job_stuck(seen: Observed, model: Model) -> list[str]:
    """Nothing waiting or running; a job that gave up did so for a reason we expect."""
    problems = []
    for job in seen.jobs:
        if job["state"] in ("ready", "running") and not job["future_watch"]:
            problems.append(f"job {job['id']} {job['kind']} still {job['state']} "
                            f"(attempts {job['attempts']}, last error {job['last_error']!r})")
        elif job["state"] == "dead":
            if not job["last_error"]:
                problems.append(f"job {job['id']} {job['kind']} dead without a reason")
            elif not ("grant_revoked" in model.faults_used and TRANSIENT_DEAD_ALLOWED in job["last_error"]):
                problems.append(f"job {job['id']} {job['kind']} dead: {job['last_error']!r}")
    return problems


INVARIANTS = (no_booking_lost, no_duplicates, busy_time_equal, conflicts_once, no_job_stuck)


def broken(seen: Observed, model: Model) -> list[str]:
    """Every difference, each prefixed by the invariant it breaks (empty: all hold)."""
    return [f"{check.__name__}: {problem}" for check in INVARIANTS for problem in check(seen, model)]
