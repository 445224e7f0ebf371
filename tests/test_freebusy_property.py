"""intervals_for against an independent reference, plus named real-world calendars.

The property test renders a generated description to iCalendar text, runs
``server.freebusy.expand.intervals_for`` on it and compares the merged busy and
the merged tentative time with ``tests.support.fb_reference`` (dateutil.rrule +
zoneinfo, no iCalendar parsing).  The scenario tests pin exact interval lists
for hand-written calendar objects in tests/fixtures/ical/.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings

from server.freebusy.expand import BUSY, TENTATIVE, Interval, intervals_for
from server.freebusy.policy import Policy
from tests.support.fb_reference import merge, reference_intervals, render_event
from tests.support.fb_strategies import Scenario, scenarios

UTC = timezone.utc
FIXTURES = Path(__file__).parent / "fixtures" / "ical"
TECH = frozenset({"tech@example.com"})


def _show(spans: list[tuple[datetime, datetime]]) -> list[str]:
    return [f"{start:%Y-%m-%d %H:%M:%S}Z–{end:%Y-%m-%d %H:%M:%S}Z" for start, end in spans]


# --------------------------------------------------------------------------
# Property: intervals_for == reference
# --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_intervals_for_matches_reference(scenario: Scenario) -> None:
    check_against_reference(scenario)


def check_against_reference(scenario: Scenario) -> None:
    policy = scenario.policy
    note(f"tech zone {policy.timezone}, allday={policy.allday}, hours {scenario.hours_spec!r}")
    note(f"window {scenario.window_start:%Y-%m-%d %H:%M}Z – {scenario.window_end:%Y-%m-%d %H:%M}Z")
    got: list[Interval] = []
    for event in scenario.events:
        text = render_event(event)
        note(text)
        out = intervals_for(text, policy, scenario.window_start, scenario.window_end)
        for interval in out:
            assert interval.start.utcoffset() == interval.end.utcoffset() == UTC.utcoffset(None)
            assert scenario.window_start <= interval.start < interval.end <= scenario.window_end
            assert interval.kind in (BUSY, TENTATIVE)
        got += out

    expected = reference_intervals(
        scenario.events, policy.timezone, policy.working_hours, policy.allday,
        scenario.window_start, scenario.window_end,
    )
    for kind in (BUSY, TENTATIVE):
        actual = merge((interval.start, interval.end) for interval in got if interval.kind == kind)
        assert _show(actual) == _show(expected[kind]), f"{kind}: intervals_for ≠ reference"


# --------------------------------------------------------------------------
# Scenarios with exact expectations
# --------------------------------------------------------------------------


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def _run(name: str, policy: Policy, start: datetime, end: datetime) -> list[Interval]:
    return intervals_for((FIXTURES / name).read_text(), policy, start, end)


def test_allday_pto_tuesday_blocks_working_hours_only() -> None:
    # Tue 2026-03-10, two days after LA switched to PDT (UTC-7): 08:00–17:00 local.
    policy = Policy.simple("America/Los_Angeles", "mon-fri 08:00-17:00", emails=TECH)
    assert _run("allday_pto_tuesday.ics", policy, _utc(2026, 3, 9), _utc(2026, 3, 13)) == [
        Interval(_utc(2026, 3, 10, 15), _utc(2026, 3, 11, 0), BUSY),
    ]


def test_allday_pto_tuesday_whole_day_policy() -> None:
    policy = Policy.simple("America/Los_Angeles", "mon-fri 08:00-17:00", emails=TECH, allday="whole_day")
    assert _run("allday_pto_tuesday.ics", policy, _utc(2026, 3, 9), _utc(2026, 3, 13)) == [
        Interval(_utc(2026, 3, 10, 7), _utc(2026, 3, 11, 7), BUSY),
    ]


def test_allday_pto_tuesday_split_working_hours() -> None:
    policy = Policy.simple("America/Los_Angeles", "tue 08:00-12:00 13:00-17:00", emails=TECH)
    assert _run("allday_pto_tuesday.ics", policy, _utc(2026, 3, 9), _utc(2026, 3, 13)) == [
        Interval(_utc(2026, 3, 10, 15), _utc(2026, 3, 10, 19), BUSY),
        Interval(_utc(2026, 3, 10, 20), _utc(2026, 3, 11, 0), BUSY),
    ]


def test_weekly_monday_9_moved_and_cancelled_instance() -> None:
    # Mondays 09:00–10:00 LA from 2026-03-02, COUNT=5; 03-16 moved to Tue 03-17
    # 14:00–15:00, 03-23 cancelled.  LA is UTC-8 until 2026-03-08, then UTC-7.
    policy = Policy.simple("America/Los_Angeles", emails=TECH)
    assert _run("weekly_monday_9_moved_and_cancelled_instance.ics", policy, _utc(2026, 3, 1), _utc(2026, 4, 6)) == [
        Interval(_utc(2026, 3, 2, 17), _utc(2026, 3, 2, 18), BUSY),
        Interval(_utc(2026, 3, 9, 16), _utc(2026, 3, 9, 17), BUSY),
        Interval(_utc(2026, 3, 17, 21), _utc(2026, 3, 17, 22), BUSY),
        Interval(_utc(2026, 3, 30, 16), _utc(2026, 3, 30, 17), BUSY),
    ]


def test_weekly_monday_9_window_clips_and_finds_moved_instance() -> None:
    # The moved instance lies a day after its RECURRENCE-ID; the window holds
    # only the moved time (and clips it).
    policy = Policy.simple("America/Los_Angeles", emails=TECH)
    assert _run(
        "weekly_monday_9_moved_and_cancelled_instance.ics", policy, _utc(2026, 3, 17, 21, 30), _utc(2026, 3, 24)
    ) == [Interval(_utc(2026, 3, 17, 21, 30), _utc(2026, 3, 17, 22), BUSY)]


def test_outlook_tentative_invitation() -> None:
    # VTIMEZONE "Pacific Standard Time" (Outlook, 1601 rules); weekly Monday
    # 10:00–11:30, COUNT=2, across the 2026-11-01 fall-back; tech NEEDS-ACTION.
    policy = Policy.simple("America/Los_Angeles", emails=TECH)
    assert _run("outlook_tentative_invitation.ics", policy, _utc(2026, 10, 20), _utc(2026, 11, 20)) == [
        Interval(_utc(2026, 10, 26, 17), _utc(2026, 10, 26, 18, 30), TENTATIVE),
        Interval(_utc(2026, 11, 2, 18), _utc(2026, 11, 2, 19, 30), TENTATIVE),
    ]


def test_outlook_invitation_for_someone_else_is_busy() -> None:
    policy = Policy.simple("America/Los_Angeles", emails=frozenset({"dispatch@example.com"}))
    assert [i.kind for i in _run("outlook_tentative_invitation.ics", policy, _utc(2026, 10, 20), _utc(2026, 11, 20))] == [
        BUSY, BUSY,
    ]


def test_declined_meeting_is_free() -> None:
    policy = Policy.simple("Europe/Berlin", emails=TECH)
    assert _run("declined_meeting.ics", policy, _utc(2026, 3, 1), _utc(2026, 4, 1)) == []


def test_declined_meeting_still_blocks_the_other_attendee() -> None:
    policy = Policy.simple("Europe/Berlin", emails=frozenset({"colleague@example.com"}))
    assert _run("declined_meeting.ics", policy, _utc(2026, 3, 1), _utc(2026, 4, 1)) == [
        Interval(_utc(2026, 3, 30, 12), _utc(2026, 3, 30, 13), BUSY),
    ]


def test_transparent_event_is_free() -> None:
    policy = Policy.simple("America/Los_Angeles", emails=TECH)
    assert _run("transparent_event.ics", policy, _utc(2026, 3, 1), _utc(2026, 4, 1)) == []


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        # 09:00–10:30 on 2026-03-10 in the tech's own zone.
        ("America/Los_Angeles", (_utc(2026, 3, 10, 16), _utc(2026, 3, 10, 17, 30))),  # PDT, UTC-7
        ("Europe/Berlin", (_utc(2026, 3, 10, 8), _utc(2026, 3, 10, 9, 30))),  # CET, UTC+1
        ("Australia/Lord_Howe", (_utc(2026, 3, 9, 22), _utc(2026, 3, 9, 23, 30))),  # UTC+11
    ],
)
def test_floating_time_is_read_in_the_techs_zone(zone: str, expected: tuple[datetime, datetime]) -> None:
    policy = Policy.simple(zone, emails=TECH)
    assert _run("floating_time.ics", policy, _utc(2026, 3, 1), _utc(2026, 4, 1)) == [Interval(*expected, BUSY)]


WEEKLY_9AM = {
    # Mondays 09:00–10:00 local, open-ended; two windows around the two changes.
    "la": (
        "America/Los_Angeles",
        [
            (_utc(2026, 3, 1), _utc(2026, 3, 17), [_utc(2026, 3, 2, 17), _utc(2026, 3, 9, 16), _utc(2026, 3, 16, 16)]),
            (_utc(2026, 10, 25), _utc(2026, 11, 10), [_utc(2026, 10, 26, 16), _utc(2026, 11, 2, 17), _utc(2026, 11, 9, 17)]),
        ],
    ),
    "berlin": (
        "Europe/Berlin",
        [
            (_utc(2026, 3, 22), _utc(2026, 4, 7), [_utc(2026, 3, 23, 8), _utc(2026, 3, 30, 7), _utc(2026, 4, 6, 7)]),
            (_utc(2026, 10, 18), _utc(2026, 11, 3), [_utc(2026, 10, 19, 7), _utc(2026, 10, 26, 8), _utc(2026, 11, 2, 8)]),
        ],
    ),
    "lord_howe": (
        # UTC+11 in summer, UTC+10:30 in winter; changes 2026-04-05 and 2026-10-04.
        "Australia/Lord_Howe",
        [
            (_utc(2026, 3, 29), _utc(2026, 4, 14),
             [_utc(2026, 3, 29, 22), _utc(2026, 4, 5, 22, 30), _utc(2026, 4, 12, 22, 30)]),
            (_utc(2026, 9, 27), _utc(2026, 10, 13),
             [_utc(2026, 9, 27, 22, 30), _utc(2026, 10, 4, 22), _utc(2026, 10, 11, 22)]),
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(WEEKLY_9AM))
def test_weekly_9am_stays_at_9_local_across_dst(name: str) -> None:
    zone, windows = WEEKLY_9AM[name]
    policy = Policy.simple(zone, emails=TECH)
    for start, end, starts in windows:
        got = _run(f"weekly_9am_across_dst_{name}.ics", policy, start, end)
        assert got == [Interval(s, s.replace(hour=s.hour + 1), BUSY) for s in starts], (start, end)


# --------------------------------------------------------------------------
# Events that contain the moment the clocks change (RFC 5545 3.3.5, 3.3.6, 3.8.5.3)
# --------------------------------------------------------------------------


def test_duration_is_exact_time_across_spring_forward() -> None:
    # DURATION:PT4H is an exact duration: 23:00 PST (07:00Z) + 4 h = 11:00Z
    # (04:00 PDT) — not 03:00 PDT, which would leave the last hour bookable.
    policy = Policy.simple("America/Los_Angeles", emails=TECH)
    assert _run("overnight_duration_across_spring_forward.ics", policy, _utc(2026, 3, 1), _utc(2026, 3, 20)) == [
        Interval(_utc(2026, 3, 8, 7), _utc(2026, 3, 8, 11), BUSY),
    ]


def test_dtend_series_instances_keep_the_exact_length_across_spring_forward() -> None:
    # DTSTART/DTEND 23:00–03:00 (4 h exact); RFC 5545 3.8.5.3: "the same exact
    # duration will apply to all the members of the generated recurrence set".
    policy = Policy.simple("America/Los_Angeles", emails=TECH)
    assert _run("nightly_dtend_series_across_spring_forward.ics", policy, _utc(2026, 3, 1), _utc(2026, 3, 20)) == [
        Interval(_utc(2026, 3, 7, 7), _utc(2026, 3, 7, 11), BUSY),
        Interval(_utc(2026, 3, 8, 7), _utc(2026, 3, 8, 11), BUSY),
        Interval(_utc(2026, 3, 9, 6), _utc(2026, 3, 9, 10), BUSY),
    ]


def test_custom_vtimezone_time_in_the_spring_forward_gap_uses_the_offset_before_the_gap() -> None:
    # DTEND 02:30 does not exist on 2026-03-08 in LA; RFC 5545 3.3.5: read it
    # with the offset before the gap (UTC-8) → 10:30Z (= 03:30 PDT).  The zone
    # comes from an Outlook-style VTIMEZONE with a non-IANA TZID, not zoneinfo.
    policy = Policy.simple("America/Los_Angeles", emails=TECH)
    assert _run("outlook_night_shift_ending_in_dst_gap.ics", policy, _utc(2026, 3, 1), _utc(2026, 3, 20)) == [
        Interval(_utc(2026, 3, 8, 6), _utc(2026, 3, 8, 10, 30), BUSY),
    ]


def test_each_object_uses_its_own_vtimezone_for_a_shared_tzid() -> None:
    # Outlook writes non-standard zones as TZID "Customized Time Zone"; two
    # senders, two different definitions.  The result must not depend on which
    # object was parsed first in the process.
    policy = Policy.simple("America/Los_Angeles", emails=TECH)
    expected = {
        "customized_time_zone_berlin.ics": Interval(_utc(2026, 6, 15, 7), _utc(2026, 6, 15, 8), BUSY),  # CEST
        "customized_time_zone_pacific.ics": Interval(_utc(2026, 6, 15, 16), _utc(2026, 6, 15, 17), BUSY),  # PDT
    }
    for name in [*expected, *reversed(expected)]:
        assert _run(name, policy, _utc(2026, 6, 1), _utc(2026, 7, 1)) == [expected[name]], name
