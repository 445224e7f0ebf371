"""Query and body validation for API v1: every refusal names the field."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

MAX_RANGE = timedelta(days=366)
# Far enough for any booking; near year 1 or 9999 the UTC and local-time arithmetic overflows.
EARLIEST, LATEST = datetime(1900, 1, 1, tzinfo=timezone.utc), datetime(3000, 1, 1, tzinfo=timezone.utc)
_OFFSET = re.compile(r"(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE)


class ParamError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def timestamp(value: Any, field: str) -> datetime:
    """RFC 3339 with an explicit offset; a bare local time is ambiguous and refused."""
    if not isinstance(value, str) or not value:
        raise ParamError(field, "required, as RFC 3339 (e.g. 2026-12-01T17:00:00Z)")
    if "T" not in value.upper() or not _OFFSET.search(value):
        raise ParamError(field, f"{value!r} needs a date, a time and an offset (Z or ±hh:mm)")
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00")).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise ParamError(field, f"{value!r} is not an RFC 3339 date-time") from None
    if not EARLIEST <= parsed < LATEST:
        raise ParamError(field, f"{value!r} is outside the years 1900 to 2999")
    return parsed


def time_range(start_value: Any, end_value: Any) -> tuple[datetime, datetime]:
    start, end = timestamp(start_value, "start"), timestamp(end_value, "end")
    if end <= start:
        raise ParamError("end", "must be after start")
    if end - start > MAX_RANGE:
        raise ParamError("end", "the range may span at most 366 days")
    return start, end


def minutes(value: Any, field: str, default: int | None = None, low: int = 1, high: int = 24 * 60) -> int:
    if value in (None, ""):
        if default is None:
            raise ParamError(field, "required, in minutes")
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ParamError(field, f"{value!r} is not a whole number of minutes") from None
    if not low <= number <= high:
        raise ParamError(field, f"must be between {low} and {high} minutes")
    return number


def text(body: dict[str, Any], field: str, *, required: bool = False, limit: int = 2000) -> str:
    value = body.get(field, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ParamError(field, "must be a string")
    if "\x00" in value:
        raise ParamError(field, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
        raise ParamError(field, "is not valid Unicode text") from None
    if required and not value.strip():
        raise ParamError(field, "required")
    if len(value) > limit:
        raise ParamError(field, f"at most {limit} characters")
    return value
