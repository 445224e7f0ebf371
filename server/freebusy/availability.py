"""Bookable slots: working hours minus busy time, with buffers and minimum notice."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from server.freebusy.expand import Span
from server.freebusy.policy import Policy
from server.hours import local_bounds

UTC = timezone.utc


def working_spans(policy: Policy, start: datetime, end: datetime) -> list[Span]:
    """The tech's working-hour ranges (UTC) on every local date touching [start, end)."""
    zone = policy.zone
    first: date = start.astimezone(zone).date() - timedelta(days=1)
    last: date = end.astimezone(zone).date() + timedelta(days=1)
    spans: list[Span] = []
    day = first
    while day <= last:
        for begin, finish in policy.working_hours.get(day.weekday(), []):
            local_start, local_end = local_bounds(day, begin, finish, zone)
            a, b = local_start.astimezone(UTC), local_end.astimezone(UTC)
            if b > start and a < end:
                spans.append((a, b))
        day += timedelta(days=1)
    return spans


def free_slots(
    policy: Policy, busy: list[Span], start: datetime, end: datetime,
    duration: timedelta, step: timedelta, now: datetime,
) -> list[Span]:
    """Slots of ``duration`` starting every ``step`` from each working range's start.

    A slot needs [slot - buffer_before, slot + duration + buffer_after) clear of busy
    time, must start after now + minimum notice, and must lie in [start, end).
    """
    before = timedelta(minutes=policy.buffer_before_min)
    after = timedelta(minutes=policy.buffer_after_min)
    earliest = max(start, now + timedelta(minutes=policy.min_notice_min))
    slots: list[Span] = []
    index = 0
    for work_start, work_end in working_spans(policy, start, end):
        slot = work_start
        while slot + duration <= work_end:
            slot_end = slot + duration
            if slot >= earliest and slot_end <= end:
                guard_start, guard_end = slot - before, slot_end + after
                while index < len(busy) and busy[index][1] <= guard_start:
                    index += 1
                if not _overlaps(busy, index, guard_start, guard_end):
                    slots.append((slot, slot_end))
            slot += step
        index = 0 if not busy else _rewind(busy, work_end)
    return slots


def _overlaps(busy: list[Span], index: int, start: datetime, end: datetime) -> bool:
    for busy_start, busy_end in busy[index:]:
        if busy_start >= end:
            return False
        if busy_end > start:
            return True
    return False


def _rewind(busy: list[Span], moment: datetime) -> int:
    """First busy interval that may still matter after ``moment`` minus a day of buffers."""
    for position, (_, busy_end) in enumerate(busy):
        if busy_end > moment - timedelta(days=1):
            return position
    return len(busy)
