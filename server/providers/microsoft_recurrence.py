"""Graph's patternedRecurrence ↔ an RFC 5545 RRULE, both directions.

Graph knows six pattern types (daily, weekly, absoluteMonthly, relativeMonthly,
absoluteYearly, relativeYearly) and three range types (numbered, endDate,
noEnd); every RRULE those can say is translated, anything else (BYHOUR,
several month days, the 5th weekday, ...) is refused with a ValueError rather
than written as a different series.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, tzinfo
from typing import Any

from server.providers.microsoft_zones import UTC, windows_name

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ICAL_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_TO_ICAL = dict(zip(DAYS, _ICAL_DAYS))
_FROM_ICAL = dict(zip(_ICAL_DAYS, DAYS))
_INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
_INDEX_NAME = {v: k for k, v in _INDEX.items()}
_BYDAY = re.compile(r"^([+-]?\d{0,2})([A-Z]{2})$")


def to_rrule(recurrence: dict[str, Any], zone: tzinfo, all_day: bool) -> dict[str, Any]:
    """A Graph recurrence as a vRecur-style dict (uppercase keys, list values)."""
    pattern, span = recurrence.get("pattern") or {}, recurrence.get("range") or {}
    kind = pattern.get("type", "daily")
    rule: dict[str, Any] = {}
    days = [_TO_ICAL[d.lower()] for d in pattern.get("daysOfWeek") or [] if d.lower() in _TO_ICAL]
    index = _INDEX.get(str(pattern.get("index") or "first").lower(), 1)
    if kind == "daily":
        rule["FREQ"] = ["DAILY"]
    elif kind == "weekly":
        rule["FREQ"] = ["WEEKLY"]
        rule["BYDAY"] = days
    elif kind in ("absoluteMonthly", "absoluteYearly"):
        rule["FREQ"] = ["MONTHLY" if kind == "absoluteMonthly" else "YEARLY"]
        if kind == "absoluteYearly":
            rule["BYMONTH"] = [int(pattern["month"])]
        rule["BYMONTHDAY"] = [int(pattern["dayOfMonth"])]
    elif kind in ("relativeMonthly", "relativeYearly"):
        rule["FREQ"] = ["MONTHLY" if kind == "relativeMonthly" else "YEARLY"]
        if kind == "relativeYearly":
            rule["BYMONTH"] = [int(pattern["month"])]
        if len(days) == 1:
            rule["BYDAY"] = [f"{index}{days[0]}"]
        else:
            rule["BYDAY"] = days
            rule["BYSETPOS"] = [index]
    else:
        raise ValueError(f"unknown Graph recurrence pattern {kind!r}")
    interval = int(pattern.get("interval") or 1)
    if interval > 1:
        rule["INTERVAL"] = [interval]
        if kind == "weekly":
            first = str(pattern.get("firstDayOfWeek") or "sunday").lower()
            rule["WKST"] = [_TO_ICAL.get(first, "SU")]
    span_type = span.get("type", "noEnd")
    if span_type == "numbered":
        rule["COUNT"] = [int(span["numberOfOccurrences"])]
    elif span_type == "endDate" and span.get("endDate"):
        last_day = date.fromisoformat(str(span["endDate"])[:10])
        if all_day:
            rule["UNTIL"] = [last_day]
        else:  # the whole last day, in the series' zone, as UTC (RFC 5545 with a TZID DTSTART)
            end = datetime.combine(last_day, time(23, 59, 59), tzinfo=zone)
            rule["UNTIL"] = [end.astimezone(UTC)]
    return rule


def from_rrule(rule: dict[str, Any], start: date | datetime, zone: tzinfo | None) -> dict[str, Any]:
    """An RRULE (icalendar vRecur) starting at ``start`` as Graph's patternedRecurrence."""
    rule = {str(k).upper(): (v if isinstance(v, list) else [v]) for k, v in rule.items()}
    unsupported = set(rule) - {"FREQ", "INTERVAL", "BYDAY", "BYMONTHDAY", "BYMONTH", "BYSETPOS",
                               "COUNT", "UNTIL", "WKST"}
    if unsupported:
        raise ValueError(f"Outlook cannot repeat by {', '.join(sorted(unsupported))}")
    freq = str(rule["FREQ"][0]).upper()
    interval = int(rule.get("INTERVAL", [1])[0])
    local_day = start if not isinstance(start, datetime) else start.date()
    by_day = [_split_day(str(d)) for d in rule.get("BYDAY", [])]
    setpos = [int(p) for p in rule.get("BYSETPOS", [])]
    month_days = [int(d) for d in rule.get("BYMONTHDAY", [])]
    months = [int(m) for m in rule.get("BYMONTH", [])]
    pattern: dict[str, Any] = {"interval": interval}
    if freq == "DAILY" and not by_day:
        pattern["type"] = "daily"
    elif freq == "WEEKLY" or (freq == "DAILY" and interval == 1 and all(n == 0 for n, _ in by_day)):
        if any(n for n, _ in by_day):
            raise ValueError("a weekly rule with numbered weekdays")
        pattern["type"] = "weekly"
        pattern["daysOfWeek"] = [d for _, d in by_day] or [DAYS[local_day.weekday()]]
        first = str(rule.get("WKST", ["MO"])[0]).upper()
        pattern["firstDayOfWeek"] = _FROM_ICAL.get(first, "monday")
    elif freq in ("MONTHLY", "YEARLY"):
        yearly = freq == "YEARLY"
        if yearly:
            if len(months) > 1:
                raise ValueError("Outlook repeats yearly in one month only")
            pattern["month"] = months[0] if months else local_day.month
        elif months:
            raise ValueError("a monthly rule limited to some months")
        if by_day:
            ordinals = {n for n, _ in by_day}
            if setpos and ordinals == {0} and len(setpos) == 1:
                index = setpos[0]
            elif not setpos and len(ordinals) == 1 and 0 not in ordinals:
                index = ordinals.pop()
            else:
                raise ValueError("this BYDAY/BYSETPOS combination has no Outlook equivalent")
            if index not in _INDEX_NAME:
                raise ValueError(f"Outlook has no occurrence number {index} within a month")
            pattern["type"] = "relativeYearly" if yearly else "relativeMonthly"
            pattern["daysOfWeek"] = [d for _, d in by_day]
            pattern["index"] = _INDEX_NAME[index]
        else:
            if len(month_days) > 1 or (month_days and month_days[0] < 1):
                raise ValueError("Outlook repeats on one positive day of the month only")
            pattern["type"] = "absoluteYearly" if yearly else "absoluteMonthly"
            pattern["dayOfMonth"] = month_days[0] if month_days else local_day.day
    else:
        raise ValueError(f"Outlook cannot repeat {freq.lower()}")
    span: dict[str, Any] = {"startDate": local_day.isoformat(),
                            "recurrenceTimeZone": windows_name(zone) or "UTC"}
    if "COUNT" in rule:
        span.update(type="numbered", numberOfOccurrences=int(rule["COUNT"][0]))
    elif "UNTIL" in rule:
        until = rule["UNTIL"][0]
        if isinstance(until, datetime):
            if until.tzinfo is None:
                until = until.replace(tzinfo=zone or UTC)
            until_day = until.astimezone(zone or UTC).date()
        else:
            until_day = until
        span.update(type="endDate", endDate=until_day.isoformat())
    else:
        span["type"] = "noEnd"
    return {"pattern": pattern, "range": span}


def _split_day(text: str) -> tuple[int, str]:
    match = _BYDAY.match(text.strip().upper())
    if not match or match.group(2) not in _FROM_ICAL:
        raise ValueError(f"not a weekday: {text!r}")
    number = match.group(1)
    return (int(number) if number not in ("", "+", "-") else 0), _FROM_ICAL[match.group(2)]
