"""Calendar items as a person reads them: summary and local start/end, for conflicts and bookings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
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

    @property
    def span(self) -> str:
        """"Sat 2026-11-28 10:00 – 11:00", the end's date only when it differs."""
        if not self.start:
            return ""
        if self.end == self.start:
            return self.start  # a one-day all-day event
        same_day = self.end[:14] == self.start[:14] and "all day" not in self.end
        return f"{self.start} – {self.end[15:] if same_day else self.end}"


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
                         _when(event.get("DTEND"), zone, exclusive=True), str(event.get("STATUS", "")),
                         str(event.get("LOCATION", "")))
    return EventView("(no event)", "", "")


def _when(prop: object, zone: str, *, exclusive: bool = False) -> str:
    """A readable local time; an all-day DTEND is exclusive, so the last day shown is the day before."""
    value = getattr(prop, "dt", None)
    if isinstance(value, datetime):
        if value.tzinfo is None:  # floating: the tech's own clock
            return value.strftime("%a %Y-%m-%d %H:%M")
        return value.astimezone(ZoneInfo(zone)).strftime("%a %Y-%m-%d %H:%M")
    if isinstance(value, date):
        value = value - timedelta(days=1) if exclusive else value
        return value.strftime("%a %Y-%m-%d") + " (all day)"
    return ""
