"""Real remote CalDAV servers for the remote CalDAV provider's tests, and the remote side's hands.

* :func:`radicale_server` - a second, separately started stock Radicale (its own
  htpasswd): revoking = changing the password in that file, expiring sync tokens =
  removing Radicale's sync-token cache of the collection.
* :func:`xandikos_server` - a stock Xandikos; it has no accounts of its own (it is
  meant to run behind a reverse proxy that authenticates), so the proxy does Basic auth.

Both are reached through :class:`FaultProxy`, a plain forwarding HTTP proxy that can
answer the next requests with an error (429 + Retry-After) the way a busy hosted
server does. Remote-side changes (:class:`RemoteCalendar`) go over plain HTTP with
``requests`` and ``icalendar`` - never through the provider under test.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import caldav
import icalendar
import requests

from server.providers.caldav_remote_client import absolute, canonical_path
from tests.support.lockstep_server import LockstepServer
from tests.support.stock_radicale import _free_port, _wait_until_up, start_stock_radicale

USER, PASSWORD = "alice", "app-pass-1"
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization",
        "proxy-connection", "trailer"}
_UNSUPPORTED_REPORT = (b'<?xml version="1.0" encoding="utf-8"?>\n'
                       b'<D:error xmlns:D="DAV:"><D:supported-report/></D:error>')  # RFC 3253 3.6
_METHODS = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PROPFIND", "PROPPATCH", "REPORT",
            "MKCALENDAR", "MKCOL", "POST", "MOVE", "COPY")


# --- the forwarding proxy ---------------------------------------------------------------------

class _ProxyHandler(BaseHTTPRequestHandler):
    server: Any

    def _forward(self) -> None:
        proxy = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = proxy.take_fault()
        if fault is not None:
            status, headers = fault
            return self._answer(status, headers, b"")
        if proxy.without_sync_collection and self.command == "REPORT" and b"sync-collection" in body:
            return self._answer(403, {"Content-Type": "application/xml"}, _UNSUPPORTED_REPORT)
        if proxy.users is not None and not proxy.authorised(self.headers.get("Authorization")):
            return self._answer(401, {"WWW-Authenticate": 'Basic realm="caldav"'}, b"")
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self._answer(answer.status, {k: v for k, v in answer.getheaders()
                                         if k.lower() not in _HOP | {"content-length"}}, data)
        finally:
            upstream.close()

    def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        return None


for _method in _METHODS:
    setattr(_ProxyHandler, f"do_{_method}", _ProxyHandler._forward)


class FaultProxy:
    """Forwards everything to ``upstream``; ``fail_next`` injects error answers first."""

    def __init__(self, upstream: str, users: dict[str, str] | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.users = users
        self.without_sync_collection = False  # answer sync-collection as servers without RFC 6578
        self._faults: list[tuple[int, dict[str, str]]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self.server.owner = self
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail_next(self, status: int, count: int = 1, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self._lock:
            self._faults.extend([(status, headers)] * count)

    def take_fault(self) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def authorised(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        return self.users is not None and self.users.get(user) == password

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the servers ------------------------------------------------------------------------------

@dataclass
class RemoteServer:
    """A running CalDAV server, reached through a FaultProxy; ``users`` are its accounts."""

    kind: str
    proxy: FaultProxy
    root: Path
    users: dict[str, str]
    _save_users: Any = field(repr=False)  # writes ``users`` where the server checks them
    username: str = USER

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def password(self) -> str:
        return PASSWORD

    def client(self, user: str = USER) -> caldav.DAVClient:
        return caldav.DAVClient(url=self.url, username=user, password=self.users[user])

    def add_account(self, user: str, password: str) -> None:
        if self.kind != "radicale":
            raise NotImplementedError("this Xandikos serves one principal")
        self.users[user] = password
        self._save_users()

    def set_password(self, user: str, password: str) -> None:
        """The account's app password changes (a revoked one stops working at once)."""
        self.users[user] = password
        self._save_users()

    def revoke(self, user: str = USER) -> None:
        self.set_password(user, f"revoked-{uuid.uuid4().hex}")

    def restore(self) -> None:
        self.set_password(USER, PASSWORD)
        self.proxy.clear()
        self.proxy.without_sync_collection = False

    def new_calendar(self, name: str, user: str = USER, cal_id: str | None = None) -> RemoteCalendar:
        """A fresh, empty calendar made with the caldav library (MKCALENDAR)."""
        made = self.client(user).principal().make_calendar(name=name,
                                                           cal_id=cal_id or uuid.uuid4().hex[:12])
        return RemoteCalendar(self, absolute(self.url, str(made.url)), user)

    def expire_sync_tokens(self, calendar: RemoteCalendar) -> None:
        if self.kind != "radicale":
            raise NotImplementedError("only Radicale's sync tokens can be expired from outside")
        folder = (self.root / "collections" / "collection-root"
                  / canonical_path(calendar.url).strip("/") / ".Radicale.cache" / "sync-token")
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def radicale_server(tmp: Path) -> Iterator[RemoteServer]:
    users = {USER: PASSWORD}
    with start_stock_radicale(tmp, users) as radicale:
        htpasswd = radicale.root / "users.htpasswd"

        def save_users() -> None:  # Radicale re-reads the file when its mtime or size changes
            htpasswd.write_text("".join(f"{u}:{p}\n" for u, p in users.items()), encoding="utf-8")
            time.sleep(0.01)

        proxy = FaultProxy(radicale.url)
        try:
            yield RemoteServer("radicale", proxy, radicale.root, users, save_users)
        finally:
            proxy.close()


@contextmanager
def xandikos_server(tmp: Path) -> Iterator[RemoteServer]:
    """Stock Xandikos (``python -m xandikos.web --defaults``) behind an authenticating proxy."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log_file = tmp / "xandikos.log"
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "xandikos.web", "--defaults", "-d", str(tmp / "data"),
             "-l", "127.0.0.1", "-p", str(port), "--current-user-principal", f"/{USER}/",
             "--no-detect-systemd", "--state-dir", str(tmp / "state")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
            env={**os.environ, "XDG_DATA_HOME": str(tmp / "xdg")})
    users = {USER: PASSWORD}
    proxy: FaultProxy | None = None
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/", process, log_file)
        proxy = FaultProxy(f"http://127.0.0.1:{port}/", users)  # checks the same dict
        yield RemoteServer("xandikos", proxy, tmp, users, lambda: None)
    finally:
        if proxy is not None:
            proxy.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- the remote side's hands ----------------------------------------------------------------

@dataclass
class RemoteCalendar:
    """One calendar on the remote server, changed over plain HTTP as another client would."""

    server: RemoteServer
    url: str
    user: str = USER

    def _http(self, method: str, path: str, body: str | None = None,
              headers: dict[str, str] | None = None) -> requests.Response:
        answer = requests.request(method, urljoin(self.url, path), data=body, timeout=30,
                                  auth=(self.user, self.server.users[self.user]),
                                  headers={"Content-Type": "text/calendar; charset=utf-8",
                                           **(headers or {})})
        answer.raise_for_status()
        return answer

    def create(self, text: str) -> str:
        """PUT a new object under a client-chosen name, as phones do; its path."""
        path = canonical_path(urljoin(self.url, f"{uuid.uuid4().hex}.ics"))
        self._http("PUT", path, text, {"If-None-Match": "*"})
        return path

    def update(self, path: str, text: str) -> None:
        self._http("PUT", path, text)

    def delete(self, path: str) -> None:
        self._http("DELETE", path)

    def read(self, path: str) -> icalendar.Calendar:
        return icalendar.Calendar.from_ical(self._http("GET", path).text)

    def paths(self) -> list[str]:
        """Every object in the calendar (its .ics paths), by the caldav library's listing."""
        calendar = caldav.Calendar(client=self.server.client(self.user), url=self.url)
        return sorted(canonical_path(str(o.url)) for o in calendar.search(event=True))

    def override(self, path: str, original: datetime, start: datetime | None,
                 end: datetime | None) -> None:
        """Move one occurrence (an overriding VEVENT), or cancel it (EXDATE), as clients do."""
        calendar = self.read(path)
        events = list(calendar.walk("VEVENT"))
        master = next(e for e in events if "RECURRENCE-ID" not in e)
        for event in events:
            recurrence = event.get("RECURRENCE-ID")
            if recurrence is not None and recurrence.dt == original:
                calendar.subcomponents.remove(event)
        if start is None:
            master.add("EXDATE", original)
        else:
            moved = icalendar.Event()
            for key in ("UID", "SUMMARY"):
                moved.add(key, master[key])
            moved.add("DTSTAMP", datetime.now(original.tzinfo))
            moved.add("RECURRENCE-ID", original)
            moved.add("DTSTART", start)
            moved.add("DTEND", end)
            calendar.add_component(moved)
        self.update(path, calendar.to_ical().decode("utf-8"))


# --- Lockstep's side: connecting, and the shared end-to-end scenarios' account ------------------

def connect_caldav_cli(server: LockstepServer, user: str, url: str, remote_user: str,
                       password: str) -> subprocess.CompletedProcess[str]:
    """``lockstep connect caldav USER --url U --username R --password -`` with the app password
    on standard input (so that it is not on the command line)."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "--data", str(server.data_dir), "connect", "caldav",
         user, "--url", url, "--username", remote_user, "--password", "-"],
        env=server.env(), input=password + "\n", capture_output=True, text=True, timeout=120)


def event_ical(uid: str, summary: str, start: datetime, end: datetime) -> str:
    calendar = icalendar.Calendar()
    calendar.add("PRODID", "-//Remote phone//EN")
    calendar.add("VERSION", "2.0")
    event = icalendar.Event()
    event.add("UID", uid)
    event.add("DTSTAMP", datetime.now(timezone.utc))
    event.add("DTSTART", start)
    event.add("DTEND", end)
    event.add("SUMMARY", summary)
    calendar.add_component(event)
    return calendar.to_ical().decode("utf-8")


class CalDAVRemoteAccount:
    """The RemoteAccount of tests/support/remote_accounts.py for remote CalDAV: one account per
    tech on a stock Radicale, connected with ``lockstep connect caldav``."""

    provider = "caldav"
    mirror_slug = "caldav-primary"

    def __init__(self, server: RemoteServer) -> None:
        self.server = server
        self.calendars: dict[str, RemoteCalendar] = {}

    def env(self) -> dict[str, str]:
        return {}

    def connect(self, lockstep: LockstepServer, user: str) -> None:
        if user not in self.calendars:
            self.server.add_account(user, f"app-{uuid.uuid4().hex[:12]}")
            self.calendars[user] = self.server.new_calendar("Calendar", user)
        done = connect_caldav_cli(lockstep, user, self.server.url, user, self.server.users[user])
        assert done.returncode == 0, done.stderr

    def reconnect(self, lockstep: LockstepServer, user: str) -> None:
        """A new app password, given to Lockstep again."""
        self.server.set_password(user, f"app-{uuid.uuid4().hex[:12]}")
        self.connect(lockstep, user)

    def create(self, user: str, summary: str, start: datetime, end: datetime) -> str:
        return self.calendars[user].create(event_ical(f"phone-{uuid.uuid4()}", summary, start, end))

    def _edit(self, user: str, remote_id: str, **values: Any) -> None:
        calendar = self.calendars[user].read(remote_id)
        event = next(iter(calendar.walk("VEVENT")))
        for key, value in values.items():
            event.pop(key, None)
            event.add(key, value)
        self.calendars[user].update(remote_id, calendar.to_ical().decode("utf-8"))

    def move(self, user: str, remote_id: str, start: datetime, end: datetime) -> None:
        self._edit(user, remote_id, DTSTART=start, DTEND=end)

    def rename(self, user: str, remote_id: str, summary: str) -> None:
        self._edit(user, remote_id, SUMMARY=summary)

    def delete(self, user: str, remote_id: str) -> None:
        self.calendars[user].delete(remote_id)

    def events(self, user: str) -> list[Any]:
        from tests.support.remote_accounts import RemoteView

        views = []
        for path in self.calendars[user].paths():
            event = next(iter(self.calendars[user].read(path).walk("VEVENT")))
            start = event["DTSTART"].dt
            start_utc = (start.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                         if isinstance(start, datetime) else "")
            uid = event.get("X-LOCKSTEP-UID")
            views.append(RemoteView(remote_id=path, summary=str(event.get("SUMMARY", "")),
                                    start_utc=start_utc, lockstep_uid=str(uid) if uid else None))
        return views

    def expire_cursor(self, user: str) -> None:
        self.server.expire_sync_tokens(self.calendars[user])

    def revoke(self, user: str) -> None:
        self.server.revoke(user)
