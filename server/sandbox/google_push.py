"""Push notification channels of the emulator (events.watch, channels.stop).

A channel's first message has ``X-Goog-Resource-State: sync``; every later change
to the watched calendar sends ``exists``, with ``X-Goog-Message-Number``
increasing per channel. Messages are body-less POSTs delivered by one
background thread in order, retried a few times on failure, and recorded so
tests can see exactly what was delivered. Only loopback addresses are called
unless ``allow_remote_webhooks`` is set.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlsplit

from server.sandbox import google_errors as errors
from server.sandbox.google_store import Store
from server.sandbox.push_faults import Misdelivery


@dataclass
class Channel:
    id: str
    resource_id: str
    resource_uri: str
    calendar_id: str
    user: str
    address: str
    token: str | None
    expiration_ms: int
    params: dict[str, str]
    stopped: bool = False
    message_number: int = 0

    def resource(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "api#channel", "id": self.id,
                               "resourceId": self.resource_id,
                               "resourceUri": self.resource_uri,
                               "expiration": str(self.expiration_ms)}
        if self.token is not None:
            out["token"] = self.token
        return out


@dataclass
class Notification:
    """One message as sent (or attempted) to a channel's address."""

    channel_id: str
    message_number: int
    resource_state: str
    address: str
    headers: dict[str, str]
    status: int | None = None
    error: str | None = None
    attempts: int = 0
    sent_at: float | None = None
    queued_at: float = field(default_factory=time.time)

    @property
    def delivered(self) -> bool:
        return self.status is not None and (200 <= self.status < 300 or self.status == 102)


def resource_id_for(calendar_id: str) -> str:
    """Opaque and stable per watched resource, like Google's."""
    return hashlib.sha1(f"events:{calendar_id}".encode()).hexdigest()[:27]


def _loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PushDispatcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.channels: dict[str, Channel] = {}
        self.sent: deque[Notification] = deque(maxlen=50000)
        self._queue: queue.Queue[Notification | None] = queue.Queue()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.misdelivery: Misdelivery[Notification] = Misdelivery()

    def misdeliver(self, *, drop: int = 0, duplicate: int = 0, reorder: int = 0) -> None:
        """Drop, duplicate or reorder the next messages (see push_faults.DeliveryFaults)."""
        self.misdelivery.add(drop=drop, duplicate=duplicate, reorder=reorder)

    def clear_delivery_faults(self) -> None:
        """Back to faithful delivery; messages held for reordering are sent now (newest first)."""
        for note in self.misdelivery.clear():
            self._queue.put(note)

    # --- API ---------------------------------------------------------------------
    def watch(self, user: str, calendar_id: str, body: Any, base_url: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("Bad Request", reason="badRequest")
        channel_id = body.get("id")
        if not channel_id or not isinstance(channel_id, str) or len(channel_id) > 64:
            raise errors.required("Required channel id.", location="id")
        if body.get("type") not in ("web_hook", "webhook"):
            raise errors.bad_request("Invalid channel type.", location="type")
        address = body.get("address") or ""
        scheme = urlsplit(address).scheme
        if scheme not in ("http", "https") or not urlsplit(address).hostname:
            raise errors.bad_request("Invalid or missing WebHook callback address.",
                                     reason="push.webhookUrlUnauthorized", location="address")
        if scheme != "https" and self.store.config.require_https_webhooks:
            raise errors.bad_request("WebHook callback must be HTTPS: " + address,
                                     reason="push.webhookUrlNotHttps", location="address")
        params = {str(k): str(v) for k, v in (body.get("params") or {}).items()}
        now_ms = int(self.store.clock.now() * 1000)
        config = self.store.config
        ttl = config.channel_default_ttl
        if "ttl" in params:
            try:
                ttl = int(params["ttl"])
            except ValueError:
                raise errors.bad_request("Invalid ttl value.", location="params.ttl") from None
        expiration = now_ms + min(ttl, config.channel_max_ttl) * 1000
        if body.get("expiration"):
            expiration = min(int(body["expiration"]), now_ms + config.channel_max_ttl * 1000)
        with self.store.lock:
            existing = self.channels.get(channel_id)
            if existing is not None and not existing.stopped:
                raise errors.bad_request(f"Channel id {channel_id} not unique",
                                         reason="channelIdNotUnique", location="id")
            channel = Channel(
                id=channel_id, resource_id=resource_id_for(calendar_id),
                resource_uri=(f"{base_url}/calendar/v3/calendars/"
                              f"{quote(calendar_id, safe='@')}/events?alt=json"),
                calendar_id=calendar_id, user=user, address=address,
                token=body.get("token"), expiration_ms=expiration, params=params)
            self.channels[channel_id] = channel
            self._enqueue(channel, "sync")
        return channel.resource()

    def stop(self, user: str, body: Any) -> None:
        if not isinstance(body, dict) or not body.get("id"):
            raise errors.required("Required channel id.", location="id")
        with self.store.lock:
            channel = self.channels.get(body["id"])
            if channel is None or channel.stopped or channel.user != user or (
                    body.get("resourceId") and body["resourceId"] != channel.resource_id):
                raise errors.ApiError(404, f"Channel '{body['id']}' not found for project",
                                      reason="notFound")
            channel.stopped = True

    def calendar_changed(self, calendar_id: str) -> None:
        with self.store.lock:
            for channel in self.channels.values():
                if channel.calendar_id == calendar_id and self._active(channel):
                    self._enqueue(channel, "exists")

    def _active(self, channel: Channel) -> bool:
        return not channel.stopped and channel.expiration_ms > self.store.clock.now() * 1000

    def _enqueue(self, channel: Channel, state: str) -> None:
        channel.message_number += 1
        headers = {
            "X-Goog-Channel-ID": channel.id,
            "X-Goog-Channel-Expiration": formatdate(channel.expiration_ms / 1000, usegmt=True),
            "X-Goog-Resource-ID": channel.resource_id,
            "X-Goog-Resource-URI": channel.resource_uri,
            "X-Goog-Resource-State": state,
            "X-Goog-Message-Number": str(channel.message_number),
        }
        if channel.token is not None:
            headers["X-Goog-Channel-Token"] = channel.token
        self._queue.put(Notification(channel.id, channel.message_number, state,
                                     channel.address, headers))

    # --- delivery ------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="google-sandbox-push",
                                            daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while True:
            note = self._queue.get()
            if note is None:
                return
            if note.resource_state == "sync":
                time.sleep(max(0.0, note.queued_at + self.store.config.push_sync_delay
                               - time.time()))
            for each in self.misdelivery.route(note) if note.error is None else [note]:
                self._process(each)

    def _process(self, note: Notification) -> None:
        if note.error is None:
            channel = self.channels.get(note.channel_id)
            if channel is not None and (channel.stopped or not self._active(channel)):
                note.error = "channel stopped or expired before delivery"
            else:
                self._deliver(note)
        with self._cond:
            self.sent.append(note)
            self._cond.notify_all()

    def _deliver(self, note: Notification) -> None:
        parts = urlsplit(note.address)
        host = parts.hostname or ""
        if not self.store.config.allow_remote_webhooks and not _loopback(host):
            note.error = "refused: sandbox delivers only to loopback addresses"
            return
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {**note.headers, "Content-Type": "application/json; charset=utf-8",
                   "Content-Length": "0", "User-Agent": "APIs-Google (sandbox)"}
        for attempt in range(1 + max(0, self.store.config.push_retries)):
            note.attempts = attempt + 1
            conn_type = (http.client.HTTPSConnection if parts.scheme == "https"
                         else http.client.HTTPConnection)
            conn = conn_type(host, parts.port, timeout=self.store.config.push_timeout)
            try:
                conn.request("POST", path, body=b"", headers=headers)
                response = conn.getresponse()
                response.read()
                note.status, note.error = response.status, None
            except OSError as exc:
                note.status, note.error = None, f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
            note.sent_at = time.time()
            if note.delivered:
                return
            time.sleep(min(0.2 * 2 ** attempt, 2.0))

    def wait(self, count: int, channel_id: str | None, timeout: float) -> list[Notification]:
        """Block until ``count`` messages (of one channel, if given) were processed."""
        deadline = time.time() + timeout
        with self._cond:
            while True:
                found = [n for n in self.sent if channel_id in (None, n.channel_id)]
                remaining = deadline - time.time()
                if len(found) >= count or remaining <= 0:
                    return list(found)
                self._cond.wait(remaining)
