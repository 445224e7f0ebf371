"""Working-hours syntax, including ranges that run to midnight."""

from __future__ import annotations

from datetime import date, datetime, time, timezone

import pytest

from server.freebusy.expand import allday_spans
from server.freebusy.policy import Policy
from server.hours import END_OF_DAY, parse_working_hours


def test_days_ranges_and_split_shifts() -> None:
    hours = parse_working_hours("mon-fri 08:00-12:00 13:00-17:00; sat 09:00-12:00")
    assert hours[0] == [(time(8), time(12)), (time(13), time(17))]
    assert hours[5] == [(time(9), time(12))]
    assert hours[6] == []
    assert parse_working_hours("fri-mon 10:00-11:00")[6] == [(time(10), time(11))]  # wraps the week


def test_twenty_four_hundred_is_the_next_midnight() -> None:
    assert parse_working_hours("sun 18:00-24:00")[6] == [(time(18), END_OF_DAY)]
    policy = Policy.simple("UTC", "mon-sun 00:00-24:00")
    spans = allday_spans(date(2026, 12, 1), date(2026, 12, 2), policy)
    assert spans == [(datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2026, 12, 2, tzinfo=timezone.utc))]


@pytest.mark.parametrize("spec, message", [
    ("mon-fri", "expected days then times"),
    ("mon-fri 17:00-08:00", "the end must be after the start"),
    ("funday 09:00-10:00", "days are"),
    ("mon 9-5", "times look like"),
    ("mon 25:00-26:00", "not a valid time"),
    ("mon 08:00-12:00 11:00-13:00", "overlapping"),
])
def test_mistakes_are_explained(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_working_hours(spec)
