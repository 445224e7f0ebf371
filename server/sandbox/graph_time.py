"""Times and recurrence for the Graph emulator.

Graph writes times as ``{"dateTime": "2026-12-09T20:30:00.0000000", "timeZone": "UTC"}``:
a wall-clock time without offset plus a zone name, IANA or Windows ("Pacific
Standard Time"; tzlocal's CLDR table maps them). Recurring series carry a
``patternedRecurrence`` (pattern + range) that is expanded in the series' zone
(``range.recurrenceTimeZone`` or the start's zone) so occurrences keep their
wall-clock time across DST changes.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import rrule
from tzlocal import windows_tz

from server.sandbox import graph_errors as errors
from server.sandbox.graph_store import Timing

UTC = timezone.utc
_WEEKDAYS = {"monday": rrule.MO, "tuesday": rrule.TU, "wednesday": rrule.WE,
             "thursday": rrule.TH, "friday": rrule.FR, "saturday": rrule.SA,
             "sunday": rrule.SU}
_INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
PATTERN_TYPES = ("daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly",
                 "relativeYearly")
RANGE_TYPES = ("endDate", "noEnd", "numbered")


def zone(name: str | None) -> ZoneInfo:
    """The zone for an IANA or Windows name; 400 TimeZoneNotSupportedException otherwise."""
    if not name:
        return ZoneInfo("UTC")
    iana = windows_tz.win_tz.get(name, name)
    if name.upper() in ("UTC", "Z", "COORDINATED UNIVERSAL TIME", "GMT"):
        iana = "UTC"
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError):
        raise errors.bad_request(
            "A valid TimeZone value must be specified. The following TimeZone value is not "
            f"supported: '{name}'.", code="TimeZoneNotSupportedException") from None


def fmt_wall(value: datetime) -> str:
    """Graph's offset-less form with seven fractional digits."""
    return value.strftime("%Y-%m-%dT%H:%M:%S") + f".{value.microsecond:06d}0"


def fmt_utc(value: datetime) -> str:
    """A DateTimeOffset as Graph writes timestamps: UTC, ``Z``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def fmt_timestamp(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}0Z"


def parse_wall(value: Any, field: str) -> datetime:
    """A naive wall time, or an aware instant when the text carries an offset."""
    if not isinstance(value, str) or not value:
        raise errors.bad_request(f"The {field} dateTime is missing or not a string.")
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise errors.bad_request(f"Cannot convert the literal '{value}' to the expected type "
                                 "'Edm.DateTime'.", code="RequestBodyRead") from None
    return parsed


def parse_timing(value: Any, field: str) -> Timing:
    """A dateTimeTimeZone object as the client sent it."""
    if not isinstance(value, dict):
        raise errors.bad_request(f"The {field} property must be a dateTimeTimeZone object.")
    name = value.get("timeZone") or "UTC"
    if not isinstance(name, str):
        raise errors.bad_request(f"The {field} timeZone must be a string.")
    tz = zone(name)
    parsed = parse_wall(value.get("dateTime"), field)
    if parsed.tzinfo is not None:
        instant = parsed.astimezone(UTC)
        wall = instant.astimezone(tz).replace(tzinfo=None)
    else:
        wall = parsed
        instant = wall.replace(tzinfo=tz).astimezone(UTC)
    return Timing(instant=instant, zone=name, wall=wall)


def timing_at(wall: datetime, zone_name: str) -> Timing:
    tz = zone(zone_name)
    return Timing(instant=wall.replace(tzinfo=tz).astimezone(UTC), zone=zone_name, wall=wall)


def render(timing: Timing, out_zone: str, all_day: bool) -> dict[str, str]:
    """The dateTimeTimeZone Graph returns in the requested output zone.

    All-day events are floating midnights: they keep their dates in any zone.
    """
    if all_day:
        return {"dateTime": fmt_wall(timing.wall), "timeZone": out_zone}
    wall = timing.instant.astimezone(zone(out_zone)).replace(tzinfo=None)
    return {"dateTime": fmt_wall(wall), "timeZone": out_zone}


def parse_query_instant(value: str | None, field: str) -> datetime:
    """startDateTime/endDateTime query parameters: ISO 8601, UTC when no offset is given."""
    if not value:
        raise errors.bad_request(
            "This request requires a time window specified by the query string parameters "
            "StartDateTime and EndDateTime.", code="ErrorInvalidParameter")
    try:
        parsed = parse_wall(value.replace(" ", "+"), field)
    except errors.GraphError:
        raise errors.bad_request(f"The value '{value}' of parameter '{field}' is invalid.",
                                 code="ErrorInvalidParameter") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# --- recurrence -----------------------------------------------------------------------
def validate_recurrence(rec: Any) -> dict[str, Any]:
    """A normalised patternedRecurrence, or 400 naming what is wrong."""
    if not isinstance(rec, dict) or not isinstance(rec.get("pattern"), dict) \
            or not isinstance(rec.get("range"), dict):
        raise errors.bad_request("recurrence must have a pattern and a range.")
    pattern = dict(rec["pattern"])
    rng = dict(rec["range"])
    kind = pattern.get("type")
    if kind not in PATTERN_TYPES:
        raise errors.bad_request(f"Invalid recurrence pattern type '{kind}'.")
    interval = pattern.get("interval", 1)
    if not isinstance(interval, int) or interval < 1 or interval > 99:
        raise errors.bad_request("recurrence pattern interval must be an integer from 1 to 99.")
    days = [str(d).lower() for d in pattern.get("daysOfWeek") or []]
    if any(d not in _WEEKDAYS for d in days):
        raise errors.bad_request(f"Invalid daysOfWeek {pattern.get('daysOfWeek')}.")
    if kind in ("weekly", "relativeMonthly", "relativeYearly") and not days:
        raise errors.bad_request(f"A {kind} recurrence pattern requires daysOfWeek.")
    if kind in ("absoluteMonthly", "absoluteYearly"):
        day = pattern.get("dayOfMonth")
        if not isinstance(day, int) or not 1 <= day <= 31:
            raise errors.bad_request(f"A {kind} recurrence pattern requires dayOfMonth.")
    if kind in ("absoluteYearly", "relativeYearly"):
        month = pattern.get("month")
        if not isinstance(month, int) or not 1 <= month <= 12:
            raise errors.bad_request(f"A {kind} recurrence pattern requires month.")
    index = pattern.get("index") or "first"
    if index not in _INDEX:
        raise errors.bad_request(f"Invalid recurrence pattern index '{index}'.")
    first_day = str(pattern.get("firstDayOfWeek") or "sunday").lower()
    if first_day not in _WEEKDAYS:
        raise errors.bad_request(f"Invalid firstDayOfWeek '{first_day}'.")
    range_type = rng.get("type")
    if range_type not in RANGE_TYPES:
        raise errors.bad_request(f"Invalid recurrence range type '{range_type}'.")
    start_date = _parse_date(rng.get("startDate"), "startDate")
    end_date = None
    if range_type == "endDate":
        end_date = _parse_date(rng.get("endDate"), "endDate")
        if end_date < start_date:
            raise errors.bad_request("The recurrence range endDate is before its startDate.")
    count = rng.get("numberOfOccurrences") or 0
    if range_type == "numbered" and (not isinstance(count, int) or count < 1):
        raise errors.bad_request("A numbered recurrence range requires numberOfOccurrences.")
    if rng.get("recurrenceTimeZone"):
        zone(rng["recurrenceTimeZone"])
    return {
        "pattern": {"type": kind, "interval": interval,
                    "month": pattern.get("month") or 0,
                    "dayOfMonth": pattern.get("dayOfMonth") or 0,
                    "daysOfWeek": days, "firstDayOfWeek": first_day, "index": index},
        "range": {"type": range_type, "startDate": start_date.isoformat(),
                  "endDate": end_date.isoformat() if end_date else "0001-01-01",
                  "recurrenceTimeZone": rng.get("recurrenceTimeZone") or "",
                  "numberOfOccurrences": count if range_type == "numbered" else 0}}


def _parse_date(value: Any, field: str) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise errors.bad_request(f"The recurrence range {field} '{value}' is not a date.") \
            from None


def series_zone(recurrence: dict[str, Any], start: Timing) -> str:
    return recurrence["range"].get("recurrenceTimeZone") or start.zone


def occurrence_starts(recurrence: dict[str, Any], start: Timing, *, horizon: datetime,
                      limit: int) -> list[datetime]:
    """Wall-clock starts (naive, in the series zone) of the pattern's occurrences."""
    pattern, rng = recurrence["pattern"], recurrence["range"]
    zone_name = series_zone(recurrence, start)
    wall_start = start.instant.astimezone(zone(zone_name)).replace(tzinfo=None)
    dtstart = datetime.combine(date.fromisoformat(rng["startDate"]), wall_start.time())
    kind = pattern["type"]
    days = [_WEEKDAYS[d] for d in pattern["daysOfWeek"]]
    kwargs: dict[str, Any] = {"dtstart": dtstart, "interval": pattern["interval"],
                              "wkst": _WEEKDAYS[pattern["firstDayOfWeek"]]}
    if kind == "daily":
        freq = rrule.DAILY
    elif kind == "weekly":
        freq, kwargs["byweekday"] = rrule.WEEKLY, days
    elif kind == "absoluteMonthly":
        freq, kwargs["bymonthday"] = rrule.MONTHLY, pattern["dayOfMonth"]
    elif kind == "relativeMonthly":
        freq = rrule.MONTHLY
        kwargs.update(byweekday=days, bysetpos=_INDEX[pattern["index"]])
    elif kind == "absoluteYearly":
        freq = rrule.YEARLY
        kwargs.update(bymonth=pattern["month"], bymonthday=pattern["dayOfMonth"])
    else:
        freq = rrule.YEARLY
        kwargs.update(bymonth=pattern["month"], byweekday=days,
                      bysetpos=_INDEX[pattern["index"]])
    if rng["type"] == "numbered":
        kwargs["count"] = rng["numberOfOccurrences"]
    elif rng["type"] == "endDate":
        kwargs["until"] = datetime.combine(date.fromisoformat(rng["endDate"]), time(23, 59, 59))
    horizon_wall = horizon.astimezone(zone(zone_name)).replace(tzinfo=None)
    out: list[datetime] = []
    for value in rrule.rrule(freq, **kwargs):
        if value > horizon_wall or len(out) >= limit:
            break
        out.append(value)
    return out


def occurrence_key(instant: datetime) -> str:
    """The stable key of an occurrence: its original start in UTC, basic format."""
    return instant.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def key_instant(key: str) -> datetime:
    return datetime.strptime(key, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def wall_duration(start: Timing, end: Timing, zone_name: str) -> timedelta:
    tz = zone(zone_name)
    return (end.instant.astimezone(tz).replace(tzinfo=None)
            - start.instant.astimezone(tz).replace(tzinfo=None))
