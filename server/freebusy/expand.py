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


# A recurrence is walked from its DTSTART and every occurrence in the window is
# built: an open-ended FREQ=MINUTELY would take minutes while the writer holds
# the tech's lock (on SQLite, the whole database). Radicale caps the first
# RRULE's COUNT at 10,000 and estimates its UNTIL without BY* parts, then walks
# the whole set; these limits cover every rule, before Radicale sees it.
MAX_OCCURRENCES = 10_000  # in the expansion window
MAX_STEPS = 200_000  # from DTSTART to the window's end (about a second to walk)
_PER_DAY = {"SECONDLY": 86400.0, "MINUTELY": 1440.0, "HOURLY": 24.0, "DAILY": 1.0,
            "WEEKLY": 1 / 7, "MONTHLY": 1 / 28, "YEARLY": 1 / 365}
# BY* parts that multiply occurrences when FREQ is coarser than them (BYHOUR on a DAILY rule).
_EXPANDING = (("BYHOUR", 24.0), ("BYMINUTE", 1440.0), ("BYSECOND", 86400.0))


class TooManyOccurrences(ValueError):
    """A recurrence too dense, or starting too long ago for its frequency, to expand."""


def check_recurrence_cost(calendar: icalendar.Calendar, window_start: datetime, window_end: datetime) -> None:
    """Refuse, from the rules alone and before expanding anything, what would be too costly to expand.

    Several RRULEs in one component are refused too: RFC 5545 says SHOULD NOT,
    no client writes them, and Radicale checks only the first before it counts
    the occurrences of all of them one by one.
    """
    for event in calendar.walk():
        rules = event.get("RRULE")
        if rules is None:
            continue
        rules = rules if isinstance(rules, list) else [rules]
        if len(rules) > 1:
            raise TooManyOccurrences(f"{event.name} has {len(rules)} RRULE properties; at most 1 is accepted")
        start = event.get("DTSTART")
        if start is None or not hasattr(start, "dt"):
            continue
        first = _utc(start.dt)
        for rule in rules:
            per_day = _PER_DAY.get(str((rule.get("FREQ") or [""])[0]).upper())
            if per_day is None:
                continue
            try:
                interval = max(1, int((rule.get("INTERVAL") or [1])[0]))
            except (TypeError, ValueError):
                continue
            rate = per_day / interval
            for part, level in _EXPANDING:
                if per_day < level:
                    rate *= max(1, len(rule.get(part) or []))
            until = [_utc(u) for u in rule.get("UNTIL") or []]
            last = until[0] if until else window_end  # a bounded rule is walked to its end (Radicale counts it)
            count = (rule.get("COUNT") or [None])[0]
            steps = max(0.0, (last - first).total_seconds() / 86400) * rate
            overlap = (min(last, window_end) - max(first, window_start)).total_seconds() / 86400
            within = max(0.0, overlap) * rate
            if count is not None:
                steps, within = min(steps, float(count)), min(within, float(count))
            text = rule.to_ical().decode(errors="replace")
            if within > MAX_OCCURRENCES:
                raise TooManyOccurrences(
                    f"the recurrence {text} has about {int(within)} occurrences between {window_start:%Y-%m-%d} "
                    f"and {window_end:%Y-%m-%d}; at most {MAX_OCCURRENCES} are accepted")
            if steps > MAX_STEPS:
                raise TooManyOccurrences(
                    f"the recurrence {text} spans too long for its frequency (about {int(steps)} "
                    f"occurrences from {first:%Y-%m-%d}; at most {MAX_STEPS} are accepted)")


def _utc(value: Any) -> datetime:
    """Any DTSTART/UNTIL value as an aware datetime (floating and dates read as UTC: an estimate)."""
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def intervals_for(text: str, policy: Policy, window_start: datetime, window_end: datetime) -> list[Interval]:
    """Blocking (busy) and non-blocking (tentative) time of every VEVENT occurrence."""
    calendar = parse_calendar(text)
    check_recurrence_cost(calendar, window_start, window_end)
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
