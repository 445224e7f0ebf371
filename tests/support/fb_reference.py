"""An independent reference for ``server.freebusy.expand.intervals_for``.

A calendar event is described by plain dataclasses (``EventSpec`` & co.).  Two
functions work from such a description, and they share nothing but the
description itself:

* ``render_event`` writes the iCalendar TEXT (VTIMEZONEs, RRULE, EXDATE, RDATE,
  RECURRENCE-ID overrides, ATTENDEEs ...), in one of several client styles.
* ``reference_intervals`` computes the busy and tentative UTC time straight from
  the description with ``dateutil.rrule`` and ``zoneinfo`` — it never parses
  iCalendar and never uses recurring-ical-events.

Conventions of the description (RFC 5545 where it has something to say):

* ``frame`` says how the event's times are written:
  ``"tz"``       local wall-clock time in ``tzid`` (an IANA zone);
  ``"utc"``      UTC wall-clock time (written with a ``Z``);
  ``"floating"`` wall-clock time without a zone — read in the tech's zone;
  ``"date"``     all-day: DATE values.
  Every datetime in a description is naive (wall clock in that frame), except
  ``Rule.until`` which is an aware UTC datetime for "tz"/"utc" (RFC 5545: UNTIL
  is UTC when DTSTART has a zone), naive for "floating" and a date for "date".
* ``length`` is the event's length.  With ``end_prop == "DTEND"`` it is the
  wall-clock distance DTSTART→DTEND as written; every instance then lasts the
  same *exact* time as the master (RFC 5545 3.8.5.3).  With ``"DURATION"`` it
  is written as DURATION: ``length.days`` nominal days (added in local time)
  plus ``length.seconds`` exact seconds (RFC 5545 3.3.6).  For "date" events
  only whole days are used.
* Local times that do not exist (spring-forward gap) or exist twice (fall-back)
  mean what RFC 5545 3.3.5 says, which is what ``zoneinfo`` does with
  ``fold=0``: the offset before the gap; the first of two occurrences.
* ``partstat`` is the tech's own PARTSTAT: ``None`` = the tech is not an
  attendee, ``"DEFAULT"`` = the tech is an attendee without a PARTSTAT
  parameter (RFC default NEEDS-ACTION).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from dateutil import rrule as du

UTC = timezone.utc
TECH_EMAIL = "tech@example.com"
OTHER_EMAIL = "colleague@example.com"

# --------------------------------------------------------------------------
# The description
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    freq: str  # "DAILY" | "WEEKLY"
    interval: int = 1
    count: int | None = None
    until: datetime | date | None = None
    byday: tuple[str, ...] = ()  # e.g. ("MO", "WE"); always includes DTSTART's weekday


@dataclass(frozen=True)
class Override:
    """A RECURRENCE-ID component for the instance that starts at ``recurrence``."""

    recurrence: datetime | date
    cancelled: bool = False
    start: datetime | date | None = None  # moved to (None: stays at ``recurrence``)
    length: timedelta | None = None  # new length (None: the master's)
    partstat: str | None = None  # the tech's PARTSTAT in this instance (None: the master's)


@dataclass(frozen=True)
class Style:
    """How the text is written; must not change what the event means."""

    tz_style: str = "iana_vtz"  # iana_vtz | iana_bare | windows_vtz | windows_bare | custom_vtz
    ids_in_utc: bool = False  # EXDATE / RECURRENCE-ID written in UTC (tz frame only)
    email_spelling: str = TECH_EMAIL  # the tech's address as written in ATTENDEE
    mailto: str = "mailto:"  # or "MAILTO:"
    colleague_partstat: str | None = None  # a second attendee, never the tech
    omit_one_day_end: bool = False  # all-day, one day: no DTEND/DURATION at all


@dataclass(frozen=True)
class EventSpec:
    uid: str
    frame: str  # "tz" | "utc" | "floating" | "date"
    start: datetime | date
    length: timedelta
    tzid: str | None = None  # IANA zone for frame "tz"
    end_prop: str = "DTEND"  # "DTEND" | "DURATION"
    rule: Rule | None = None
    exdates: tuple[datetime | date, ...] = ()
    rdates: tuple[datetime | date, ...] = ()
    overrides: tuple[Override, ...] = ()
    status: str | None = None  # None | CONFIRMED | TENTATIVE | CANCELLED
    transp: str | None = None  # None | OPAQUE | TRANSPARENT
    partstat: str | None = None
    summary: str = "Event"
    style: Style = field(default_factory=Style)


# --------------------------------------------------------------------------
# Description → iCalendar text
# --------------------------------------------------------------------------

WINDOWS_NAMES = {
    "America/Los_Angeles": "Pacific Standard Time",
    "Europe/Berlin": "W. Europe Standard Time",
    "Australia/Lord_Howe": "Lord Howe Standard Time",
}
CUSTOM_NAMES = {
    "America/Los_Angeles": "Lockstep Custom/Pacific",
    "Europe/Berlin": "Lockstep Custom/Central Europe",
    "Australia/Lord_Howe": "Lockstep Custom/Lord Howe",
}
# (standard name, standard offset, DTSTART of STANDARD, its RRULE,
#  daylight name, daylight offset, DTSTART of DAYLIGHT, its RRULE)
# DTSTART is the local time of the change, read with TZOFFSETFROM.
VTIMEZONE_RULES = {
    "America/Los_Angeles": (
        "PST", "-0800", "1101T020000", "FREQ=YEARLY;BYMONTH=11;BYDAY=1SU",
        "PDT", "-0700", "0308T020000", "FREQ=YEARLY;BYMONTH=3;BYDAY=2SU",
    ),
    "Europe/Berlin": (
        "CET", "+0100", "1025T030000", "FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU",
        "CEST", "+0200", "0329T020000", "FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU",
    ),
    "Australia/Lord_Howe": (
        "+1030", "+1030", "0405T020000", "FREQ=YEARLY;BYMONTH=4;BYDAY=1SU",
        "+11", "+1100", "1004T020000", "FREQ=YEARLY;BYMONTH=10;BYDAY=1SU",
    ),
}


def _vtimezone(tzid: str, iana: str, first_year: str) -> list[str]:
    std_name, std_off, std_start, std_rule, dst_name, dst_off, dst_start, dst_rule = VTIMEZONE_RULES[iana]
    return [
        "BEGIN:VTIMEZONE",
        f"TZID:{tzid}",
        "BEGIN:STANDARD",
        f"DTSTART:{first_year}{std_start}",
        f"RRULE:{std_rule}",
        f"TZOFFSETFROM:{dst_off}",
        f"TZOFFSETTO:{std_off}",
        f"TZNAME:{std_name}",
        "END:STANDARD",
        "BEGIN:DAYLIGHT",
        f"DTSTART:{first_year}{dst_start}",
        f"RRULE:{dst_rule}",
        f"TZOFFSETFROM:{std_off}",
        f"TZOFFSETTO:{dst_off}",
        f"TZNAME:{dst_name}",
        "END:DAYLIGHT",
        "END:VTIMEZONE",
    ]


def _fmt_wall(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%S")


def _fmt_date(value: date) -> str:
    return value.strftime("%Y%m%d")


def _fmt_duration(length: timedelta) -> str:
    days, seconds = length.days, length.seconds
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = "P"
    if days:
        out += f"{days}D"
    if seconds or not days:
        out += "T"
        if hours:
            out += f"{hours}H"
        if minutes:
            out += f"{minutes}M"
        if secs or not (hours or minutes):
            out += f"{secs}S"
    return out


class _Writer:
    """Property lines for one event in its frame and style."""

    def __init__(self, event: EventSpec) -> None:
        self.event = event
        style = event.style
        if event.frame == "tz":
            assert event.tzid is not None
            if style.tz_style.startswith("windows"):
                self.tzid = WINDOWS_NAMES[event.tzid]
            elif style.tz_style.startswith("custom"):
                self.tzid = CUSTOM_NAMES[event.tzid]
            else:
                self.tzid = event.tzid

    def value(self, name: str, value: datetime | date, *, utc_form: bool = False) -> str:
        """``NAME;params:value`` for a time in the event's frame."""
        frame = self.event.frame
        if frame == "date":
            assert not isinstance(value, datetime)
            return f"{name};VALUE=DATE:{_fmt_date(value)}"
        assert isinstance(value, datetime) and value.tzinfo is None
        if frame == "utc":
            return f"{name}:{_fmt_wall(value)}Z"
        if frame == "floating":
            return f"{name}:{_fmt_wall(value)}"
        if utc_form:
            # Clients such as Outlook write EXDATE / RECURRENCE-ID in UTC.
            instant = value.replace(tzinfo=ZoneInfo(self.event.tzid or "UTC")).astimezone(UTC)
            return f"{name}:{_fmt_wall(instant)}Z"
        return f"{name};TZID={self.tzid}:{_fmt_wall(value)}"

    def until(self, value: datetime | date) -> str:
        if self.event.frame == "date":
            assert not isinstance(value, datetime)
            return _fmt_date(value)
        assert isinstance(value, datetime)
        if self.event.frame == "floating":
            return _fmt_wall(value)
        return _fmt_wall(value.astimezone(UTC)) + "Z"

    def end(self, start: datetime | date, length: timedelta) -> list[str]:
        event = self.event
        if event.frame == "date" and event.style.omit_one_day_end and length == timedelta(days=1):
            return []
        if event.end_prop == "DURATION":
            return [f"DURATION:{_fmt_duration(length)}"]
        return [self.value("DTEND", start + length)]  # type: ignore[operator]

    def people(self, partstat: str | None) -> list[str]:
        style = self.event.style
        lines = [f"ORGANIZER;CN=Dispatcher:{style.mailto}dispatch@example.com"]
        if partstat is not None:
            param = "" if partstat == "DEFAULT" else f";PARTSTAT={partstat}"
            lines.append(
                f"ATTENDEE;CN=Tech;ROLE=REQ-PARTICIPANT{param};RSVP=TRUE:{style.mailto}{style.email_spelling}"
            )
        if style.colleague_partstat is not None:
            lines.append(f"ATTENDEE;CN=Colleague;PARTSTAT={style.colleague_partstat}:mailto:{OTHER_EMAIL}")
        return lines


def render_event(event: EventSpec) -> str:
    """One calendar object (VCALENDAR with VTIMEZONE and all components of the UID)."""
    writer = _Writer(event)
    style = event.style
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Lockstep tests//fb_reference//EN"]
    if event.frame == "tz" and style.tz_style.endswith("_vtz"):
        first_year = "1601" if style.tz_style == "windows_vtz" else "1970"
        lines += _vtimezone(writer.tzid, event.tzid or "", first_year)

    def common(partstat: str | None) -> list[str]:
        out = [f"UID:{event.uid}", "DTSTAMP:20260101T000000Z", f"SUMMARY:{event.summary}"]
        if event.status is not None:
            out.append(f"STATUS:{event.status}")
        if event.transp is not None:
            out.append(f"TRANSP:{event.transp}")
        return out + writer.people(partstat)

    lines += ["BEGIN:VEVENT", *common(event.partstat), writer.value("DTSTART", event.start)]
    lines += writer.end(event.start, event.length)
    if event.rule is not None:
        rule = event.rule
        parts = [f"FREQ={rule.freq}"]
        if rule.interval != 1:
            parts.append(f"INTERVAL={rule.interval}")
        if rule.count is not None:
            parts.append(f"COUNT={rule.count}")
        if rule.until is not None:
            parts.append(f"UNTIL={writer.until(rule.until)}")
        if rule.byday:
            parts.append("BYDAY=" + ",".join(rule.byday))
        lines.append("RRULE:" + ";".join(parts))
    for exdate in event.exdates:
        lines.append(writer.value("EXDATE", exdate, utc_form=style.ids_in_utc))
    for rdate in event.rdates:
        lines.append(writer.value("RDATE", rdate))
    lines.append("END:VEVENT")

    for override in event.overrides:
        partstat = event.partstat if override.partstat is None else override.partstat
        start = override.recurrence if override.start is None else override.start
        length = event.length if override.length is None else override.length
        head = common(partstat)
        if override.cancelled:
            head = [line for line in head if not line.startswith("STATUS:")] + ["STATUS:CANCELLED"]
        lines += ["BEGIN:VEVENT", *head]
        lines.append(writer.value("RECURRENCE-ID", override.recurrence, utc_form=style.ids_in_utc))
        lines.append(writer.value("DTSTART", start))
        lines += writer.end(start, length)
        lines.append("SEQUENCE:1")
        lines.append("END:VEVENT")
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


# --------------------------------------------------------------------------
# Description → expected intervals (no iCalendar involved)
# --------------------------------------------------------------------------

HORIZON = datetime(2030, 1, 1)
_WEEKDAYS = {"MO": du.MO, "TU": du.TU, "WE": du.WE, "TH": du.TH, "FR": du.FR, "SA": du.SA, "SU": du.SU}

Span = tuple[datetime, datetime]


def _zone_of(event: EventSpec, tech_zone: str) -> ZoneInfo | timezone:
    if event.frame == "tz":
        return ZoneInfo(event.tzid or "")
    if event.frame == "utc":
        return UTC
    return ZoneInfo(tech_zone)  # floating: the tech's wall clock


def _instant(wall: datetime, zone: ZoneInfo | timezone) -> datetime:
    """A wall-clock time in ``zone`` as UTC (fold=0: RFC 5545 3.3.5)."""
    return wall.replace(tzinfo=zone).astimezone(UTC)


def recurrence_set(event: EventSpec, tech_zone: str) -> list[datetime | date]:
    """Instance starts (wall clock in the event's frame; dates for all-day)."""
    if event.rule is None:
        starts: set = {event.start}
    else:
        rule = event.rule
        dtstart = event.start if isinstance(event.start, datetime) else datetime.combine(event.start, time())
        generated = du.rrule(
            du.DAILY if rule.freq == "DAILY" else du.WEEKLY,
            dtstart=dtstart,
            interval=rule.interval,
            count=rule.count,
            until=None if rule.count is not None else HORIZON,
            byweekday=[_WEEKDAYS[day] for day in rule.byday] or None,
        )
        walls = list(generated)
        if rule.until is not None:
            if event.frame == "date":
                walls = [wall for wall in walls if wall.date() <= rule.until]
            elif event.frame == "floating":
                walls = [wall for wall in walls if wall <= rule.until]
            else:
                zone = _zone_of(event, tech_zone)
                walls = [wall for wall in walls if _instant(wall, zone) <= rule.until]
        starts = {wall.date() for wall in walls} if event.frame == "date" else set(walls)
        starts.add(event.start)  # DTSTART is always the first instance
    starts |= set(event.rdates)
    starts -= set(event.exdates)
    return sorted(starts)


@dataclass(frozen=True)
class Instance:
    kind: str | None  # "busy", "tentative" or None (does not block)
    start: datetime | date
    length: timedelta
    anchor_start: datetime | date  # the component whose DTEND fixes the exact length
    anchor_length: timedelta


def _kind(event: EventSpec, partstat: str | None, cancelled: bool) -> str | None:
    if cancelled or event.status == "CANCELLED" or event.transp == "TRANSPARENT":
        return None
    own = "NEEDS-ACTION" if partstat == "DEFAULT" else partstat
    if own == "DECLINED":
        return None
    if event.status == "TENTATIVE" or own in ("TENTATIVE", "NEEDS-ACTION"):
        return "tentative"
    return "busy"


def instances(event: EventSpec, tech_zone: str) -> list[Instance]:
    by_recurrence = {override.recurrence: override for override in event.overrides}
    out = []
    for key in recurrence_set(event, tech_zone):
        override = by_recurrence.get(key)
        if override is None:
            out.append(Instance(_kind(event, event.partstat, False), key, event.length, event.start, event.length))
            continue
        start = key if override.start is None else override.start
        length = event.length if override.length is None else override.length
        partstat = event.partstat if override.partstat is None else override.partstat
        out.append(Instance(_kind(event, partstat, override.cancelled), start, length, start, length))
    return out


def _timed_span(event: EventSpec, instance: Instance, tech_zone: str) -> Span:
    zone = _zone_of(event, tech_zone)
    assert isinstance(instance.start, datetime) and isinstance(instance.anchor_start, datetime)
    start = _instant(instance.start, zone)
    if event.end_prop == "DURATION":
        # nominal days on the local calendar, then exact seconds
        days, seconds = instance.length.days, instance.length.seconds
        end = _instant(instance.start + timedelta(days=days), zone) + timedelta(seconds=seconds)
    else:
        # DTEND: every instance lasts exactly as long as its component's DTSTART→DTEND
        anchor_end = instance.anchor_start + instance.anchor_length
        end = start + (_instant(anchor_end, zone) - _instant(instance.anchor_start, zone))
    return start, end


def _allday_spans(first: date, days: int, tech_zone: str, working_hours: dict, allday: str) -> list[Span]:
    zone = ZoneInfo(tech_zone)
    out = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        if allday == "whole_day":
            out.append((_instant(datetime.combine(day, time()), zone),
                        _instant(datetime.combine(day + timedelta(days=1), time()), zone)))
        else:
            for begin, finish in working_hours[day.weekday()]:
                out.append((_instant(datetime.combine(day, begin), zone),
                            _instant(datetime.combine(day, finish), zone)))
    return out


def merge(spans: Iterable[Span]) -> list[Span]:
    """Union of half-open spans; touching spans join; empty spans vanish."""
    out: list[Span] = []
    for start, end in sorted(span for span in spans if span[0] < span[1]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def reference_intervals(
    events: Sequence[EventSpec],
    tech_zone: str,
    working_hours: dict,
    allday: str,
    window_start: datetime,
    window_end: datetime,
) -> dict[str, list[Span]]:
    """{"busy": merged spans, "tentative": merged spans}, clipped to the window."""
    found: dict[str, list[Span]] = {"busy": [], "tentative": []}
    for event in events:
        for instance in instances(event, tech_zone):
            if instance.kind is None:
                continue
            if event.frame == "date":
                assert not isinstance(instance.start, datetime)
                spans = _allday_spans(instance.start, instance.length.days, tech_zone, working_hours, allday)
            else:
                spans = [_timed_span(event, instance, tech_zone)]
            for start, end in spans:
                found[instance.kind].append((max(start, window_start), min(end, window_end)))
    return {kind: merge(spans) for kind, spans in found.items()}
