"""RFC 5545 VFREEBUSY output: one component per tech (FBTYPE=BUSY / BUSY-TENTATIVE)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import icalendar

from server.freebusy.expand import Span

UTC = timezone.utc


def vfreebusy(start: datetime, end: datetime, techs: dict[str, tuple[list[Span], list[Span]]]) -> bytes:
    """``techs`` maps each tech to its (busy, tentative) merged UTC spans."""
    calendar = icalendar.Calendar()
    calendar.add("PRODID", "-//Lockstep//Free-Busy//EN")
    calendar.add("VERSION", "2.0")
    calendar.add("METHOD", "PUBLISH")
    for tech, (busy, tentative) in techs.items():
        component = icalendar.FreeBusy()
        component.add("UID", str(uuid.uuid4()))
        component.add("DTSTAMP", datetime.now(UTC))
        component.add("DTSTART", start)
        component.add("DTEND", end)
        component.add("X-LOCKSTEP-TECH", tech)
        for fbtype, spans in (("BUSY", busy), ("BUSY-TENTATIVE", tentative)):
            for period in spans:
                component.add("FREEBUSY", period, parameters={"FBTYPE": fbtype})
        calendar.add_component(component)
    return calendar.to_ical()

