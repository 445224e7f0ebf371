"""``lockstep demo``: the whole system on loopback, with no Google or Microsoft account.

Starts the Google and Microsoft Graph emulators from server/sandbox/,
points Lockstep's provider settings at them, seeds three techs with realistic
calendars (a weekly meeting, PTO, a tentative invitation), connects them
through the real consent flows once the server is up, and prints where to
look. Data lives in a fresh temporary directory unless ``--data`` is given.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import requests

from server import techs
from server.config import Config, load_config
from server.connections import create_consent_link
from server.db import Database
from server.sandbox.google import GoogleSandbox
from server.sandbox.graph import GraphSandbox

log = logging.getLogger("lockstep.demo")
SYNC_POLL_SECONDS = 30


@dataclass(frozen=True)
class DemoTech:
    username: str
    name: str
    tz: str
    provider: str  # "google" or "microsoft"

    @property
    def email(self) -> str:
        return f"{self.username}@example.com"


TECHS = (
    DemoTech("alice", "Alice Moreno", "America/New_York", "google"),
    DemoTech("bob", "Bob Okafor", "America/Chicago", "microsoft"),
    DemoTech("carmen", "Carmen Liu", "America/Los_Angeles", "google"),
)


def run_demo(args: argparse.Namespace) -> int:
    """Start emulators, configure and seed Lockstep, then serve until interrupted."""
    from server.db import open_database
    from server.serve import serve

    data_dir = Path(args.data or tempfile.mkdtemp(prefix="lockstep-demo-"))
    google = GoogleSandbox()
    google.start("127.0.0.1")
    graph = GraphSandbox()
    graph.start("127.0.0.1")
    port = int(args.port or 5232)
    os.environ.update(_provider_env(google, graph, port))
    config = load_config(data_dir, None)
    database = open_database(config)
    seeded = list(TECHS)
    passwords = {tech.username: _seed_tech(database, tech) for tech in seeded}
    token = techs.create_token(database, "demo-booking-" + secrets.token_hex(2), "bookings")
    admin_password = _seed_admin(database)
    for tech in seeded:
        _seed_remote_calendar(google if tech.provider == "google" else graph, tech)
    database.dispose()

    def connect_and_report() -> None:
        _wait_until_up(config)
        for tech in seeded:
            try:
                _connect(database_for(config), config, tech, graph)
            except (requests.RequestException, RuntimeError, KeyError) as exc:
                log.warning("demo: could not connect %s to %s: %s", tech.username, tech.provider, exc)
        _wait_until_watched(database_for(config), len(seeded))
        print(_summary(config, google, seeded, passwords, f"{token.name}.{token.secret}",
                       admin_password), flush=True)

    threading.Thread(target=connect_and_report, name="demo-seed", daemon=True).start()
    serve_args = argparse.Namespace(host="127.0.0.1", port=port, tls_cert=None, tls_key=None, no_workers=False)
    try:
        return serve(config, serve_args)
    finally:
        google.stop()
        graph.stop()


def database_for(config: Config) -> Database:
    from server.db import open_database

    return open_database(config, migrate=False)


def _provider_env(google: GoogleSandbox, graph: GraphSandbox, port: int) -> dict[str, str]:
    return {
        **google.lockstep_env(),
        **graph.lockstep_env(),
        "LOCKSTEP_SERVER_HOST": "127.0.0.1",
        "LOCKSTEP_SERVER_PORT": str(port),
        "LOCKSTEP_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LOCKSTEP_SYNC_POLL_SECONDS": str(SYNC_POLL_SECONDS),
    }


def _seed_tech(database: Database, tech: DemoTech) -> str:
    credential = techs.add_tech(database, tech.username, name=tech.name, email=tech.email, tz=tech.tz,
                                hours="mon-fri 08:00-17:00")
    return credential.secret


def _seed_admin(database: Database) -> str:
    """An admin login for the panel."""
    from admin.accounts import create_admin

    password = secrets.token_urlsafe(9)
    create_admin(database, "admin", password)
    return password


def _next_weekday(start: date, weekday: int) -> date:
    return start + timedelta(days=(weekday - start.weekday()) % 7 or 7)


def _seed_remote_calendar(sandbox: Any, tech: DemoTech) -> None:
    """A weekly team meeting, three days of PTO, a tentative invitation and a free reminder."""
    zone = ZoneInfo(tech.tz)
    today = datetime.now(zone).date()
    monday = _next_weekday(today, 0)
    wednesday = monday + timedelta(days=2)

    def at(day: date, hour: int, minute: int = 0) -> datetime:
        return datetime.combine(day, time(hour, minute), zone)

    if tech.provider == "google":
        sandbox.add_user(tech.email, tech.name, time_zone=tech.tz)
        for event in _google_events(tech, at, monday, wednesday):
            sandbox.create_event(tech.email, event)
    else:
        sandbox.add_user(tech.email, tech.name, time_zone=tech.tz)
        for event in _graph_events(tech, at, monday, wednesday):
            sandbox.create_event(tech.email, None, event)


def _google_events(tech: DemoTech, at: Callable[..., datetime], monday: date, wednesday: date) -> list[dict]:
    def when(moment: datetime) -> dict[str, str]:
        return {"dateTime": moment.isoformat(), "timeZone": tech.tz}

    return [
        {"summary": "Team stand-up", "start": when(at(monday, 9)), "end": when(at(monday, 9, 30)),
         "recurrence": ["RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR"]},
        {"summary": "PTO", "start": {"date": (monday + timedelta(days=14)).isoformat()},
         "end": {"date": (monday + timedelta(days=17)).isoformat()}},
        {"summary": "Vendor call (maybe)", "start": when(at(wednesday, 14)), "end": when(at(wednesday, 15)),
         "attendees": [{"email": tech.email, "self": True, "responseStatus": "tentative"},
                       {"email": "vendor@example.net", "organizer": True, "responseStatus": "accepted"}]},
        {"summary": "Water the plants", "start": when(at(wednesday, 12)), "end": when(at(wednesday, 12, 15)),
         "transparency": "transparent"},
    ]


def _graph_events(tech: DemoTech, at: Callable[..., datetime], monday: date, wednesday: date) -> list[dict]:
    def when(moment: datetime) -> dict[str, str]:
        return {"dateTime": moment.replace(tzinfo=None).isoformat(), "timeZone": tech.tz}

    return [
        {"subject": "Team stand-up", "start": when(at(monday, 9)), "end": when(at(monday, 9, 30)),
         "showAs": "busy",
         "recurrence": {"pattern": {"type": "weekly", "interval": 1,
                                    "daysOfWeek": ["monday", "wednesday", "friday"]},
                        "range": {"type": "noEnd", "startDate": monday.isoformat(),
                                  "recurrenceTimeZone": tech.tz}}},
        {"subject": "PTO", "isAllDay": True, "showAs": "oof",
         "start": {"dateTime": f"{monday + timedelta(days=14)}T00:00:00", "timeZone": tech.tz},
         "end": {"dateTime": f"{monday + timedelta(days=17)}T00:00:00", "timeZone": tech.tz}},
        {"subject": "Vendor call (maybe)", "showAs": "tentative", "start": when(at(wednesday, 14)),
         "end": when(at(wednesday, 15))},
        {"subject": "Water the plants", "showAs": "free", "start": when(at(wednesday, 12)),
         "end": when(at(wednesday, 12, 15))},
    ]


def _wait_until_up(config: Config, timeout: float = 60.0) -> None:
    deadline = datetime.now() + timedelta(seconds=timeout)
    while datetime.now() < deadline:
        try:
            if requests.get(config.public_url + "/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        threading.Event().wait(0.2)
    raise RuntimeError("the demo server did not come up")


def _wait_until_watched(database: Database, connections: int, timeout: float = 60.0) -> None:
    """Until every connection's calendars are imported and have a push channel, so that a
    change a visitor makes right after the summary shows up at once, not a poll later."""
    from sqlalchemy import func, select

    from server.models import Connection, RemoteCalendarRow

    deadline = datetime.now() + timedelta(seconds=timeout)
    while datetime.now() < deadline:
        with database.read() as session:
            ready = session.scalar(select(func.count(func.distinct(Connection.id))).join(
                RemoteCalendarRow, RemoteCalendarRow.connection_id == Connection.id).where(
                RemoteCalendarRow.selected.is_(True), RemoteCalendarRow.cursor != "",
                RemoteCalendarRow.watch_channel != ""))
        if ready and ready >= connections:
            break
        threading.Event().wait(0.3)
    else:
        log.warning("demo: not every calendar has a push channel yet; changes may wait for a poll")
    database.dispose()


def _connect(database: Database, config: Config, tech: DemoTech, graph: GraphSandbox) -> None:
    """Walk the real consent flow as the tech's browser would, approving on the emulator's page."""
    link = create_consent_link(database, config, tech.username, tech.provider)
    database.dispose()
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override the emulator's CA below
    session.verify = graph.ca_bundle
    consent = session.get(link, allow_redirects=False).headers["Location"]
    separator = "&" if "?" in consent else "?"
    answer = session.get(consent + separator + "sandbox_consent=approve", allow_redirects=False)
    if answer.is_redirect:  # response_mode=query (Google)
        done = session.get(answer.headers["Location"], allow_redirects=False)
    else:  # response_mode=form_post (Microsoft): the page's self-submitting form, submitted
        action, fields = _hidden_form(answer.text)
        done = session.post(action, data=fields, allow_redirects=False)
    if done.status_code != 200:
        log.warning("demo: connecting %s to %s failed: HTTP %s", tech.username, tech.provider, done.status_code)


def _hidden_form(page: str) -> tuple[str, dict[str, str]]:
    """The action and hidden fields of a form_post answer page."""
    action = re.search(r"<form[^>]*action=['\"]([^'\"]+)['\"]", page)
    if action is None:
        raise RuntimeError("the consent page returned neither a redirect nor a form")
    fields = re.findall(r"<input type=['\"]hidden['\"] name=['\"]([^'\"]+)['\"] value=['\"]([^'\"]*)['\"]", page)
    return html.unescape(action.group(1)), {html.unescape(k): html.unescape(v) for k, v in fields}


def _summary(config: Config, google: GoogleSandbox, seeded: list[DemoTech],
             passwords: dict[str, str], token: str, admin_password: str) -> str:
    base = config.public_url
    first = seeded[0]
    tomorrow = date.today() + timedelta(days=1)
    lines = ["", "Lockstep demo is ready.", "",
             f"  Admin panel:      {base}/admin/   (user admin, password {admin_password})",
        f"  CalDAV account:   {base}/dav/   user {first.username}, password {passwords[first.username]}",
        f"  Google Calendar:  {google.base_url}/_sandbox/calendar/{first.email}"
        "   (add a personal event here ...)",
        f"  Availability:     curl -H 'Authorization: Bearer {token}' \\",
        f"                      '{base}/api/v1/availability?tech={first.username}"
        f"&start={tomorrow}T00:00:00Z&end={tomorrow + timedelta(days=1)}T00:00:00Z&duration=60'",
        "                    (... and watch its slot disappear here)",
        "",
        "  Techs: " + ", ".join(f"{t.username} ({t.provider}, {t.tz}, password {passwords[t.username]})"
                                 for t in seeded),
        f"  API token (bookings scope): {token}",
    ]
    lines.append("  Press Ctrl-C to stop; data is in " + str(config.data_dir))
    return "\n".join(lines)
