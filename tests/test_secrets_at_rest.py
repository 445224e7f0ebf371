"""No secret in clear at rest: after a realistic run (a tech with an app password, an
API token, Google and Outlook connections whose access tokens expire and are refreshed,
a remote CalDAV account with an app password, syncs both ways, the server logging at debug),
the raw bytes of the SQLite database and of every log hold none of them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from server.sandbox.google import GoogleSandbox
from server.sandbox.graph import GraphSandbox
from tests.support.caldav_env import connect_caldav_cli, radicale_server
from tests.support.dav import event_ics, multistatus, report, sync_collection_body
from tests.support.google_env import connect_google, eventually, google_env
from tests.support.lockstep_server import running_server
from tests.support.microsoft_env import connect_microsoft, graph_env

START, END = "2026-12-21T17:00:00Z", "2026-12-21T18:00:00Z"


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def graph() -> Iterator[GraphSandbox]:
    with GraphSandbox() as sandbox:
        yield sandbox


def _items(url: str, auth: tuple[str, str]) -> int:
    answer = report(_session(auth), url, sync_collection_body())
    return len(multistatus(answer.text)) if answer.status_code == 207 else -1


def _session(auth: tuple[str, str]) -> requests.Session:
    session = requests.Session()
    session.auth = auth
    return session


def test_database_file_and_logs_hold_no_secret_in_clear(google: GoogleSandbox, graph: GraphSandbox,
                                                       tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**google_env(google), **graph_env(graph), "LOCKSTEP_LOGGING_LEVEL": "debug",
           "LOCKSTEP_SYNC_POLL_SECONDS": "600", "LOCKSTEP_CALDAV_POLL_SECONDS": "2"}
    caldav_password = "caldav-app-" + secrets.token_urlsafe(16)
    with radicale_server(tmp_path / "remote") as remote, running_server(data, "sqlite", extra_env=env) as server:
        user, password = "mike", "tech-app-" + secrets.token_urlsafe(16)
        server.cli("tech", "add", user, "--name", "Mike R", "--email", f"{user}@example.com",
                   "--tz", "America/Chicago", "--password", password)
        token = server.cli("token", "create", "booker", "--scope", "bookings").stdout.strip().splitlines()[-1]
        token_secret = token.split(".", 1)[1]
        email = f"{user}@example.com"
        dav = _session((user, password))

        # Google: consent, import, a booking pushed out, an access token expired and refreshed.
        connect_google(server, google, user)
        google.create_event(email, {"summary": "Google side job", "start": {"dateTime": "2026-12-22T15:00:00Z"},
                                    "end": {"dateTime": "2026-12-22T16:00:00Z"}})
        eventually(lambda: _items(f"{server.dav_url}{user}/google-primary/", (user, password)) >= 1,
                   timeout=30, what="the Google import")
        booked = requests.post(f"{server.url}/api/v1/bookings", headers={"Authorization": f"Bearer {token}"},
                               json={"tech": user, "start": START, "end": END, "summary": "Furnace repair"})
        assert booked.status_code == 201, booked.text
        eventually(lambda: any(e.get("summary") == "Furnace repair" for e in google.stored_events(email)),
                   timeout=30, what="the booking in Google")
        google.expire_access_tokens(email)
        before = len(google.oauth.tokens)
        server.cli("sync", "now", user)
        eventually(lambda: len(google.oauth.tokens) > before, timeout=30, what="a refreshed access token")

        # Outlook: MSAL sign-in, import, the access token expired and refreshed.
        connect_microsoft(server, graph, user)
        graph.create_event(email, None, {"subject": "Outlook side job",
                                         "start": {"dateTime": "2026-12-24T15:00:00", "timeZone": "UTC"},
                                         "end": {"dateTime": "2026-12-24T16:00:00", "timeZone": "UTC"}})
        eventually(lambda: _items(f"{server.dav_url}{user}/microsoft-primary/", (user, password)) >= 1,
                   timeout=30, what="the Outlook import")
        graph.expire_access_tokens(email)
        issued = len(graph.identity.access_tokens)
        server.cli("sync", "now", user)
        eventually(lambda: len(graph.identity.access_tokens) > issued, timeout=30, what="a refreshed Graph token")

        # Remote CalDAV: an app password given on standard input, a calendar synced.
        remote.add_account(user, caldav_password)
        calendar = remote.new_calendar("Calendar", user)
        calendar.create(event_ics(uid="remote-1", summary="Phone side job", start="20261223T150000Z",
                                  end="20261223T160000Z"))
        done = connect_caldav_cli(server, user, remote.url, user, caldav_password)
        assert done.returncode == 0, done.stderr
        eventually(lambda: _items(f"{server.dav_url}{user}/caldav-primary/", (user, password)) >= 1,
                   timeout=60, what="the remote CalDAV import")

        # The tech's phone: authenticated CalDAV traffic, a failed login with a near-miss password.
        assert dav.put(f"{server.dav_url}{user}/bookings/phone.ics", data=event_ics(uid="phone-1")).status_code == 201
        assert requests.get(f"{server.dav_url}{user}/", auth=(user, password + "x")).status_code == 401

    refresh_tokens = [t for t, grant in google.oauth.grants.items() if grant.user == email]
    access_tokens = [t for t, issued in google.oauth.tokens.items() if issued.user == email]
    graph_refresh = [t for t, grant in graph.identity.refresh_tokens.items() if grant.user.lower() == email]
    graph_access = [t for t, issued in graph.identity.access_tokens.items() if issued.user.lower() == email]
    assert refresh_tokens and len(access_tokens) >= 2 and graph_refresh and len(graph_access) >= 2
    wanted = {"tech app password": [password], "API token secret": [token_secret],
              "CalDAV app password": [caldav_password], "Google refresh token": refresh_tokens,
              "Google access token": access_tokens, "Graph refresh token": graph_refresh,
              "Graph access token": graph_access}

    database = data / "lockstep.db"
    logs = list(data.glob("*.log"))
    files = [p for p in data.rglob("*") if p.is_file() and p.name != "secret.key"]
    assert database in files and logs, files
    raw = {path: path.read_bytes() for path in files}
    # The grep reads what it should: the database and the log hold plenty in clear.
    assert all(s in raw[database] for s in (b"Furnace repair", b"Phone side job", b"Outlook side job"))
    assert all(user.encode() in raw[log] for log in logs)
    leaks = [f"{name} in {path.name}" for path, content in raw.items() for name, values in wanted.items()
             for value in values if value.encode() in content]
    assert not leaks, leaks
