"""Writing to a remote calendar collection: PUT with preconditions, DELETE.

Our id: the object keeps its iCalendar UID (our booking's uid, or the remote
event's own UID when a tech edits a mirrored event), because CalDAV servers key
objects by UID and refuse a second object with the same one. Every VEVENT we write
also carries ``X-LOCKSTEP-UID`` (the ``lockstep_uid`` argument); a listing reports
that value as ``RemoteEvent.lockstep_uid``. The UID alone cannot say "Lockstep wrote
this" - every remote object has one - so only the property is read back.

Idempotency: a new object goes to ``<calendar>/<name from our uid>.ics`` with
``If-None-Match: *``. If that is refused because the resource exists (a retry whose
answer was lost), or because another resource already holds the UID
(``no-uid-conflict``: Radicale 409, Xandikos 412), the existing resource is
replaced instead: never a duplicate. Updates send ``If-Match`` with the etag the
engine last saw; 412 is PreconditionFailed.
"""

from __future__ import annotations

import hashlib
import re

import icalendar
from caldav.elements import cdav, dav

from server.providers.base import PreconditionFailed, ProviderError, RemoteEvent
from server.providers.caldav_remote_client import (
    DavSession, absolute, canonical_path, preconditions, xml,
)
from server.providers.caldav_remote_sync import LOCKSTEP_UID_PROPERTY

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}")
_UID_CONFLICT = "{urn:ietf:params:xml:ns:caldav}no-uid-conflict"
_ICS = {"Content-Type": "text/calendar; charset=utf-8"}


def object_name(lockstep_uid: str) -> str:
    """A file name every server takes, the same for the same uid (a readable uid stays readable)."""
    if _SAFE_NAME.fullmatch(lockstep_uid) and not lockstep_uid.endswith(".ics"):
        return lockstep_uid + ".ics"
    return "ls-" + hashlib.sha256(lockstep_uid.encode("utf-8")).hexdigest()[:40] + ".ics"


def stamped(ical: str, lockstep_uid: str) -> tuple[str, str]:
    """(the object with X-LOCKSTEP-UID on every VEVENT, its UID)."""
    try:
        calendar = icalendar.Calendar.from_ical(ical)
        events = list(calendar.walk("VEVENT"))
    except ValueError as exc:
        raise ProviderError(f"cannot write this event to CalDAV: {exc}", permanent=True) from None
    if not events:
        raise ProviderError("cannot write to CalDAV: the object has no VEVENT", permanent=True)
    for event in events:
        event.pop(LOCKSTEP_UID_PROPERTY, None)
        event.add(LOCKSTEP_UID_PROPERTY, lockstep_uid)
    return calendar.to_ical().decode("utf-8"), str(events[0].get("UID") or lockstep_uid)


class EventWriter:
    def __init__(self, session: DavSession, calendar_url: str) -> None:
        self.session = session
        self.calendar_url = calendar_url if calendar_url.endswith("/") else calendar_url + "/"

    def put(self, lockstep_uid: str, ical: str, remote_id: str | None,
            etag: str | None) -> RemoteEvent:
        text, uid = stamped(ical, lockstep_uid)
        if remote_id:
            path = canonical_path(remote_id)
            headers = {**_ICS, "If-Match": etag} if etag else _ICS
            response = self.session.send("PUT", "PUT", absolute(self.calendar_url, path), text,
                                         headers, ok=(409, 412))
            if response.status == 412:
                raise PreconditionFailed("CalDAV PUT: HTTP 412 (the event changed on the server)")
            if response.status == 409:  # the UID moved elsewhere meanwhile
                path = self._holder_of(uid) or path
                response = self.session.send("PUT", "PUT", absolute(self.calendar_url, path),
                                             text, _ICS)
        else:
            path = canonical_path(absolute(self.calendar_url, object_name(lockstep_uid)))
            response = self.session.send("PUT (create)", "PUT", absolute(self.calendar_url, path),
                                         text, {**_ICS, "If-None-Match": "*"}, ok=(409, 412))
            if response.status in (409, 412):
                if _UID_CONFLICT in preconditions(response) or response.status == 409:
                    path = self._holder_of(uid) or path
                # else: it exists under our name - an earlier try whose answer was lost
                response = self.session.send("PUT (replace)", "PUT",
                                             absolute(self.calendar_url, path), text, _ICS)
        tag = response.headers.get("ETag") or self._etag_of(path)
        return RemoteEvent(path, tag, text, lockstep_uid)

    def delete(self, remote_id: str, etag: str | None) -> None:
        url = absolute(self.calendar_url, remote_id)
        headers = {"If-Match": etag} if etag else {}
        response = self.session.send("DELETE", "DELETE", url, "", headers, ok=(404, 410, 412))
        if response.status == 412 and self._etag_of(canonical_path(remote_id)):
            raise PreconditionFailed("CalDAV DELETE: HTTP 412 (the event changed on the server)")
        # 404/410, or 412 for a resource that no longer exists: already deleted

    # --- lookups ---------------------------------------------------------------------
    def _etag_of(self, path: str) -> str:
        """The current ETag of one resource; "" when it does not exist."""
        body = dav.Propfind() + (dav.Prop() + [dav.GetEtag()])
        response = self.session.send("PROPFIND getetag", "PROPFIND",
                                     absolute(self.calendar_url, path), xml(body),
                                     {"Depth": "0"}, ok=(404,))
        if response.status == 404:
            return ""
        for result in response.parse_propfind():
            if result.status < 300:
                return str(result.properties.get(dav.GetEtag.tag) or "")
        return ""

    def _holder_of(self, uid: str) -> str | None:
        """The path of the object that holds ``uid`` in this calendar (calendar-query on UID)."""
        match = cdav.CompFilter("VCALENDAR") + (
            cdav.CompFilter("VEVENT") + (cdav.PropFilter("UID") + cdav.TextMatch(uid)))
        body = cdav.CalendarQuery() + [dav.Prop() + [dav.GetEtag()], cdav.Filter() + match]
        response = self.session.send("calendar-query (UID)", "REPORT", self.calendar_url,
                                     xml(body), {"Depth": "1"})
        for result in response.parse_calendar_query():
            if result.status < 300:
                return canonical_path(result.href)
        return None
