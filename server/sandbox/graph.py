"""A stateful emulator of Microsoft Graph calendars and the Microsoft identity
platform (Azure AD v2 / Entra ID), written from the public references.

It serves HTTPS on a free 127.0.0.1 port with a certificate from a throwaway
CA (trustme), because MSAL refuses non-https authorities; point MSAL at
``authority`` (with ``instance_discovery=False`` and an ``http_client`` whose
``verify`` is ``ca_bundle``) and Graph calls at ``graph_url``.
:class:`GraphSandbox` is the control API tests use to create users, calendars
and events "from the Outlook side", inject faults, revoke grants, send
lifecycle events and inspect the notifications it delivered.

    with GraphSandbox() as graph:
        graph.add_user("mike@example.com", time_zone="Pacific Standard Time")
        session = requests.Session(); session.verify = graph.ca_bundle
        app = msal.ConfidentialClientApplication(graph.DEFAULT_CLIENT_ID,
            client_credential=graph.DEFAULT_CLIENT_SECRET, authority=graph.authority,
            instance_discovery=False, http_client=session)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import ssl
import tempfile
import threading
import weakref
from collections import deque
from typing import Any

import trustme

from server.sandbox import graph_errors as errors
from server.sandbox.graph_delta import DeltaService
from server.sandbox.graph_events import EventsService
from server.sandbox.graph_http import create_app
from server.sandbox.graph_oauth import IdentityServer
from server.sandbox.graph_push import Delivery, PushService
from server.sandbox.graph_store import Clock, GraphConfig, Store
from server.sandbox.graph_time import parse_query_instant
from server.sandbox.graph_view import View
from server.sandbox.serving import BackgroundServer

__all__ = ["Delivery", "GraphConfig", "GraphSandbox"]


class GraphSandbox:
    """Microsoft Graph calendar + identity platform emulator with a Python control API."""

    DEFAULT_CLIENT_ID = "5e3ce6c0-2b1f-4285-8d4b-75ee78787346"
    DEFAULT_CLIENT_SECRET = "lockstep-graph-sandbox-secret"

    def __init__(self, config: GraphConfig | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or GraphConfig(), **overrides)
        self.clock = Clock()
        self.store = Store(self.config, self.clock)
        self.identity = IdentityServer(self.store)
        self._ca = trustme.CA()
        fd, self.ca_bundle = tempfile.mkstemp(prefix="graph-sandbox-ca-", suffix=".pem")
        with os.fdopen(fd, "wb") as handle:
            handle.write(self._ca.cert_pem.bytes())
        weakref.finalize(self, _unlink, self.ca_bundle)
        client_tls = ssl.create_default_context()
        self._ca.configure_trust(client_tls)
        if self.config.webhook_ca_file:
            client_tls.load_verify_locations(self.config.webhook_ca_file)
        self.push = PushService(self.store, client_tls)
        self.view = View(self.store)
        self.events = EventsService(self.store, self.view, self.push.changed)
        self.delta = DeltaService(self.store, self.view)
        self.requests: deque[dict[str, Any]] = deque(maxlen=20000)
        self.server_errors: list[str] = []
        self._faults: deque[errors.GraphError] = deque()
        self._delays: list[_Delay] = []
        self._delta_failures = 0
        self._fault_lock = threading.Lock()
        self.base_url = "https://127.0.0.1"
        self.app = create_app(self)
        self._http = BackgroundServer("graph-sandbox-https")
        self.identity.add_client(self.DEFAULT_CLIENT_ID, self.DEFAULT_CLIENT_SECRET)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve HTTPS on ``host:port`` (0: a free port) from a daemon thread."""
        if self._http.running:
            return self.base_url
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ca.issue_cert(host, "127.0.0.1", "localhost", "::1").configure_cert(server_tls)
        self.base_url = f"https://{host}:{self._http.start(self.app, host, port, server_tls)}"
        self.push.start()
        return self.base_url

    def stop(self) -> None:
        self._http.stop()
        self.push.shutdown()

    def __enter__(self) -> GraphSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def lockstep_env(self) -> dict[str, str]:
        """The LOCKSTEP_MICROSOFT_* settings that point a Lockstep server at this emulator."""
        return {
            "LOCKSTEP_MICROSOFT_CLIENT_ID": self.DEFAULT_CLIENT_ID,
            "LOCKSTEP_MICROSOFT_CLIENT_SECRET": self.DEFAULT_CLIENT_SECRET,
            "LOCKSTEP_MICROSOFT_AUTHORITY": self.authority,
            "LOCKSTEP_MICROSOFT_GRAPH_URL": self.graph_url,
            "LOCKSTEP_MICROSOFT_CA_BUNDLE": self.ca_bundle,
        }

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.config.tenant}"

    @property
    def graph_url(self) -> str:
        return f"{self.base_url}/v1.0"

    @property
    def tenant_id(self) -> str:
        return self.config.tenant_id

    # --- identities and calendars --------------------------------------------------------------
    def add_client(self, client_id: str, client_secret: str,
                   redirect_uris: list[str] | None = None) -> None:
        """Register a confidential client; ``redirect_uris=None`` accepts any http(s) URL."""
        self.identity.add_client(client_id, client_secret, redirect_uris)

    def add_user(self, email: str, name: str | None = None, time_zone: str = "UTC") -> str:
        """A mailbox with its default calendar "Calendar"; returns the user id."""
        return self.store.add_user(email, name, time_zone).id

    def add_calendar(self, email: str, name: str, *, can_edit: bool = True) -> str:
        return self.store.add_calendar(email, name, can_edit=can_edit).id

    def default_calendar_id(self, email: str) -> str:
        return self.store.user(email).default_calendar

    # --- events, changed "on the Outlook side" -------------------------------------------------
    def create_event(self, email: str, calendar_id: str | None,
                     event: dict[str, Any]) -> dict[str, Any]:
        """As ``POST /me/calendars/{id}/events`` would (None: the default calendar).

        ``isCancelled`` and ``responseStatus`` may be set too, to stand for a meeting
        cancelled by its organizer or the owner's answer to an invitation.
        """
        return self.events.create(email, calendar_id, dict(event), control=True)[0]

    def update_event(self, email: str, event_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """As ``PATCH /me/events/{id}``; an occurrence id creates or updates an exception."""
        self.events.update(email, event_id, dict(patch), control=True)
        found = self.get_event(email, event_id)
        assert found is not None
        return found

    def delete_event(self, email: str, event_id: str) -> None:
        """A master deletes its series; an occurrence id removes that occurrence."""
        self.events.delete(email, event_id)

    def get_event(self, email: str, event_id: str) -> dict[str, Any] | None:
        with self.store.lock:
            try:
                rec, key = self.view.locate(email, event_id)
            except errors.GraphError:
                return None
            if key is None:
                return self.view.render_record(rec, "UTC", [])
            return self.view.render_instance(self.view.instance(rec, key), "UTC", [])

    def stored_events(self, email: str, calendar_id: str | None = None) -> list[dict[str, Any]]:
        """Single instances, series masters and their exceptions that are not deleted."""
        with self.store.lock:
            user = self.store.user(email)
            out: list[dict[str, Any]] = []
            for cal_id in ([calendar_id] if calendar_id else user.calendars):
                for rec in sorted(self.store.calendars[cal_id].events.values(),
                                  key=lambda r: (r.created, r.id)):
                    if rec.deleted:
                        continue
                    out.append(self.view.render_record(rec, "UTC", []))
                    out.extend(self.view.render_record(exc, "UTC", [])
                               for exc in rec.exceptions.values())
            return out

    def instances(self, email: str, series_master_id: str, start: str,
                  end: str) -> list[dict[str, Any]]:
        """Occurrences and exceptions of a series overlapping ``[start, end)`` (ISO 8601)."""
        with self.store.lock:
            rec, key = self.view.locate(email, series_master_id)
            if key is not None or not rec.is_master:
                raise ValueError(f"{series_master_id} is not a series master")
            found = self.view.expand(rec, parse_query_instant(start, "start"),
                                     parse_query_instant(end, "end"))
            found.sort(key=lambda i: (i.start.instant, i.id))
            return [self.view.render_instance(i, "UTC", []) for i in found]

    # --- faults and breakage ----------------------------------------------------------------
    def take_fault(self) -> errors.GraphError | None:
        with self._fault_lock:
            return self._faults.popleft() if self._faults else None

    def rate_limit(self, count: int = 1, retry_after: float = 2) -> None:
        """The next ``count`` Graph calls answer 429 with ``Retry-After``."""
        with self._fault_lock:
            self._faults.extend(errors.throttled(retry_after) for _ in range(count))

    def server_error(self, count: int = 1, status: int = 503) -> None:
        with self._fault_lock:
            self._faults.extend(errors.server_error(status) for _ in range(count))

    def add_latency(self, seconds: float, count: int = 1, path: str | None = None) -> None:
        """The next ``count`` Graph calls (whose path matches the regex ``path``, if given)
        answer ``seconds`` later than they would."""
        with self._fault_lock:
            self._delays.append(_Delay(seconds, count, re.compile(path) if path else None))

    def take_delay(self, path: str) -> float:
        """The injected latency of one call to ``path`` (consumed)."""
        total = 0.0
        with self._fault_lock:
            for delay in self._delays:
                if delay.left > 0 and (delay.path is None or delay.path.search(path)):
                    total += delay.seconds
                    delay.left -= 1
            self._delays = [d for d in self._delays if d.left > 0]
        return total

    def clear_faults(self) -> None:
        """No more injected errors or latency (push misdelivery: clear_notification_faults)."""
        with self._fault_lock:
            self._faults.clear()
            self._delays.clear()
            self._delta_failures = 0

    def misdeliver_notifications(self, *, drop: int = 0, duplicate: int = 0, reorder: int = 0) -> None:
        """Change notifications go astray: the next ``drop`` are lost, ``duplicate`` sent twice,
        ``reorder`` held back and sent newest first (push_faults.DeliveryFaults)."""
        self.push.misdeliver(drop=drop, duplicate=duplicate, reorder=reorder)

    def clear_notification_faults(self) -> None:
        """Faithful delivery again; held notifications go out now."""
        self.push.clear_delivery_faults()

    def fail_delta_tokens(self, count: int = 1) -> None:
        """The next ``count`` delta calls that carry a token (nextLink or deltaLink) answer
        410 ``syncStateNotFound``, as Graph does when it has dropped the sync state."""
        with self._fault_lock:
            self._delta_failures += count

    def take_delta_failure(self) -> bool:
        with self._fault_lock:
            if self._delta_failures <= 0:
                return False
            self._delta_failures -= 1
            return True

    def expire_delta_tokens(self, email: str | None = None) -> None:
        """Every nextLink/deltaLink issued so far answers 410 ``syncStateNotFound``."""
        self.store.expire_delta_tokens(email)

    def expire_access_tokens(self, email: str | None = None) -> None:
        """Current access tokens stop working: Graph answers 401 until the client refreshes."""
        self.identity.expire_access_tokens(email)

    def revoke_refresh_tokens(self, email: str) -> int:
        """Revoke the user's grants (refresh answers invalid_grant); returns how many."""
        return self.identity.revoke(email)

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator's clock (token, code and subscription expiry)."""
        self.clock.advance(seconds)

    # --- subscriptions and observation --------------------------------------------------------
    def subscriptions(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [{**s.resource_json(), "user": s.user}
                    for s in self.push.subscriptions.values()]

    def notifications(self, subscription_id: str | None = None) -> list[dict[str, Any]]:
        """Payload items delivered (2xx) so far, in order; lifecycle ones included."""
        return [d.item for d in self.push.wait(0, subscription_id, 0)]

    def wait_for_notifications(self, count: int, subscription_id: str | None = None,
                               timeout: float = 5.0) -> list[dict[str, Any]]:
        return [d.item for d in self.push.wait(count, subscription_id, timeout)]

    def deliveries(self) -> list[Delivery]:
        """Every POST attempted to a webhook, delivered or not."""
        return list(self.push.sent)

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        """reauthorizationRequired | subscriptionRemoved (also deletes it) | missed.

        Delivered to the subscription's lifecycleNotificationUrl (nothing is sent when it
        has none, as with Graph; subscriptionRemoved still removes it).
        """
        self.push.lifecycle(subscription_id, event)

    def request_log(self, path_contains: str | None = None) -> list[dict[str, Any]]:
        return [dict(r) for r in list(self.requests)
                if path_contains is None or path_contains in r["path"]]


@dataclasses.dataclass
class _Delay:
    seconds: float
    left: int  # calls still to slow down
    path: re.Pattern[str] | None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    """Run the emulator standalone, for poking at it by hand."""
    parser = argparse.ArgumentParser(description="Microsoft Graph + identity platform sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", action="append", default=[], help="email of a mailbox")
    parser.add_argument("--approve", action="store_true", help="auto-approve consent")
    args = parser.parse_args(argv)
    sandbox = GraphSandbox(consent_mode="approve" if args.approve else "page")
    for email in args.user:
        sandbox.add_user(email)
    base = sandbox.start(args.host, args.port)
    print(f"Graph sandbox on {base}\n  authority {sandbox.authority}\n"
          f"  graph_url {sandbox.graph_url}\n  ca_bundle {sandbox.ca_bundle}\n"
          f"  client_id {sandbox.DEFAULT_CLIENT_ID}\n"
          f"  client_secret {sandbox.DEFAULT_CLIENT_SECRET}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sandbox.stop()


if __name__ == "__main__":
    main()
