"""Outlook / Microsoft 365 behind the provider interface: msal for tokens, Graph over HTTP.

    provider = MicrosoftProvider(MicrosoftSettings(client_id=..., ...), Credentials(blob))

Every endpoint is configurable (``authority``, ``graph_url``, ``ca_bundle``), which is
how tests point the real MSAL at server/sandbox. The credential blob is MSAL's
serialized token cache (oauth_microsoft); :meth:`credentials` hands it back with
``changed`` set after MSAL refreshed a token. Every call runs once: retrying with
backoff, honouring ``retry_after``, is the sync engine's job. Reading is in
microsoft_sync, writing in microsoft_write, HTTP, tokens and errors in
microsoft_client, the event mapping in microsoft_mapping.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from server.providers.base import (
    ChangePage, Credentials, Provider, RemoteCalendar, RemoteEvent, Watch,
)
from server.providers.microsoft_client import GraphApiError, GraphClient
from server.providers.microsoft_sync import ChangeReader
from server.providers.microsoft_write import EventWriter, transaction_id_for
from server.providers.microsoft_zones import parse_moment
from server.providers.oauth_microsoft import MicrosoftSettings

__all__ = ["MicrosoftProvider", "MicrosoftSettings", "transaction_id_for"]


class MicrosoftProvider(Provider):
    """One tech's connected Microsoft account."""

    name = "microsoft"

    def __init__(self, settings: MicrosoftSettings, credentials: Credentials | str) -> None:
        if isinstance(credentials, str):
            credentials = Credentials(credentials)
        self.settings = settings
        self.client = GraphClient(settings, credentials)

    @classmethod
    def settings_from(cls, config: Any) -> MicrosoftSettings:
        return MicrosoftSettings.from_config(config.values["microsoft"])

    def __repr__(self) -> str:  # never the blob
        return f"MicrosoftProvider(client_id={self.settings.client_id!r})"

    # --- calendars ---------------------------------------------------------------------
    def list_calendars(self) -> list[RemoteCalendar]:
        """Every calendar of the mailbox. ``busy`` is a default the tech can change: the
        default calendar and other editable calendars the mailbox owns; shared calendars
        of other people do not block the tech's time unless chosen."""
        me = self.client.username.lower()
        found: list[RemoteCalendar] = []
        for page in self.client.pages("me/calendars", "calendars.list"):
            for entry in page.get("value", []):
                primary = bool(entry.get("isDefaultCalendar"))
                writable = bool(entry.get("canEdit", True))
                owner = str(((entry.get("owner") or {}).get("address")) or "").lower()
                own = not owner or not me or owner == me
                found.append(RemoteCalendar(
                    remote_id=str(entry["id"]), name=str(entry.get("name") or entry["id"]),
                    primary=primary, busy=primary or (own and writable), writable=writable))
        return found

    # --- reading -----------------------------------------------------------------------
    def list_changes(self, calendar_id: str, cursor: str | None) -> Iterator[ChangePage]:
        """calendarView delta over the sync window; a series is always one object."""
        return ChangeReader(self.client, calendar_id).pages(cursor)

    # --- writing -----------------------------------------------------------------------
    def put_event(self, calendar_id: str, lockstep_uid: str, ical: str,
                  remote_id: str | None = None, etag: str | None = None) -> RemoteEvent:
        return EventWriter(self.client, calendar_id).put(lockstep_uid, ical, remote_id, etag)

    def delete_event(self, calendar_id: str, remote_id: str, etag: str | None = None) -> None:
        EventWriter(self.client, calendar_id).delete(remote_id, etag)

    # --- push ----------------------------------------------------------------------------
    def start_watch(self, calendar_id: str, address: str, token: str,
                    ttl_seconds: int) -> Watch | None:
        """A change-notification subscription on the calendar's events. Lifecycle events
        (reauthorizationRequired, subscriptionRemoved, missed) go to the same address. The
        engine renews at half-life by opening a new one and deleting the old."""
        seconds = max(60, min(int(ttl_seconds), int(self.settings.subscription_minutes) * 60))
        expires = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        resource = f"me/calendars/{quote(calendar_id, safe='')}/events"
        answer = self.client.json("POST", "subscriptions", "subscriptions.create", body={
            "changeType": "created,updated,deleted", "notificationUrl": address,
            "lifecycleNotificationUrl": address, "resource": resource,
            "expirationDateTime": expires.strftime("%Y-%m-%dT%H:%M:%S.0000000Z"),
            "clientState": token})
        when = answer.get("expirationDateTime")
        expires_at = parse_moment(str(when)) if when else expires
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=timezone.utc)
        return Watch(channel_id=str(answer["id"]),
                     resource_id=str(answer.get("resource") or resource),
                     expires_at=expires_at, token=token)

    def stop_watch(self, watch: Watch) -> None:
        """Delete a subscription; one Graph no longer knows (expired, removed) is stopped."""
        try:
            self.client.call("DELETE", f"subscriptions/{quote(watch.channel_id, safe='')}",
                             "subscriptions.delete")
        except GraphApiError as exc:
            if exc.status != 404:
                raise

    # --- credentials ---------------------------------------------------------------------
    def credentials(self) -> Credentials:
        return self.client.sync_blob()
