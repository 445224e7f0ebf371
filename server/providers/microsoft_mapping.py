"""Microsoft Graph event JSON ↔ iCalendar, both directions, nothing lost that blocks time.

A recurring series is, in Graph, a ``seriesMaster`` (with ``recurrence``) plus
``occurrence`` and ``exception`` instances; in iCalendar it is one object: the
master VEVENT (DTSTART in the recurrence's own zone, so the RRULE keeps its
wall-clock time across DST), RECURRENCE-ID overrides for the exceptions and
EXDATE for deleted occurrences.

What decides blocking is expressed the way google_mapping does it, so the
free/busy policy treats both providers the same: ``showAs`` → TRANSP/STATUS
(free and workingElsewhere transparent, tentative STATUS:TENTATIVE, busy/oof/
unknown opaque), the mailbox owner's ``responseStatus`` → an ATTENDEE with
PARTSTAT (and a declined meeting is also made transparent, so it never blocks
even when the mailbox address differs from the tech's e-mail), ``isCancelled`` →
STATUS:CANCELLED. Outlook's exact busy status travels along in
X-MICROSOFT-CDO-BUSYSTATUS so that oof/workingElsewhere survive a round trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

import icalendar

from server.providers.microsoft_recurrence import from_rrule, to_rrule
from server.providers.microsoft_zones import (
    UTC, read_day, read_when, windows_name, write_when, zone_named,
)

PRODID = "-//Lockstep//Microsoft bridge//EN"
# Our uid on events we write: a single-value extended property in our own GUID namespace.
UID_PROPERTY = "String {5e1c7a3b-9d42-4f86-b0a7-3c2e8f61d94a} Name LockstepUid"
BUSY_STATUS = "X-MICROSOFT-CDO-BUSYSTATUS"
_STATUS_OF = {"free": "FREE", "tentative": "TENTATIVE", "busy": "BUSY", "oof": "OOF",
              "workingElsewhere": "WORKINGELSEWHERE", "unknown": "BUSY"}
_SHOW_AS = {v: k for k, v in _STATUS_OF.items() if k != "unknown"}
_PARTSTAT = {"accepted": "ACCEPTED", "tentativelyAccepted": "TENTATIVE", "declined": "DECLINED",
             "notResponded": "NEEDS-ACTION"}

GraphEvent = dict[str, Any]


# --- Graph -> iCalendar -------------------------------------------------------------------

def series_zone(event: GraphEvent) -> tzinfo:
    """The zone an event (or a series' recurrence) was written in; UTC when unknown."""
    span = (event.get("recurrence") or {}).get("range") or {}
    for name in (span.get("recurrenceTimeZone"), event.get("originalStartTimeZone"),
                 (event.get("start") or {}).get("timeZone")):
        zone = zone_named(name)
        if zone is not None:
            return zone
    return UTC


def lockstep_uid_of(event: GraphEvent) -> str | None:
    for prop in event.get("singleValueExtendedProperties") or []:
        if str(prop.get("id", "")).lower() == UID_PROPERTY.lower():
            return str(prop.get("value")) or None
    return None


def series_to_ical(master: GraphEvent, exceptions: Iterable[GraphEvent] = (),
                   cancelled: Iterable[datetime] = (), *, owner: str | None = None,
                   uid: str | None = None) -> str:
    """One iCalendar object: a single event, or a series master with its exceptions
    (``exception`` instances) and its deleted occurrences (``cancelled`` original starts)."""
    calendar = icalendar.Calendar()
    calendar.add("PRODID", PRODID)
    calendar.add("VERSION", "2.0")
    uid = uid or lockstep_uid_of(master) or master.get("iCalUId") or str(master["id"])
    zone = series_zone(master)
    all_day = bool(master.get("isAllDay"))
    recurring = bool(master.get("recurrence")) and \
        master.get("type", "seriesMaster") != "singleInstance"
    main = _vevent(master, uid, zone, owner)
    if recurring:
        main.add("RRULE", to_rrule(master["recurrence"], zone, all_day))
        gone = sorted({_original(c, zone, all_day) for c in cancelled})
        if gone:
            main.add("EXDATE", gone)
    calendar.add_component(main)
    if recurring:
        for instance in sorted(exceptions, key=lambda e: str(e.get("originalStart", ""))):
            override = _vevent(instance, uid, series_zone(instance) if not all_day else zone, owner)
            original = read_when({"dateTime": instance["originalStart"]})
            override.add("RECURRENCE-ID", _original(original, zone, all_day))
            calendar.add_component(override)
    calendar.add_missing_timezones()
    return calendar.to_ical().decode()


def _original(moment: datetime, zone: tzinfo, all_day: bool) -> date | datetime:
    """An occurrence's original start as RECURRENCE-ID/EXDATE wants it: like the DTSTART."""
    local = moment.astimezone(zone)
    return local.date() if all_day else local


def _vevent(event: GraphEvent, uid: str, zone: tzinfo, owner: str | None) -> icalendar.Event:
    vevent = icalendar.Event()
    vevent.add("UID", uid)
    vevent.add("DTSTAMP", datetime.now(timezone.utc))
    if event.get("isAllDay"):
        vevent.add("DTSTART", read_day(event["start"], zone))
        end_zone = zone_named(event.get("originalEndTimeZone")) or zone
        vevent.add("DTEND", read_day(event["end"], end_zone))
    else:
        vevent.add("DTSTART", read_when(event["start"]).astimezone(zone))
        end_zone = zone_named(event.get("originalEndTimeZone")) or zone
        vevent.add("DTEND", read_when(event["end"]).astimezone(end_zone))
    if event.get("subject"):
        vevent.add("SUMMARY", event["subject"])
    description = _text_body(event)
    if description:
        vevent.add("DESCRIPTION", description)
    place = (event.get("location") or {}).get("displayName")
    if place:
        vevent.add("LOCATION", place)
    show_as = str(event.get("showAs") or "busy")
    response = str((event.get("responseStatus") or {}).get("response") or "none")
    if event.get("isCancelled"):
        status = "CANCELLED"
    elif show_as == "tentative":
        status = "TENTATIVE"
    else:
        status = "CONFIRMED"
    vevent.add("STATUS", status)
    transparent = show_as in ("free", "workingElsewhere") or response == "declined"
    vevent.add("TRANSP", "TRANSPARENT" if transparent else "OPAQUE")
    vevent.add(BUSY_STATUS, _STATUS_OF.get(show_as, "BUSY"))
    if response in _PARTSTAT and owner:
        vevent.add("ATTENDEE", f"mailto:{owner}", parameters={"PARTSTAT": _PARTSTAT[response]})
    ours = lockstep_uid_of(event)
    if ours:
        vevent.add("X-LOCKSTEP-UID", ours)
    return vevent


def _text_body(event: GraphEvent) -> str:
    body = event.get("body") or {}
    if body.get("content") and str(body.get("contentType", "text")).lower() == "text":
        return str(body["content"]).strip()
    return str(event.get("bodyPreview") or "").strip()


# --- iCalendar -> Graph -------------------------------------------------------------------

class Series:
    """What one iCalendar object asks Graph to hold: a master (or single event) body, the
    overrides by original start (None = that occurrence is cancelled) and the EXDATEs."""

    def __init__(self, master: GraphEvent, overrides: dict[datetime | date, GraphEvent | None],
                 zone: tzinfo | None) -> None:
        self.master = master
        self.overrides = overrides
        self.zone = zone

    @property
    def recurring(self) -> bool:
        return bool(self.master.get("recurrence"))


def ical_to_series(text: str, all_day_zone: str = "UTC") -> Series:
    """Parse one calendar object into the Graph bodies that express it; ValueError when
    Graph cannot say it (an RRULE Outlook has no pattern for, no master VEVENT, ...)."""
    calendar = icalendar.Calendar.from_ical(text)
    master: icalendar.Event | None = None
    overrides: dict[datetime | date, GraphEvent | None] = {}
    pending: list[icalendar.Event] = []
    for component in calendar.walk("VEVENT"):
        if "RECURRENCE-ID" in component:
            pending.append(component)
        elif master is None:
            master = component
    if master is None or "DTSTART" not in master:
        raise ValueError("calendar object has no master VEVENT with a DTSTART")
    body = _body(master, all_day_zone)
    zone = _zone_of(master["DTSTART"])
    if "RRULE" in master:
        body["recurrence"] = from_rrule(dict(master["RRULE"]), master["DTSTART"].dt, zone)
        for exdate in _exdates(master):
            overrides[_key(exdate, zone)] = None
    for component in pending:
        original = _key(component["RECURRENCE-ID"].dt, zone)
        cancelled = str(component.get("STATUS", "")).upper() == "CANCELLED"
        overrides[original] = None if cancelled else _body(component, all_day_zone)
    return Series(body, overrides, zone)


def occurrence_key(value: date | datetime, zone: tzinfo | None) -> datetime | date:
    """One spelling per occurrence: a date for all-day series, else an aware UTC instant."""
    return _key(value, zone)


def _key(value: date | datetime, zone: tzinfo | None) -> datetime | date:
    if not isinstance(value, datetime):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone or UTC)
    return value.astimezone(UTC)


def _exdates(component: Any) -> list[date | datetime]:
    values = component.get("EXDATE")
    if values is None:
        return []
    out: list[date | datetime] = []
    for value in values if isinstance(values, list) else [values]:
        out.extend(item.dt for item in value.dts)
    return out


def _zone_of(prop: Any) -> tzinfo | None:
    """The zone of a DTSTART: its TZID parameter (IANA or Windows name) or the value's tzinfo."""
    zone = zone_named(prop.params.get("TZID")) if hasattr(prop, "params") else None
    value = prop.dt
    if zone is None and isinstance(value, datetime) and value.tzinfo is not None:
        zone = zone_named(getattr(value.tzinfo, "key", None)) or value.tzinfo
    return zone


def _when(prop: Any) -> date | datetime:
    """A DTSTART/DTEND value with its TZID resolved to a zone Graph can name."""
    value = prop.dt
    zone = _zone_of(prop)
    if not isinstance(value, datetime) or zone is None or windows_name(zone) is None:
        return value  # type: ignore[no-any-return]
    if value.tzinfo is None or windows_name(value.tzinfo) is None:
        return value.replace(tzinfo=zone)  # same wall clock, in a zone Graph can name
    return value


def _body(component: Any, all_day_zone: str) -> GraphEvent:
    start = _when(component["DTSTART"])
    if "DTEND" in component:
        end = _when(component["DTEND"])
    elif "DURATION" in component:
        end = start + component["DURATION"].dt
    else:
        end = start if isinstance(start, datetime) else start + timedelta(days=1)
    all_day = not isinstance(start, datetime)
    body: GraphEvent = {
        "subject": str(component.get("SUMMARY", "")),
        "body": {"contentType": "text", "content": str(component.get("DESCRIPTION", ""))},
        "location": {"displayName": str(component.get("LOCATION", ""))},
        "isAllDay": all_day,
        "start": write_when(start, all_day_zone),
        "end": write_when(end, all_day_zone),
    }
    show_as = _show_as(component)
    if show_as is not None:
        body["showAs"] = show_as
    return body


def _show_as(component: Any) -> str | None:
    """showAs from TRANSP/STATUS, keeping Outlook's finer status when it agrees with them;
    None (leave Outlook's as it is) for a meeting the tech declined."""
    for attendee in _as_list(component.get("ATTENDEE")):
        if str(getattr(attendee, "params", {}).get("PARTSTAT", "")).upper() == "DECLINED":
            return None
    transparent = str(component.get("TRANSP", "OPAQUE")).upper() == "TRANSPARENT"
    tentative = str(component.get("STATUS", "")).upper() == "TENTATIVE"
    exact = _SHOW_AS.get(str(component.get(BUSY_STATUS, "")).upper())
    if transparent:
        return exact if exact in ("free", "workingElsewhere") else "free"
    if tentative:
        return "tentative"
    return exact if exact in ("busy", "oof") else "busy"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
