"""events.list (without singleEvents) -> ChangePages of whole calendar objects.

Google lists a recurring series as its master plus exception instances, and an
incremental page holds only what changed: a moved instance without its master,
a cancelled instance as ``{id, recurringEventId, originalStartTime}``. The engine
wants one iCalendar object per series, so:

* full listing: single events are emitted page by page; series parts are
  gathered across pages and emitted, complete, on the last page (the one that
  carries the cursor) - no extra calls;
* incremental listing: any changed part of a series means re-reading the whole
  series (``events.get`` of the master when only ids are known, then
  ``events.list(iCalUID=..., showDeleted=True)`` for master + exceptions);
  a cancelled non-instance is a deletion ``RemoteEvent(id, ical=None)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from server.providers.base import ChangePage, CursorExpired, ProviderError, RemoteEvent
from server.providers.google_client import GoogleApiError, GoogleClient
from server.providers.google_mapping import GoogleEvent, lockstep_uid_of, series_to_ical


@dataclass
class _Parts:
    master: GoogleEvent | None = None
    exceptions: list[GoogleEvent] = field(default_factory=list)


def single(event: GoogleEvent) -> RemoteEvent:
    """A live event that is not part of a series."""
    return RemoteEvent(str(event["id"]), str(event.get("etag", "")), series_to_ical(event, []),
                       lockstep_uid_of(event))


def series_event(series_id: str, master: GoogleEvent | None,
                 exceptions: list[GoogleEvent]) -> RemoteEvent:
    """The whole series as one object; a deletion when nothing of it is alive."""
    if master is not None:
        if master.get("status") == "cancelled":
            return RemoteEvent(series_id)
        if not master.get("recurrence"):
            exceptions = []  # the series became a single event: old exceptions mean nothing
        return RemoteEvent(series_id, str(master.get("etag", "")),
                           series_to_ical(master, exceptions), lockstep_uid_of(master))
    # Instances whose master is not on this calendar (e.g. invited to one occurrence).
    live = [e for e in exceptions if e.get("status") != "cancelled" and "start" in e]
    if not live:
        return RemoteEvent(series_id)
    return RemoteEvent(series_id, str(live[0].get("etag", "")), series_to_ical(None, live),
                       lockstep_uid_of(live[0]))


class ChangeReader:
    """Turns one calendar's events.list into ChangePages."""

    def __init__(self, client: GoogleClient, calendar_id: str) -> None:
        self.client = client
        self.calendar_id = calendar_id

    def pages(self, cursor: str | None) -> Iterator[ChangePage]:
        if cursor is None:
            yield from self._full()
            return
        try:
            yield from self._incremental(cursor)
        except GoogleApiError as exc:
            if exc.status == 410:  # any 410 on a syncToken listing: the token is gone
                raise CursorExpired(str(exc)) from None
            raise

    # --- listing ------------------------------------------------------------------
    def _list(self, what: str, **params: Any) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            request = self.client.api.events().list(
                calendarId=self.calendar_id, pageToken=token,
                maxResults=self.client.config.page_size, **params)
            response: dict[str, Any] = self.client.execute(request, what)
            yield response
            token = response.get("nextPageToken")
            if not token:
                return

    @staticmethod
    def _cursor(response: dict[str, Any]) -> str:
        cursor = response.get("nextSyncToken")
        if not cursor:
            raise ProviderError("Google ended an events listing without nextSyncToken",
                                permanent=False)
        return str(cursor)

    def _full(self) -> Iterator[ChangePage]:
        pending: dict[str, _Parts] = {}
        singles: set[str] = set()
        for response in self._list("events.list (full)"):
            events: list[RemoteEvent] = []
            for item in response.get("items", []):
                series_id = item.get("recurringEventId")
                if series_id:
                    pending.setdefault(series_id, _Parts()).exceptions.append(item)
                elif item.get("status") == "cancelled":
                    continue  # not listed means gone; tombstones add nothing
                elif item.get("recurrence"):
                    pending.setdefault(item["id"], _Parts()).master = item
                else:
                    singles.add(item["id"])
                    events.append(single(item))
            if response.get("nextPageToken"):
                yield ChangePage(events, full=True)
                continue
            cursor = self._cursor(response)
            for series_id, parts in pending.items():
                if series_id in singles:
                    continue  # stale exceptions of an event that is no longer recurring
                if parts.master is None:  # its master was not listed: look it up
                    found = self.read_series(series_id, parts.exceptions)
                else:
                    found = series_event(series_id, parts.master, parts.exceptions)
                if not found.deleted:
                    events.append(found)
            yield ChangePage(events, cursor=cursor, full=True)

    def _incremental(self, cursor: str) -> Iterator[ChangePage]:
        done: set[str] = set()  # series re-read on an earlier page of this run
        for response in self._list("events.list (incremental)", syncToken=cursor):
            groups: dict[str, list[GoogleEvent]] = {}
            for item in response.get("items", []):
                groups.setdefault(item.get("recurringEventId") or item["id"], []).append(item)
            events: list[RemoteEvent] = []
            for key, items in groups.items():
                if key in done:
                    continue
                done.add(key)
                master = next((i for i in items if i["id"] == key), None)
                if master is not None and master.get("status") == "cancelled":
                    events.append(RemoteEvent(key))  # a deleted event or a whole deleted series
                elif master is not None and not master.get("recurrence") and len(items) == 1:
                    events.append(single(master))
                else:
                    events.append(self.read_series(key, items))
            last = not response.get("nextPageToken")
            yield ChangePage(events, cursor=self._cursor(response) if last else None)

    # --- series --------------------------------------------------------------------
    def get(self, event_id: str) -> GoogleEvent | None:
        """events.get; None when Google does not know it (404) or it is gone (410)."""
        request = self.client.api.events().get(calendarId=self.calendar_id, eventId=event_id)
        try:
            return dict(self.client.execute(request, "events.get"))
        except GoogleApiError as exc:
            if exc.status in (404, 410):
                return None
            raise

    def read_series(self, series_id: str, seen: list[GoogleEvent]) -> RemoteEvent:
        """Master and every exception of one series, as they are now."""
        uid = next((str(i["iCalUID"]) for i in seen if i.get("iCalUID")), None)
        master: GoogleEvent | None = None
        if uid is None:
            master = self.get(series_id)
            if master is None or master.get("status") == "cancelled" or not master.get("iCalUID"):
                return series_event(series_id, master,
                                    [i for i in seen if i.get("recurringEventId") == series_id])
            uid = str(master["iCalUID"])
        exceptions: list[GoogleEvent] = []
        for response in self._list("events.list (series)", iCalUID=uid, showDeleted=True):
            for item in response.get("items", []):
                if item.get("id") == series_id:
                    master = item
                elif item.get("recurringEventId") == series_id:
                    exceptions.append(item)
        if master is None and not exceptions:
            exceptions = [i for i in seen if i.get("recurringEventId") == series_id]
        return series_event(series_id, master, exceptions)
