"""Writing one calendar object to Google: the master (or single event) plus its overrides.

Idempotency: a new event gets a client-chosen id derived from our uid, so a
retried insert answers 409 ``duplicate`` and we update the existing event
instead of creating a second one. Updates are PATCHes (fields Google keeps that
iCalendar does not carry - reminders, colours, conference links - survive) with
every field we own sent explicitly, null when absent. Overrides
(RECURRENCE-ID) become instance patches or instance deletions; an exception
that exists on Google but not in our object (someone moved or deleted one
occurrence there) is put back to what the series says, so a revert works.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events

from server.providers.base import ProviderError, RemoteEvent
from server.providers.google_client import GoogleApiError, GoogleClient
from server.providers.google_mapping import GoogleEvent, ical_to_series, series_to_ical

log = logging.getLogger(__name__)
_OWNED = ("summary", "description", "location")


def event_id_for(lockstep_uid: str) -> str:
    """Deterministic Google event id: base32hex [a-v0-9] of sha256(uid), 54 characters."""
    digest = hashlib.sha256(lockstep_uid.encode("utf-8")).digest()
    return "ls" + base64.b32hexencode(digest).decode("ascii").rstrip("=").lower()


def original_key(value: dict[str, Any] | str) -> str:
    """One spelling per original start: a date, or a UTC instant with Z (naive stays naive)."""
    if isinstance(value, dict):
        if value.get("date"):
            return str(value["date"])
        value = str(value["dateTime"])
    if len(value) == 10:
        return value
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        return moment.isoformat()
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _instant(edt: dict[str, Any]) -> date | datetime:
    if edt.get("date"):
        return date.fromisoformat(str(edt["date"]))
    return datetime.fromisoformat(str(edt["dateTime"]).replace("Z", "+00:00"))


def _full_when(edt: dict[str, Any]) -> dict[str, Any]:
    """PATCH merges EventDateTime fields: null the variant we do not send (timed <-> all-day)."""
    return {"date": None, "dateTime": None, "timeZone": None, **edt}


def patch_body(body: GoogleEvent, *, master: bool) -> GoogleEvent:
    out = dict(body)
    for key in _OWNED + (("recurrence",) if master else ()):
        out.setdefault(key, None)
    out["start"], out["end"] = _full_when(body["start"]), _full_when(body["end"])
    return out


def _same(instance: GoogleEvent, body: GoogleEvent) -> bool:
    """Does the instance already look like ``body`` in every field we own?"""
    if instance.get("status", "confirmed") != body.get("status", "confirmed"):
        return False
    if body.get("status") == "cancelled":
        return True
    if instance.get("transparency", "opaque") != body.get("transparency", "opaque"):
        return False
    if any((instance.get(k) or None) != (body.get(k) or None) for k in _OWNED):
        return False
    return all(k in instance and _instant(instance[k]) == _instant(body[k])
               for k in ("start", "end"))


def _series_default(instance: GoogleEvent, master: GoogleEvent) -> GoogleEvent:
    """What an occurrence looks like when nobody changed it: the master's fields at its slot."""
    original = instance["originalStartTime"]
    duration = _instant(master["end"]) - _instant(master["start"])  # type: ignore[operator]
    if original.get("date"):
        start: dict[str, Any] = {"date": original["date"]}
        last_day = date.fromisoformat(original["date"]) + duration
        end: dict[str, Any] = {"date": last_day.isoformat()}
    else:
        zone = master["start"].get("timeZone") or original.get("timeZone")
        first = _instant(original)
        assert isinstance(first, datetime)
        last = first + duration
        if zone:
            first, last = first.astimezone(ZoneInfo(zone)), last.astimezone(ZoneInfo(zone))
        start = {"dateTime": first.isoformat(), **({"timeZone": zone} if zone else {})}
        end = {"dateTime": last.isoformat(), **({"timeZone": zone} if zone else {})}
    body: GoogleEvent = {"start": start, "end": end, "status": master.get("status", "confirmed"),
                         "transparency": master.get("transparency", "opaque")}
    body.update({k: master[k] for k in _OWNED if master.get(k)})
    return body


def _rule_occurrence(ical: str) -> Any:
    """A test 'is this original start an occurrence of the rule?' from our own object
    (overrides left out), to tell a deleted occurrence from one the rule no longer has."""
    source = icalendar.Calendar.from_ical(ical)
    rule_only = icalendar.Calendar()
    for component in source.subcomponents:
        if component.name != "VEVENT" or "RECURRENCE-ID" not in component:
            rule_only.add_component(component)
    query = recurring_ical_events.of(rule_only)

    def check(key: str) -> bool:
        if len(key) == 10:
            day = date.fromisoformat(key)
            return any(e["DTSTART"].dt == day for e in query.at(day))
        moment = datetime.fromisoformat(key.replace("Z", "+00:00"))
        found = query.between(moment - timedelta(seconds=1), moment + timedelta(seconds=1))
        return any(original_key(e["DTSTART"].dt.isoformat()) == key for e in found)
    return check


class EventWriter:
    def __init__(self, client: GoogleClient, calendar_id: str) -> None:
        self.client = client
        self.calendar_id = calendar_id

    @property
    def _events(self) -> Any:
        return self.client.api.events()

    def put(self, lockstep_uid: str, ical: str, remote_id: str | None,
            etag: str | None) -> RemoteEvent:
        try:
            body, overrides = ical_to_series(ical, lockstep_uid)
        except (ValueError, KeyError) as exc:
            raise ProviderError(f"cannot write this event to Google: {exc}",
                                permanent=True) from None
        fresh = False
        if remote_id:
            try:
                master = self.patch(remote_id, body, etag)
            except GoogleApiError as exc:
                if exc.status != 404:
                    raise
                log.info("google event %s vanished; creating it again", remote_id)
                master, fresh = self.create(lockstep_uid, body)
        else:
            master, fresh = self.create(lockstep_uid, body)
        exceptions: list[GoogleEvent] = []
        if master.get("recurrence") and master.get("status") != "cancelled":
            exceptions = self._apply_overrides(master, overrides, ical, fresh)
        return RemoteEvent(str(master["id"]), str(master.get("etag", "")),
                           series_to_ical(master, exceptions), lockstep_uid)

    def create(self, lockstep_uid: str, body: GoogleEvent) -> tuple[GoogleEvent, bool]:
        """(the event, whether this call created it)."""
        event_id = event_id_for(lockstep_uid)
        request = self._events.insert(calendarId=self.calendar_id, body={**body, "id": event_id})
        try:
            return dict(self.client.execute(request, "events.insert")), True
        except GoogleApiError as exc:
            if exc.status != 409:
                raise
        # An earlier attempt created it and its answer was lost (or it was deleted since,
        # which Google still counts as taken): update that event in place.
        return self.patch(event_id, body, None), False

    def patch(self, event_id: str, body: GoogleEvent, etag: str | None, *,
              master: bool = True) -> GoogleEvent:
        request = self._events.patch(calendarId=self.calendar_id, eventId=event_id,
                                     body=patch_body(body, master=master))
        if etag:
            request.headers["If-Match"] = etag
        return dict(self.client.execute(request, "events.patch"))

    def delete(self, event_id: str, etag: str | None) -> None:
        request = self._events.delete(calendarId=self.calendar_id, eventId=event_id)
        if etag:
            request.headers["If-Match"] = etag
        try:
            self.client.execute(request, "events.delete")
        except GoogleApiError as exc:
            if exc.status not in (404, 410):  # already gone is what we wanted
                raise

    # --- overrides -------------------------------------------------------------------
    def _list(self, what: str, method: Any, **params: Any) -> list[GoogleEvent]:
        items: list[GoogleEvent] = []
        token = None
        while True:
            response = self.client.execute(method(calendarId=self.calendar_id, pageToken=token,
                                                  **params), what)
            items.extend(response.get("items", []))
            token = response.get("nextPageToken")
            if not token:
                return items

    def _existing_exceptions(self, master: GoogleEvent) -> dict[str, GoogleEvent]:
        if not master.get("iCalUID"):
            return {}
        found = self._list("events.list (series)", self._events.list,
                           iCalUID=master["iCalUID"], showDeleted=True, maxResults=2500)
        return {original_key(e["originalStartTime"]): e for e in found
                if e.get("recurringEventId") == master["id"] and e.get("originalStartTime")}

    def _find_instance(self, master: GoogleEvent, key: str) -> GoogleEvent | None:
        """events.instances around the original start, matched on originalStartTime."""
        if len(key) == 10:
            low = datetime.fromisoformat(key).replace(tzinfo=timezone.utc) - timedelta(days=1)
            high = low + timedelta(days=3)
        else:
            moment = datetime.fromisoformat(key.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            low, high = moment - timedelta(days=1), moment + timedelta(days=1)
        found = self._list("events.instances", self._events.instances, eventId=master["id"],
                           showDeleted=True, maxResults=2500,
                           timeMin=low.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           timeMax=high.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return next((i for i in found if original_key(i["originalStartTime"]) == key), None)

    def _apply_overrides(self, master: GoogleEvent, overrides: list[tuple[str, GoogleEvent]],
                         ical: str, fresh: bool) -> list[GoogleEvent]:
        wanted = {original_key(start): body for start, body in overrides}
        existing = {} if fresh else self._existing_exceptions(master)  # a new series has none
        written: list[GoogleEvent] = []
        for key, body in wanted.items():
            instance = existing.pop(key, None) or self._find_instance(master, key)
            if instance is None:
                log.warning("google series %s has no occurrence at %s; override skipped",
                            master["id"], key)
                continue
            if body.get("status") == "cancelled":
                if instance.get("status") != "cancelled":
                    self.delete(instance["id"], None)
                written.append({"id": instance["id"], "recurringEventId": master["id"],
                                "status": "cancelled",
                                "originalStartTime": instance["originalStartTime"]})
            elif _same(instance, body):
                written.append(instance)
            else:
                written.append(self.patch(instance["id"], body, None, master=False))
        is_occurrence = None
        for key, instance in existing.items():  # exceptions we do not have: undo them
            default = _series_default(instance, master)
            if _same(instance, default):
                continue
            if instance.get("status") == "cancelled":
                is_occurrence = is_occurrence or _rule_occurrence(ical)
                if not is_occurrence(key):
                    continue  # dropped by the rule itself, not by a person
            self.patch(instance["id"], default, None, master=False)
        return written
