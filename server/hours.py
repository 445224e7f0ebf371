"""Working hours: "mon-fri 08:00-17:00; sat 09:00-12:00" ↔ ranges per weekday."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, tzinfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")

WorkingHours = dict[int, list[tuple[time, time]]]
END_OF_DAY = time.max  # "24:00": the range runs to the next local midnight


def local_bounds(day: date, start: time, end: time, zone: tzinfo) -> tuple[datetime, datetime]:
    """A working range on a local date as aware datetimes (24:00 is the next midnight)."""
    begin = datetime.combine(day, start, tzinfo=zone)
    if end == END_OF_DAY:
        return begin, datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=zone)
    return begin, datetime.combine(day, end, tzinfo=zone)


def parse_working_hours(spec: str) -> WorkingHours:
    """Weekday (0 = Monday) → sorted, non-overlapping (start, end) local times.

    Clauses are separated by ";" or ","; each is a day or day range followed by
    one or more time ranges, e.g. "mon-fri 08:00-12:00 13:00-17:00".
    """
    hours: WorkingHours = {day: [] for day in range(7)}
    for clause in re.split(r"[;,]", spec):
        words = clause.split()
        if not words:
            continue
        if len(words) < 2:
            raise ValueError(f"{clause.strip()!r}: expected days then times, e.g. 'mon-fri 08:00-17:00'")
        for day in _days(words[0]):
            hours[day].extend(_range(word) for word in words[1:])
    for day, ranges in hours.items():
        ranges.sort()
        for (_, end), (start, _) in zip(ranges, ranges[1:]):
            if start < end:
                raise ValueError(f"overlapping time ranges on {DAYS[day]}")
    return hours


def _days(word: str) -> list[int]:
    word = word.lower()
    if "-" in word:
        first, last = word.split("-", 1)
        if first not in DAYS or last not in DAYS:
            raise ValueError(f"{word!r}: days are {', '.join(DAYS)}")
        a, b = DAYS.index(first), DAYS.index(last)
        return list(range(a, b + 1)) if a <= b else list(range(a, 7)) + list(range(0, b + 1))
    if word not in DAYS:
        raise ValueError(f"{word!r}: days are {', '.join(DAYS)}")
    return [DAYS.index(word)]


def _range(word: str) -> tuple[time, time]:
    match = _RANGE.match(word)
    if not match:
        raise ValueError(f"{word!r}: times look like 08:00-17:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    try:
        start = time(h1, m1)
        end = END_OF_DAY if (h2, m2) == (24, 0) else time(h2, m2)
    except ValueError:
        raise ValueError(f"{word!r}: not a valid time of day") from None
    if end <= start:
        raise ValueError(f"{word!r}: the end must be after the start")
    return start, end
