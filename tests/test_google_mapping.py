"""Google event resources ↔ iCalendar: the fields that decide busy time survive both ways."""

from __future__ import annotations

from datetime import datetime, timezone

from server.freebusy.expand import intervals_for
from server.freebusy.policy import Policy
from server.providers.google_mapping import ical_to_series, lockstep_uid_of, series_to_ical

LA = "America/Los_Angeles"
WINDOW = (datetime(2026, 2, 1, tzinfo=timezone.utc), datetime(2026, 5, 1, tzinfo=timezone.utc))
POLICY = Policy.simple(LA, emails=frozenset({"mike@example.com"}))


def _at(day: str, time: str, offset: str) -> dict[str, str]:
    return {"dateTime": f"{day}T{time}{offset}", "timeZone": LA}


MASTER = {
    "id": "series1", "iCalUID": "series1@google.com", "status": "confirmed", "summary": "Standup",
    "start": _at("2026-03-02", "09:00:00", "-08:00"), "end": _at("2026-03-02", "10:00:00", "-08:00"),
    "recurrence": ["RRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=6"],
}
MOVED = {
    "id": "series1_20260309T160000Z", "iCalUID": "series1@google.com", "recurringEventId": "series1",
    "status": "confirmed", "summary": "Standup (moved)",
    "originalStartTime": _at("2026-03-09", "09:00:00", "-07:00"),
    "start": _at("2026-03-09", "11:00:00", "-07:00"), "end": _at("2026-03-09", "12:00:00", "-07:00"),
}
CANCELLED = {"id": "series1_20260323T160000Z", "recurringEventId": "series1", "status": "cancelled",
             "originalStartTime": _at("2026-03-23", "09:00:00", "-07:00")}


def _busy(text: str) -> list[tuple[str, str, str]]:
    return [(i.start.strftime("%m-%d %H:%M"), i.end.strftime("%H:%M"), i.kind) for i in intervals_for(text, POLICY, *WINDOW)]


def test_series_with_moved_and_cancelled_instance_keeps_local_nine_across_dst() -> None:
    text = series_to_ical(MASTER, [MOVED, CANCELLED])
    assert text.count("UID:series1@google.com") == 3  # the cancelled instance joins its series
    assert _busy(text) == [
        ("03-02 17:00", "18:00", "busy"),   # 09:00 PST
        ("03-09 18:00", "19:00", "busy"),   # moved to 11:00 PDT
        ("03-16 16:00", "17:00", "busy"),   # 09:00 PDT after the change
        ("03-30 16:00", "17:00", "busy"),   # 03-23 cancelled
        ("04-06 16:00", "17:00", "busy"),
    ]


def test_round_trip_to_google_bodies() -> None:
    master, overrides = ical_to_series(series_to_ical(MASTER, [MOVED, CANCELLED]), lockstep_uid="ls-1")
    (rule,) = master["recurrence"]  # same rule; icalendar may order its parts differently
    assert rule.startswith("RRULE:") and set(rule[6:].split(";")) == {"FREQ=WEEKLY", "BYDAY=MO", "COUNT=6"}
    assert master["start"] == {"dateTime": "2026-03-02T09:00:00-08:00", "timeZone": LA}
    assert lockstep_uid_of(master) == "ls-1"
    by_start = dict(overrides)
    assert by_start["2026-03-09T16:00:00Z"]["start"]["dateTime"] == "2026-03-09T11:00:00-07:00"
    assert by_start["2026-03-23T16:00:00Z"]["status"] == "cancelled"


def test_allday_transparency_status_and_own_response() -> None:
    pto = {"id": "pto", "status": "confirmed", "start": {"date": "2026-03-03"}, "end": {"date": "2026-03-04"}}
    free = {"id": "free", "status": "confirmed", "transparency": "transparent",
            "start": _at("2026-03-04", "09:00:00", "-08:00"), "end": _at("2026-03-04", "10:00:00", "-08:00")}
    maybe = {"id": "maybe", "status": "confirmed", "attendees": [
                 {"email": "boss@example.com", "organizer": True, "responseStatus": "accepted"},
                 {"email": "mike@example.com", "self": True, "responseStatus": "tentative"}],
             "start": _at("2026-03-05", "09:00:00", "-08:00"), "end": _at("2026-03-05", "10:00:00", "-08:00")}
    declined = {**maybe, "id": "no", "attendees": [{"email": "mike@example.com", "self": True,
                                                    "responseStatus": "declined"}]}
    assert _busy(series_to_ical(pto, [])) == [("03-03 16:00", "01:00", "busy")]  # 08-17 local
    assert _busy(series_to_ical(free, [])) == []
    assert _busy(series_to_ical(maybe, [])) == [("03-05 17:00", "18:00", "tentative")]
    assert _busy(series_to_ical(declined, [])) == []
    body, _ = ical_to_series(series_to_ical(pto, []))
    assert body["start"] == {"date": "2026-03-03"} and body["end"] == {"date": "2026-03-04"}
    body, _ = ical_to_series(series_to_ical(free, []))
    assert body["transparency"] == "transparent"


def test_offset_only_times_become_utc_not_floating() -> None:
    event = {"id": "e1", "status": "confirmed", "start": {"dateTime": "2026-03-04T09:00:00-05:00"},
             "end": {"dateTime": "2026-03-04T10:00:00-05:00"}}
    text = series_to_ical(event, [])
    assert "DTSTART:20260304T140000Z" in text and "TZID" not in text
    assert _busy(text) == [("03-04 14:00", "15:00", "busy")]
    body, _ = ical_to_series(text)
    assert body["start"] == {"dateTime": "2026-03-04T14:00:00+00:00", "timeZone": "UTC"}


def test_our_uid_is_the_series_uid_on_the_way_back() -> None:
    ours = {**MASTER, "extendedProperties": {"private": {"lockstepUid": "booking-7"}}}
    text = series_to_ical(ours, [MOVED, CANCELLED])
    assert text.count("\r\nUID:booking-7\r\n") == 3 and "series1@google.com" not in text
    assert "X-LOCKSTEP-UID:booking-7" in text
    assert lockstep_uid_of(ical_to_series(text, "booking-7")[0]) == "booking-7"
