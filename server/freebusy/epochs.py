"""Busy time as integer UTC epoch seconds: merged and formatted without building datetimes.

A free/busy answer may cover tens of thousands of index rows; merging them as
ints and formatting only the merged periods keeps the per-row cost to a tuple.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timezone
from functools import lru_cache
from collections.abc import Container, Iterable

EpochSpan = tuple[int, int]

UTC = timezone.utc
DAY = 86400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def merge_rows(
    rows: Iterable[tuple[int, int, str]], blocking: Container[str], start: int, end: int,
) -> tuple[list[EpochSpan], list[EpochSpan]]:
    """Index rows ``(start, end, kind)`` IN START ORDER, each overlapping [start, end), into merged
    (blocking, non-blocking) periods clipped to [start, end). One pass, no sort: overlapping and
    touching rows join, as ``expand.merge`` joins them."""
    busy: list[EpochSpan] = []
    other: list[EpochSpan] = []
    # The period being built of each kind; (_NONE, _NONE) before the first (dropped at the end).
    busy_start = busy_end = other_start = other_end = _NONE
    for row_start, row_end, kind in rows:
        if kind in blocking:
            if row_start > busy_end:
                busy.append((busy_start, busy_end))
                busy_start, busy_end = row_start, row_end
            elif row_end > busy_end:
                busy_end = row_end
        elif row_start > other_end:
            other.append((other_start, other_end))
            other_start, other_end = row_start, row_end
        elif row_end > other_end:
            other_end = row_end
    busy.append((busy_start, busy_end))
    other.append((other_start, other_end))
    return _clip(busy[1:], start, end), _clip(other[1:], start, end)


_NONE = -(1 << 62)


def _clip(spans: list[EpochSpan], start: int, end: int) -> list[EpochSpan]:
    """Merged periods of rows that each overlap [start, end): clipping after merging equals
    clipping each row first, and only the first start and the last end can lie outside."""
    if spans:
        first_start, first_end = spans[0]
        if first_start < start:
            spans[0] = (start, first_end)
        last_start, last_end = spans[-1]
        if last_end > end:
            spans[-1] = (last_start, end)
    return spans


def to_datetime(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def epoch_of(moment: datetime) -> int:
    """Whole seconds, rounded down (index rows are whole seconds; ``strftime`` also drops the fraction)."""
    return math.floor(moment.timestamp())


@lru_cache(maxsize=8192)
def _day(days: int) -> tuple[str, str]:
    """(``YYYY-MM-DD``, ``YYYYMMDD``) of a day number since 1970-01-01."""
    day = date.fromordinal(_EPOCH_ORDINAL + days)
    return day.isoformat(), f"{day.year:04d}{day.month:02d}{day.day:02d}"


# "HH:MM" of each minute of a day and ":SS" of each second: periods are formatted by lookup.
_CLOCK = [f"{m // 60:02d}:{m % 60:02d}" for m in range(1440)]
_SECONDS = [f":{sec:02d}" for sec in range(60)]
_ICAL_CLOCK = [c.replace(":", "") for c in _CLOCK]
_ICAL_SECONDS = [f"{sec:02d}" for sec in range(60)]


@lru_cache(maxsize=16384)
def rfc3339(epoch: int) -> str:
    """``2026-12-01T17:00:00Z`` (what ``bookings.rfc3339`` gives for the same moment).

    Remembered: many techs' periods share their edges (working hours, the window), and
    booking software asks for the same weeks again and again (16,384 strings: about 1.5 MB)."""
    days, seconds = divmod(epoch, DAY)
    minute, second = divmod(seconds, 60)
    return f"{_day(days)[0]}T{_CLOCK[minute]}{_SECONDS[second]}Z"


def ical_utc(epoch: int) -> str:
    """An RFC 5545 UTC DATE-TIME: ``20261201T170000Z``."""
    days, seconds = divmod(epoch, DAY)
    minute, second = divmod(seconds, 60)
    return f"{_day(days)[1]}T{_ICAL_CLOCK[minute]}{_ICAL_SECONDS[second]}Z"
