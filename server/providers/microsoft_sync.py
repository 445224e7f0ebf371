"""calendarView delta of one calendar -> ChangePages of whole calendar objects.

Graph's calendarView delta lists instances - single events, occurrences and
exceptions of series - but never series masters, and a removed item carries
only its id. The engine wants one iCalendar object per series, so:

* every occurrence/exception points to its series (``seriesMasterId``); the series
  is read whole (its master, then its instances over the window: deleted
  occurrences are the pattern's starts missing among them -> EXDATE);
* a removed id is an occurrence of a series we listed (re-read the series) or a
  single event (a deletion). Which one it is cannot be asked of Graph afterwards,
  so the cursor remembers, per series, short digests of its instance ids.

The cursor is JSON: the deltaLink, when the window was opened, and that map. The
window (the busy index's horizon, server/horizon.py) is fixed inside a
deltaLink, so a cursor older than a week is declared expired and the engine lists
everything again, which also moves the window forward.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import icalendar
import recurring_ical_events

from server.horizon import window
from server.providers.base import ChangePage, CursorExpired, ProviderError, RemoteEvent
from server.providers.microsoft_client import GraphApiError, GraphClient
from server.providers.microsoft_mapping import (
    UID_PROPERTY, GraphEvent, lockstep_uid_of, series_to_ical, series_zone,
)
from server.providers.microsoft_zones import read_when, utc_text

log = logging.getLogger(__name__)
UTC = timezone.utc
CURSOR_MAX_AGE = timedelta(days=7)
TRANSACTION_PREFIX = "lockstep-"
EXPAND = f"singleValueExtendedProperties($filter=id eq '{UID_PROPERTY}')"
_EXPIRED_CODES = frozenset({"syncStateNotFound", "resyncRequired", "SyncStateNotFound",
                            "SyncStateInvalid", "ErrorSyncStateNotFound", "ResyncRequired"})


def digest(instance_id: str) -> str:
    return hashlib.sha256(instance_id.encode()).hexdigest()[:10]


def is_ours(event: GraphEvent) -> bool:
    return str(event.get("transactionId") or "").startswith(TRANSACTION_PREFIX)


class ChangeReader:
    """Turns one calendar's calendarView delta into ChangePages."""

    def __init__(self, client: GraphClient, calendar_id: str) -> None:
        self.client = client
        self.calendar_id = calendar_id
        self.series: dict[str, set[str]] = {}
        self.opened = datetime.now(UTC)

    # --- the cursor -----------------------------------------------------------------------
    def _cursor(self, delta_link: str) -> str:
        return json.dumps({"delta": delta_link, "opened": self.opened.isoformat(),
                           "series": {k: " ".join(sorted(v)) for k, v in self.series.items()}})

    def _load(self, cursor: str) -> str:
        try:
            state = json.loads(cursor)
            delta_link = str(state["delta"])
            self.opened = datetime.fromisoformat(state["opened"])
            self.series = {k: set(v.split()) for k, v in (state.get("series") or {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CursorExpired("Microsoft sync cursor unreadable; listing everything") from None
        if datetime.now(UTC) - self.opened > CURSOR_MAX_AGE:
            raise CursorExpired("Microsoft sync window is a week old; listing everything again "
                                "to move it")
        return delta_link

    # --- listing ------------------------------------------------------------------------------
    def pages(self, cursor: str | None) -> Iterator[ChangePage]:
        if cursor is None:
            yield from self._full()
            return
        yield from self._incremental(self._load(cursor))

    def _delta(self, first: str, params: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        headers = {"Prefer": f"odata.maxpagesize={self.client.settings.page_size}, "
                             'outlook.timezone="UTC", outlook.body-content-type="text"'}
        url: str | None = first
        while url:
            try:
                page = self.client.json("GET", url, "calendarView delta", params=params,
                                        headers=headers)
            except GraphApiError as exc:
                if exc.status == 410 or exc.code in _EXPIRED_CODES:
                    raise CursorExpired(str(exc)) from None
                raise
            params = None
            yield page
            url = page.get("@odata.nextLink")
            if not url and not page.get("@odata.deltaLink"):
                raise ProviderError("Microsoft ended a delta round without a deltaLink",
                                    permanent=False)

    def _full(self) -> Iterator[ChangePage]:
        self.series, self.opened = {}, datetime.now(UTC)
        low, high = window(self.opened)
        path = f"me/calendars/{quote(self.calendar_id, safe='')}/calendarView/delta"
        pending: dict[str, list[GraphEvent]] = {}
        span = {"startDateTime": utc_text(low), "endDateTime": utc_text(high)}
        for page in self._delta(path, span):
            events: list[RemoteEvent] = []
            for item in page.get("value", []):
                if "@removed" in item:
                    continue
                master_id = item.get("seriesMasterId")
                if master_id:
                    pending.setdefault(str(master_id), []).append(item)
                else:
                    events.append(self.single(item))
            delta_link = page.get("@odata.deltaLink")
            if not delta_link:
                yield ChangePage(events, full=True)
                continue
            for master_id, instances in pending.items():
                found = self.read_series(master_id, instances)
                if not found.deleted:
                    events.append(found)
            yield ChangePage(events, cursor=self._cursor(str(delta_link)), full=True)

    def _incremental(self, delta_link: str) -> Iterator[ChangePage]:
        changed: dict[str, GraphEvent] = {}
        removed: dict[str, None] = {}  # an ordered set
        dirty: set[str] = set()
        new_link = ""
        for page in self._delta(delta_link, None):
            for item in page.get("value", []):
                item_id = str(item["id"])
                if "@removed" in item:
                    owner = self._series_of(item_id)
                    if owner is not None:
                        dirty.add(owner)
                    else:
                        removed[item_id] = None
                    changed.pop(item_id, None)
                elif item.get("seriesMasterId"):
                    dirty.add(str(item["seriesMasterId"]))
                else:
                    changed[item_id] = item
            new_link = str(page.get("@odata.deltaLink") or "")
        events: list[RemoteEvent] = []
        for item_id in removed:
            if item_id in dirty:
                continue  # a single event became a series: the series read below replaces it
            self.series.pop(item_id, None)
            events.append(RemoteEvent(item_id))
        for item_id, item in changed.items():
            if item_id in dirty:
                continue  # a series became a single event: the series read below says so
            self.series.pop(item_id, None)
            events.append(self.single(item))
        for master_id in sorted(dirty):
            events.append(self.read_series(master_id, None))
        yield ChangePage(events, cursor=self._cursor(new_link))

    def _series_of(self, instance_id: str) -> str | None:
        key = digest(instance_id)
        return next((master for master, keys in self.series.items() if key in keys), None)

    # --- objects ----------------------------------------------------------------------------
    def single(self, item: GraphEvent) -> RemoteEvent:
        """A single event; ours (by transactionId) are re-read for our uid, which delta lacks.
        One of ours that is gone by then (the booking's cancellation deleted it after delta listed
        it) is a deletion: read without our uid it would look like a personal event to copy."""
        if is_ours(item):
            current = self.get(str(item["id"]))
            if current is None:
                return RemoteEvent(str(item["id"]))
            item = current
        uid = lockstep_uid_of(item)
        etag = str(item.get("@odata.etag") or item.get("changeKey") or "")
        text = series_to_ical(item, owner=self.client.username or None, uid=uid)
        return RemoteEvent(str(item["id"]), etag, text, uid)

    def get(self, event_id: str) -> GraphEvent | None:
        """One event with our extended property; None when Graph no longer has it."""
        try:
            return self.client.json("GET", f"me/events/{quote(event_id, safe='')}", "events.get",
                                    params={"$expand": EXPAND})
        except GraphApiError as exc:
            if exc.status in (404, 410):
                return None
            raise

    def instances(self, master_id: str) -> list[GraphEvent]:
        low, high = window(self.opened)
        found: list[GraphEvent] = []
        params = {"startDateTime": utc_text(low), "endDateTime": utc_text(high), "$top": 500}
        path = f"me/events/{quote(master_id, safe='')}/instances"
        for page in self.client.pages(path, "events.instances", params=params):
            found.extend(page.get("value", []))
        return found

    def read_series(self, master_id: str, instances: list[GraphEvent] | None) -> RemoteEvent:
        """The whole series as one object (a deletion when its master is gone)."""
        master = self.get(master_id)
        if master is None:
            self.series.pop(master_id, None)
            return RemoteEvent(master_id)
        if master.get("type") != "seriesMaster" or not master.get("recurrence"):
            self.series.pop(master_id, None)
            return self.single(master)
        if instances is None or any(not i.get("originalStart") for i in instances):
            instances = self.instances(master_id)  # delta's copies lack original starts
        self.series[master_id] = {digest(str(i["id"])) for i in instances}
        exceptions = [i for i in instances if i.get("type") == "exception"]
        gone = cancelled_starts(master, instances, *window(self.opened))
        uid = lockstep_uid_of(master)
        text = series_to_ical(master, exceptions, gone, owner=self.client.username or None,
                              uid=uid)
        etag = str(master.get("@odata.etag") or master.get("changeKey") or "")
        return RemoteEvent(master_id, etag, text, uid)


def cancelled_starts(master: GraphEvent, instances: list[GraphEvent], low: datetime,
                     high: datetime) -> list[datetime]:
    """Original starts the pattern has inside the window that Graph lists no instance for:
    the occurrences someone deleted. A day of margin at each edge avoids false positives."""
    present = {read_when({"dateTime": i["originalStart"]})
               for i in instances if i.get("originalStart")}
    all_day = bool(master.get("isAllDay"))
    zone = series_zone(master)
    present_days = {p.astimezone(zone).date() for p in present}
    pattern_only = icalendar.Calendar.from_ical(series_to_ical(master))
    expected = recurring_ical_events.of(pattern_only).between(low + timedelta(days=1),
                                                              high - timedelta(days=1))
    out: list[datetime] = []
    for occurrence in expected:
        start = occurrence["DTSTART"].dt
        if all_day or not isinstance(start, datetime):
            day = start if not isinstance(start, datetime) else start.date()
            if day not in present_days:
                out.append(datetime.combine(day, datetime.min.time(), tzinfo=zone))
        elif start.astimezone(UTC) not in present:
            out.append(start.astimezone(UTC))
    return out
