"""Change-notification subscriptions of the Graph emulator (webhooks delivery).

``POST /subscriptions`` first validates each endpoint the way Graph does: a
POST to ``notificationUrl?validationToken=...`` (and to the
``lifecycleNotificationUrl``) that must answer 200 ``text/plain`` with the
token within 10 seconds, otherwise 400 ``ValidationError`` and no
subscription. Changes are then POSTed as ``{"value": [changeNotification]}``
from a background thread, retried a few times when the answer is not 2xx;
lifecycle notifications (``reauthorizationRequired``, ``subscriptionRemoved``,
``missed``) go to the lifecycle URL. Expired subscriptions stop notifying.
A change to one occurrence of a series (it becomes an exception, or is deleted)
is reported as ``updated`` on the series master, the item Exchange modifies.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import queue
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from server.sandbox import graph_errors as errors
from server.sandbox.graph_store import Store
from server.sandbox.graph_time import fmt_utc, parse_wall
from server.sandbox.push_faults import Misdelivery

CHANGE_TYPES = ("created", "updated", "deleted")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
_RESOURCE = re.compile(r"^/?(?:me|users/([^/]+))/(?:(events)|calendar/events|"
                       r"calendars/([^/]+)/events)$", re.I)


@dataclass
class Subscription:
    id: str
    user: str
    user_id: str
    client_id: str
    resource: str
    calendar_id: str | None  # None: every calendar of the mailbox
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires: datetime
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def resource_json(self) -> dict[str, Any]:
        return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/"
                                  "$entity",
                "id": self.id, "resource": self.resource, "applicationId": self.client_id,
                "changeType": ",".join(self.change_types), "clientState": self.client_state,
                "notificationUrl": self.notification_url,
                "lifecycleNotificationUrl": self.lifecycle_url,
                "expirationDateTime": fmt_utc(self.expires), "creatorId": self.user_id,
                "includeResourceData": False, "latestSupportedTlsVersion": "v1_2",
                "encryptionCertificate": None, "encryptionCertificateId": None,
                "notificationQueryOptions": None, "notificationUrlAppId": None}


@dataclass
class Delivery:
    """One POST to a webhook: its payload item and what became of it."""

    subscription_id: str
    url: str
    item: dict[str, Any]
    kind: str  # "change" | "lifecycle"
    status: int | None = None
    attempts: int = 0
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PushService:
    def __init__(self, store: Store, tls: ssl.SSLContext | None = None) -> None:
        self.store = store
        self.subscriptions: dict[str, Subscription] = {}
        self.sent: list[Delivery] = []
        self.tls = tls or ssl.create_default_context()
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.misdelivery: Misdelivery[Delivery] = Misdelivery()

    def misdeliver(self, *, drop: int = 0, duplicate: int = 0, reorder: int = 0) -> None:
        """Drop, duplicate or reorder the next change notifications (push_faults.DeliveryFaults);
        Graph promises neither order nor exactly-once delivery. Lifecycle ones are not touched."""
        self.misdelivery.add(drop=drop, duplicate=duplicate, reorder=reorder)

    def clear_delivery_faults(self) -> None:
        """Faithful delivery again; notifications held for reordering are sent now (newest first)."""
        for delivery in self.misdelivery.clear():
            self._queue.put(delivery)

    # --- subscription API -------------------------------------------------------------
    def _expiry(self, value: Any) -> datetime:
        if not value:
            raise errors.bad_request("expirationDateTime is a required property.",
                                     code="InvalidRequest")
        parsed = parse_wall(str(value), "expirationDateTime")
        parsed = parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed
        now = datetime.fromtimestamp(self.store.clock.now(), timezone.utc)
        limit = self.store.config.subscription_max_minutes
        if parsed <= now:
            raise errors.bad_request("Subscription expiration must be in the future.",
                                     code="ExtensionError")
        if parsed > now + timedelta(minutes=limit):
            raise errors.bad_request(f"Subscription expiration can only be {limit} minutes "
                                     "in the future.", code="ExtensionError")
        return parsed.astimezone(timezone.utc)

    def _check_url(self, url: Any, name: str) -> str:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.bad_request(f"{name} must be an absolute https URL.",
                                     code="InvalidRequest")
        if parts.scheme != "https" and self.store.config.require_https_webhooks:
            raise errors.bad_request(f"Subscription {name} must be an https URL.",
                                     code="InvalidRequest")
        if not self.store.config.allow_remote_webhooks and not _loopback(parts.hostname):
            raise errors.bad_request("The sandbox delivers only to loopback addresses.",
                                     code="InvalidRequest")
        return url

    def create(self, email: str, client_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("Empty Payload. JSON content expected.", code="BadRequest")
        changes = tuple(c.strip() for c in str(body.get("changeType") or "").split(",")
                        if c.strip())
        if not changes or any(c not in CHANGE_TYPES for c in changes):
            raise errors.bad_request(f"Invalid changeType '{body.get('changeType')}'.",
                                     code="InvalidRequest")
        url = self._check_url(body.get("notificationUrl"), "notificationUrl")
        lifecycle = body.get("lifecycleNotificationUrl")
        if lifecycle is not None:
            self._check_url(lifecycle, "lifecycleNotificationUrl")
        client_state = body.get("clientState")
        if client_state is not None and (not isinstance(client_state, str)
                                         or len(client_state) > 128):
            raise errors.bad_request("clientState must be a string of at most 128 characters.",
                                     code="InvalidRequest")
        expires = self._expiry(body.get("expirationDateTime"))
        resource = str(body.get("resource") or "")
        calendar_id = self._resource_calendar(email, resource)
        for target in (url, lifecycle):
            if target:
                self._validate_endpoint(target)
        with self.store.lock:
            user = self.store.user(email)
            sub = Subscription(id=str(uuid.uuid4()), user=user.email.lower(), user_id=user.id,
                               client_id=client_id, resource=resource, calendar_id=calendar_id,
                               change_types=changes, notification_url=url,
                               lifecycle_url=lifecycle, client_state=client_state,
                               expires=expires)
            self.subscriptions[sub.id] = sub
            return sub.resource_json()

    def _resource_calendar(self, email: str, resource: str) -> str | None:
        match = _RESOURCE.match(resource.strip())
        user = self.store.user(email)
        if not match or (match.group(1) and match.group(1).lower() not in (
                user.id, user.email.lower())):
            raise errors.bad_request(f"Resource '{resource}' is not supported for events "
                                     "subscriptions.", code="InvalidRequest")
        if match.group(2):
            return None
        if match.group(3) is None:
            return user.default_calendar
        if self.store.calendar_of(email, match.group(3)) is None:
            raise errors.not_found("The specified calendar was not found.")
        return match.group(3)

    def _validate_endpoint(self, url: str) -> None:
        token = f"Validation: Testing client application reachability for subscription " \
                f"Request-Id: {uuid.uuid4()}"
        sep = "&" if urlsplit(url).query else "?"
        target = f"{url}{sep}{urlencode({'validationToken': token}, quote_via=quote)}"
        status, content_type, text, error = self._post(
            target, b"", {"Content-Type": "text/plain; charset=utf-8"},
            self.store.config.validation_timeout)
        if status == 200 and content_type.lower().startswith("text/plain") and text == token:
            return
        detail = error or (f"answered {status} {content_type!r}" if status != 200 or
                           not content_type.lower().startswith("text/plain")
                           else "did not echo the validation token")
        raise errors.bad_request(
            "Subscription validation request failed. Notification endpoint must respond with "
            f"200 OK to validation request. ({url}: {detail})", code="ValidationError")

    def get(self, email: str, sub_id: str) -> Subscription:
        sub = self.subscriptions.get(sub_id)
        if sub is None or sub.user != email.lower() or not self._active(sub):
            raise errors.GraphError(404, "ResourceNotFound",
                                    f"The object was not found: subscription {sub_id}.")
        return sub

    def renew(self, email: str, sub_id: str, body: Any) -> dict[str, Any]:
        with self.store.lock:
            sub = self.get(email, sub_id)
            if not isinstance(body, dict):
                raise errors.bad_request("Empty Payload. JSON content expected.")
            sub.expires = self._expiry(body.get("expirationDateTime"))
            return sub.resource_json()

    def delete(self, email: str, sub_id: str) -> None:
        with self.store.lock:
            self.get(email, sub_id)
            del self.subscriptions[sub_id]

    def listing(self, email: str) -> list[dict[str, Any]]:
        with self.store.lock:
            return [s.resource_json() for s in self.subscriptions.values()
                    if s.user == email.lower() and self._active(s)]

    def _active(self, sub: Subscription) -> bool:
        return sub.expires.timestamp() > self.store.clock.now()

    # --- notifications -----------------------------------------------------------------
    def changed(self, email: str, calendar_id: str, event_id: str, change_type: str) -> None:
        with self.store.lock:
            user = self.store.user(email)
            for sub in list(self.subscriptions.values()):
                if sub.user != user.email.lower() or not self._active(sub) \
                        or change_type not in sub.change_types \
                        or sub.calendar_id not in (None, calendar_id):
                    continue
                resource = f"Users/{user.id}/Events/{event_id}"
                item = {"subscriptionId": sub.id,
                        "subscriptionExpirationDateTime": fmt_utc(sub.expires),
                        "changeType": change_type, "resource": resource,
                        "resourceData": {"@odata.type": "#Microsoft.Graph.Event",
                                         "@odata.id": resource, "id": event_id},
                        "clientState": sub.client_state,
                        "tenantId": self.store.config.tenant_id}
                self._queue.put(Delivery(sub.id, sub.notification_url, item, "change"))

    def lifecycle(self, sub_id: str, event: str) -> None:
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"lifecycle event must be one of {LIFECYCLE_EVENTS}")
        with self.store.lock:
            sub = self.subscriptions.get(sub_id)
            if sub is None:
                raise KeyError(sub_id)
            if event == "subscriptionRemoved":
                del self.subscriptions[sub_id]
            if not sub.lifecycle_url:
                return  # Graph has nowhere to say it; the removal still happens
            item = {"subscriptionId": sub.id,
                    "subscriptionExpirationDateTime": fmt_utc(sub.expires),
                    "tenantId": self.store.config.tenant_id, "clientState": sub.client_state,
                    "lifecycleEvent": event}
            self._queue.put(Delivery(sub.id, sub.lifecycle_url, item, "lifecycle"))

    # --- delivery ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="graph-sandbox-push",
                                            daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while True:
            delivery = self._queue.get()
            if delivery is None:
                return
            routed = [delivery] if delivery.kind != "change" or delivery.error is not None \
                else self.misdelivery.route(delivery)
            for each in routed:
                self._process(each)

    def _process(self, delivery: Delivery) -> None:
        sub = self.subscriptions.get(delivery.subscription_id)
        if delivery.error is not None:
            pass  # dropped by an injected fault: recorded, not sent
        elif delivery.kind == "change" and (sub is None or not self._active(sub)):
            delivery.error = "subscription removed or expired before delivery"
        else:
            self._deliver(delivery)
        with self._cond:
            self.sent.append(delivery)
            self._cond.notify_all()

    def _deliver(self, delivery: Delivery) -> None:
        body = json.dumps({"value": [delivery.item]}).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        for attempt in range(1 + max(0, self.store.config.notification_retries)):
            delivery.attempts = attempt + 1
            status, _, _, error = self._post(delivery.url, body, headers,
                                             self.store.config.notification_timeout)
            delivery.status, delivery.error = status, error
            if delivery.delivered:
                return
            time.sleep(min(0.2 * 2 ** attempt, 2.0))

    def _post(self, url: str, body: bytes, headers: dict[str, str],
              timeout: float) -> tuple[int | None, str, str, str | None]:
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname or "", parts.port,
                                               timeout=timeout, context=self.tls)
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        try:
            conn.request("POST", path, body=body, headers={
                **headers, "User-Agent": "Microsoft-Graph-Change-Notifications (sandbox)"})
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            return response.status, response.getheader("Content-Type") or "", text, None
        except OSError as exc:
            return None, "", "", f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    def wait(self, count: int, sub_id: str | None, timeout: float) -> list[Delivery]:
        deadline = time.time() + timeout
        with self._cond:
            while True:
                found = [d for d in self.sent if sub_id in (None, d.subscription_id)
                         and d.delivered]
                remaining = deadline - time.time()
                if len(found) >= count or remaining <= 0:
                    return found
                self._cond.wait(remaining)
