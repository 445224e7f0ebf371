"""Google Calendar behind the provider interface, with google-api-python-client + google-auth.

    provider = GoogleProvider(GoogleConfig(client_id=..., client_secret=...), Credentials(blob))

Every endpoint is configurable (``token_uri``, ``api_endpoint``), which is how
tests point the real libraries at server/sandbox. The credential blob is JSON
``{"refresh_token", "token", "expiry", ...}``; google-auth refreshes the access
token on expiry or on a 401, and :meth:`credentials` then hands back the blob
with ``changed`` set. Every call runs once (``num_retries=0``): retrying with
backoff, honouring ``retry_after``, is the sync engine's job. Reading is in
google_sync, writing in google_write, errors and credentials in google_client.

One provider object is one connection for one thread (httplib2 is not thread-safe).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from server.providers.base import (
    ChangePage, Credentials, Provider, RemoteCalendar, RemoteEvent, Watch,
)
from server.providers.google_client import GoogleApiError, GoogleClient, GoogleConfig
from server.providers.google_sync import ChangeReader
from server.providers.google_write import EventWriter, event_id_for
from server.providers.oauth_google import GoogleSettings

__all__ = ["GoogleConfig", "GoogleProvider", "event_id_for"]

_WRITABLE_ROLES = frozenset({"writer", "owner"})


class GoogleProvider(Provider):
    """One tech's connected Google account."""

    name = "google"

    def __init__(self, config: Any, credentials: Credentials | str) -> None:
        if isinstance(credentials, str):
            credentials = Credentials(credentials)
        self.config = GoogleConfig.of(config)
        self.client = GoogleClient(self.config, credentials)

    @classmethod
    def settings_from(cls, config: Any) -> GoogleSettings:
        values = config.values["google"]
        return GoogleSettings(values["client_id"], values["client_secret"], values["auth_uri"],
                              values["token_uri"], values["api_endpoint"], tuple(values["scopes"].split()),
                              values["revoke_uri"])

    def __repr__(self) -> str:  # never the blob
        return f"GoogleProvider(client_id={self.config.client_id!r})"

    # --- calendars -------------------------------------------------------------------
    def list_calendars(self) -> list[RemoteCalendar]:
        """Every calendar on the account's list, hidden ones included.

        ``busy`` is only a default the tech can change: the primary calendar, and
        other calendars the account owns and shows (``selected``, not hidden). Calendars
        of other people and subscriptions (holidays, a colleague's calendar, shared
        team calendars) do not block the tech's time unless chosen.
        """
        found: list[RemoteCalendar] = []
        token: str | None = None
        while True:
            request = self.client.api.calendarList().list(pageToken=token, showHidden=True,
                                                         maxResults=250)
            response = self.client.execute(request, "calendarList.list")
            for entry in response.get("items", []):
                if entry.get("deleted"):
                    continue
                primary = bool(entry.get("primary"))
                role = entry.get("accessRole", "reader")
                shown = bool(entry.get("selected")) and not entry.get("hidden")
                found.append(RemoteCalendar(
                    remote_id=str(entry["id"]),
                    name=str(entry.get("summaryOverride") or entry.get("summary") or entry["id"]),
                    primary=primary, busy=primary or (role == "owner" and shown),
                    writable=role in _WRITABLE_ROLES))
            token = response.get("nextPageToken")
            if not token:
                return found

    # --- reading -----------------------------------------------------------------------
    def list_changes(self, calendar_id: str, cursor: str | None) -> Iterator[ChangePage]:
        """Full listing without a cursor, else incremental; a series is always one object."""
        return ChangeReader(self.client, calendar_id).pages(cursor)

    # --- writing -----------------------------------------------------------------------
    def put_event(self, calendar_id: str, lockstep_uid: str, ical: str,
                  remote_id: str | None = None, etag: str | None = None) -> RemoteEvent:
        """Create (under the id derived from ``lockstep_uid``) or update with If-Match."""
        return EventWriter(self.client, calendar_id).put(lockstep_uid, ical, remote_id, etag)

    def delete_event(self, calendar_id: str, remote_id: str, etag: str | None = None) -> None:
        EventWriter(self.client, calendar_id).delete(remote_id, etag)

    # --- push ------------------------------------------------------------------------------
    def start_watch(self, calendar_id: str, address: str, token: str,
                    ttl_seconds: int) -> Watch | None:
        """A web_hook channel on the calendar's events; Google never renews one, so the
        engine opens a new channel before ``expires_at`` and stops the old one."""
        channel_id = str(uuid.uuid4())
        body = {"id": channel_id, "type": "web_hook", "address": address, "token": token,
                "params": {"ttl": str(int(ttl_seconds))}}
        request = self.client.api.events().watch(calendarId=calendar_id, body=body)
        answer = self.client.execute(request, "events.watch")
        expiration = answer.get("expiration")
        if expiration:
            expires_at = datetime.fromtimestamp(int(expiration) / 1000, timezone.utc)
        else:
            expires_at = datetime.now(timezone.utc) + timedelta(seconds=ttl_seconds)
        return Watch(channel_id=str(answer.get("id") or channel_id),
                     resource_id=str(answer["resourceId"]), expires_at=expires_at, token=token)

    def stop_watch(self, watch: Watch) -> None:
        """Stop a channel; one Google no longer knows (expired, stopped) is already stopped."""
        request = self.client.api.channels().stop(
            body={"id": watch.channel_id, "resourceId": watch.resource_id})
        try:
            self.client.execute(request, "channels.stop")
        except GoogleApiError as exc:
            if exc.status != 404:
                raise

    # --- credentials ---------------------------------------------------------------------
    def revoke(self) -> None:
        self.client.revoke()

    def credentials(self) -> Credentials:
        return self.client.sync_blob()
