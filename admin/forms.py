"""The tech form: per-weekday hours and policy fields ↔ the service functions' arguments.

Validation that the service functions already do (time zone, e-mail, hours,
policy ranges) stays there; this module only turns form fields into those
arguments and says which field is wrong when a field cannot even be read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import time
from typing import Mapping
from zoneinfo import available_timezones

from server.freebusy.policy import ALLDAY_POLICIES
from server.hours import DAYS, END_OF_DAY, parse_working_hours
from server.models import Tech, TechSettings
from server.techs import AdminError, Settings

DAY_NAMES = dict(zip(DAYS, ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")))
ALLDAY_LABELS = {"working_hours": "blocks the working hours of that day",
                 "whole_day": "blocks the whole local day"}
assert set(ALLDAY_LABELS) == set(ALLDAY_POLICIES)


@functools.cache
def time_zones() -> list[str]:
    """IANA zones for the picker (area/city names, plus UTC); read from tzdata once."""
    zones = (z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/")))
    return sorted(zones) + ["UTC"]


@dataclass
class TechForm:
    """What the form holds (for re-rendering after an error) and what it means."""

    values: dict[str, str] = field(default_factory=dict)
    hours: str = ""
    settings: Settings = Settings()


def hours_by_day(spec: str) -> dict[str, str]:
    """"mon-fri 08:00-17:00" → {"mon": "08:00-17:00", ..., "sat": ""}."""
    parsed = parse_working_hours(spec)
    def show(moment: time) -> str:
        return "24:00" if moment == END_OF_DAY else f"{moment:%H:%M}"

    return {DAYS[day]: " ".join(f"{show(a)}-{show(b)}" for a, b in ranges) for day, ranges in parsed.items()}


def form_values(tech: Tech | None, settings: TechSettings | None) -> dict[str, str]:
    """Field values of an existing tech (or the defaults for a new one)."""
    values = {"username": "", "name": "", "email": "", "timezone": "America/New_York",
              "tentative_blocks": "", "allday": "working_hours", "buffer_before": "0", "buffer_after": "0",
              "min_notice": "0"}
    spec = "mon-fri 08:00-17:00"
    if tech is not None:
        values.update(username=tech.username, name=tech.name, email=tech.email, timezone=tech.timezone)
        spec = tech.working_hours
    if settings is not None:
        values.update(tentative_blocks="on" if settings.tentative_blocks else "", allday=settings.allday,
                      buffer_before=str(settings.buffer_before_min), buffer_after=str(settings.buffer_after_min),
                      min_notice=str(settings.min_notice_min))
    values.update({f"hours_{day}": text for day, text in hours_by_day(spec).items()})
    return values


def read_tech_form(form: Mapping[str, str]) -> TechForm:
    """Parse the posted fields; AdminError names the field a person has to fix."""
    names = ("username", "name", "email", "timezone", "allday", "buffer_before", "buffer_after", "min_notice",
             *(f"hours_{d}" for d in DAYS))
    values = {n: form.get(n, "").strip() for n in names}
    values["tentative_blocks"] = "on" if form.get("tentative_blocks") else ""
    result = TechForm(values=values)
    clauses = []
    for day in DAYS:
        text = values[f"hours_{day}"]
        if not text:
            continue
        try:
            parse_working_hours(f"{day} {text}")
        except ValueError as exc:
            raise AdminError(f"{DAY_NAMES[day]} hours: {exc}") from None
        clauses.append(f"{day} {text}")
    result.hours = "; ".join(clauses)
    if not values["name"]:
        raise AdminError("the name is empty")
    for key, limit in (("name", 200), ("email", 320)):
        if len(values[key]) > limit:
            raise AdminError(f"the {key} is longer than {limit} characters")
    if values["allday"] not in ALLDAY_POLICIES:
        raise AdminError(f"all-day events: choose one of {', '.join(ALLDAY_POLICIES)}")
    minutes = {}
    for key, label in (("buffer_before", "buffer before"), ("buffer_after", "buffer after"),
                       ("min_notice", "minimum notice")):
        try:
            minutes[key] = int(values[key] or "0")
        except ValueError:
            raise AdminError(f"{label}: {values[key]!r} is not a whole number of minutes") from None
    result.settings = Settings(tentative_blocks=bool(values["tentative_blocks"]), allday=values["allday"],
                               buffer_before_min=minutes["buffer_before"],
                               buffer_after_min=minutes["buffer_after"], min_notice_min=minutes["min_notice"])
    return result
