"""Hypothesis strategies: calendars, techs and windows around DST changes.

Everything is built as a ``fb_reference`` description; the test renders it to
iCalendar text and computes the expected time from the description.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

from dateutil import rrule as du
from hypothesis import strategies as st

from server.freebusy.policy import ALLDAY_POLICIES, Policy
from server.hours import DAYS, parse_working_hours
from tests.support.fb_reference import (
    TECH_EMAIL,
    UTC,
    EventSpec,
    Override,
    Rule,
    Style,
)

ZONES = ("America/Los_Angeles", "Europe/Berlin", "Australia/Lord_Howe")
WEEKDAY_CODES = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_DU_DAYS = (du.MO, du.TU, du.WE, du.TH, du.FR, du.SA, du.SU)


@cache
def dst_change_days(zone_name: str, years: tuple[int, ...] = (2026, 2027)) -> list[date]:
    """Local dates on which ``zone_name`` changes its UTC offset."""
    zone = ZoneInfo(zone_name)
    out = []
    day = date(years[0], 1, 1)
    while day.year <= years[-1]:
        before = datetime.combine(day, time(0, 0), tzinfo=zone).utcoffset()
        after = datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=zone).utcoffset()
        if before != after:
            out.append(day)
        day += timedelta(days=1)
    return out


@cache
def change_instant(zone_name: str, day: date) -> datetime:
    """The UTC instant at which ``zone_name`` changes its offset on local ``day``."""
    zone = ZoneInfo(zone_name)
    instant = datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)
    offset = instant.astimezone(zone).utcoffset()
    while instant.astimezone(zone).utcoffset() == offset:
        instant += timedelta(minutes=15)
    return instant


# Times of day: ordinary ones, and ones right at the DST changes of the three
# zones (02:00-03:00 is missing or doubled in LA/Berlin, 02:00-02:30 /
# 01:30-02:00 at Lord Howe).
SPECIAL_TIMES = [time(h, m) for h, m in [
    (0, 0), (0, 30), (1, 0), (1, 30), (1, 45), (2, 0), (2, 15), (2, 30), (2, 45), (3, 0), (3, 30),
    (8, 0), (9, 0), (9, 0), (9, 0), (12, 30), (17, 0), (22, 0), (23, 30),
]]
times_of_day = st.one_of(
    st.sampled_from(SPECIAL_TIMES),
    st.integers(0, 95).map(lambda quarter: time(quarter // 4, quarter % 4 * 15)),
)
timed_lengths = st.sampled_from([
    timedelta(minutes=15), timedelta(minutes=30), timedelta(hours=1), timedelta(hours=1),
    timedelta(minutes=90), timedelta(hours=2), timedelta(hours=3), timedelta(hours=4),
    timedelta(hours=8), timedelta(hours=23), timedelta(days=1), timedelta(hours=25),
    timedelta(days=2, hours=1),
])
partstats = st.sampled_from(
    [None, None, "ACCEPTED", "DECLINED", "TENTATIVE", "NEEDS-ACTION", "DEFAULT", "DELEGATED"]
)


@dataclass(frozen=True)
class Scenario:
    events: tuple[EventSpec, ...]
    policy: Policy
    hours_spec: str
    window_start: datetime
    window_end: datetime


@st.composite
def working_hours_specs(draw: st.DrawFn) -> str:
    clauses = []
    for day in DAYS:
        ranges = []
        cursor = draw(st.integers(0, 12 * 4))  # quarter hours from midnight
        for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
            begin = cursor + draw(st.integers(0, 8 * 4))
            end = begin + draw(st.integers(1, 10 * 4))
            if end > 96:
                break
            ranges.append(f"{begin // 4:02d}:{begin % 4 * 15:02d}-{end // 4:02d}:{end % 4 * 15:02d}")
            cursor = end
        if ranges:
            clauses.append(f"{day} " + " ".join(ranges))
    if not clauses:
        clauses.append("mon-fri 08:00-17:00")
    return "; ".join(clauses)


@st.composite
def styles(draw: st.DrawFn, frame: str) -> Style:
    return Style(
        tz_style=draw(st.sampled_from(["iana_vtz", "iana_bare", "windows_vtz", "windows_bare", "custom_vtz"])),
        ids_in_utc=frame == "tz" and draw(st.booleans()),
        email_spelling=draw(st.sampled_from([TECH_EMAIL, "Tech@Example.com", "TECH@EXAMPLE.COM"])),
        mailto=draw(st.sampled_from(["mailto:", "MAILTO:"])),
        colleague_partstat=draw(st.sampled_from([None, "ACCEPTED", "DECLINED", "TENTATIVE"])),
        omit_one_day_end=draw(st.booleans()),
    )


def _first_instances(start: datetime | date, rule: Rule, limit: int = 30) -> list:
    """Rough instance list used only to pick plausible EXDATE/RECURRENCE-ID values."""
    dtstart = start if isinstance(start, datetime) else datetime.combine(start, time())
    walls = list(du.rrule(
        du.DAILY if rule.freq == "DAILY" else du.WEEKLY,
        dtstart=dtstart, interval=rule.interval, count=min(rule.count or limit, limit),
        byweekday=[_DU_DAYS[WEEKDAY_CODES.index(code)] for code in rule.byday] or None,
    ))
    return walls if isinstance(start, datetime) else [wall.date() for wall in walls]


def _before_until(candidate: datetime | date, rule: Rule, frame: str, tzid: str | None) -> bool:
    if rule.until is None:
        return True
    if frame in ("date", "floating"):
        return candidate <= rule.until
    zone = ZoneInfo(tzid) if frame == "tz" and tzid else UTC
    return candidate.replace(tzinfo=zone).astimezone(UTC) <= rule.until


@st.composite
def rules(
    draw: st.DrawFn, start: datetime | date, frame: str, tzid: str | None, weekly: bool | None = None
) -> Rule:
    if weekly is None:
        freq = draw(st.sampled_from(["DAILY", "WEEKLY"]))
    else:
        freq = "WEEKLY" if weekly else "DAILY"
    interval = draw(st.sampled_from([1, 1, 1, 2, 3]))
    byday: tuple[str, ...] = ()
    if freq == "WEEKLY" and draw(st.integers(0, 3)) == 0:
        own = WEEKDAY_CODES[start.weekday()]
        extra = draw(st.sets(st.sampled_from(WEEKDAY_CODES), max_size=2))
        byday = tuple(code for code in WEEKDAY_CODES if code == own or code in extra)
    end_kind = draw(st.sampled_from(["none", "count", "until"]))
    if end_kind == "count":
        return Rule(freq, interval, count=draw(st.integers(1, 12)), byday=byday)
    if end_kind == "none":
        return Rule(freq, interval, byday=byday)
    # UNTIL: exactly at an instance (inclusive bound) or a little off it.
    candidates = _first_instances(start, Rule(freq, interval, byday=byday), limit=15)
    target = draw(st.sampled_from(candidates))
    if frame == "date":
        until: datetime | date = target + timedelta(days=draw(st.sampled_from([0, 0, 1, -1])))
        if until < start:
            until = start
        return Rule(freq, interval, until=until, byday=byday)
    shift = timedelta(minutes=draw(st.sampled_from([0, 0, -1, 59, 60 * 13])))
    if frame == "floating":
        return Rule(freq, interval, until=max(target + shift, start), byday=byday)
    zone = ZoneInfo(tzid) if frame == "tz" and tzid else UTC
    instant = target.replace(tzinfo=zone).astimezone(UTC) + shift
    first = start.replace(tzinfo=zone).astimezone(UTC)
    return Rule(freq, interval, until=max(instant, first), byday=byday)


@st.composite
def event_specs(
    draw: st.DrawFn, uid: str, anchor: date, anchor_zone: str = ZONES[0], shape: str | None = None
) -> EventSpec:
    """One event near ``anchor`` (a DST change day of ``anchor_zone``)."""
    shape = shape or draw(st.sampled_from([
        "timed", "timed", "timed_series", "timed_series", "weekly_moved_cancelled",
        "floating", "utc", "allday", "allday_multi", "allday_series", "across_change", "across_change",
    ]))
    weekly: bool | None = True if shape == "weekly_moved_cancelled" else None
    if shape in ("allday", "allday_multi", "allday_series"):
        frame, tzid = "date", None
    elif shape == "across_change":
        # An instance that contains the very moment the clocks change.
        floating = draw(st.integers(0, 3)) == 0
        frame, tzid = ("floating", None) if floating else ("tz", anchor_zone)
    elif shape == "floating":
        frame, tzid = "floating", None
    elif shape == "utc":
        frame, tzid = "utc", None
    else:
        frame, tzid = "tz", draw(st.sampled_from([anchor_zone, anchor_zone, *ZONES]))
    series = shape in ("timed_series", "weekly_moved_cancelled", "allday_series") or (
        shape in ("floating", "utc", "across_change") and draw(st.booleans())
    )
    if shape == "across_change":
        before = timedelta(minutes=15 * draw(st.integers(1, 6 * 4)))
        zone = ZoneInfo(anchor_zone)
        start_wall = (change_instant(anchor_zone, anchor) - before).astimezone(zone).replace(tzinfo=None)
        if series:
            weekly = draw(st.booleans())
            start_wall -= timedelta(days=(7 if weekly else 1) * draw(st.integers(0, 3)))
        first_day = start_wall.date()
    elif draw(st.booleans()):  # right at the change
        weeks_back = 7 * draw(st.integers(0, 3)) if series else 0
        first_day = anchor + timedelta(days=draw(st.integers(-1, 1)) - weeks_back)
    else:
        first_day = anchor + timedelta(days=draw(st.integers(-28 if series else -6, 6)))

    start: datetime | date
    if frame == "date":
        start = first_day
        if shape == "allday":
            length = timedelta(days=1)
        else:
            length = timedelta(days=draw(st.integers(1 if series else 2, 4)))
    elif shape == "across_change":
        start = start_wall
        length = draw(timed_lengths.filter(lambda length: length > before) | timed_lengths)
    else:
        start = datetime.combine(first_day, draw(times_of_day))
        length = draw(timed_lengths)
    end_prop = draw(st.sampled_from(["DTEND", "DURATION"]))

    rule = None
    exdates: list = []
    rdates: list = []
    overrides: list[Override] = []
    if series:
        rule = draw(rules(start, frame, tzid, weekly=weekly))
        candidates = [c for c in _first_instances(start, rule) if _before_until(c, rule, frame, tzid)]
        step = timedelta(days=1)
        if shape == "weekly_moved_cancelled" and len(candidates) >= 2:
            moved, cancelled = draw(st.lists(st.sampled_from(candidates), min_size=2, max_size=2, unique=True))
            new_start = moved + step * draw(st.integers(-2, 2))
            if frame == "date":
                new_length = draw(st.none() | st.integers(1, 3).map(lambda days: timedelta(days=days)))
            else:
                new_start = datetime.combine(new_start.date(), draw(times_of_day))
                new_length = draw(st.none() | timed_lengths)
            overrides.append(Override(moved, start=new_start, length=new_length))
            overrides.append(Override(cancelled, cancelled=True))
        else:
            for recurrence in draw(st.lists(st.sampled_from(candidates), max_size=2, unique=True)):
                what = draw(st.sampled_from(["moved", "cancelled", "partstat"]))
                if what == "cancelled":
                    overrides.append(Override(recurrence, cancelled=True))
                elif what == "partstat":
                    overrides.append(Override(recurrence, partstat=draw(partstats.filter(bool))))
                else:
                    new_start = recurrence + step * draw(st.integers(-2, 3))
                    if frame == "date":
                        new_length = timedelta(days=draw(st.integers(1, 3)))
                    else:
                        new_start = datetime.combine(new_start.date(), draw(times_of_day))
                        new_length = draw(timed_lengths)
                    overrides.append(Override(recurrence, start=new_start, length=new_length))
        taken = {override.recurrence for override in overrides}
        free = [candidate for candidate in candidates if candidate not in taken]
        if free:
            exdates = draw(st.lists(st.sampled_from(free), max_size=2, unique=True))
        for _ in range(draw(st.integers(0, 2))):
            extra = start + step * draw(st.integers(1, 20))
            if frame != "date" and draw(st.booleans()):
                extra = datetime.combine(extra.date(), draw(times_of_day))
            if extra not in taken:
                rdates.append(extra)
        if frame == "date" and end_prop == "DURATION" and length.days > 1 and draw(st.booleans()):
            end_prop = "DTEND"

    return EventSpec(
        uid=uid,
        frame=frame,
        tzid=tzid,
        start=start,
        length=length,
        end_prop=end_prop,
        rule=rule,
        exdates=tuple(exdates),
        rdates=tuple(rdates),
        overrides=tuple(overrides),
        status=draw(st.sampled_from([None, None, None, "CONFIRMED", "TENTATIVE", "CANCELLED"])),
        transp=draw(st.sampled_from([None, None, None, "OPAQUE", "TRANSPARENT"])),
        partstat=draw(partstats),
        summary=shape,
        style=draw(styles(frame)),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    anchor_zone = draw(st.sampled_from(ZONES))
    anchor = draw(st.sampled_from(dst_change_days(anchor_zone)))
    tech_zone = draw(st.sampled_from([anchor_zone, *ZONES]))
    hours_spec = draw(working_hours_specs())
    policy = Policy(
        timezone=tech_zone,
        working_hours=parse_working_hours(hours_spec),
        emails=frozenset({TECH_EMAIL}),
        allday=draw(st.sampled_from(ALLDAY_POLICIES)),
    )
    count = draw(st.integers(1, 4))
    events = tuple(draw(event_specs(f"event-{index}@lockstep.test", anchor, anchor_zone)) for index in range(count))
    midnight = datetime.combine(anchor, time(), tzinfo=UTC)
    quarters = st.integers(0, 10 * 96).map(lambda n: timedelta(minutes=15 * n))
    if draw(st.integers(0, 3)):  # usually the whole change day in every zone, and more
        window_start = midnight - timedelta(hours=15) - draw(quarters)
        window_end = midnight + timedelta(hours=39) + draw(quarters)
    else:  # anywhere nearby, possibly short and cutting through events
        window_start = midnight + timedelta(minutes=15 * draw(st.integers(-10 * 96, 2 * 96)))
        window_end = window_start + timedelta(minutes=15 * draw(st.integers(4 * 6, 21 * 96)))
    return Scenario(events, policy, hours_spec, window_start, window_end)
