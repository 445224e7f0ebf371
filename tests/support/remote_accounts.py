"""One face for every provider's remote side, so end-to-end scenarios are written once.

A :class:`RemoteAccount` starts the provider's far end (an emulator, or a
second stock CalDAV server), tells the Lockstep server how to reach it, connects
a tech the way the tech would, and changes events there "by hand", as the
provider's own app would. tests/test_sync_providers.py runs each scenario
against every account kind; provider-specific behaviour stays in the
provider's own test module.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from server.sandbox.google import GoogleSandbox
from tests.support.google_env import connect_google, google_env
from tests.support.lockstep_server import LockstepServer

UTC = timezone.utc


@dataclass(frozen=True)
class RemoteView:
    """What a scenario checks of a remote event."""

    remote_id: str
    summary: str
    start_utc: str  # "YYYY-MM-DDTHH:MM:SSZ", "" for all-day
    lockstep_uid: str | None


class RemoteAccount(Protocol):
    provider: str
    mirror_slug: str  # the tech's mirror calendar of the connected primary calendar

    def env(self) -> dict[str, str]:
        """LOCKSTEP_* settings that point the server at this remote side."""

    def connect(self, server: LockstepServer, user: str) -> None:
        """Connect ``user`` as they would (consent page, or `lockstep connect caldav`)."""

    def reconnect(self, server: LockstepServer, user: str) -> None:
        """Connect again after :meth:`revoke`."""

    def create(self, user: str, summary: str, start: datetime, end: datetime) -> str:
        """A personal event in the tech's primary calendar; returns its remote id."""

    def move(self, user: str, remote_id: str, start: datetime, end: datetime) -> None: ...

    def rename(self, user: str, remote_id: str, summary: str) -> None: ...

    def delete(self, user: str, remote_id: str) -> None: ...

    def events(self, user: str) -> list[RemoteView]:
        """Every live event of the tech's primary calendar."""

    def expire_cursor(self, user: str) -> None:
        """Make the remote side refuse every sync cursor issued so far."""

    def revoke(self, user: str) -> None:
        """Withdraw Lockstep's access as the tech would (revoke the grant, change the password)."""


PROVIDERS = ("google", "microsoft", "caldav")


@contextlib.contextmanager
def open_account(provider: str) -> Iterator[RemoteAccount]:
    """The far end of ``provider`` started on loopback, stopped afterwards."""
    if provider == "google":
        with GoogleSandbox() as sandbox:
            yield GoogleAccount(sandbox)
    elif provider == "microsoft":
        from server.sandbox.graph import GraphSandbox
        from tests.support.microsoft_env import GraphAccount

        with GraphSandbox() as graph:
            yield GraphAccount(graph)
    elif provider == "caldav":
        from tests.support.caldav_env import CalDAVRemoteAccount, radicale_server

        with tempfile.TemporaryDirectory(prefix="lockstep-remote-caldav-") as tmp, \
                radicale_server(Path(tmp)) as remote:
            yield CalDAVRemoteAccount(remote)
    else:
        raise LookupError(f"no remote account kind {provider!r}; known: {', '.join(PROVIDERS)}")


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GoogleAccount:
    """Google Calendar through server/sandbox/google.py."""

    provider = "google"
    mirror_slug = "google-primary"

    def __init__(self, sandbox: GoogleSandbox) -> None:
        self.sandbox = sandbox

    def env(self) -> dict[str, str]:
        return google_env(self.sandbox)

    def connect(self, server: LockstepServer, user: str) -> None:
        connect_google(server, self.sandbox, user)

    reconnect = connect

    def create(self, user: str, summary: str, start: datetime, end: datetime) -> str:
        created = self.sandbox.create_event(_email(user), {
            "summary": summary, "start": {"dateTime": utc_text(start)}, "end": {"dateTime": utc_text(end)}})
        return str(created["id"])

    def move(self, user: str, remote_id: str, start: datetime, end: datetime) -> None:
        self.sandbox.patch_event(_email(user), remote_id, {
            "start": {"dateTime": utc_text(start)}, "end": {"dateTime": utc_text(end)}})

    def rename(self, user: str, remote_id: str, summary: str) -> None:
        self.sandbox.patch_event(_email(user), remote_id, {"summary": summary})

    def delete(self, user: str, remote_id: str) -> None:
        self.sandbox.delete_event(_email(user), remote_id)

    def events(self, user: str) -> list[RemoteView]:
        return [RemoteView(remote_id=str(event["id"]), summary=str(event.get("summary", "")),
                           start_utc=_google_start(event),
                           lockstep_uid=(event.get("extendedProperties") or {}).get("private", {}).get("lockstepUid"))
                for event in self.sandbox.stored_events(_email(user))]

    def expire_cursor(self, user: str) -> None:
        self.sandbox.expire_sync_tokens()

    def revoke(self, user: str) -> None:
        self.sandbox.revoke_refresh_token(email=_email(user))
        self.sandbox.expire_access_tokens(_email(user))


def _email(user: str) -> str:
    return f"{user}@example.com"


def _google_start(event: dict[str, Any]) -> str:
    value = event.get("start", {}).get("dateTime")
    if not value:
        return ""
    return utc_text(datetime.fromisoformat(value.replace("Z", "+00:00")))
