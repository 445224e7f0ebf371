"""The rolling window of time Lockstep keeps: busy index, recurrence expansion, provider listings.

One process-wide setting (``[freebusy] horizon_past_days`` / ``horizon_future_days``),
applied once at start-up by the command line, so the index and every provider
listing agree on which days exist.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

UTC = timezone.utc
DEFAULT_PAST_DAYS = 30
DEFAULT_FUTURE_DAYS = 400

_past = timedelta(days=DEFAULT_PAST_DAYS)
_future = timedelta(days=DEFAULT_FUTURE_DAYS)


def configure(past_days: int, future_days: int) -> None:
    """Set the window for this process (every process of a deployment reads the same config)."""
    global _past, _future
    if past_days < 1 or future_days < 1:
        raise ValueError("the free/busy horizon needs at least one day back and one day ahead")
    _past, _future = timedelta(days=past_days), timedelta(days=future_days)


def days() -> tuple[int, int]:
    """(past, future) days of this process's window."""
    return _past.days, _future.days


def window(now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end): from ``past`` days before today's UTC midnight to ``future`` days after it."""
    now = now or datetime.now(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - _past, day + _future
