"""Notification delivery: email to a real SMTP server (aiosmtpd), signed webhooks to a local
receiver, retries and their limit, and a dead SMTP server that holds up nothing else.

The servers are real ``lockstep serve`` processes; notifications are raised either by the
sync engine itself (a conflict in the Google emulator) or through ``notify()``, the service
call every part of Lockstep uses, on the server's database.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from server.config import load_config
from server.notify import Delivery, deliveries, notify
from server.notify_channels import DeliveryError, Outgoing
from server.notify_email import SmtpSettings, send_email
from server.notify_webhook import WebhookSettings, send_webhook
from server.sandbox.google import GoogleSandbox
from tests.support.api import api_for
from tests.support.google_env import connect_google, eventually, google_env
from tests.support.lockstep_server import LockstepServer, free_port, running_server

SECRET = "whsec-test-" + "x" * 20
DISPATCH = ["dispatch@example.com", "ops@example.com"]


# -- local receivers -----------------------------------------------------------------------------
class Mailbox:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def about(self, tech: str) -> list[tuple[str, list[str], email.message.EmailMessage]]:
        return [m for m in self.messages if f"({tech})" in str(m[2]["Subject"]) or m[2]["Subject"].endswith(tech)]


@dataclass
class Receiver:
    """A webhook endpoint: records raw requests; answers the scripted statuses first, then 200."""

    server: ThreadingHTTPServer
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)  # "path" or "path:tech" -> statuses to answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, path: str, tech: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for p, h, b in self.requests if p == path and json.loads(b).get("tech") == tech]


def _receiver() -> Receiver:
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver = holder["r"]
            receiver.requests.append((self.path, dict(self.headers.items()), body))
            tech = json.loads(body or b"{}").get("tech", "")
            statuses = receiver.script.get(f"{self.path}:{tech}") or receiver.script.get(self.path) or []
            status = statuses.pop(0) if statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["r"] = Receiver(http)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return holder["r"]


class SmtpFront:
    """A TCP front for an SMTP server that can play dead: while ``dead`` (always, without an
    upstream) it accepts connections and never says a word, like a hung mail server."""

    def __init__(self, upstream: int | None = None) -> None:
        self.upstream = upstream
        self.dead = upstream is None
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.dead or self.upstream is None:
                self.held.append(client)
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()

    def close(self) -> None:
        self.sock.close()
        for held in self.held:
            held.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = _receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def front(mailbox: Mailbox) -> Iterator[SmtpFront]:
    """What the server takes for its SMTP server: the mailbox, or a hung one when told."""
    relay = SmtpFront(mailbox.port)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def blackhole() -> Iterator[SmtpFront]:
    hole = SmtpFront()
    yield hole
    hole.close()


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def server(backend: str, google: GoogleSandbox, front: SmtpFront, receiver: Receiver,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    env = google_env(
        google,
        LOCKSTEP_SMTP_HOST="127.0.0.1", LOCKSTEP_SMTP_PORT=str(front.port), LOCKSTEP_SMTP_SECURITY="none",
        LOCKSTEP_SMTP_FROM_ADDRESS="lockstep@dispatch.example.com", LOCKSTEP_SMTP_TIMEOUT_SECONDS="4",
        LOCKSTEP_NOTIFY_EMAIL_TO=", ".join(DISPATCH), LOCKSTEP_NOTIFY_EMAIL_TECHS="true",
        LOCKSTEP_NOTIFY_WEBHOOK_URL=receiver.url + "/hook", LOCKSTEP_NOTIFY_WEBHOOK_SECRET=SECRET,
        LOCKSTEP_NOTIFY_WEBHOOK_TIMEOUT_SECONDS="3", LOCKSTEP_NOTIFY_MAX_ATTEMPTS="2")
    with running_server(tmp_path_factory.mktemp(f"notify-{backend}"), backend, extra_env=env) as started:
        yield started


def _raise(server: LockstepServer, tech: str, kind: str, message: str) -> None:
    with server.database.write([tech]) as session:
        notify(session, tech, kind, message)


def _mine(server: LockstepServer, tech: str, channel: str) -> list[Delivery]:
    return [d for d in deliveries(server.database, 500, tech=tech) if d.channel == channel]


def _verify(headers: dict[str, str], body: bytes) -> bool:
    """The receiver's side, written from docs/notifications.md (not from our signing code)."""
    timestamp = headers["X-Lockstep-Timestamp"]
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Lockstep-Signature"], f"sha256={expected}")


# -- through real servers ------------------------------------------------------------------------
def test_email_goes_to_the_dispatcher_and_the_tech(server: LockstepServer, mailbox: Mailbox) -> None:
    tech, _ = server.add_tech()
    message = "Google access was revoked or expired; reconnect to resume sync."
    _raise(server, tech, "needs_reauth", message)

    got = eventually(lambda: len(mailbox.about(tech)) == 2 and mailbox.about(tech), what="two emails")
    by_rcpt = {tuple(rcpt): msg for _, rcpt, msg in got}
    assert set(by_rcpt) == {tuple(DISPATCH), (f"{tech}@example.com",)}
    for mail_from, _, msg in got:
        assert mail_from == "lockstep@dispatch.example.com"
        assert msg["Subject"] == f"[Lockstep] Calendar connection needs re-authorization: Tech {tech} ({tech})"
        assert msg["X-Lockstep-Kind"] == "needs_reauth"
        assert msg.get_content_type() == "text/plain"
        assert message in msg.get_content()
    sent = eventually(lambda: [d for d in _mine(server, tech, "email") if d.state == "sent"], what="sent state")
    assert sorted(d.target for d in sent) == sorted([", ".join(DISPATCH), f"{tech}@example.com"])
    assert all(d.attempts == 1 and d.kind == "needs_reauth" and not d.last_error for d in sent)


def test_webhook_is_signed_and_sent_once_per_event(server: LockstepServer, receiver: Receiver) -> None:
    tech, _ = server.add_tech()
    _raise(server, tech, "sync_recovered", "Google sync works again. Bookings added meanwhile: b-1, b-2.")

    (headers, body), = eventually(lambda: receiver.bodies("/hook", tech), what="the webhook")
    assert _verify(headers, body)
    assert abs(int(headers["X-Lockstep-Timestamp"]) - time.time()) < 300
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert set(payload) == {"id", "kind", "tech", "message", "created_at"}
    assert payload["kind"] == "sync_recovered" and payload["tech"] == tech
    assert "b-1, b-2" in payload["message"]
    assert datetime.strptime(payload["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    tampered = body.replace(b"b-1", b"b-9")
    assert not _verify(headers, tampered)
    (delivery,) = eventually(lambda: [d for d in _mine(server, tech, "webhook") if d.state == "sent"],
                             what="webhook marked sent")
    assert delivery.notification_id == payload["id"] and delivery.target == receiver.url
    assert len(receiver.bodies("/hook", tech)) == 1  # the tech's and dispatcher's rows make one event


def test_webhook_retries_a_5xx_and_stops_at_max_attempts(server: LockstepServer, receiver: Receiver) -> None:
    lucky, _ = server.add_tech()
    unlucky, _ = server.add_tech()
    receiver.script[f"/hook:{lucky}"] = [503]
    receiver.script[f"/hook:{unlucky}"] = [500, 500]  # max_attempts is 2
    _raise(server, lucky, "booking_reverted", "Booking b-3 was changed in the tech's calendar; Lockstep restored it.")
    _raise(server, unlucky, "conflict", "A personal event overlaps booking b-4; the booking keeps the slot.")

    (delivered,) = eventually(lambda: [d for d in _mine(server, lucky, "webhook") if d.state == "sent"],
                              what="delivered on the second attempt")
    assert delivered.attempts == 2 and len(receiver.bodies("/hook", lucky)) == 2
    (failed,) = eventually(lambda: [d for d in _mine(server, unlucky, "webhook") if d.state == "failed"],
                           what="failed after max_attempts")
    assert failed.attempts == 2 and "HTTP 500" in failed.last_error
    assert len(receiver.bodies("/hook", unlucky)) == 2


@pytest.fixture(scope="module")
def google_tech(server: LockstepServer, google: GoogleSandbox) -> str:
    """A tech connected to the Google emulator through the consent flow."""
    tech, _ = server.add_tech()
    connect_google(server, google, tech)
    return tech


def test_a_conflict_in_google_reaches_email_and_webhook(server: LockstepServer, google: GoogleSandbox,
                                                         mailbox: Mailbox, receiver: Receiver,
                                                         google_tech: str) -> None:
    tech = google_tech
    api = api_for(server, "bookings")
    slot = {"start": "2026-12-01T17:00:00Z", "end": "2026-12-01T18:00:00Z"}
    assert api.post("/bookings", {"tech": tech, "summary": "Fix boiler", **slot}).status_code == 201
    google.create_event(f"{tech}@example.com", {"summary": "Dentist", "start": {"dateTime": slot["start"]},
                                                "end": {"dateTime": slot["end"]}})

    (headers, body), = eventually(lambda: receiver.bodies("/hook", tech), timeout=30, what="conflict webhook")
    assert _verify(headers, body) and json.loads(body)["kind"] == "conflict"
    mails = eventually(lambda: len(mailbox.about(tech)) == 2 and mailbox.about(tech), what="conflict emails")
    assert all(m["X-Lockstep-Kind"] == "conflict" for _, _, m in mails)


def test_a_dead_smtp_server_holds_up_neither_sync_nor_the_webhook(server: LockstepServer, google: GoogleSandbox,
                                                                   receiver: Receiver, front: SmtpFront,
                                                                   google_tech: str) -> None:
    tech = google_tech

    def emails() -> list[Delivery]:
        return [d for d in _mine(server, tech, "email") if d.kind == "needs_reauth"]

    def hooks() -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in receiver.bodies("/hook", tech) if json.loads(b)["kind"] == "needs_reauth"]

    front.dead = True  # accepts, never answers: each attempt hangs until [smtp] timeout_seconds
    try:
        _raise(server, tech, "needs_reauth", "Google access was revoked or expired; reconnect to resume sync.")
        eventually(lambda: any(d.state == "sending" for d in emails()), what="email hanging")

        uid = api_for(server, "bookings").post("/bookings", {
            "tech": tech, "summary": "Meanwhile", "start": "2026-12-02T17:00:00Z",
            "end": "2026-12-02T18:00:00Z"}).json()["uid"]
        eventually(lambda: any((e.get("extendedProperties") or {}).get("private", {}).get("lockstepUid") == uid
                               for e in google.stored_events(f"{tech}@example.com")), what="the booking pushed")
        eventually(hooks, what="the webhook")
        # Both done while the first SMTP attempt still hangs: nothing waited for it.
        assert [d.state for d in emails() if d.attempts] == ["sending"], emails()
    finally:
        front.dead = False
    # The hung attempt times out, and the retry reaches the (now answering) server.
    sent = eventually(lambda: len(now := emails()) == 2 and all(d.state == "sent" for d in now) and now,
                      timeout=30, what="both emails sent")
    assert sorted(d.attempts for d in sent) == [1, 2], sent


# -- the channels alone --------------------------------------------------------------------------
OUTGOING = Outgoing(id=7, kind="conflict", tech="mike", tech_name="Mike Ross", audience="dispatcher",
                    message="A personal event overlaps booking b-1.", created_at=datetime.now(timezone.utc))


def _smtp(port: int, timeout: float = 1.0) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=port, username="", password="", security="none",
                        from_address="lockstep@example.com", timeout=timeout)


def test_a_closed_smtp_port_fails_at_once_and_is_retried() -> None:
    with pytest.raises(DeliveryError) as caught:
        send_email(_smtp(free_port()), ["a@example.com"], OUTGOING)
    assert not caught.value.permanent and "ConnectionRefused" in str(caught.value)


def test_a_silent_smtp_server_times_out(blackhole: SmtpFront) -> None:
    with pytest.raises(DeliveryError) as caught:
        send_email(_smtp(blackhole.port, timeout=0.5), ["a@example.com"], OUTGOING)
    assert not caught.value.permanent and "timed out" in str(caught.value)


def test_starttls_is_required_when_configured(mailbox: Mailbox) -> None:
    settings = SmtpSettings(**{**_smtp(mailbox.port).__dict__, "security": "starttls"})
    with pytest.raises(DeliveryError) as caught:
        send_email(settings, ["a@example.com"], OUTGOING)
    assert caught.value.permanent and "STARTTLS" in str(caught.value)


def test_a_4xx_from_the_webhook_is_permanent_and_a_redirect_is_not_followed(receiver: Receiver) -> None:
    receiver.script["/gone"] = [410]
    with pytest.raises(DeliveryError) as caught:
        send_webhook(WebhookSettings(receiver.url + "/gone", SECRET, 2.0), OUTGOING)
    assert caught.value.permanent and "410" in str(caught.value)
    receiver.script["/moved"] = [307]
    with pytest.raises(DeliveryError) as moved:
        send_webhook(WebhookSettings(receiver.url + "/moved", SECRET, 2.0), OUTGOING)
    assert not moved.value.permanent and "307" in str(moved.value)
    assert [p for p, _, _ in receiver.requests].count("/moved") == 1


def test_bad_channel_settings_are_refused_when_the_config_loads(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[smtp\] security: must be starttls, ssl or none"):
        load_config(tmp_path, environ={"LOCKSTEP_SMTP_SECURITY": "tls"})
    with pytest.raises(ValueError, match=r"\[notify\] webhook_url: must be an http\(s\) URL"):
        load_config(tmp_path, environ={"LOCKSTEP_NOTIFY_WEBHOOK_URL": "dispatch.example.com/hook"})
