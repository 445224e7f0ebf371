"""The one interface every calendar provider implements (Google, Microsoft, remote CalDAV).

The sync engine speaks only in these terms. Events cross this boundary as
iCalendar text (one calendar object: a VEVENT, or a series master with its
overridden instances), so the engine never sees a provider-specific field.
Providers never import the engine, the web layer or admin/.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any


class ProviderError(Exception):
    """A failed provider call. Transient ones are retried with backoff; permanent ones are not."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


def retry_after_of(headers: Any) -> float | None:
    """A response's Retry-After as seconds (delta-seconds or an HTTP date); None when absent.

    Takes any mapping of headers: httplib2 lower-cases names, requests matches any case."""
    raw = (headers.get("Retry-After") or headers.get("retry-after")) if headers is not None else None
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class AuthorizationLost(ProviderError):
    """The grant is revoked or expired for good (``invalid_grant``): the tech must reconnect."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class CursorExpired(ProviderError):
    """The sync cursor is no longer accepted (Google 410, Graph syncStateNotFound): list everything."""

    def __init__(self, message: str = "sync cursor expired") -> None:
        super().__init__(message, permanent=False)


class PreconditionFailed(ProviderError):
    """The remote copy changed since we read it (etag / change key mismatch)."""

    def __init__(self, message: str = "remote event changed meanwhile") -> None:
        super().__init__(message, permanent=False)


@dataclass(frozen=True)
class RemoteCalendar:
    remote_id: str
    name: str
    primary: bool = False
    busy: bool = True  # the tech marks it as counting for availability
    writable: bool = True


@dataclass(frozen=True)
class RemoteEvent:
    """One calendar object on the provider side, as iCalendar, or a deletion."""

    remote_id: str
    etag: str = ""
    ical: str | None = None  # None when deleted
    lockstep_uid: str | None = None  # our id, when Lockstep wrote it (echo recognition)

    @property
    def deleted(self) -> bool:
        return self.ical is None


@dataclass(frozen=True)
class ChangePage:
    """One page of changes. ``cursor`` is set on the last page only: store it after applying all."""

    events: list[RemoteEvent]
    cursor: str | None = None
    full: bool = False  # a full listing: anything not listed is gone


@dataclass(frozen=True)
class Watch:
    channel_id: str
    resource_id: str
    expires_at: datetime
    token: str = ""


@dataclass
class Credentials:
    """Opaque to the engine; stored encrypted; providers update it when tokens refresh."""

    blob: str = field(repr=False)
    changed: bool = field(default=False, compare=False)


class Provider(ABC):
    """A connected account of one tech."""

    name: str = ""

    @classmethod
    def settings_from(cls, config: Any) -> Any:
        """The provider's part of the server config (``server.config.Config``), as its
        constructor's first argument takes it; None for providers that need none."""
        return None

    @abstractmethod
    def list_calendars(self) -> list[RemoteCalendar]: ...

    @abstractmethod
    def list_changes(self, calendar_id: str, cursor: str | None) -> Iterator[ChangePage]:
        """Changes since ``cursor``; a full listing when it is None. Raises CursorExpired."""

    @abstractmethod
    def put_event(self, calendar_id: str, lockstep_uid: str, ical: str,
                  remote_id: str | None = None, etag: str | None = None) -> RemoteEvent:
        """Create or replace idempotently: a retry with the same ``lockstep_uid`` never duplicates."""

    @abstractmethod
    def delete_event(self, calendar_id: str, remote_id: str, etag: str | None = None) -> None:
        """Delete; an already-deleted event is success."""

    @abstractmethod
    def start_watch(self, calendar_id: str, address: str, token: str, ttl_seconds: int) -> Watch | None:
        """Ask for push notifications; None when the provider has none (polling only)."""

    @abstractmethod
    def stop_watch(self, watch: Watch) -> None: ...

    def revoke(self) -> None:
        """Withdraw the grant at the provider when the tech disconnects. Providers without a
        per-application revocation (Graph, CalDAV app passwords) only forget the credential,
        which the engine deletes; the tech removes the app's access in their account."""
        return None

    @abstractmethod
    def credentials(self) -> Credentials:
        """The current credential blob (refreshed tokens included) for the engine to store."""
