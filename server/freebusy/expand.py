"""Turn one calendar object (iCalendar text) into busy and tentative UTC intervals.

Recurrences (RRULE, RDATE, EXDATE, RECURRENCE-ID overrides, custom VTIMEZONEs)
are expanded by recurring-ical-events; this module adds the tech's rules:
all-day events block working hours of those local dates, floating times are
read in the tech's zone, and status/transparency/PARTSTAT decide the kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import icalendar
import recurring_ical_events

from server.freebusy.policy import ALLDAY_WHOLE_DAY, Policy

BUSY = "busy"
TENTATIVE = "tentative"
UTC = timezone.utc
Span = tuple[datetime, datetime]


@dataclass(frozen=True, order=True)
class Interval:
    start: datetime
    end: datetime
    kind: str


def parse_calendar(text: str) -> icalendar.Calendar:
    return icalendar.Calendar.from_ical(text)


def intervals_for(text: str, policy: Policy, window_start: datetime, window_end: datetime) -> list[Interval]:
    """Blocking (busy) and non-blocking (tentative) time of every VEVENT occurrence."""
    calendar = parse_calendar(text)
    # A day of slack each side: all-day and floating instances are compared by
    # the library before we place them in the tech's zone.
    occurrences = recurring_ical_events.of(calendar, components=["VEVENT"]).between(
        window_start - timedelta(days=1), window_end + timedelta(days=1)
    )
    out: list[Interval] = []
    for event in occurrences:
        kind = occurrence_kind(event, policy)
        if kind is None:
            continue
        for start, end in occurrence_spans(event, policy):
            start, end = max(start, window_start), min(end, window_end)
            if start < end:
                out.append(Interval(start, end, kind))
    return sorted(out)


def occurrence_kind(event: Any, policy: Policy) -> str | None:
    """BUSY, TENTATIVE, or None when the occurrence never blocks."""
    status = str(event.get("STATUS", "CONFIRMED")).upper()
    if status == "CANCELLED":
        return None
    if str(event.get("TRANSP", "OPAQUE")).upper() == "TRANSPARENT":
        return None
    partstat = own_partstat(event, policy)
    if partstat == "DECLINED":
        return None
    if status == "TENTATIVE" or partstat in ("TENTATIVE", "NEEDS-ACTION"):
        return TENTATIVE
    return BUSY


def own_partstat(event: Any, policy: Policy) -> str | None:
    """The tech's PARTSTAT when the tech is an attendee (matched by e-mail)."""
    if not policy.emails:
        return None
    attendees = event.get("ATTENDEE", [])
    if not isinstance(attendees, list):
        attendees = [attendees]
    for attendee in attendees:
        address = str(attendee).lower().removeprefix("mailto:")
        if address in policy.emails:
            params = getattr(attendee, "params", {})
            return str(params.get("PARTSTAT", "NEEDS-ACTION")).upper()
    return None


def occurrence_spans(event: Any, policy: Policy) -> list[tuple[datetime, datetime]]:
    start_value = event["DTSTART"].dt
    end_value = event["DTEND"].dt if "DTEND" in event else None
    if not isinstance(start_value, datetime):  # all-day
        first: date = start_value
        last = end_value if isinstance(end_value, date) and not isinstance(end_value, datetime) else None
        if last is None or last <= first:
            last = first + _duration(event, default=timedelta(days=1))
        return allday_spans(first, last, policy)
    start = to_utc(start_value, policy)
    if end_value is not None:
        end = to_utc(end_value if isinstance(end_value, datetime) else datetime.combine(end_value, time()), policy)
    else:
        end = start + _duration(event, default=timedelta(0))
    return [(start, end)] if end > start else []


def allday_spans(first: date, last: date, policy: Policy) -> list[tuple[datetime, datetime]]:
    """Local dates [first, last) → working hours (or whole local days) in UTC."""
    zone = policy.zone
    spans = []
    day = first
    while day < last:
        if policy.allday == ALLDAY_WHOLE_DAY:
            ranges = [(time(0, 0), None)]
        else:
            ranges = list(policy.working_hours.get(day.weekday(), []))
        for begin, finish in ranges:
            local_start = datetime.combine(day, begin, tzinfo=zone)
            local_end = (
                datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=zone)
                if finish is None else datetime.combine(day, finish, tzinfo=zone)
            )
            spans.append((local_start.astimezone(UTC), local_end.astimezone(UTC)))
        day += timedelta(days=1)
    return spans


def to_utc(value: datetime, policy: Policy) -> datetime:
    """Aware times convert; floating times are the tech's local time."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=policy.zone)
    return value.astimezone(UTC)


def _duration(event: Any, default: timedelta) -> Any:
    if "DURATION" in event:
        return event["DURATION"].dt
    return default


def merge(intervals: list[Span]) -> list[Span]:
    """Sorted, non-overlapping, touching intervals joined."""
    merged: list[Span] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged
