"""Reading one remote calendar collection as ChangePages.

Two ways, chosen per server and remembered in the cursor's prefix:

* ``sync:<token>`` - RFC 6578 sync-collection. The first listing asks with an empty
  token; later ones get the members changed or removed since. The server's refusal of
  a token (DAV:valid-sync-token, 403 on Radicale) is CursorExpired.
* ``ctag:<blob>`` - for servers without sync-collection: the collection's CS:getctag
  plus every member's ETag, compressed. An unchanged ctag means nothing to read; else
  one Depth 1 PROPFIND of ETags is compared with the stored map.

Either way the changed members' data then comes by calendar-multiget, ``page_size``
at a time, one ChangePage per batch, the cursor on the last one. A member that is
not a VEVENT object (a task, a journal) is skipped; a member that vanished between
the listing and the multiget is a deletion (it is gone, and a later listing says so).
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import icalendar
from caldav.elements import cdav, dav
from caldav.elements.base import BaseElement

from server.providers.base import ChangePage, CursorExpired, RemoteEvent
from server.providers.caldav_remote_client import (
    VALID_SYNC_TOKEN, CalDAVSettings, DavSession, canonical_path, preconditions, xml,
)

log = logging.getLogger(__name__)

SYNC, CTAG = "sync:", "ctag:"
LOCKSTEP_UID_PROPERTY = "X-LOCKSTEP-UID"
_GETCTAG = "{http://calendarserver.org/ns/}getctag"
_NO_SYNC_COLLECTION = frozenset({400, 403, 405, 409, 412, 415, 501})  # refusals of the REPORT or token


class GetCTag(BaseElement):
    """CS:getctag (calendarserver.org), which caldav.elements does not define."""

    tag = _GETCTAG


class SyncCollectionUnsupported(Exception):
    """The server does not do RFC 6578 on this collection: use the ctag + etag listing."""


@dataclass
class Listing:
    """What changed: member path -> etag (changed or new), paths removed, the next cursor."""

    changed: dict[str, str]
    removed: list[str]
    cursor: str


def lockstep_uid_of(text: str) -> str | None:
    """Our id, from the X-LOCKSTEP-UID we put on every VEVENT we write."""
    for component in icalendar.Calendar.from_ical(text).walk("VEVENT"):
        value = component.get(LOCKSTEP_UID_PROPERTY)
        if value:
            return str(value)
    return None


def has_vevent(text: str) -> bool:
    return any(True for _ in icalendar.Calendar.from_ical(text).walk("VEVENT"))


def encode_ctag_cursor(ctag: str, etags: dict[str, str]) -> str:
    packed = zlib.compress(json.dumps({"c": ctag, "e": etags}, separators=(",", ":")).encode(), 9)
    return CTAG + base64.urlsafe_b64encode(packed).decode("ascii")


def decode_ctag_cursor(cursor: str) -> tuple[str, dict[str, str]]:
    try:
        data = json.loads(zlib.decompress(base64.urlsafe_b64decode(cursor[len(CTAG):])))
        return str(data["c"]), {str(k): str(v) for k, v in data["e"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, zlib.error):
        raise CursorExpired("CalDAV ctag cursor is unreadable") from None


class ChangeReader:
    """list_changes of one calendar collection."""

    def __init__(self, session: DavSession, calendar_url: str, settings: CalDAVSettings) -> None:
        self.session = session
        self.calendar_url = calendar_url
        self.settings = settings

    def pages(self, cursor: str | None) -> Iterator[ChangePage]:
        full = cursor is None
        listing = self._listing(cursor)
        yield from self._fetch(listing, full)

    # --- what changed -------------------------------------------------------------------
    def _listing(self, cursor: str | None) -> Listing:
        if cursor is None:
            if self.settings.use_sync_collection:
                try:
                    return self._sync_collection("")
                except SyncCollectionUnsupported:
                    log.info("CalDAV %s: no sync-collection; listing ctag + etags", self.calendar_url)
            return self._ctag_listing(None)
        if cursor.startswith(SYNC) and self.settings.use_sync_collection:
            try:
                return self._sync_collection(cursor[len(SYNC):])
            except SyncCollectionUnsupported:
                raise CursorExpired("CalDAV server no longer answers sync-collection") from None
        if cursor.startswith(CTAG):
            return self._ctag_listing(cursor)
        raise CursorExpired("CalDAV cursor of another listing method")

    def _sync_collection(self, token: str) -> Listing:
        changed: dict[str, str] = {}
        removed: set[str] = set()
        for _ in range(100):  # a truncated answer (RFC 6578 3.6) is continued from its token
            body = dav.SyncCollection() + [dav.SyncToken(value=token), dav.SyncLevel(value="1"),
                                           dav.Prop() + [dav.GetEtag()]]
            response = self.session.send("sync-collection", "REPORT", self.calendar_url, xml(body),
                                         {"Depth": "0"}, ok=_NO_SYNC_COLLECTION)
            if response.status >= 300:
                if VALID_SYNC_TOKEN in preconditions(response):
                    raise CursorExpired(f"CalDAV sync-collection: HTTP {response.status} "
                                        "(valid-sync-token)")
                raise SyncCollectionUnsupported()  # (with a token: the caller lists again)
            result = response.parse_sync_collection()
            if not result.sync_token:
                raise SyncCollectionUnsupported()
            for href in result.deleted:
                path = canonical_path(href)
                changed.pop(path, None)
                removed.add(path)
            for item in result.changed:
                path = canonical_path(item.href)
                if path.endswith("/"):
                    continue  # the collection itself or a child collection
                removed.discard(path)
                changed[path] = item.etag or ""
            again = result.truncated and result.sync_token != token
            token = result.sync_token
            if not again:
                break
        return Listing(changed, sorted(removed), SYNC + token)

    def _ctag_listing(self, cursor: str | None) -> Listing:
        old_ctag, old = decode_ctag_cursor(cursor) if cursor else ("", {})
        if old_ctag:
            ctag = self._ctag()
            if ctag == old_ctag:
                return Listing({}, [], cursor or "")
        ctag, etags = self._members()
        changed = {p: e for p, e in etags.items() if old.get(p) != e}
        removed = sorted(set(old) - set(etags))
        return Listing(changed, removed, encode_ctag_cursor(ctag, etags))

    def _ctag(self) -> str:
        body = dav.Propfind() + (dav.Prop() + [GetCTag()])
        response = self.session.send("PROPFIND getctag", "PROPFIND", self.calendar_url, xml(body),
                                     {"Depth": "0"})
        for result in response.parse_propfind():
            if canonical_path(result.href) == canonical_path(self.calendar_url):
                return str(result.properties.get(_GETCTAG) or "")
        return ""

    def _members(self) -> tuple[str, dict[str, str]]:
        body = dav.Propfind() + (dav.Prop() + [dav.ResourceType(), dav.GetEtag(), GetCTag()])
        response = self.session.send("PROPFIND members", "PROPFIND", self.calendar_url, xml(body),
                                     {"Depth": "1"})
        own, ctag, etags = canonical_path(self.calendar_url), "", {}
        for result in response.parse_propfind():
            path = canonical_path(result.href)
            if path == own:
                ctag = str(result.properties.get(_GETCTAG) or "")
            elif not path.endswith("/") and result.status < 300:
                etags[path] = str(result.properties.get(dav.GetEtag.tag) or "")
        return ctag, etags

    # --- the data ----------------------------------------------------------------------
    def _fetch(self, listing: Listing, full: bool) -> Iterator[ChangePage]:
        paths = sorted(listing.changed)
        size = max(1, self.settings.page_size)
        batches = [paths[i:i + size] for i in range(0, len(paths), size)] or [[]]
        deletions = [] if full else [RemoteEvent(p) for p in listing.removed]
        for number, batch in enumerate(batches, start=1):
            events = self._multiget(batch, full) if batch else []
            if number == 1:
                events = deletions + events
            last = number == len(batches)
            yield ChangePage(events, cursor=listing.cursor if last else None, full=full)

    def _multiget(self, paths: list[str], full: bool) -> list[RemoteEvent]:
        body = cdav.CalendarMultiGet() + [dav.Prop() + [dav.GetEtag(), cdav.CalendarData()]] + [
            dav.Href(value=p) for p in paths]
        response = self.session.send("calendar-multiget", "REPORT", self.calendar_url, xml(body))
        found: dict[str, RemoteEvent] = {}
        for result in response.parse_calendar_query():
            path = canonical_path(result.href)
            if path not in paths or result.status >= 300 or not result.calendar_data:
                continue
            event = _event(path, result.etag or "", result.calendar_data)
            if event is not None:
                found[path] = event
        if not full:  # gone since the listing, or no longer an event: gone for the engine
            found.update({p: RemoteEvent(p) for p in paths if p not in found})
        return [found[p] for p in paths if p in found]


def _event(path: str, etag: str, text: str) -> RemoteEvent | None:
    """One listed member as a RemoteEvent; None for what the engine does not take."""
    try:
        if not has_vevent(text):
            return None
        return RemoteEvent(path, etag, text, lockstep_uid_of(text))
    except ValueError as exc:  # icalendar's parse errors
        log.warning("CalDAV object %s skipped: not iCalendar (%s)", path, exc)
        return None

