"""Calendar items as a person reads them: summary and local start/end, for conflicts and bookings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import icalendar

UTC = timezone.utc


@dataclass(frozen=True)
class EventView:
    summary: str
    start: str
    end: str
    status: str = ""
    location: str = ""


MISSING = EventView("(no longer in the calendar)", "", "")


def describe(text: str | None, zone: str) -> EventView:
    """The first VEVENT of ``text`` in the tech's zone ("" parts when they cannot be read)."""
    if not text:
        return MISSING
    try:
        calendar = icalendar.Calendar.from_ical(text)
    except ValueError:
        return EventView("(unreadable event)", "", "")
    for event in calendar.walk("VEVENT"):
        if event.get("RECURRENCE-ID") is not None:
            continue
        return EventView(str(event.get("SUMMARY", "(no title)")), _when(event.get("DTSTART"), zone),
                         _when(event.get("DTEND"), zone), str(event.get("STATUS", "")),
                         str(event.get("LOCATION", "")))
    return EventView("(no event)", "", "")


def _when(prop: object, zone: str) -> str:
    value = getattr(prop, "dt", None)
    if isinstance(value, datetime):
        if value.tzinfo is None:  # floating: the tech's own clock
            return value.strftime("%a %Y-%m-%d %H:%M")
        return value.astimezone(ZoneInfo(zone)).strftime("%a %Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.strftime("%a %Y-%m-%d") + " (all day)"
    return ""
