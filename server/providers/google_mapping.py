"""Google Calendar v3 event resources ↔ iCalendar, both directions, nothing lost that blocks time.

A series arrives from Google as a master (with ``recurrence`` lines) plus
exception instances (``recurringEventId`` + ``originalStartTime``); in
iCalendar it is one object: the master VEVENT and RECURRENCE-ID overrides.
A cancelled instance becomes an override with STATUS:CANCELLED.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import icalendar

PRODID = "-//Lockstep//Google bridge//EN"
UID_PROPERTY = "lockstepUid"  # Google drops private keys over 44 characters; this is short
_STATUS_IN = {"confirmed": "CONFIRMED", "tentative": "TENTATIVE", "cancelled": "CANCELLED"}
_STATUS_OUT = {v: k for k, v in _STATUS_IN.items()}
_PARTSTAT_IN = {"accepted": "ACCEPTED", "declined": "DECLINED", "tentative": "TENTATIVE",
                "needsAction": "NEEDS-ACTION"}
_PARTSTAT_OUT = {v: k for k, v in _PARTSTAT_IN.items()}
_TEXT_FIELDS = (("summary", "SUMMARY"), ("description", "DESCRIPTION"), ("location", "LOCATION"))

GoogleEvent = dict[str, Any]


def series_to_ical(master: GoogleEvent | None, exceptions: list[GoogleEvent]) -> str:
    """One iCalendar object from a master (or a single event) and its exception instances."""
    calendar = icalendar.Calendar()
    calendar.add("PRODID", PRODID)
    calendar.add("VERSION", "2.0")
    uid = _series_uid(master, exceptions)
    if master is not None:
        calendar.add_component(_vevent(master, uid))
    for instance in exceptions:
        calendar.add_component(_vevent(instance, uid, override=True))
    text = calendar.to_ical().decode()
    lines = (master or {}).get("recurrence", [])
    if lines:
        # Google keeps RFC 5545 content lines verbatim: put them back verbatim into the master.
        head, _, tail = text.partition("END:VEVENT\r\n")
        text = head + "".join(f"{line}\r\n" for line in lines) + "END:VEVENT\r\n" + tail
    return text


def ical_to_series(text: str, lockstep_uid: str | None = None
                   ) -> tuple[GoogleEvent, list[tuple[str, GoogleEvent]]]:
    """(master or single event body, [(original start as RFC 3339 or date, override body)])."""
    calendar = icalendar.Calendar.from_ical(text)
    master: GoogleEvent | None = None
    overrides: list[tuple[str, GoogleEvent]] = []
    for component in calendar.walk("VEVENT"):
        body = _body(component)
        if lockstep_uid:
            body["extendedProperties"] = {"private": {UID_PROPERTY: lockstep_uid}}
        if "RECURRENCE-ID" in component:
            overrides.append((_original_start(component["RECURRENCE-ID"].dt), body))
        else:
            master = body
    if master is None:
        raise ValueError("calendar object has no master VEVENT")
    return master, overrides


def lockstep_uid_of(event: GoogleEvent) -> str | None:
    return (event.get("extendedProperties") or {}).get("private", {}).get(UID_PROPERTY)


def _series_uid(master: GoogleEvent | None, exceptions: list[GoogleEvent]) -> str:
    """Our own uid when Lockstep wrote the event (Google gives it an iCalUID of its own), so
    an echo comes back under the UID we sent. Otherwise the master's iCalUID, else any
    instance's: a cancelled instance carries only id, recurringEventId and originalStartTime."""
    for event in ([master] if master else []) + exceptions:
        if lockstep_uid_of(event):
            return str(lockstep_uid_of(event))
    for event in ([master] if master else []) + exceptions:
        if event.get("iCalUID"):
            return str(event["iCalUID"])
    if master is not None:
        return str(master["id"])
    return str(exceptions[0].get("recurringEventId") or exceptions[0]["id"])


def _vevent(event: GoogleEvent, uid: str, override: bool = False) -> icalendar.Event:
    vevent = icalendar.Event()
    vevent.add("UID", uid)
    vevent.add("DTSTAMP", datetime.now(timezone.utc))
    if override:
        vevent.add("RECURRENCE-ID", _when(event["originalStartTime"]))
    status = event.get("status", "confirmed")
    if status == "cancelled" and override:
        vevent.add("STATUS", "CANCELLED")
        vevent.add("DTSTART", _when(event["originalStartTime"]))
        return vevent
    vevent.add("DTSTART", _when(event["start"]))
    if "end" in event:
        vevent.add("DTEND", _when(event["end"]))
    for key, prop in _TEXT_FIELDS:
        if event.get(key):
            vevent.add(prop, event[key])
    vevent.add("STATUS", _STATUS_IN.get(status, "CONFIRMED"))
    vevent.add("TRANSP", "TRANSPARENT" if event.get("transparency") == "transparent" else "OPAQUE")
    if "sequence" in event:
        vevent.add("SEQUENCE", int(event["sequence"]))
    for attendee in event.get("attendees", []):
        if attendee.get("self"):
            response = attendee.get("responseStatus", "needsAction")
            params = {"PARTSTAT": _PARTSTAT_IN.get(response, "NEEDS-ACTION")}
            vevent.add("ATTENDEE", f"mailto:{attendee.get('email', '')}", parameters=params)
    uid = lockstep_uid_of(event)
    if uid:
        vevent.add("X-LOCKSTEP-UID", uid)
    return vevent


def _when(value: dict[str, str]) -> date | datetime:
    if "date" in value:
        return date.fromisoformat(value["date"])
    moment = datetime.fromisoformat(value["dateTime"].replace("Z", "+00:00"))
    zone = value.get("timeZone")
    if zone:
        return moment.astimezone(ZoneInfo(zone))
    # Only an offset: write UTC, since a TZID like "UTC-05:00" has no VTIMEZONE and
    # readers would take it as floating time.
    return moment.astimezone(timezone.utc)


def _body(component: Any) -> GoogleEvent:
    body: GoogleEvent = {"start": _google_when(component["DTSTART"].dt)}
    if "DTEND" in component:
        body["end"] = _google_when(component["DTEND"].dt)
    elif "DURATION" in component:
        body["end"] = _google_when(component["DTSTART"].dt + component["DURATION"].dt)
    else:
        body["end"] = body["start"]
    for key, prop in _TEXT_FIELDS:
        if prop in component:
            body[key] = str(component[prop])
    status = str(component.get("STATUS", "CONFIRMED")).upper()
    body["status"] = _STATUS_OUT.get(status, "confirmed")
    transparent = str(component.get("TRANSP", "")).upper() == "TRANSPARENT"
    body["transparency"] = "transparent" if transparent else "opaque"
    recurrence = _recurrence_lines(component)
    if recurrence:
        body["recurrence"] = recurrence
    return body


def _recurrence_lines(component: Any) -> list[str]:
    """RRULE/RDATE/EXDATE content lines as written, which is what Google's ``recurrence`` holds."""
    unfolded = component.to_ical().decode().replace("\r\n ", "").replace("\r\n\t", "")
    return [line for line in unfolded.split("\r\n")
            if line.split(":", 1)[0].split(";", 1)[0] in ("RRULE", "RDATE", "EXDATE")]


def _google_when(value: date | datetime) -> dict[str, str]:
    if not isinstance(value, datetime):
        return {"date": value.isoformat()}
    if value.tzinfo is None:
        return {"dateTime": value.isoformat()}
    zone = getattr(value.tzinfo, "key", None)
    if zone:
        return {"dateTime": value.isoformat(), "timeZone": zone}
    return {"dateTime": value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")}


def _original_start(value: date | datetime) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.isoformat()
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return value.isoformat()
