"""A stateful emulator of Google Calendar API v3 and Google's OAuth 2.0 endpoints.

Written from the public API reference so that the real client libraries
(google-api-python-client, google-auth, google-auth-oauthlib) can be pointed at
it: it runs in-process on a free 127.0.0.1 port in a thread, and this module's
:class:`GoogleSandbox` is the control API tests use to create users, calendars
and events "from the Google side", inject faults, revoke grants and inspect the
push notifications it delivered.

    with GoogleSandbox() as google:
        google.add_user("mike@example.com")
        tokens = google.issue_tokens("mike@example.com")
        build("calendar", "v3", credentials=..., static_discovery=True,
              client_options={"api_endpoint": google.api_endpoint})
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
from collections import deque
from typing import Any

from server.sandbox.google_events import EventsService
from server.sandbox.google_faults import Fault, Faults
from server.sandbox.google_http import create_app
from server.sandbox.google_listing import Listings
from server.sandbox.google_oauth import CALENDAR_SCOPE, OAuthServer
from server.sandbox.google_push import Notification, PushDispatcher
from server.sandbox.google_store import Clock, SandboxConfig, Store
from server.sandbox.serving import BackgroundServer

__all__ = ["CALENDAR_SCOPE", "Fault", "GoogleSandbox", "Notification", "SandboxConfig"]



class GoogleSandbox:
    """Google Calendar + OAuth emulator with a Python control API."""

    DEFAULT_CLIENT_ID = "lockstep-sandbox.apps.googleusercontent.com"
    DEFAULT_CLIENT_SECRET = "lockstep-sandbox-secret"

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or SandboxConfig(), **overrides)
        self.clock = Clock()
        self.store = Store(self.config, self.clock)
        self.oauth = OAuthServer(self.store)
        self.push = PushDispatcher(self.store)
        self.faults = Faults()
        self.events = EventsService(self.store, self.push.calendar_changed,
                                    lambda: self.base_url)
        self.listings = Listings(self.store, self.events)
        self.requests: deque[dict[str, Any]] = deque(maxlen=20000)
        self.server_errors: list[str] = []
        self.base_url = "http://127.0.0.1"
        self.app = create_app(self)
        self._http = BackgroundServer("google-sandbox-http")
        self.oauth.add_client(self.DEFAULT_CLIENT_ID, self.DEFAULT_CLIENT_SECRET)

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port) from a daemon thread; returns the base URL."""
        if self._http.running:
            return self.base_url
        self.base_url = f"http://{host}:{self._http.start(self.app, host, port)}"
        self.push.start()
        return self.base_url

    def stop(self) -> None:
        self._http.stop()
        self.push.shutdown()

    def __enter__(self) -> GoogleSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- endpoints, for configuring clients ----------------------------------------------
    def lockstep_env(self) -> dict[str, str]:
        """The LOCKSTEP_GOOGLE_* settings that point a Lockstep server at this emulator."""
        return {
            "LOCKSTEP_GOOGLE_CLIENT_ID": self.DEFAULT_CLIENT_ID,
            "LOCKSTEP_GOOGLE_CLIENT_SECRET": self.DEFAULT_CLIENT_SECRET,
            "LOCKSTEP_GOOGLE_AUTH_URI": self.auth_uri,
            "LOCKSTEP_GOOGLE_TOKEN_URI": self.token_uri,
            "LOCKSTEP_GOOGLE_REVOKE_URI": self.revoke_uri,
            "LOCKSTEP_GOOGLE_API_ENDPOINT": self.api_endpoint,
        }

    @property
    def api_endpoint(self) -> str:
        return self.base_url + "/calendar/v3/"

    @property
    def auth_uri(self) -> str:
        return self.base_url + "/o/oauth2/auth"

    @property
    def token_uri(self) -> str:
        return self.base_url + "/token"

    @property
    def revoke_uri(self) -> str:
        return self.base_url + "/revoke"

    def client_config(self, redirect_uris: list[str], client_id: str | None = None,
                      client_secret: str | None = None) -> dict[str, Any]:
        """A ``client_secrets``-style dict for google_auth_oauthlib's Flow."""
        return {"web": {"client_id": client_id or self.DEFAULT_CLIENT_ID,
                        "client_secret": client_secret or self.DEFAULT_CLIENT_SECRET,
                        "auth_uri": self.auth_uri, "token_uri": self.token_uri,
                        "redirect_uris": list(redirect_uris)}}

    # --- identities -------------------------------------------------------------------------
    def add_client(self, client_id: str, client_secret: str,
                   redirect_uris: list[str] | None = None) -> None:
        """Register an OAuth client; ``redirect_uris=None`` accepts any http(s) URL."""
        self.oauth.add_client(client_id, client_secret, redirect_uris)

    def add_user(self, email: str, name: str | None = None, time_zone: str = "UTC") -> str:
        """A Google account with its primary calendar (whose id is the email)."""
        return self.store.add_user(email, name, time_zone).primary

    def add_calendar(self, owner: str, summary: str, *, calendar_id: str | None = None,
                     time_zone: str | None = None, description: str = "") -> str:
        with self.store.lock:
            tz = time_zone or self.store.calendars[self.store.users[owner].primary].time_zone
            return self.store.add_calendar(owner, summary, tz, calendar_id, description).id

    def share_calendar(self, calendar_id: str, email: str, role: str = "reader") -> None:
        self.store.share(calendar_id, email, role)

    def issue_tokens(self, email: str, *, client_id: str | None = None,
                     scopes: tuple[str, ...] | list[str] = (CALENDAR_SCOPE,)) -> dict[str, Any]:
        """Tokens as if ``email`` consented to the client (skips the browser step)."""
        if email not in self.store.users:
            raise KeyError(email)
        return self.oauth.issue(email, client_id or self.DEFAULT_CLIENT_ID, tuple(scopes))

    # --- events, changed "on the Google side" ------------------------------------------
    def _owner(self, calendar_id: str) -> str:
        return self.store.calendars[calendar_id].owner

    def create_event(self, calendar_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """Insert as the calendar's owner; notifies watch channels like an API write."""
        return self.events.insert(self._owner(calendar_id), calendar_id, dict(event))

    def patch_event(self, calendar_id: str, event_id: str,
                    changes: dict[str, Any]) -> dict[str, Any]:
        """Patch an event or a recurring instance (``<masterId>_<originalStart>``)."""
        return self.events.modify(self._owner(calendar_id), calendar_id, event_id,
                                  dict(changes), patch=True)

    def delete_event(self, calendar_id: str, event_id: str) -> None:
        self.events.delete(self._owner(calendar_id), calendar_id, event_id)

    def get_event(self, calendar_id: str, event_id: str) -> dict[str, Any] | None:
        """The stored resource (including cancelled ones), or None."""
        with self.store.lock:
            cal = self.store.calendars[calendar_id]
            rec, synthesized = self.events.find(cal, event_id)
            found = rec.resource if rec is not None else synthesized
            return dict(found) if found is not None else None

    def stored_events(self, calendar_id: str, *, include_cancelled: bool = False) -> list[dict]:
        with self.store.lock:
            cal = self.store.calendars[calendar_id]
            return [dict(r.resource) for r in sorted(cal.events.values(), key=lambda r: r.order)
                    if include_cancelled or not r.cancelled]

    # --- faults and breakage -----------------------------------------------------------
    def add_fault(self, kind: str = "error", **fields: Any) -> Fault:
        """Register a :class:`Fault`; see google_faults for kinds and matching."""
        return self.faults.add(Fault(kind=kind, **fields))

    def rate_limit(self, count: int | None = 1, *, status: int = 429,
                   reason: str = "rateLimitExceeded", retry_after: float | None = 1,
                   path: str | None = r"^/calendar/") -> Fault:
        """429, or 403 ``rateLimitExceeded``/``userRateLimitExceeded``, for the next calls."""
        return self.add_fault("error", status=status, reason=reason, retry_after=retry_after,
                              path=path, remaining=count)

    def server_error(self, count: int | None = 1, *, status: int = 503,
                     path: str | None = r"^/calendar/",
                     retry_after: float | None = None) -> Fault:
        return self.add_fault("error", status=status, path=path, remaining=count,
                              retry_after=retry_after)

    def add_latency(self, seconds: float, count: int | None = None,
                    path: str | None = None) -> Fault:
        return self.add_fault("latency", delay=seconds, remaining=count, path=path)

    def add_slow_reply(self, seconds: float, count: int | None = None, path: str | None = None,
                       method: str | None = None) -> Fault:
        """Serve at once but answer ``seconds`` later: the caller learns late of what is done."""
        return self.add_fault("slow_reply", delay=seconds, remaining=count, path=path, method=method)

    def fail_sync_tokens(self, count: int | None = 1) -> Fault:
        """The next incremental list calls answer 410 ``fullSyncRequired``."""
        return self.add_fault("sync_gone", remaining=count)

    def fail_refresh(self, count: int | None = 1) -> Fault:
        """The next refresh-token grants answer ``invalid_grant``."""
        return self.add_fault("invalid_grant", remaining=count)

    def clear_faults(self) -> None:
        self.faults.clear()

    def misdeliver_notifications(self, *, drop: int = 0, duplicate: int = 0, reorder: int = 0) -> None:
        """Push messages go astray: the next ``drop`` are lost, ``duplicate`` sent twice,
        ``reorder`` held back and sent newest first (push_faults.DeliveryFaults)."""
        self.push.misdeliver(drop=drop, duplicate=duplicate, reorder=reorder)

    def clear_notification_faults(self) -> None:
        """Faithful delivery again; held messages go out now."""
        self.push.clear_delivery_faults()

    def expire_sync_tokens(self, calendar_id: str | None = None) -> None:
        """Invalidate every sync token issued so far (for one calendar, or all)."""
        self.store.expire_sync_tokens(calendar_id)

    def expire_access_tokens(self, email: str | None = None) -> None:
        """Make current access tokens expired; the API answers 401 until refreshed."""
        self.oauth.expire_access_tokens(email)

    def revoke_refresh_token(self, token: str | None = None, *, email: str | None = None) -> int:
        """Revoke one refresh token or all of a user's; returns how many were revoked."""
        if token is None and email is None:
            raise ValueError("give a token or an email")
        return self.oauth.revoke_grants(token=token, user=email)

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator's clock (token and channel expiry, ``updated`` times)."""
        self.clock.advance(seconds)

    # --- observation -------------------------------------------------------------------------
    def notifications(self, channel_id: str | None = None) -> list[Notification]:
        """Push messages processed so far (delivered, failed or dropped), in order."""
        return self.push.wait(0, channel_id, 0)

    def wait_for_notifications(self, count: int, channel_id: str | None = None,
                               timeout: float = 5.0) -> list[Notification]:
        return self.push.wait(count, channel_id, timeout)

    def channels(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [{**c.resource(), "address": c.address, "calendarId": c.calendar_id,
                     "user": c.user, "stopped": c.stopped} for c in self.push.channels.values()]

    def request_log(self, path_contains: str | None = None) -> list[dict[str, Any]]:
        return [dict(r) for r in list(self.requests)
                if path_contains is None or path_contains in r["path"]]


def main(argv: list[str] | None = None) -> None:
    """Run the emulator standalone, for poking at it by hand."""
    parser = argparse.ArgumentParser(description="Google Calendar + OAuth sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", action="append", default=[], help="email of an account")
    parser.add_argument("--approve", action="store_true", help="auto-approve consent")
    args = parser.parse_args(argv)
    sandbox = GoogleSandbox(consent_mode="approve" if args.approve else "page")
    for email in args.user:
        sandbox.add_user(email)
    base = sandbox.start(args.host, args.port)
    print(f"Google sandbox on {base}\n  api_endpoint {sandbox.api_endpoint}\n"
          f"  auth_uri {sandbox.auth_uri}\n  token_uri {sandbox.token_uri}\n"
          f"  client_id {sandbox.DEFAULT_CLIENT_ID}\n"
          f"  client_secret {sandbox.DEFAULT_CLIENT_SECRET}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sandbox.stop()


if __name__ == "__main__":
    main()
