"""RFC 5545 VFREEBUSY output (FBTYPE=BUSY / BUSY-TENTATIVE), written as text from merged epochs.

The text is fixed-shape (UTC DATE-TIMEs and PERIODs, one generated UID, one
escaped TEXT value), so it is written directly: a calendar library would build
an object per period only to serialise it again, and a year of a busy tech has
hundreds of periods. Lines longer than 75 octets are folded (RFC 5545 3.1).
"""

from __future__ import annotations

import time
import uuid

from server.freebusy.epochs import EpochSpan, ical_utc

PRODID = "-//Lockstep//Free-Busy//EN"
MAX_LINE_OCTETS = 75

TechSpans = tuple[list[EpochSpan], list[EpochSpan]]


def vfreebusy(start: int, end: int, techs: dict[str, TechSpans]) -> bytes:
    """One VFREEBUSY per tech (``X-LOCKSTEP-TECH`` names it) for ``/api/v1/freebusy``."""
    lines = ["BEGIN:VCALENDAR", f"PRODID:{PRODID}", "VERSION:2.0", "METHOD:PUBLISH"]
    for tech, (busy, tentative) in techs.items():
        _component(lines, start, end, busy, tentative, extra=[fold(f"X-LOCKSTEP-TECH:{escape_text(tech)}")])
    lines.append("END:VCALENDAR")
    return ("\r\n".join(lines) + "\r\n").encode()


def report_vfreebusy(start: int, end: int, busy: list[EpochSpan], tentative: list[EpochSpan]) -> str:
    """The calendar-data of a CalDAV free-busy-query answer (RFC 4791 7.10): one VFREEBUSY
    whose FREEBUSY periods are in time order, as Radicale writes them."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{PRODID}"]
    _component(lines, start, end, busy, tentative, in_time_order=True)
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


def _component(
    lines: list[str], start: int, end: int, busy: list[EpochSpan], tentative: list[EpochSpan],
    extra: list[str] | None = None, in_time_order: bool = False,
) -> None:
    lines += [
        "BEGIN:VFREEBUSY",
        f"UID:{uuid.uuid4()}",
        f"DTSTAMP:{ical_utc(int(time.time()))}",
        f"DTSTART:{ical_utc(start)}",
        f"DTEND:{ical_utc(end)}",
    ]
    lines += extra or []
    periods = [(a, b, "BUSY") for a, b in busy] + [(a, b, "BUSY-TENTATIVE") for a, b in tentative]
    if in_time_order:
        periods.sort()
    # At most 64 octets ("FREEBUSY;FBTYPE=BUSY-TENTATIVE:" + two 16-octet DATE-TIMEs): never folded.
    lines += [f"FREEBUSY;FBTYPE={fbtype}:{ical_utc(a)}/{ical_utc(b)}" for a, b, fbtype in periods]
    lines.append("END:VFREEBUSY")


def escape_text(value: str) -> str:
    """An RFC 5545 TEXT value (3.3.11)."""
    return (value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
            .replace("\r\n", "\\n").replace("\n", "\\n"))


def fold(line: str) -> str:
    """Fold a content line at 75 octets, never inside a UTF-8 sequence (RFC 5545 3.1)."""
    data = line.encode()
    if len(data) <= MAX_LINE_OCTETS:
        return line
    parts, begin, limit = [], 0, MAX_LINE_OCTETS
    while len(data) - begin > limit:
        cut = begin + limit
        while data[cut] & 0xC0 == 0x80:  # a continuation byte: cut before its sequence
            cut -= 1
        parts.append(data[begin:cut].decode())
        begin, limit = cut, MAX_LINE_OCTETS - 1  # continuation lines start with a space
    parts.append(data[begin:].decode())
    return "\r\n ".join(parts)
