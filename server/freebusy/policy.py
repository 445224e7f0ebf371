"""Per-tech rules that decide what blocks time."""

from __future__ import annotations

from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from server.hours import WorkingHours, parse_working_hours

ALLDAY_WORKING_HOURS = "working_hours"
ALLDAY_WHOLE_DAY = "whole_day"
ALLDAY_POLICIES = (ALLDAY_WORKING_HOURS, ALLDAY_WHOLE_DAY)


@dataclass(frozen=True)
class Policy:
    """What the busy index and availability need to know about one tech."""

    timezone: str
    working_hours: WorkingHours
    emails: frozenset[str] = field(default_factory=frozenset)
    tentative_blocks: bool = False
    allday: str = ALLDAY_WORKING_HOURS
    buffer_before_min: int = 0
    buffer_after_min: int = 0
    min_notice_min: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "emails", frozenset(e.lower() for e in self.emails))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @classmethod
    def simple(cls, timezone: str, hours: str = "mon-fri 08:00-17:00", **kwargs: object) -> Policy:
        return cls(timezone=timezone, working_hours=parse_working_hours(hours), **kwargs)  # type: ignore[arg-type]
