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
from zoneinfo import ZoneInfo, available_timezones

import icalendar
import recurring_ical_events
from dateutil.tz import datetime_exists, resolve_imaginary
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from server.freebusy.policy import ALLDAY_WHOLE_DAY, Policy
from server.hours import END_OF_DAY, local_bounds

BUSY = "busy"
TENTATIVE = "tentative"
UTC = timezone.utc
_IANA = frozenset(available_timezones())
Span = tuple[datetime, datetime]


@dataclass(frozen=True, order=True)
class Interval:
    start: datetime
    end: datetime
    kind: str


_TIME_PROPERTIES = ("DTSTART", "DTEND", "RECURRENCE-ID", "EXDATE", "RDATE")


def parse_calendar(text: str) -> icalendar.Calendar:
    """Parse, binding every TZID to the VTIMEZONE of *this* object.

    icalendar caches the first VTIMEZONE it ever sees for a non-IANA TZID
    process-wide ("Customized Time Zone", "Pacific Standard Time", ...), so
    without this one calendar's definition leaks into every later one.
    """
    calendar = icalendar.Calendar.from_ical(text)
    own = {
        str(vtz["TZID"]): vtz.to_tz(lookup_tzid=False)
        for vtz in calendar.walk("VTIMEZONE")
        if "TZID" in vtz and str(vtz["TZID"]) not in _IANA
    }
    for component in calendar.walk("VEVENT"):
        for name in _TIME_PROPERTIES:
            values = component.get(name)
            if values is None:
                continue
            for value in values if isinstance(values, list) else [values]:
                for item in getattr(value, "dts", [value]):
                    tzid = item.params.get("TZID") or value.params.get("TZID")
                    if tzid and tzid not in own and tzid not in _IANA and tzid in WINDOWS_TO_OLSON:
                        own[tzid] = ZoneInfo(WINDOWS_TO_OLSON[tzid])  # never another object's VTIMEZONE
                    if tzid in own and isinstance(item.dt, datetime):
                        item.dt = item.dt.replace(tzinfo=own[tzid])
    return calendar


def intervals_for(text: str, policy: Policy, window_start: datetime, window_end: datetime) -> list[Interval]:
    """Blocking (busy) and non-blocking (tentative) time of every VEVENT occurrence."""
    calendar = parse_calendar(text)
    sources = _sources(calendar, policy)
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
        for start, end in occurrence_spans(event, policy, sources):
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


def _key(value: Any, policy: Policy) -> Any:
    return to_utc(value, policy) if isinstance(value, datetime) else value


def _sources(calendar: icalendar.Calendar, policy: Policy) -> dict[tuple[str, Any], Any]:
    """(UID, RECURRENCE-ID or None) → the VEVENT as written."""
    out = {}
    for component in calendar.walk("VEVENT"):
        rid = component.get("RECURRENCE-ID")
        out[(str(component.get("UID", "")), None if rid is None else _key(rid.dt, policy))] = component
    return out


def _source_of(event: Any, sources: dict[tuple[str, Any], Any], policy: Policy) -> Any:
    uid = str(event.get("UID", ""))
    rid = event.get("RECURRENCE-ID")
    if rid is not None and (uid, _key(rid.dt, policy)) in sources:
        return sources[(uid, _key(rid.dt, policy))]
    return sources.get((uid, None), event)


def timed_end(start_value: datetime, source: Any, policy: Policy) -> datetime:
    """RFC 5545: DTEND → every instance lasts the exact time DTSTART→DTEND of its
    component; DURATION → nominal days in local time, then exact seconds."""
    start = to_utc(start_value, policy)
    if "DURATION" in source:
        length = source["DURATION"].dt
        days = timedelta(days=length.days)
        return to_utc(start_value + days, policy) + (length - days)
    if "DTEND" in source and isinstance(source["DTEND"].dt, datetime) and isinstance(source["DTSTART"].dt, datetime):
        return start + (to_utc(source["DTEND"].dt, policy) - to_utc(source["DTSTART"].dt, policy))
    return start


def occurrence_spans(
    event: Any, policy: Policy, sources: dict[tuple[str, Any], Any] | None = None
) -> list[Span]:
    start_value = event["DTSTART"].dt
    end_value = event["DTEND"].dt if "DTEND" in event else None
    if not isinstance(start_value, datetime):  # all-day
        first: date = start_value
        last = end_value if isinstance(end_value, date) and not isinstance(end_value, datetime) else None
        if last is None or last <= first:
            last = first + _duration(event, default=timedelta(days=1))
        return allday_spans(first, last, policy)
    start = to_utc(start_value, policy)
    if sources is not None:
        end = timed_end(start_value, _source_of(event, sources, policy), policy)
    elif end_value is not None:
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
            ranges = [(time(0, 0), END_OF_DAY)]
        else:
            ranges = list(policy.working_hours.get(day.weekday(), []))
        for begin, finish in ranges:
            local_start, local_end = local_bounds(day, begin, finish, zone)
            spans.append((local_start.astimezone(UTC), local_end.astimezone(UTC)))
        day += timedelta(days=1)
    return spans


def to_utc(value: datetime, policy: Policy) -> datetime:
    """Aware times convert; floating times are the tech's local time."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=policy.zone)
    if not datetime_exists(value):  # RFC 5545 3.3.5: the offset before the gap
        value = resolve_imaginary(value)
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
