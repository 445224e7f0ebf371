"""Writing one calendar object to Outlook: the master (or single event) plus its overrides.

Idempotency: a create carries a ``transactionId`` derived from our uid, so a
retried POST returns the event it already made. Graph refuses a transactionId
already used for a different body (``ErrorDuplicateTransactionId``); then the
event is found by our uid (a single-value extended property) and updated, or,
when it was deleted since, created under the next derived transactionId.
Updates are PATCHes with If-Match (412 -> PreconditionFailed).

Overrides: an exception is a PATCH of that occurrence, a cancelled one a DELETE;
an exception Outlook has that our object does not is put back to what the series
says. A deleted occurrence cannot be restored one by one in Graph; Exchange
rebuilds a series whose pattern changes, so the pattern is changed and set back,
and our overrides are applied again.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

from server.providers.base import ProviderError, RemoteEvent
from server.providers.microsoft_client import GraphApiError, GraphClient
from server.providers.microsoft_mapping import (
    UID_PROPERTY, GraphEvent, Series, ical_to_series, occurrence_key, series_to_ical, series_zone,
)
from server.horizon import window
from server.providers.microsoft_sync import EXPAND, TRANSACTION_PREFIX, ChangeReader, cancelled_starts
from server.providers.microsoft_zones import read_when, write_when, zone_named

log = logging.getLogger(__name__)
_OWNED = ("subject", "body", "location", "showAs")


def transaction_id_for(lockstep_uid: str, generation: int = 0) -> str:
    """Deterministic and short: Graph keeps transaction ids, not arbitrary uids."""
    seed = lockstep_uid if generation == 0 else f"{lockstep_uid}#{generation}"
    return TRANSACTION_PREFIX + hashlib.sha256(seed.encode("utf-8")).hexdigest()[:40]


def _path(event_id: str) -> str:
    return f"me/events/{quote(event_id, safe='')}"


class EventWriter:
    def __init__(self, client: GraphClient, calendar_id: str) -> None:
        self.client = client
        self.calendar_id = calendar_id
        self.reader = ChangeReader(client, calendar_id)

    def put(self, lockstep_uid: str, ical: str, remote_id: str | None,
            etag: str | None) -> RemoteEvent:
        try:
            series = ical_to_series(ical)
            if series.master.get("isAllDay") and zone_named(self.client.mailbox_zone()) is not None:
                series = ical_to_series(ical, all_day_zone=self.client.mailbox_zone())
        except (ValueError, KeyError) as exc:
            raise ProviderError(f"cannot write this event to Outlook: {exc}",
                                permanent=True) from None
        body = dict(series.master)
        body["singleValueExtendedProperties"] = [{"id": UID_PROPERTY, "value": lockstep_uid}]
        if not series.recurring:
            body["recurrence"] = None
        answer: GraphEvent | None = None
        if remote_id:
            try:
                answer = self.patch(remote_id, body, etag)
            except GraphApiError as exc:
                if exc.status not in (404, 410):
                    raise
                log.info("outlook event %s vanished; creating it again", remote_id)
        if answer is None:
            answer = self.create(lockstep_uid, body)
        master_id = str(answer["id"])
        if series.recurring:
            self._apply_overrides(answer, series)
            return self.reader.read_series(master_id, None)
        return RemoteEvent(master_id, str(answer.get("@odata.etag") or ""),
                           series_to_ical(answer, uid=lockstep_uid), lockstep_uid)

    def create(self, lockstep_uid: str, body: GraphEvent) -> GraphEvent:
        path = f"me/calendars/{quote(self.calendar_id, safe='')}/events"
        if body.get("recurrence") is None:
            body = {k: v for k, v in body.items() if k != "recurrence"}
        for generation in range(5):
            try:
                transaction = transaction_id_for(lockstep_uid, generation)
                answer = self.client.json("POST", path, "events.create",
                                          body={**body, "transactionId": transaction})
            except GraphApiError as exc:
                if exc.code != "ErrorDuplicateTransactionId":
                    raise
                existing = self.find(lockstep_uid)
                if existing is not None:  # made earlier (lost answer), changed since: update it
                    return self.patch(str(existing["id"]), body, None)
                continue  # that transaction's event was deleted: the next derived id
            return answer
        raise ProviderError("Outlook refused every derived transactionId for this event",
                            permanent=False)

    def find(self, lockstep_uid: str) -> GraphEvent | None:
        """Our event on this calendar, by the uid in its extended property."""
        value = lockstep_uid.replace("'", "''")
        flt = (f"singleValueExtendedProperties/any(ep: ep/id eq '{UID_PROPERTY}' "
               f"and ep/value eq '{value}')")
        path = f"me/calendars/{quote(self.calendar_id, safe='')}/events"
        params = {"$filter": flt, "$expand": EXPAND}
        for page in self.client.pages(path, "events.list (by uid)", params=params):
            for item in page.get("value", []):
                return dict(item)
        return None

    def patch(self, event_id: str, body: GraphEvent, etag: str | None) -> GraphEvent:
        headers = {"If-Match": etag} if etag else None
        return self.client.json("PATCH", _path(event_id), "events.update", body=body,
                                headers=headers)

    def delete(self, event_id: str, etag: str | None) -> None:
        headers = {"If-Match": etag} if etag else None
        try:
            self.client.call("DELETE", _path(event_id), "events.delete", headers=headers)
        except GraphApiError as exc:
            if exc.status not in (404, 410):  # already gone is what we wanted
                raise

    # --- overrides ------------------------------------------------------------------------
    def _instances(self, master: GraphEvent) -> dict[date | datetime, GraphEvent]:
        zone = series_zone(master)
        all_day = bool(master.get("isAllDay"))
        out: dict[date | datetime, GraphEvent] = {}
        for instance in self.reader.instances(str(master["id"])):
            if instance.get("originalStart"):
                original = read_when({"dateTime": instance["originalStart"]})
                key = original.astimezone(zone).date() if all_day else original
                out[occurrence_key(key, zone)] = instance
        return out

    def _apply_overrides(self, master: GraphEvent, series: Series) -> None:
        zone = series_zone(master)
        all_day = bool(master.get("isAllDay"))
        existing = self._instances(master)
        gone = cancelled_starts(master, list(existing.values()), *window())
        gone_keys = {occurrence_key(g.astimezone(zone).date() if all_day else g, zone)
                     for g in gone}
        to_restore = [k for k in gone_keys if series.overrides.get(k, {}) is not None]
        if to_restore:
            log.info("outlook series %s: %d deleted occurrence(s) restored", master["id"],
                     len(to_restore))
            self._rebuild(master)
            existing = self._instances(master)
        for key, override in series.overrides.items():
            instance = existing.get(key)
            if instance is None:
                continue  # already deleted, or outside the synced window
            if override is None:
                self.delete(str(instance["id"]), None)
            elif _differs(instance, override):
                self.patch(str(instance["id"]), override, None)
        for key, instance in existing.items():  # exceptions made in Outlook that we do not have
            if instance.get("type") == "exception" and key not in series.overrides:
                default = _series_default(instance, master, series.master)
                self.patch(str(instance["id"]), default, None)

    def _rebuild(self, master: GraphEvent) -> None:
        """Change the pattern and set it back: Exchange regenerates the series' occurrences."""
        recurrence = master["recurrence"]
        span = dict(recurrence["range"])
        other = 2 if span.get("type") == "numbered" and span.get("numberOfOccurrences") == 1 else 1
        span.update(type="numbered", numberOfOccurrences=other)
        other = {"pattern": recurrence["pattern"], "range": span}
        self.patch(str(master["id"]), {"recurrence": other}, None)
        self.patch(str(master["id"]), {"recurrence": recurrence}, None)


def _differs(instance: GraphEvent, wanted: GraphEvent) -> bool:
    if (instance.get("subject") or "") != (wanted.get("subject") or ""):
        return True
    if "showAs" in wanted and instance.get("showAs") != wanted["showAs"]:
        return True
    def place(event: GraphEvent) -> str:
        return str((event.get("location") or {}).get("displayName") or "")

    if place(instance) != place(wanted):
        return True
    return any(read_when(instance[k]) != read_when(wanted[k]) for k in ("start", "end"))


def _series_default(instance: GraphEvent, master: GraphEvent, body: GraphEvent) -> GraphEvent:
    """What an occurrence looks like when nobody changed it: the series' fields at its slot."""
    zone = series_zone(master)
    start = read_when({"dateTime": instance["originalStart"]}).astimezone(zone)
    out: dict[str, Any] = {k: body[k] for k in _OWNED if k in body}
    if master.get("isAllDay"):
        days = date.fromisoformat(body["end"]["dateTime"][:10]) - \
            date.fromisoformat(body["start"]["dateTime"][:10])
        zone_name = body["start"].get("timeZone", "UTC")
        out["start"] = write_when(start.date(), zone_name)
        out["end"] = write_when(start.date() + days, zone_name)
        return out
    first = read_when(master["start"]).astimezone(zone)
    last = read_when(master["end"]).astimezone(zone)
    wall = last.replace(tzinfo=None) - first.replace(tzinfo=None)
    end = (start.replace(tzinfo=None) + wall).replace(tzinfo=zone)
    out["start"], out["end"] = write_when(start), write_when(end)
    return out
