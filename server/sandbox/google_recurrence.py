"""Event times and recurrence for the Google Calendar emulator.

Google's EventDateTime is either ``{"date": "yyyy-mm-dd"}`` (all-day, end
exclusive) or ``{"dateTime": RFC 3339, "timeZone": IANA?}``. Recurring events
carry RFC 5545 ``RRULE/EXRULE/RDATE/EXDATE`` lines and are expanded in their
``timeZone`` so that wall-clock times survive DST changes. Instances are named
``<masterId>_<originalStart>`` (UTC basic format, or the date for all-day
series), which is also how exceptions are stored and found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrule, rruleset, rrulestr

from server.sandbox.google_errors import ApiError, bad_request, required

UTC = timezone.utc
_ALLOWED_LINES = {"RRULE", "EXRULE", "RDATE", "EXDATE"}


def zone(name: str) -> ZoneInfo:
    """An IANA zone, or ValueError (callers turn it into the field's 400)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(name) from exc


def parse_rfc3339(value: str) -> datetime | None:
    """An aware datetime, or None when the text is not RFC 3339 with an offset."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except (ValueError, AttributeError):
        return None
    return parsed if parsed.tzinfo is not None else None


def fmt_dt(value: datetime) -> str:
    """RFC 3339 as Google writes it: seconds precision, ``Z`` for UTC."""
    if value.utcoffset() == timedelta(0) and (value.tzinfo in (UTC, None)
                                              or str(value.tzinfo) in ("UTC", "Etc/UTC")):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.isoformat(timespec="seconds")


def fmt_timestamp(seconds: float) -> str:
    """The ``updated``/``created`` style: UTC with milliseconds."""
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class When:
    """One normalised EventDateTime: a date (all-day) or an aware datetime."""

    all_day: bool
    value: date | datetime
    tz: str | None = None

    def instant(self, cal_tz: ZoneInfo) -> datetime:
        """The UTC instant; an all-day date starts at midnight in the calendar's zone."""
        if self.all_day:
            assert isinstance(self.value, date)
            return datetime.combine(self.value, time(0), cal_tz).astimezone(UTC)
        assert isinstance(self.value, datetime)
        return self.value.astimezone(UTC)

    def resource(self) -> dict[str, Any]:
        """Stored form: date, or dateTime in the event's zone (UTC when it has none)."""
        if self.all_day:
            return {"date": self.value.isoformat()}
        assert isinstance(self.value, datetime)
        if self.tz:
            return {"dateTime": fmt_dt(self.value.astimezone(zone(self.tz))), "timeZone": self.tz}
        return {"dateTime": fmt_dt(self.value.astimezone(UTC))}

    def shifted(self, delta: timedelta) -> When:
        return When(self.all_day, self.value + delta, self.tz)


def parse_when(edt: Any, field: str) -> When:
    """Validate one EventDateTime of a request body, as Google's 400s describe it."""
    if not isinstance(edt, dict) or not (edt.get("date") or edt.get("dateTime")):
        raise required(f"Missing {field} time.")
    tz_name = edt.get("timeZone") or None
    if tz_name is not None:
        try:
            zone(tz_name)
        except ValueError:
            raise bad_request(f"Invalid time zone definition for {field} time.",
                              location=f"{field}.timeZone") from None
    if edt.get("date") and edt.get("dateTime"):
        raise bad_request(f"Invalid {field} time.", location=f"{field}")
    if edt.get("date"):
        try:
            return When(True, date.fromisoformat(str(edt["date"])), tz_name)
        except ValueError:
            raise bad_request(f"Invalid {field} time.", location=f"{field}.date") from None
    text = str(edt["dateTime"])
    parsed = parse_rfc3339(text)
    if parsed is None:
        try:
            naive = datetime.fromisoformat(text)
        except ValueError:
            raise bad_request(f"Invalid {field} time.", location=f"{field}.dateTime") from None
        if tz_name is None:
            raise required(f"Missing time zone definition for {field} time.")
        parsed = naive.replace(tzinfo=zone(tz_name))
    if tz_name:
        parsed = parsed.astimezone(zone(tz_name))
    return When(False, parsed.replace(microsecond=0), tz_name)


def when_of(resource_edt: dict[str, Any]) -> When:
    """Read back a stored (already valid) EventDateTime."""
    return parse_when(resource_edt, "start")


def render_edt(edt: dict[str, Any] | None, out_tz: ZoneInfo | None) -> dict[str, Any] | None:
    """Express a zone-less stored dateTime in the response's zone, as Google does."""
    if not edt or "dateTime" not in edt or edt.get("timeZone") or out_tz is None:
        return dict(edt) if edt else edt
    parsed = parse_rfc3339(edt["dateTime"])
    if parsed is None:
        return dict(edt)
    return {**edt, "dateTime": fmt_dt(parsed.astimezone(out_tz))}


# --- instance ids ---------------------------------------------------------------

def instance_suffix(original: When) -> str:
    if original.all_day:
        return original.value.strftime("%Y%m%d")
    assert isinstance(original.value, datetime)
    return original.value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def split_instance_id(event_id: str) -> tuple[str, str] | None:
    """``(masterId, suffix)`` when the id looks like a recurring instance id."""
    master, sep, suffix = event_id.rpartition("_")
    if not sep or not master:
        return None
    if re.fullmatch(r"\d{8}", suffix) or re.fullmatch(r"\d{8}T\d{6}Z", suffix):
        return master, suffix
    return None


def suffix_to_when(suffix: str, master_start: When) -> When:
    if len(suffix) == 8:
        return When(True, datetime.strptime(suffix, "%Y%m%d").date(), master_start.tz)
    instant = datetime.strptime(suffix, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if master_start.tz:
        instant = instant.astimezone(zone(master_start.tz))
    return When(False, instant, master_start.tz)


# --- recurrence -----------------------------------------------------------------

def _split_line(line: str) -> tuple[str, dict[str, str], str]:
    head, sep, value = str(line).strip().partition(":")
    if not sep:
        raise bad_request("Invalid recurrence rule.", location="recurrence")
    name, *raw_params = head.split(";")
    params = {}
    for raw in raw_params:
        key, _, val = raw.partition("=")
        params[key.strip().upper()] = val.strip()
    return name.strip().upper(), params, value.strip()


def validate_recurrence(lines: Any) -> list[str]:
    """Only RRULE/EXRULE/RDATE/EXDATE lines are allowed (no DTSTART/DTEND)."""
    if not isinstance(lines, list):
        raise bad_request("Invalid recurrence rule.", location="recurrence")
    out = []
    for line in lines:
        name, _, value = _split_line(line)
        if name not in _ALLOWED_LINES or not value:
            raise bad_request("Invalid recurrence rule.", location="recurrence")
        out.append(str(line).strip())
    return out


class Series:
    """The occurrences of one recurring event, in the event's own time zone."""

    def __init__(self, start: When, end: When, lines: list[str], cal_tz: ZoneInfo) -> None:
        self.start = start
        self.cal_tz = cal_tz
        self.tz = zone(start.tz) if start.tz else cal_tz
        if start.all_day:
            self.duration = end.value - start.value
            self._dtstart = datetime.combine(start.value, time(0))
        else:
            assert isinstance(start.value, datetime) and isinstance(end.value, datetime)
            self.duration = end.value - start.value
            self._dtstart = start.value.astimezone(self.tz)
        self.rset = rruleset()
        self.rset.rdate(self._dtstart)  # DTSTART is always the first instance
        try:
            for line in lines:
                self._add(line)
        except ApiError:
            raise
        except (ValueError, TypeError, OverflowError):
            raise bad_request("Invalid recurrence rule.", location="recurrence") from None

    # rule space: naive local datetimes for all-day series, aware ones otherwise
    def _space(self, instant: datetime) -> datetime:
        if self.start.all_day:
            return instant.astimezone(self.cal_tz).replace(tzinfo=None)
        return instant

    def _value(self, text: str, params: dict[str, str]) -> datetime:
        text = text.split("/", 1)[0]  # PERIOD values: keep the start
        if re.fullmatch(r"\d{8}", text):
            day = datetime.strptime(text, "%Y%m%d")
            if self.start.all_day:
                return day
            return datetime.combine(day.date(), self._dtstart.timetz().replace(tzinfo=None),
                                    self.tz)
        if text.endswith("Z"):
            parsed = datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        else:
            naive = datetime.strptime(text, "%Y%m%dT%H%M%S")
            parsed = naive.replace(tzinfo=zone(params["TZID"]) if "TZID" in params else self.tz)
        if self.start.all_day:
            return datetime.combine(parsed.astimezone(self.cal_tz).date(), time(0))
        return parsed

    def _fix_until(self, rule: str) -> str:
        """dateutil wants UNTIL in UTC for zoned series and floating for all-day ones."""
        match = re.search(r"UNTIL=([0-9TZ]+)", rule, flags=re.I)
        if not match:
            return rule
        raw = match.group(1).upper()
        if self.start.all_day:
            fixed = raw[:8]
        elif raw.endswith("Z"):
            fixed = raw
        elif len(raw) == 8:
            local = datetime.combine(datetime.strptime(raw, "%Y%m%d").date(),
                                     time(23, 59, 59), self.tz)
            fixed = local.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        else:
            local = datetime.strptime(raw, "%Y%m%dT%H%M%S").replace(tzinfo=self.tz)
            fixed = local.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return rule[: match.start(1)] + fixed + rule[match.end(1):]

    def _add(self, line: str) -> None:
        name, params, value = _split_line(line)
        if name in ("RRULE", "EXRULE"):
            rule = rrulestr(self._fix_until(value), dtstart=self._dtstart)
            if not isinstance(rule, rrule):
                raise ValueError(value)
            (self.rset.rrule if name == "RRULE" else self.rset.exrule)(rule)
            return
        for text in value.split(","):
            moment = self._value(text.strip(), params)
            (self.rset.rdate if name == "RDATE" else self.rset.exdate)(moment)

    def _when(self, occurrence: datetime) -> When:
        if self.start.all_day:
            return When(True, occurrence.date(), self.start.tz)
        return When(False, occurrence, self.start.tz)

    def occurrences(self, window_start: datetime | None, window_end: datetime,
                    limit: int) -> list[When]:
        """Original starts of instances overlapping ``(window_start, window_end)``."""
        hi = self._space(window_end)
        if window_start is None:
            iterator = iter(self.rset)
        else:
            lo = self._space(window_start) - self.duration
            iterator = self.rset.xafter(lo, inc=False)
        found: list[When] = []
        for occurrence in iterator:
            if occurrence >= hi or len(found) >= limit:
                break
            found.append(self._when(occurrence))
        return found

    def contains(self, original: When) -> bool:
        if original.all_day != self.start.all_day:
            return False
        if original.all_day:
            probe = datetime.combine(original.value, time(0))
        else:
            assert isinstance(original.value, datetime)
            probe = original.value
        return probe in self.rset

    def end_of(self, original: When) -> When:
        if original.all_day:
            return When(True, original.value + self.duration, original.tz)
        return original.shifted(self.duration)
