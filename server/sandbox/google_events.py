"""Events resource of the emulator: validation, get/insert/update/patch/delete,
recurring instances and their exceptions, rendering.

Follows the Calendar v3 reference: client-chosen ids are base32hex of 5-1024
characters and unique per calendar (409 ``duplicate``), deleting an already
deleted event answers 410 ``deleted`` while an unknown id is 404, ``If-Match``
with a stale etag is 412 ``conditionNotMet``, and an instance of a recurring
event is addressable as ``<masterId>_<originalStart>``; changing or deleting one
stores an exception (a cancelled one for a delete) that carries
``recurringEventId`` and ``originalStartTime``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from server.sandbox import google_errors as errors
from server.sandbox.google_recurrence import (
    UTC, Series, When, fmt_timestamp, instance_suffix, parse_rfc3339, parse_when,
    render_edt, split_instance_id, suffix_to_when, validate_recurrence, when_of, zone,
)
from server.sandbox.google_store import ROLE_ORDER, Calendar, EventRecord, Store, new_id

ID_PATTERN = re.compile(r"[a-v0-9]{5,1024}")
_ENUMS = {
    "status": {"confirmed", "tentative", "cancelled"},
    "transparency": {"opaque", "transparent"},
    "visibility": {"default", "public", "private", "confidential"},
    "eventType": {"default", "outOfOffice", "focusTime", "workingLocation", "birthday"},
}
_RESPONSES = {"needsAction", "declined", "tentative", "accepted"}
_COPIED = ("summary", "description", "location", "colorId", "guestsCanModify",
           "guestsCanInviteOthers", "guestsCanSeeOtherGuests", "anyoneCanAddSelf",
           "privateCopy", "endTimeUnspecified", "source", "attachments",
           "workingLocationProperties", "outOfOfficeProperties", "focusTimeProperties")
_KEY_ORDER = ("kind", "etag", "id", "status", "htmlLink", "created", "updated", "summary",
              "description", "location", "colorId", "creator", "organizer", "start", "end",
              "endTimeUnspecified", "recurrence", "recurringEventId", "originalStartTime",
              "transparency", "visibility", "iCalUID", "sequence", "attendees",
              "extendedProperties", "reminders", "eventType")
_ATTENDEE_KEYS = ("id", "email", "displayName", "optional", "resource", "responseStatus",
                  "comment", "additionalGuests")
_SIGNIFICANT = ("start", "end", "recurrence", "location", "status")
EXT_KEY_MAX = 44
EXT_VALUE_MAX = 1024


class Params:
    """Query parameters with Google's typing rules (repeated keys, booleans)."""

    def __init__(self, source: Mapping[str, Any] | None = None) -> None:
        self._source = source if source is not None else {}

    def getlist(self, name: str) -> list[str]:
        getter = getattr(self._source, "getlist", None)
        if getter is not None:
            return [str(v) for v in getter(name)]
        value = self._source.get(name)
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]

    def get(self, name: str) -> str | None:
        values = self.getlist(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return self.get(name) not in (None, "")

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0"):
            return False
        raise errors.bad_request(f"Invalid value '{value}'. Values must match the following "
                                 "regular expression: 'true|false'", location=name)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise errors.bad_request(f"Invalid value '{value}'.", location=name) from None
        if number < low:
            raise errors.bad_request(f"Invalid value '{value}'.", location=name)
        return min(number, high)

    def time(self, name: str) -> datetime | None:
        value = self.get(name)
        if value is None:
            return None
        parsed = parse_rfc3339(value)
        if parsed is None:
            raise errors.bad_request("Bad Request", reason="badRequest", location=name)
        return parsed.astimezone(UTC)


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Patch semantics: objects merge key by key, arrays and scalars replace, null deletes.
    An EventDateTime that names ``date`` or ``dateTime`` replaces the old one whole."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif (isinstance(value, dict) and isinstance(result.get(key), dict)
              and not ("date" in value or "dateTime" in value)):
            result[key] = merge_patch(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def ordered(resource: dict[str, Any]) -> dict[str, Any]:
    out = {key: resource[key] for key in _KEY_ORDER if key in resource}
    out.update({k: v for k, v in resource.items() if k not in out})
    return out


def render(resource: dict[str, Any], out_tz: ZoneInfo | None, *, minimal: bool = False,
           max_attendees: int | None = None) -> dict[str, Any]:
    """The API representation; a deleted event in sync answers carries only its ids."""
    if minimal:
        keep = ("kind", "etag", "id", "status", "recurringEventId", "originalStartTime")
        return {k: copy.deepcopy(resource[k]) for k in keep if k in resource}
    out = copy.deepcopy(resource)
    for key in ("start", "end"):
        if key in out:
            out[key] = render_edt(out[key], out_tz)
    if max_attendees is not None and len(out.get("attendees") or []) > max_attendees:
        out["attendees"] = [a for a in out["attendees"] if a.get("self")][:1]
        out["attendeesOmitted"] = True
    return out


def etag_for(stamp: int, updated: float) -> str:
    return f'"{int(updated * 1000) * 1000 + stamp % 1000}"'


def etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


class EventsService:
    """Event reads and writes on the store; ``on_change`` feeds push channels."""

    def __init__(self, store: Store, on_change: Callable[[str], None],
                 base_url: Callable[[], str]) -> None:
        self.store = store
        self.on_change = on_change
        self.base_url = base_url

    # --- access ----------------------------------------------------------------
    def calendar(self, user: str, calendar_id: str, *, write: bool = False,
                 min_role: str = "reader") -> tuple[Calendar, str]:
        found = self.store.resolve(user, calendar_id)
        if found is None:
            raise errors.not_found()
        cal, role = found
        if ROLE_ORDER[role] < ROLE_ORDER["writer" if write else min_role]:
            if write:
                raise errors.writer_access_required()
            raise errors.not_found()
        return cal, role

    # --- recurrence helpers ------------------------------------------------------
    def series(self, cal: Calendar, master: dict[str, Any]) -> Series:
        return Series(when_of(master["start"]), when_of(master["end"]),
                      list(master.get("recurrence") or []), zone(cal.time_zone))

    def horizon(self) -> datetime:
        now = datetime.fromtimestamp(self.store.clock.now(), UTC)
        return now + timedelta(days=self.store.config.expansion_horizon_days)

    def synthesize(self, master: dict[str, Any], series: Series, original: When) -> dict[str, Any]:
        inst = {k: copy.deepcopy(v) for k, v in master.items() if k != "recurrence"}
        inst["id"] = f"{master['id']}_{instance_suffix(original)}"
        inst["recurringEventId"] = master["id"]
        inst["originalStartTime"] = original.resource()
        inst["start"] = original.resource()
        inst["end"] = series.end_of(original).resource()
        return ordered(inst)

    def exceptions_index(self, cal: Calendar) -> dict[str, list[EventRecord]]:
        index: dict[str, list[EventRecord]] = {}
        for rec in cal.events.values():
            if rec.master_id:
                index.setdefault(rec.master_id, []).append(rec)
        return index

    def expand(self, cal: Calendar, master: EventRecord, lo: datetime | None,
               hi: datetime | None, exceptions: list[EventRecord], *,
               include_cancelled: bool) -> list[dict[str, Any]]:
        """Instances of a series overlapping ``(lo, hi)``, exceptions substituted."""
        cal_tz = zone(cal.time_zone)
        series = self.series(cal, master.resource)
        by_id = {rec.id: rec for rec in exceptions}
        found: list[dict[str, Any]] = []
        limit = self.store.config.max_instances_per_series
        for original in series.occurrences(lo, hi or self.horizon(), limit):
            inst_id = f"{master.id}_{instance_suffix(original)}"
            if inst_id in by_id:
                continue
            inst = self.synthesize(master.resource, series, original)
            if inst.get("status") != "cancelled" or include_cancelled:
                found.append(inst)
        for rec in exceptions:
            res = rec.resource
            if rec.cancelled:
                if include_cancelled and overlaps(
                        {"start": res["originalStartTime"],
                         "end": series.end_of(when_of(res["originalStartTime"])).resource()},
                        cal_tz, lo, hi):
                    found.append(res)
            elif overlaps(res, cal_tz, lo, hi):
                found.append(res)
        found.sort(key=lambda r: (start_instant(r, cal_tz), r["id"]))
        return found

    def find(self, cal: Calendar, event_id: str) -> tuple[EventRecord | None, dict | None]:
        """A stored record, or else a synthesized (unmodified) recurring instance."""
        rec = cal.events.get(event_id)
        if rec is not None:
            return rec, None
        split = split_instance_id(event_id)
        if split is None:
            return None, None
        master = cal.events.get(split[0])
        if master is None or not master.is_recurring:
            return None, None
        series = self.series(cal, master.resource)
        original = suffix_to_when(split[1], when_of(master.resource["start"]))
        if not series.contains(original):
            return None, None
        return None, self.synthesize(master.resource, series, original)

    # --- reads -------------------------------------------------------------------
    def get(self, user: str, calendar_id: str, event_id: str, params: Params) -> dict[str, Any]:
        with self.store.lock:
            cal, _ = self.calendar(user, calendar_id)
            rec, synthesized = self.find(cal, event_id)
            resource = rec.resource if rec is not None else synthesized
            if resource is None:
                raise errors.not_found()
            tz_name = params.get("timeZone")
            out_tz = self._out_tz(cal, tz_name)
            max_att = (params.integer("maxAttendees", 1, 1, 10**6)
                       if params.has("maxAttendees") else None)
            return render(resource, out_tz, max_attendees=max_att)

    def _out_tz(self, cal: Calendar, tz_name: str | None) -> ZoneInfo:
        try:
            return zone(tz_name or cal.time_zone)
        except ValueError:
            raise errors.bad_request("Invalid time zone.", location="timeZone") from None

    # --- writes ------------------------------------------------------------------
    def insert(self, user: str, calendar_id: str, body: Any, *, actor: str | None = None) -> dict:
        if not isinstance(body, dict):
            raise errors.bad_request("Bad Request", reason="badRequest")
        with self.store.lock:
            cal, _ = self.calendar(user, calendar_id, write=True)
            event_id = body.get("id")
            if event_id is not None:
                if not isinstance(event_id, str) or not ID_PATTERN.fullmatch(event_id):
                    raise errors.bad_request("Invalid resource id value.", location="id")
                if event_id in cal.events:
                    raise errors.duplicate()
            else:
                event_id = new_id()
                while event_id in cal.events:
                    event_id = new_id()
            src = {k: v for k, v in body.items()
                   if k not in ("recurringEventId", "originalStartTime")}
            stamp = self.store.touch(cal)
            resource = self._normalize(cal, src, event_id=event_id, existing=None,
                                       stamp=stamp, actor=actor or user)
            cal.events[event_id] = EventRecord(resource, stamp, len(cal.events))
        self.on_change(cal.id)
        return render(resource, zone(cal.time_zone))

    def modify(self, user: str, calendar_id: str, event_id: str, body: Any, *,
               if_match: str | None = None, patch: bool) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("Bad Request", reason="badRequest")
        with self.store.lock:
            cal, _ = self.calendar(user, calendar_id, write=True)
            rec, synthesized = self.find(cal, event_id)
            current = rec.resource if rec is not None else synthesized
            if current is None:
                raise errors.not_found()
            if not etag_matches(if_match, current["etag"]):
                raise errors.condition_not_met()
            if patch:
                src = merge_patch(current, body)
            else:
                src = dict(body)
            if current.get("recurringEventId"):
                src.pop("recurrence", None)
            stamp = self.store.touch(cal)
            resource = self._normalize(cal, src, event_id=event_id, existing=current,
                                       stamp=stamp, actor=user)
            if rec is None:
                cal.events[event_id] = EventRecord(resource, stamp, len(cal.events))
            else:
                rec.resource, rec.changed = resource, stamp
                if rec.is_recurring or current.get("recurrence"):
                    self._after_master_change(cal, rec, current, stamp)
        self.on_change(cal.id)
        return render(resource, zone(cal.time_zone))

    def delete(self, user: str, calendar_id: str, event_id: str, *,
               if_match: str | None = None) -> None:
        with self.store.lock:
            cal, _ = self.calendar(user, calendar_id, write=True)
            rec, synthesized = self.find(cal, event_id)
            current = rec.resource if rec is not None else synthesized
            if current is None:
                raise errors.not_found()
            if current.get("status") == "cancelled":
                raise errors.deleted()
            if not etag_matches(if_match, current["etag"]):
                raise errors.condition_not_met()
            stamp = self.store.touch(cal)
            resource = self._cancelled(current, stamp)
            if rec is None:
                cal.events[event_id] = EventRecord(resource, stamp, len(cal.events))
            else:
                rec.resource, rec.changed = resource, stamp
                if rec.is_recurring:
                    self._after_master_change(cal, rec, current, stamp)
        self.on_change(cal.id)

    def _cancelled(self, resource: dict[str, Any], stamp: int) -> dict[str, Any]:
        now = self.store.clock.now()
        return ordered({**resource, "status": "cancelled", "updated": fmt_timestamp(now),
                        "etag": etag_for(stamp, now)})

    def _after_master_change(self, cal: Calendar, master: EventRecord,
                             before: dict[str, Any], stamp: int) -> None:
        """Deleting a series deletes its exceptions; moving its rule drops the ones
        whose original start is no longer an occurrence."""
        exceptions = self.exceptions_index(cal).get(master.id, [])
        if not exceptions:
            return
        series = None
        if not master.cancelled and master.is_recurring:
            series = self.series(cal, master.resource)
        for exc in exceptions:
            if exc.cancelled:
                continue
            original = when_of(exc.resource["originalStartTime"])
            if series is None or not series.contains(original):
                exc.resource = self._cancelled(exc.resource, stamp)
                exc.changed = stamp

    def _normalize(self, cal: Calendar, src: dict[str, Any], *, event_id: str,
                   existing: dict[str, Any] | None, stamp: int, actor: str) -> dict[str, Any]:
        """A clean stored resource from a request body, validated like Google does."""
        now = self.store.clock.now()
        start = parse_when(src.get("start"), "start")
        end = parse_when(src.get("end"), "end")
        if start.all_day != end.all_day:
            raise errors.bad_request("Start and end times must either both be date or both "
                                     "be dateTime.", location="end")
        cal_tz = zone(cal.time_zone)
        if end.instant(cal_tz) < start.instant(cal_tz):
            raise errors.time_range_empty("end")
        out: dict[str, Any] = {"kind": "calendar#event", "id": event_id}
        for key, allowed in _ENUMS.items():
            value = src.get(key)
            if value is not None and value not in allowed:
                raise errors.bad_request(f"Invalid value for: {key}", location=key)
        out["status"] = src.get("status") or "confirmed"
        for key in _COPIED:
            if src.get(key) is not None:
                out[key] = copy.deepcopy(src[key])
        if src.get("transparency", "opaque") != "opaque":
            out["transparency"] = src["transparency"]
        if src.get("visibility", "default") != "default":
            out["visibility"] = src["visibility"]
        out["start"], out["end"] = start.resource(), end.resource()
        recurrence = src.get("recurrence")
        if recurrence:
            if existing is not None and existing.get("recurringEventId"):
                recurrence = None
            else:
                out["recurrence"] = validate_recurrence(recurrence)
                if not start.all_day and not start.tz:
                    raise errors.required("Missing time zone definition for start time.")
                self.series(cal, out)  # raises 400 on a rule dateutil cannot read
        if existing is not None and existing.get("recurringEventId"):
            out["recurringEventId"] = existing["recurringEventId"]
            out["originalStartTime"] = existing["originalStartTime"]
        owner = cal.id.lower()
        attendees = self._attendees(src.get("attendees"), owner)
        if attendees is not None:
            out["attendees"] = attendees
        ext = self._extended(src.get("extendedProperties"))
        if ext:
            out["extendedProperties"] = ext
        out["reminders"] = copy.deepcopy(src.get("reminders") or {"useDefault": True})
        out["eventType"] = (existing or {}).get("eventType") or src.get("eventType") or "default"
        if existing is None:
            out["created"] = fmt_timestamp(now)
            out["iCalUID"] = src.get("iCalUID") or f"{event_id}@google.com"
            out["sequence"] = int(src.get("sequence") or 0)
            user = self.store.users.get(actor)
            out["creator"] = {"email": actor, **({"self": True} if actor.lower() == owner else {})}
            if user is not None and user.name:
                out["creator"]["displayName"] = user.name
            out["organizer"] = {"email": cal.id, "displayName": cal.summary, "self": True}
        else:
            for key in ("created", "iCalUID", "creator", "organizer"):
                out[key] = copy.deepcopy(existing[key])
            bump = any(existing.get(k) != out.get(k) for k in _SIGNIFICANT)
            out["sequence"] = max(int(existing.get("sequence", 0)) + (1 if bump else 0),
                                  int(src.get("sequence") or 0))
        out["updated"] = fmt_timestamp(now)
        out["etag"] = etag_for(stamp, now)
        out["htmlLink"] = f"{self.base_url()}/calendar/event?eid={event_id}"
        return ordered(out)

    @staticmethod
    def _attendees(raw: Any, owner: str) -> list[dict[str, Any]] | None:
        if raw is None:
            return None
        if not isinstance(raw, list):
            raise errors.bad_request("Invalid attendees.", location="attendees")
        out = []
        for item in raw:
            if not isinstance(item, dict) or not item.get("email"):
                raise errors.required("Missing attendee email.", location="attendees")
            clean = {k: copy.deepcopy(item[k]) for k in _ATTENDEE_KEYS if k in item}
            clean.setdefault("responseStatus", "needsAction")
            if clean["responseStatus"] not in _RESPONSES:
                raise errors.bad_request("Invalid attendee response status.",
                                         location="attendees.responseStatus")
            if str(clean["email"]).lower() == owner:
                clean["self"] = True
                clean["organizer"] = True
            out.append(clean)
        return out

    @staticmethod
    def _extended(raw: Any) -> dict[str, dict[str, str]] | None:
        """Private/shared string maps; over-long keys are dropped, values cut."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise errors.bad_request("Invalid extendedProperties.", location="extendedProperties")
        out: dict[str, dict[str, str]] = {}
        for scope in ("private", "shared"):
            values = raw.get(scope)
            if values is None:
                continue
            if not isinstance(values, dict):
                raise errors.bad_request("Invalid extendedProperties.",
                                         location=f"extendedProperties.{scope}")
            clean = {str(k): str(v)[:EXT_VALUE_MAX] for k, v in values.items()
                     if v is not None and len(str(k)) <= EXT_KEY_MAX}
            if clean:
                out[scope] = clean
        return out or None


def start_instant(resource: dict[str, Any], cal_tz: ZoneInfo) -> datetime:
    return when_of(resource["start"]).instant(cal_tz)


def overlaps(resource: dict[str, Any], cal_tz: ZoneInfo, lo: datetime | None,
             hi: datetime | None) -> bool:
    """Google's window: ``timeMin`` bounds the end (exclusive), ``timeMax`` the start."""
    start = when_of(resource["start"]).instant(cal_tz)
    end = when_of(resource["end"]).instant(cal_tz)
    if lo is not None and not (end > lo or (end == start and start >= lo)):
        return False
    return hi is None or start < hi
