"""Any remote CalDAV account (iCloud, Fastmail, Nextcloud, Radicale...) behind the provider
interface, with the ``caldav`` library.

    provider = CalDAVProvider(CalDAVSettings(), Credentials('{"url": ..., "username": ..., "password": ...}'))

Ids: a calendar is its collection URL (absolute: iCloud serves calendar homes on
another host than the one the tech types); an event is the path of its resource,
and its etag the server's. Reading is in caldav_remote_sync (RFC 6578 sync-collection,
or ctag + etag listing for servers without it), writing in caldav_remote_write, the
account, the DAVClient and the error table in caldav_remote_client. CalDAV has no push
notifications for us: the engine polls (``[caldav] poll_seconds``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from caldav.elements import cdav, dav
from caldav.elements.base import BaseElement

from server.providers.base import (
    ChangePage, Credentials, Provider, ProviderError, RemoteCalendar, RemoteEvent, Watch,
)
from server.providers.caldav_remote_client import (
    CalDAVAccount, CalDAVSettings, DavSession, absolute, xml,
)
from server.providers.caldav_remote_sync import ChangeReader
from server.providers.caldav_remote_write import EventWriter

__all__ = ["CalDAVAccount", "CalDAVProvider", "CalDAVSettings"]

_CALENDAR = "{urn:ietf:params:xml:ns:caldav}calendar"
_TRANSP = "{urn:ietf:params:xml:ns:caldav}schedule-calendar-transp"
_ORDER = "{http://apple.com/ns/ical/}calendar-order"
_WRITE = frozenset({"{DAV:}all", "{DAV:}write", "{DAV:}write-content", "{DAV:}bind"})


def _prop(tag: str) -> BaseElement:
    """A property name for a PROPFIND body that caldav.elements does not define."""
    return type("Prop", (BaseElement,), {"tag": tag})()


class CalDAVProvider(Provider):
    """One tech's account on a remote CalDAV server."""

    name = "caldav"

    def __init__(self, settings: CalDAVSettings | None, credentials: Credentials | str) -> None:
        if isinstance(credentials, str):
            credentials = Credentials(credentials)
        self.settings = settings or CalDAVSettings()
        self._credentials = credentials
        self.account = CalDAVAccount.from_blob(credentials.blob)
        self.session = DavSession(self.account, self.settings)

    @classmethod
    def settings_from(cls, config: Any) -> CalDAVSettings:
        values = config.values.get("caldav", {}) if hasattr(config, "values") else {}
        return CalDAVSettings(**{k: v for k, v in values.items()
                                 if k in CalDAVSettings.__dataclass_fields__})

    def __repr__(self) -> str:  # never the password
        return f"CalDAVProvider(url={self.account.url!r}, username={self.account.username!r})"

    # --- calendars -------------------------------------------------------------------
    def list_calendars(self) -> list[RemoteCalendar]:
        """The calendars in the account's calendar home that take events.

        Discovery as clients do it: the URL's current-user-principal, then its
        calendar-home-set (the caldav library follows a home on another host), then one
        Depth 1 PROPFIND. Primary is the first by the Apple calendar-order, then by URL;
        read-only without a write privilege; not busy when marked transparent
        (RFC 6638 schedule-calendar-transp), as clients do for e.g. a holidays calendar.
        """
        home = self.session.call("discovery", lambda: str(
            self.session.client.principal().calendar_home_set.url))
        props = [dav.ResourceType(), dav.DisplayName(), cdav.SupportedCalendarComponentSet(),
                 dav.CurrentUserPrivilegeSet(), _prop(_TRANSP), _prop(_ORDER)]
        body = dav.Propfind() + (dav.Prop() + props)
        response = self.session.send("PROPFIND calendar-home-set", "PROPFIND", home, xml(body),
                                     {"Depth": "1"})
        found: list[tuple[float, str, RemoteCalendar]] = []
        for result in response.parse_propfind():
            values = result.properties
            if _CALENDAR not in (values.get(dav.ResourceType.tag) or []):
                continue
            components = values.get(cdav.SupportedCalendarComponentSet.tag)
            if components and "VEVENT" not in components:
                continue  # a task list
            url = absolute(home, result.href)
            privileges = values.get(dav.CurrentUserPrivilegeSet.tag)
            writable = not privileges or bool(_WRITE & set(privileges))
            transparent = "transparent" in str(values.get(_TRANSP) or "").lower()
            name = str(values.get(dav.DisplayName.tag) or "").strip() or url.rstrip("/").rsplit("/", 1)[-1]
            found.append((_order(values.get(_ORDER)), url,
                          RemoteCalendar(url, name, busy=not transparent, writable=writable)))
        found.sort(key=lambda entry: (entry[0], entry[1]))
        calendars = [entry[2] for entry in found]
        if calendars:
            first = calendars[0]
            calendars[0] = RemoteCalendar(first.remote_id, first.name, True, first.busy, first.writable)
        return calendars

    # --- reading -----------------------------------------------------------------------
    def list_changes(self, calendar_id: str, cursor: str | None) -> Iterator[ChangePage]:
        return ChangeReader(self.session, calendar_id, self.settings).pages(cursor)

    # --- writing -----------------------------------------------------------------------
    def put_event(self, calendar_id: str, lockstep_uid: str, ical: str,
                  remote_id: str | None = None, etag: str | None = None) -> RemoteEvent:
        return EventWriter(self.session, calendar_id).put(lockstep_uid, ical, remote_id, etag)

    def delete_event(self, calendar_id: str, remote_id: str, etag: str | None = None) -> None:
        EventWriter(self.session, calendar_id).delete(remote_id, etag)

    # --- push: none; the engine polls ----------------------------------------------
    def start_watch(self, calendar_id: str, address: str, token: str,
                    ttl_seconds: int) -> Watch | None:
        return None

    def stop_watch(self, watch: Watch) -> None:
        return None

    def credentials(self) -> Credentials:
        return self._credentials  # an app password never changes under us


def _order(value: Any) -> float:
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return float("inf")


def check_account(url: str, username: str, password: str,
                  settings: CalDAVSettings | None = None) -> list[RemoteCalendar]:
    """Discovery with these credentials, for the connect step: the calendars found.
    Raises AuthorizationLost when the server refuses them, ProviderError otherwise."""
    blob = CalDAVAccount(url, username, password).to_blob()
    calendars = CalDAVProvider(settings, Credentials(blob)).list_calendars()
    if not calendars:
        raise ProviderError("the CalDAV account has no calendar that takes events", permanent=True)
    return calendars
