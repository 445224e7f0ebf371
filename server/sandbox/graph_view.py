"""Read side of the Graph emulator: event resources as Graph returns them, and
the expansion of series into occurrences for calendarView, instances and delta.

A series master stores its exceptions (edited occurrences, keyed by the
occurrence's original start) and the keys of deleted occurrences. Occurrences
are computed, never stored; their id encodes the master and original start, so
they can be read, edited (becoming exceptions) or deleted by id.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from server.sandbox import graph_errors as errors
from server.sandbox.graph_store import (EventRecord, Store, Timing, occurrence_id,
                                        parse_occurrence_id)
from server.sandbox.graph_time import (fmt_timestamp, fmt_utc, key_instant, occurrence_key,
                                       occurrence_starts, render, series_zone, timing_at,
                                       wall_duration, zone)

_EXPAND = re.compile(r"^singleValueExtendedProperties(?:\(\$filter=(.*)\))?$", re.I)
_ID_EQ = re.compile(r"^\s*id\s+eq\s+'((?:[^']|'')*)'\s*$", re.I)
_ANY = re.compile(r"^\s*singleValueExtendedProperties/any\(\s*(\w+)\s*:\s*\1/id\s+eq\s+"
                  r"'((?:[^']|'')*)'(?:\s+and\s+\1/value\s+eq\s+'((?:[^']|'')*)')?\s*\)\s*$",
                  re.I)


@dataclass
class Instance:
    """One item of a calendar view: a single event, an occurrence or an exception."""

    id: str
    master: EventRecord | None   # the series, for occurrences and exceptions
    record: EventRecord | None   # the stored item (single or exception); None: occurrence
    start: Timing
    end: Timing
    key: str | None = None

    @property
    def change_key(self) -> str:
        if self.record is not None:
            return self.record.change_key
        assert self.master is not None
        digest = hashlib.sha256(f"{self.master.series_key}|{self.key}".encode()).digest()
        return base64.b64encode(digest[:12]).decode()


def parse_expand(value: str | None) -> list[str] | None:
    """Ids of the extended properties to return (``[]``: all), or None when not expanded."""
    if not value:
        return None
    ids: list[str] | None = None
    for part in _split_top(value):
        match = _EXPAND.match(part.strip())
        if not match:
            raise errors.bad_request(f"Parsing OData Select and Expand failed: could not find "
                                     f"a property named '{part.strip()}' on type "
                                     "'microsoft.graph.event'.", code="BadRequest")
        if match.group(1) is None:
            ids = []
        else:
            eq = [_ID_EQ.match(c) for c in re.split(r"\s+or\s+", match.group(1), flags=re.I)]
            if not all(eq):
                raise errors.bad_request("Invalid filter clause in $expand.", code="BadRequest")
            ids = [m.group(1).replace("''", "'") for m in eq if m]
    return ids


def _split_top(value: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in value:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


def parse_filter(value: str | None) -> tuple[str, str | None] | None:
    """The one $filter events support here: an extended property id (and value)."""
    if not value:
        return None
    match = _ANY.match(value)
    if not match:
        raise errors.bad_request(f"Invalid filter clause: '{value}' is not supported.",
                                 code="ErrorInvalidUrlQueryFilter")
    wanted_value = match.group(3).replace("''", "'") if match.group(3) is not None else None
    return match.group(2).replace("''", "'"), wanted_value


def matches_filter(record: EventRecord, flt: tuple[str, str | None] | None) -> bool:
    if flt is None:
        return True
    prop = record.ext.get(flt[0].lower())
    return prop is not None and (flt[1] is None or prop["value"] == flt[1])


class View:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- locating items ----------------------------------------------------------------
    def locate(self, email: str, event_id: str) -> tuple[EventRecord, str | None]:
        """The stored record (or, for an occurrence/exception id, its master) and the key."""
        rec = self.store.find_event(email, event_id)
        if rec is not None:
            return rec, None
        parsed = parse_occurrence_id(event_id)
        if parsed is not None:
            master = self.store.find_event(email, parsed[0])
            if master is not None and master.is_master and self.occurs(master, parsed[1]):
                return master, parsed[1]
        raise errors.not_found()

    def occurs(self, master: EventRecord, key: str) -> bool:
        if key in master.cancelled:
            return False
        if key in master.exceptions:
            return True
        try:
            instant = key_instant(key)
        except ValueError:
            return False
        return any(i.key == key for i in self.expand(master, instant - timedelta(seconds=1),
                                                      instant + timedelta(seconds=1),
                                                      exceptions=False, overlap=False))

    def instance(self, master: EventRecord, key: str) -> Instance:
        exc = master.exceptions.get(key)
        if exc is not None:
            return Instance(exc.id, master, exc, exc.start, exc.end, key)
        instant = key_instant(key)
        zone_name = series_zone(master.recurrence or {}, master.start)
        start = timing_at(_wall_in(instant, zone_name), zone_name)
        end = timing_at(start.wall + wall_duration(master.start, master.end, zone_name),
                        zone_name)
        return Instance(occurrence_id(master.id, key), master, None, start, end, key)

    # --- expansion --------------------------------------------------------------------------
    def expand(self, master: EventRecord, start: datetime, end: datetime, *,
               exceptions: bool = True, overlap: bool = True) -> list[Instance]:
        """Occurrences and exceptions of a series that overlap ``[start, end)``.

        With ``overlap=False`` it matches occurrences whose original start is in the window.
        """
        assert master.recurrence is not None
        zone_name = series_zone(master.recurrence, master.start)
        duration = wall_duration(master.start, master.end, zone_name)
        config = self.store.config
        horizon = min(end, master.start.instant + timedelta(days=config.expansion_horizon_days))
        out: list[Instance] = []
        for wall in occurrence_starts(master.recurrence, master.start, horizon=horizon,
                                      limit=config.max_instances_per_series):
            occ_start = timing_at(wall, zone_name)
            key = occurrence_key(occ_start.instant)
            if key in master.cancelled or key in master.exceptions:
                continue
            occ_end = timing_at(wall + duration, zone_name)
            hit = (occ_start.instant < end and occ_end.instant > start) if overlap else \
                (start <= occ_start.instant < end)
            if hit:
                out.append(Instance(occurrence_id(master.id, key), master, None, occ_start,
                                    occ_end, key))
        if exceptions:
            for key, exc in master.exceptions.items():
                if key not in master.cancelled and exc.start.instant < end \
                        and exc.end.instant > start:
                    out.append(Instance(exc.id, master, exc, exc.start, exc.end, key))
        return out

    def calendar_view(self, email: str, calendar_ids: list[str], start: datetime,
                      end: datetime) -> list[Instance]:
        out: list[Instance] = []
        for cal_id in calendar_ids:
            for rec in self.store.calendars[cal_id].events.values():
                if rec.deleted:
                    continue
                if rec.is_master:
                    out.extend(self.expand(rec, start, end))
                elif rec.start.instant < end and (rec.end.instant > start or (
                        rec.end.instant == rec.start.instant == start)):
                    out.append(Instance(rec.id, None, rec, rec.start, rec.end))
        out.sort(key=lambda i: (i.start.instant, i.id))
        return out

    # --- rendering ------------------------------------------------------------------------
    def render_record(self, rec: EventRecord, out_zone: str,
                      expand: list[str] | None = None) -> dict[str, Any]:
        if rec.master_id is not None:
            master = self.store.find_event(rec.owner, rec.master_id)
            assert master is not None and rec.original_key is not None
            return self.render_instance(Instance(rec.id, master, rec, rec.start, rec.end,
                                                 rec.original_key), out_zone, expand)
        return self._resource(rec, rec, None, rec.start, rec.end, rec.change_key,
                              out_zone, expand)

    def render_instance(self, inst: Instance, out_zone: str,
                        expand: list[str] | None = None) -> dict[str, Any]:
        source = inst.record or inst.master
        assert source is not None
        return self._resource(source, inst.record, inst, inst.start, inst.end,
                              inst.change_key, out_zone, expand)

    def _resource(self, source: EventRecord, stored: EventRecord | None, inst: Instance | None,
                  start: Timing, end: Timing, change_key: str, out_zone: str,
                  expand: list[str] | None) -> dict[str, Any]:
        data = source.data
        user = self.store.user(source.owner)
        master = inst.master if inst is not None else None
        if master is None:
            kind = "seriesMaster" if source.is_master else "singleInstance"
        else:
            kind = "exception" if stored is not None else "occurrence"
        event_id = inst.id if inst is not None else source.id
        ical = source.ical_uid if master is None else _occurrence_uid(master.ical_uid, inst)
        body = data.get("body") or {"contentType": "html", "content": ""}
        resource: dict[str, Any] = {
            "@odata.etag": f'W/"{change_key}"',
            "id": event_id,
            "createdDateTime": fmt_timestamp(source.created),
            "lastModifiedDateTime": fmt_timestamp(source.modified),
            "changeKey": change_key,
            "categories": list(data.get("categories") or []),
            "transactionId": source.transaction_id if master is None else None,
            "originalStartTimeZone": data.get("originalStartTimeZone") or start.zone,
            "originalEndTimeZone": data.get("originalEndTimeZone") or end.zone,
            "iCalUId": ical,
            "reminderMinutesBeforeStart": data.get("reminderMinutesBeforeStart", 15),
            "isReminderOn": data.get("isReminderOn", True),
            "hasAttachments": False,
            "subject": data.get("subject", ""),
            "bodyPreview": _preview(body),
            "importance": data.get("importance", "normal"),
            "sensitivity": data.get("sensitivity", "normal"),
            "isAllDay": bool(data.get("isAllDay", False)),
            "isCancelled": bool(data.get("isCancelled", False)),
            "isOrganizer": True,
            "responseRequested": data.get("responseRequested", True),
            "seriesMasterId": master.id if master is not None else None,
            "showAs": data.get("showAs", "busy"),
            "type": kind,
            "webLink": f"https://outlook.office365.com/owa/?itemid={event_id}"
                       "&exvsurl=1&path=/calendar/item",
            "onlineMeetingUrl": None,
            "isOnlineMeeting": bool(data.get("isOnlineMeeting", False)),
            "onlineMeetingProvider": data.get("onlineMeetingProvider", "unknown"),
            "allowNewTimeProposals": data.get("allowNewTimeProposals", True),
            "isDraft": False,
            "hideAttendees": bool(data.get("hideAttendees", False)),
            "responseStatus": dict(data.get("responseStatus")
                                   or {"response": "organizer", "time": "0001-01-01T00:00:00Z"}),
            "body": dict(body),
            "start": render(start, out_zone, bool(data.get("isAllDay"))),
            "end": render(end, out_zone, bool(data.get("isAllDay"))),
            "location": dict(data.get("location") or _EMPTY_LOCATION),
            "locations": list(data.get("locations") or []),
            "recurrence": _recurrence_out(source) if kind == "seriesMaster" else None,
            "attendees": list(data.get("attendees") or []),
            "organizer": data.get("organizer") or {
                "emailAddress": {"name": user.name, "address": user.email}},
            "onlineMeeting": None,
        }
        if resource["transactionId"] is None:
            del resource["transactionId"]  # returned only when an app set it
        if inst is not None and inst.key is not None:
            resource["originalStart"] = fmt_utc(key_instant(inst.key))
        if expand is not None:
            props = [p for k, p in source.ext.items()
                     if not expand or k in {e.lower() for e in expand}]
            if props:
                resource["singleValueExtendedProperties"] = [dict(p) for p in props]
        return resource


_EMPTY_LOCATION = {"displayName": "", "locationType": "default", "uniqueIdType": "unknown",
                   "address": {}, "coordinates": {}}


def _wall_in(instant: datetime, zone_name: str) -> datetime:
    return instant.astimezone(zone(zone_name)).replace(tzinfo=None)


def _preview(body: dict[str, Any]) -> str:
    text = str(body.get("content") or "")
    if body.get("contentType", "").lower() == "html":
        text = re.sub(r"<[^>]+>", " ", text)
    return " ".join(text.split())[:255]


def _recurrence_out(rec: EventRecord) -> dict[str, Any] | None:
    if rec.recurrence is None:
        return None
    out = {"pattern": dict(rec.recurrence["pattern"]), "range": dict(rec.recurrence["range"])}
    out["range"]["recurrenceTimeZone"] = out["range"]["recurrenceTimeZone"] or rec.start.zone
    return out


def _occurrence_uid(master_uid: str, inst: Instance | None) -> str:
    """Outlook's GlobalObjectId of an occurrence: the series' with the date in bytes 16-19."""
    if inst is None or inst.key is None or len(master_uid) < 40:
        return master_uid
    day = key_instant(inst.key)
    return f"{master_uid[:32]}{day.year:04X}{day.month:02X}{day.day:02X}{master_uid[40:]}"
