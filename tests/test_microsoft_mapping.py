"""Graph event JSON ↔ iCalendar: what blocks time survives both ways, zones and DST exactly."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest

from server.freebusy.expand import intervals_for
from server.freebusy.policy import Policy
from server.providers.microsoft_mapping import (
    UID_PROPERTY, ical_to_series, lockstep_uid_of, series_to_ical,
)
from server.providers.microsoft_recurrence import from_rrule, to_rrule
from server.providers.microsoft_zones import parse_moment, read_when, windows_name, write_when, zone_named
from tests.support.provider_contract import series_ical

UTC = timezone.utc
LA = ZoneInfo("America/Los_Angeles")
OWNER = "mike@contoso.example"


def kinds(text: str, emails: frozenset[str] = frozenset({OWNER}), zone: str = "America/Los_Angeles",
          start: str = "2026-11-01", end: str = "2027-06-01") -> list[str]:
    """'busy|tentative MM-DD HH:MM-HH:MM' (UTC) for every interval of the object."""
    policy = Policy.simple(zone, hours="mon-sun 00:00-24:00", emails=emails)
    window = (datetime.fromisoformat(start).replace(tzinfo=UTC), datetime.fromisoformat(end).replace(tzinfo=UTC))
    return [f"{i.kind} {i.start:%m-%d %H:%M}-{i.end:%H:%M}" for i in intervals_for(text, policy, *window)]


def utc(when: str) -> dict[str, str]:
    """A time as Graph returns it under Prefer: outlook.timezone="UTC" (7 digits, no offset)."""
    return {"dateTime": f"{when}.0000000", "timeZone": "UTC"}


def single(**fields: Any) -> dict[str, Any]:
    event = {"id": "AAMk-1", "iCalUId": "040000008200E0-1", "type": "singleInstance", "subject": "Dentist",
             "start": utc("2026-12-01T17:00:00"), "end": utc("2026-12-01T18:00:00"),
             "originalStartTimeZone": "Pacific Standard Time", "originalEndTimeZone": "Pacific Standard Time",
             "showAs": "busy", "isAllDay": False, "isCancelled": False, "responseStatus": {"response": "organizer"}}
    event.update(fields)
    return event


# --- zones ---------------------------------------------------------------------------------

def test_graph_times_are_read_exactly() -> None:
    assert parse_moment("2026-12-09T20:30:00.1234567") == datetime(2026, 12, 9, 20, 30, 0, 123456)
    assert read_when({"dateTime": "2026-07-01T09:00:00.0000000", "timeZone": "Pacific Standard Time"}) == \
        datetime(2026, 7, 1, 16, 0, tzinfo=UTC)
    assert read_when({"dateTime": "2026-12-01T09:00:00", "timeZone": "America/Los_Angeles"}) == \
        datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
    assert zone_named("W. Europe Standard Time") == ZoneInfo("Europe/Berlin")
    assert zone_named("tzone://Microsoft/Custom") is None
    assert windows_name(ZoneInfo("America/New_York")) == "Eastern Standard Time"
    assert write_when(datetime(2027, 3, 15, 9, 0, tzinfo=LA)) == \
        {"dateTime": "2027-03-15T09:00:00", "timeZone": "Pacific Standard Time"}
    assert write_when(datetime(2027, 3, 15, 16, 0, tzinfo=UTC)) == \
        {"dateTime": "2027-03-15T16:00:00", "timeZone": "UTC"}
    assert write_when(date(2027, 3, 15)) == {"dateTime": "2027-03-15T00:00:00", "timeZone": "UTC"}


# --- what blocks ---------------------------------------------------------------------------

@pytest.mark.parametrize(("show_as", "expected"), [
    ("busy", ["busy 12-01 17:00-18:00"]),
    ("oof", ["busy 12-01 17:00-18:00"]),
    ("unknown", ["busy 12-01 17:00-18:00"]),
    ("tentative", ["tentative 12-01 17:00-18:00"]),
    ("free", []),
    ("workingElsewhere", []),
])
def test_show_as(show_as: str, expected: list[str]) -> None:
    text = series_to_ical(single(showAs=show_as), owner=OWNER)
    assert kinds(text) == expected
    back = ical_to_series(text).master
    assert back["showAs"] == ("busy" if show_as == "unknown" else show_as)  # exact status round trip


def test_times_are_shown_in_the_original_zone() -> None:
    text = series_to_ical(single(), owner=OWNER)
    vevent = icalendar.Calendar.from_ical(text).walk("VEVENT")[0]
    assert vevent["DTSTART"].params["TZID"] == "America/Los_Angeles"
    assert vevent["DTSTART"].dt == datetime(2026, 12, 1, 9, 0, tzinfo=LA)
    assert "BEGIN:VTIMEZONE" in text and "SUMMARY:Dentist" in text
    assert ical_to_series(text).master["start"] == {"dateTime": "2026-12-01T09:00:00",
                                                    "timeZone": "Pacific Standard Time"}


@pytest.mark.parametrize(("response", "emails", "expected"), [
    ("declined", frozenset({OWNER}), []),
    ("declined", frozenset({"other@example.com"}), []),  # declined never blocks, whoever the tech is
    ("tentativelyAccepted", frozenset({OWNER}), ["tentative 12-01 17:00-18:00"]),
    ("notResponded", frozenset({OWNER}), ["tentative 12-01 17:00-18:00"]),
    ("accepted", frozenset({OWNER}), ["busy 12-01 17:00-18:00"]),
    ("organizer", frozenset({OWNER}), ["busy 12-01 17:00-18:00"]),
])
def test_the_tech_s_response(response: str, emails: frozenset[str], expected: list[str]) -> None:
    text = series_to_ical(single(responseStatus={"response": response}), owner=OWNER)
    assert kinds(text, emails) == expected


def test_declined_meeting_keeps_outlook_s_show_as_when_written_back() -> None:
    text = series_to_ical(single(responseStatus={"response": "declined"}), owner=OWNER)
    assert "showAs" not in ical_to_series(text).master


def test_cancelled_event_does_not_block() -> None:
    assert kinds(series_to_ical(single(isCancelled=True), owner=OWNER)) == []


@pytest.mark.parametrize("start", [
    {"dateTime": "2026-12-02T00:00:00.0000000", "timeZone": "Pacific Standard Time"},  # as written
    {"dateTime": "2026-12-02T08:00:00.0000000", "timeZone": "UTC"},  # converted by Prefer: UTC
    {"dateTime": "2026-12-02T00:00:00.0000000", "timeZone": "UTC"},
])
def test_all_day_is_a_date_with_exclusive_end(start: dict[str, str]) -> None:
    end = dict(start, dateTime=start["dateTime"].replace("2026-12-02", "2026-12-03"))
    text = series_to_ical(single(isAllDay=True, start=start, end=end, subject="PTO"), owner=OWNER)
    vevent = icalendar.Calendar.from_ical(text).walk("VEVENT")[0]
    assert vevent["DTSTART"].dt == date(2026, 12, 2) and vevent["DTEND"].dt == date(2026, 12, 3)
    body = ical_to_series(text, all_day_zone="Pacific Standard Time").master
    assert body["isAllDay"] is True
    assert body["start"] == {"dateTime": "2026-12-02T00:00:00", "timeZone": "Pacific Standard Time"}
    assert body["end"]["dateTime"] == "2026-12-03T00:00:00"
    # working hours of that local day only, not a UTC midnight-to-midnight slot
    assert kinds(text, zone="America/Los_Angeles") == ["busy 12-02 08:00-08:00"]


def test_our_uid_is_the_object_uid() -> None:
    ours = single(singleValueExtendedProperties=[{"id": UID_PROPERTY, "value": "lockstep-42"}])
    assert lockstep_uid_of(ours) == "lockstep-42" and lockstep_uid_of(single()) is None
    text = series_to_ical(ours)
    assert "UID:lockstep-42" in text and "X-LOCKSTEP-UID:lockstep-42" in text
    assert "UID:040000008200E0-1" in series_to_ical(single())


# --- recurrence ----------------------------------------------------------------------------

def weekly_pacific() -> dict[str, Any]:
    """Mondays 09:00 Pacific from 2027-03-01, six times: DST starts 2027-03-14."""
    return single(id="AAMk-series", type="seriesMaster", subject="Standup",
                  start=utc("2027-03-01T17:00:00"), end=utc("2027-03-01T18:00:00"),
                  recurrence={"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"],
                                          "firstDayOfWeek": "sunday"},
                              "range": {"type": "numbered", "numberOfOccurrences": 6, "startDate": "2027-03-01",
                                        "recurrenceTimeZone": "Pacific Standard Time"}})


def test_weekly_series_in_pacific_standard_time_across_dst() -> None:
    moved = single(id="AAMk-x1", type="exception", seriesMasterId="AAMk-series", subject="Standup (late)",
                   originalStart="2027-03-22T16:00:00Z",
                   start=utc("2027-03-22T18:00:00"), end=utc("2027-03-22T19:00:00"))
    text = series_to_ical(weekly_pacific(), [moved], [datetime(2027, 3, 29, 16, 0, tzinfo=UTC)], owner=OWNER)
    assert kinds(text) == [
        "busy 03-01 17:00-18:00", "busy 03-08 17:00-18:00",  # 09:00 PST
        "busy 03-15 16:00-17:00",  # 09:00 PDT: same wall clock, one hour earlier in UTC
        "busy 03-22 18:00-19:00",  # the exception, moved to 11:00 PDT
        "busy 04-05 16:00-17:00",  # 03-29 deleted
    ]
    master = icalendar.Calendar.from_ical(text).walk("VEVENT")[0]
    assert master["DTSTART"].params["TZID"] == "America/Los_Angeles"
    assert master["RRULE"].to_ical() == b"FREQ=WEEKLY;COUNT=6;BYDAY=MO"
    # And back: one master with the pattern in the Windows zone, the exception and the deletion by original start.
    series = ical_to_series(text)
    assert series.master["recurrence"] == {
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"], "firstDayOfWeek": "monday"},
        "range": {"type": "numbered", "numberOfOccurrences": 6, "startDate": "2027-03-01",
                  "recurrenceTimeZone": "Pacific Standard Time"}}
    assert series.master["start"] == {"dateTime": "2027-03-01T09:00:00", "timeZone": "Pacific Standard Time"}
    exception = series.overrides[datetime(2027, 3, 22, 16, 0, tzinfo=UTC)]
    assert exception is not None and exception["subject"] == "Standup (late)"
    assert read_when(exception["start"]) == datetime(2027, 3, 22, 18, 0, tzinfo=UTC)
    assert series.overrides[datetime(2027, 3, 29, 16, 0, tzinfo=UTC)] is None


def test_contract_series_from_icalendar() -> None:
    series = ical_to_series(series_ical("lockstep-1"))
    assert series.master["recurrence"]["range"]["recurrenceTimeZone"] == "Eastern Standard Time"
    assert series.master["start"] == {"dateTime": "2027-03-01T09:00:00", "timeZone": "Eastern Standard Time"}
    assert sorted((k.isoformat(), v is None) for k, v in series.overrides.items()) == [
        ("2027-03-08T14:00:00+00:00", False), ("2027-03-22T13:00:00+00:00", True)]


def test_windows_tzid_from_an_outlook_export() -> None:
    text = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Microsoft Corporation//Outlook 16.0//EN\r\n"
            "BEGIN:VTIMEZONE\r\nTZID:Pacific Standard Time\r\nBEGIN:STANDARD\r\nDTSTART:16011104T020000\r\n"
            "RRULE:FREQ=YEARLY;BYDAY=1SU;BYMONTH=11\r\nTZOFFSETFROM:-0700\r\nTZOFFSETTO:-0800\r\nEND:STANDARD\r\n"
            "BEGIN:DAYLIGHT\r\nDTSTART:16010311T020000\r\nRRULE:FREQ=YEARLY;BYDAY=2SU;BYMONTH=3\r\n"
            "TZOFFSETFROM:-0800\r\nTZOFFSETTO:-0700\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n"
            "BEGIN:VEVENT\r\nUID:x1\r\nDTSTAMP:20270101T000000Z\r\n"
            "DTSTART;TZID=Pacific Standard Time:20270301T090000\r\n"
            "DTEND;TZID=Pacific Standard Time:20270301T100000\r\nRRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=3\r\n"
            "SUMMARY:Outlook series\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
    series = ical_to_series(text)
    assert series.master["start"] == {"dateTime": "2027-03-01T09:00:00", "timeZone": "Pacific Standard Time"}
    assert series.master["recurrence"]["range"]["recurrenceTimeZone"] == "Pacific Standard Time"


PATTERNS = [
    ({"type": "daily", "interval": 2}, "FREQ=DAILY;INTERVAL=2"),
    ({"type": "weekly", "interval": 1, "daysOfWeek": ["monday", "wednesday"], "firstDayOfWeek": "monday"},
     "FREQ=WEEKLY;BYDAY=MO,WE"),
    ({"type": "weekly", "interval": 2, "daysOfWeek": ["friday"], "firstDayOfWeek": "sunday"},
     "FREQ=WEEKLY;INTERVAL=2;BYDAY=FR;WKST=SU"),
    ({"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 15}, "FREQ=MONTHLY;BYMONTHDAY=15"),
    ({"type": "relativeMonthly", "interval": 1, "daysOfWeek": ["tuesday"], "index": "second"},
     "FREQ=MONTHLY;BYDAY=2TU"),
    ({"type": "relativeMonthly", "interval": 3, "daysOfWeek": ["friday"], "index": "last"},
     "FREQ=MONTHLY;INTERVAL=3;BYDAY=-1FR"),
    ({"type": "relativeMonthly", "interval": 1, "index": "first",
      "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"]},
     "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=1"),
    ({"type": "absoluteYearly", "interval": 1, "month": 7, "dayOfMonth": 4}, "FREQ=YEARLY;BYMONTH=7;BYMONTHDAY=4"),
    ({"type": "relativeYearly", "interval": 1, "month": 11, "daysOfWeek": ["thursday"], "index": "fourth"},
     "FREQ=YEARLY;BYMONTH=11;BYDAY=4TH"),
]
RANGES = [
    ({"type": "noEnd"}, ""),
    ({"type": "numbered", "numberOfOccurrences": 10}, ";COUNT=10"),
    ({"type": "endDate", "endDate": "2027-12-31"}, ";UNTIL=20280101T075959Z"),
]


@pytest.mark.parametrize(("pattern", "rule"), PATTERNS, ids=[p[0]["type"] + str(i) for i, p in enumerate(PATTERNS)])
@pytest.mark.parametrize(("span", "tail"), RANGES, ids=[r[0]["type"] for r in RANGES])
def test_every_pattern_and_range_round_trips(pattern: dict, rule: str, span: dict, tail: str) -> None:
    start = datetime(2027, 1, 4, 9, 0, tzinfo=LA)
    full_span = {**span, "startDate": "2027-01-04", "recurrenceTimeZone": "Pacific Standard Time"}
    recurrence = {"pattern": pattern, "range": full_span}
    vrecur = icalendar.vRecur(to_rrule(recurrence, LA, all_day=False))
    expected = icalendar.vRecur.from_ical(rule + tail)
    assert dict(vrecur) == dict(expected)
    back = from_rrule(dict(icalendar.vRecur.from_ical(vrecur.to_ical().decode())), start, LA)
    want_pattern = dict(pattern)
    if pattern["type"] == "weekly" and pattern["interval"] == 1:
        want_pattern["firstDayOfWeek"] = "monday"  # WKST only matters (and is only written) when interval > 1
    assert back == {"pattern": want_pattern, "range": full_span}


def test_all_day_series_until_is_a_date() -> None:
    recurrence = {"pattern": {"type": "daily", "interval": 1},
                  "range": {"type": "endDate", "startDate": "2027-01-04", "endDate": "2027-01-08"}}
    assert to_rrule(recurrence, UTC, all_day=True)["UNTIL"] == [date(2027, 1, 8)]


@pytest.mark.parametrize("rule", ["FREQ=HOURLY", "FREQ=MONTHLY;BYMONTHDAY=1,15", "FREQ=MONTHLY;BYDAY=5MO",
                                  "FREQ=WEEKLY;BYHOUR=9", "FREQ=MONTHLY;BYMONTHDAY=-1"])
def test_rules_outlook_cannot_hold_are_refused(rule: str) -> None:
    with pytest.raises(ValueError):
        from_rrule(dict(icalendar.vRecur.from_ical(rule)), datetime(2027, 1, 4, 9, tzinfo=LA), LA)


def test_weekday_daily_rule_becomes_weekly() -> None:
    back = from_rrule(dict(icalendar.vRecur.from_ical("FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR")),
                      datetime(2027, 1, 4, 9, tzinfo=LA), LA)
    assert back["pattern"]["type"] == "weekly" and len(back["pattern"]["daysOfWeek"]) == 5


def test_round_trip_keeps_what_outlook_holds() -> None:
    original = single(showAs="oof", subject="Vacation", location={"displayName": "Lisbon"},
                      body={"contentType": "text", "content": "back on Monday"})
    body = ical_to_series(series_to_ical(original, owner=OWNER)).master
    assert body["subject"] == "Vacation" and body["showAs"] == "oof"
    assert body["location"] == {"displayName": "Lisbon"} and body["body"]["content"] == "back on Monday"
    assert read_when(body["start"]) == datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
    assert read_when(body["end"]) == datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
    assert "recurrence" not in body


def test_no_master_is_refused() -> None:
    with pytest.raises(ValueError):
        ical_to_series("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nEND:VCALENDAR\r\n")
