"""Graph's time values ↔ Python datetimes, exactly.

Graph writes times as an offset-less ``dateTime`` plus a ``timeZone`` name that
may be a Windows name ("Pacific Standard Time"), an IANA name or "UTC". The
Windows ↔ IANA table is tzlocal's (kept in sync with CLDR), not our own.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from tzlocal.windows_tz import tz_win, win_tz

UTC = timezone.utc
_IANA = frozenset(available_timezones())
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT", "Z", "Coordinated Universal Time",
                        "tzone://Microsoft/Utc"})


def zone_named(name: str | None) -> tzinfo | None:
    """The zone for a Graph ``timeZone`` (Windows or IANA); None when unknown or empty."""
    if not name:
        return None
    if name in _UTC_NAMES:
        return UTC
    iana = name if name in _IANA else win_tz.get(name)
    if not iana:
        return None
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def iana_key(zone: tzinfo | None) -> str | None:
    """The IANA name of a zone object, when it has one."""
    if zone is None:
        return None
    if zone is UTC or zone == UTC:
        return "UTC"
    key = getattr(zone, "key", None) or getattr(zone, "zone", None)
    if isinstance(key, str) and key in _IANA:
        return key
    return None


def windows_name(zone: tzinfo | None) -> str | None:
    """The Windows name Graph prefers for an IANA zone ("UTC" for UTC); None if there is none."""
    key = iana_key(zone)
    if key is None:
        return None
    if key in ("UTC", "Etc/UTC", "GMT", "Etc/GMT"):
        return "UTC"
    return tz_win.get(key)


def parse_moment(text: str) -> datetime:
    """An ISO date-time with Graph's 7 fractional digits, with or without an offset."""
    text = text.strip().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python takes at most 6 fractional digits; Graph sends 7
        digits = "".join(ch for ch in rest if ch.isdigit())
        tail = rest[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{tail}"
    return datetime.fromisoformat(text)


def read_when(value: dict[str, Any], fallback: tzinfo = UTC) -> datetime:
    """A Graph dateTimeTimeZone as an aware datetime (naive times read in their timeZone)."""
    moment = parse_moment(str(value["dateTime"]))
    if moment.tzinfo is not None:
        return moment
    zone = zone_named(value.get("timeZone")) or fallback
    return moment.replace(tzinfo=zone)


def read_day(value: dict[str, Any], own_zone: tzinfo | None) -> date:
    """The date of an all-day boundary: midnight in its own timeZone, or (when Graph converted it,
    e.g. to UTC) the date it has in the event's original zone."""
    moment = parse_moment(str(value["dateTime"]))
    if moment.tzinfo is None and moment.time() == time(0):
        return moment.date()
    aware = read_when(value)
    local = aware.astimezone(own_zone or UTC)
    if local.time() != time(0):  # not midnight anywhere we know: round to the nearest day
        local = local + timedelta(hours=12)
    return local.date()


def write_when(value: date | datetime, all_day_zone: str = "UTC") -> dict[str, str]:
    """A Python date/datetime as a Graph dateTimeTimeZone, in a zone Graph knows by name."""
    if not isinstance(value, datetime):
        return {"dateTime": f"{value.isoformat()}T00:00:00", "timeZone": all_day_zone}
    if value.tzinfo is None:  # floating: Graph has no such thing; read as UTC
        return {"dateTime": value.replace(microsecond=0).isoformat(), "timeZone": "UTC"}
    name = windows_name(value.tzinfo)
    if name is None:
        value, name = value.astimezone(UTC), "UTC"
    return {"dateTime": value.replace(tzinfo=None, microsecond=0).isoformat(), "timeZone": name}


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
