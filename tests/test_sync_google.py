"""Google-only end-to-end behaviour (the scenarios every provider shares are in test_sync_providers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import select

import json
import re
import secrets
import time
from itertools import pairwise

from server.models import Job, Notification, RemoteCalendarRow
from server.providers.google_write import event_id_for
from server.sandbox.google import GoogleSandbox
from tests.support.dav import event_ics
from tests.support.api import Api, api_for
from tests.support.google_env import connect_google, eventually, google_env
from tests.support.lockstep_server import LockstepServer, running_server

DAY = {"start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"}


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def server(backend: str, google: GoogleSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    env = google_env(google, LOCKSTEP_SYNC_POLL_SECONDS="3")
    with running_server(tmp_path_factory.mktemp(f"sync-{backend}"), backend, extra_env=env) as started:
        yield started


@pytest.fixture(scope="module")
def api(server: LockstepServer) -> Api:
    return api_for(server, "bookings")


@pytest.fixture
def connected(server: LockstepServer, google: GoogleSandbox) -> tuple[str, str]:
    user, password = server.add_tech()
    connect_google(server, google, user)
    calendar = f"{server.dav_url}{user}/google-primary/"
    eventually(lambda: requests.request("PROPFIND", calendar, auth=(user, password),
                                        headers={"Depth": "0"}).status_code == 207, what="mirror calendar")
    return user, password


def _busy(api: Api, user: str) -> list[dict[str, str]]:
    return api.get("/freebusy", tech=user, **DAY).json()["techs"][user]["busy"]


def test_recurring_allday_tentative_declined_from_google(server: LockstepServer, api: Api, google: GoogleSandbox,
                                                         connected: tuple[str, str]) -> None:
    user = connected[0]
    calendar = f"{user}@example.com"
    zone = "America/Los_Angeles"
    series = google.create_event(calendar, {
        "summary": "Standup", "recurrence": ["RRULE:FREQ=WEEKLY;BYDAY=TU;COUNT=4"],
        "start": {"dateTime": "2026-12-01T09:00:00", "timeZone": zone},
        "end": {"dateTime": "2026-12-01T10:00:00", "timeZone": zone}})
    # Move the second instance to 11:00 and cancel the third, through the emulator's instance ids.
    google.patch_event(calendar, f"{series['id']}_20261208T170000Z", {
        "start": {"dateTime": "2026-12-08T11:00:00", "timeZone": zone},
        "end": {"dateTime": "2026-12-08T12:00:00", "timeZone": zone}})
    google.delete_event(calendar, f"{series['id']}_20261215T170000Z")
    google.create_event(calendar, {"summary": "PTO", "start": {"date": "2026-12-02"}, "end": {"date": "2026-12-03"}})
    google.create_event(calendar, {
        "summary": "Maybe", "start": {"dateTime": "2026-12-03T20:00:00Z"}, "end": {"dateTime": "2026-12-03T21:00:00Z"},
        "attendees": [{"email": "boss@example.com", "organizer": True, "responseStatus": "accepted"},
                      {"email": calendar, "self": True, "responseStatus": "tentative"}]})
    google.create_event(calendar, {
        "summary": "Nope", "start": {"dateTime": "2026-12-03T22:00:00Z"}, "end": {"dateTime": "2026-12-03T23:00:00Z"},
        "attendees": [{"email": calendar, "self": True, "responseStatus": "declined"}]})
    window = {"start": "2026-11-30T00:00:00Z", "end": "2026-12-31T00:00:00Z"}

    def busy() -> dict:
        return api.get("/freebusy", tech=user, **window).json()["techs"][user]

    expected_busy = [
        {"start": "2026-12-01T17:00:00Z", "end": "2026-12-01T18:00:00Z"},  # 09:00 PST
        {"start": "2026-12-02T16:00:00Z", "end": "2026-12-03T01:00:00Z"},  # PTO: 08-17 local only
        {"start": "2026-12-08T19:00:00Z", "end": "2026-12-08T20:00:00Z"},  # moved to 11:00
        {"start": "2026-12-22T17:00:00Z", "end": "2026-12-22T18:00:00Z"},  # 12-15 cancelled
    ]
    eventually(lambda: busy()["busy"] == expected_busy, timeout=30, what=f"series busy time, got {busy()}")
    assert busy()["tentative"] == [{"start": "2026-12-03T20:00:00Z", "end": "2026-12-03T21:00:00Z"}]


def test_forged_notification_is_refused(server: LockstepServer, connected: tuple[str, str]) -> None:
    from server.models import RemoteCalendarRow

    with server.database.read() as session:
        row = session.scalar(select(RemoteCalendarRow).where(RemoteCalendarRow.watch_channel != "")
                             .order_by(RemoteCalendarRow.id.desc()))
        assert row is not None
        channel, resource, token = row.watch_channel, row.watch_resource, row.watch_token
    headers = {"X-Goog-Channel-ID": channel, "X-Goog-Resource-ID": resource,
               "X-Goog-Resource-State": "exists", "X-Goog-Message-Number": "99"}
    forged = requests.post(f"{server.url}/hooks/google", headers={**headers, "X-Goog-Channel-Token": "guessed"})
    assert forged.status_code == 403
    unknown = requests.post(f"{server.url}/hooks/google", headers={**headers, "X-Goog-Channel-ID": "nope",
                                                                   "X-Goog-Channel-Token": token})
    assert unknown.status_code == 403
    assert server.log_file.read_text().count("rejected Google notification") >= 2
    genuine = requests.post(f"{server.url}/hooks/google", headers={**headers, "X-Goog-Channel-Token": token})
    assert genuine.status_code == 200
    replayed = requests.post(f"{server.url}/hooks/google", headers={**headers, "X-Goog-Channel-Token": token})
    assert replayed.status_code == 200  # harmless: at most one waiting sync per calendar


def test_choosing_calendars_and_the_bookings_target(server: LockstepServer, api: Api, google: GoogleSandbox) -> None:
    user, password = server.add_tech()
    email = f"{user}@example.com"
    google.add_user(email)
    team = google.add_calendar(email, "Team Rota")
    team_id = team if isinstance(team, str) else team["id"]
    connect_google(server, google, user)
    listing = eventually(lambda: team_id in (out := server.cli("calendars", user).stdout) and out, what="calendar list")
    assert "[ ] Team Rota" in listing and "[x]" in listing

    server.cli("calendars", user, "--select", team_id)
    team_url = f"{server.dav_url}{user}/google-team-rota/"
    eventually(lambda: requests.request("PROPFIND", team_url, auth=(user, password),
                                        headers={"Depth": "0"}).status_code == 207, what="the Team mirror")
    google.create_event(team_id, {"summary": "On call", "start": {"dateTime": "2026-12-01T19:00:00Z"},
                                  "end": {"dateTime": "2026-12-01T20:00:00Z"}})
    eventually(lambda: {"start": "2026-12-01T19:00:00Z", "end": "2026-12-01T20:00:00Z"} in _busy(api, user),
               what="the Team calendar blocking time")

    server.cli("calendars", user, "--bookings-to", team_id)
    time_slot = {"start": "2026-12-01T21:00:00Z", "end": "2026-12-01T22:00:00Z"}
    import time

    time.sleep(1)
    uid = api.post("/bookings", {"tech": user, "summary": "To the team calendar", **time_slot}).json()["uid"]
    eventually(lambda: any((e.get("extendedProperties") or {}).get("private", {}).get("lockstepUid") == uid
                           for e in google.stored_events(team_id)), what="the booking in the Team calendar")


def test_disconnect_stops_channels_and_removes_mirrors(server: LockstepServer, api: Api, google: GoogleSandbox,
                                                       connected: tuple[str, str]) -> None:
    user, password = connected
    email = f"{user}@example.com"
    google.create_event(email, {"summary": "Private", "start": {"dateTime": "2026-12-01T15:00:00Z"},
                                "end": {"dateTime": "2026-12-01T16:00:00Z"}})
    eventually(lambda: _busy(api, user), what="the Google event in free/busy")
    eventually(lambda: [c for c in google.channels() if c["calendarId"] == email and not c["stopped"]],
               what="a push channel")
    revocations = len(google.request_log("/revoke"))
    out = server.cli("disconnect", "google", user).stdout
    assert "Disconnected google" in out
    assert len(google.request_log("/revoke")) == revocations + 1  # the grant is withdrawn too
    assert not [c for c in google.channels() if c["calendarId"] == email and not c["stopped"]]
    assert requests.request("PROPFIND", f"{server.dav_url}{user}/google-primary/", auth=(user, password),
                            headers={"Depth": "0"}).status_code == 404
    assert _busy(api, user) == []
    again = server.cli("disconnect", "google", user, check=False)
    assert again.returncode == 1 and "no google connection" in again.stderr


def test_cancelled_booking_goes_out_once_and_is_not_restored(server: LockstepServer, google: GoogleSandbox,
                                                             connected: tuple[str, str]) -> None:
    """A job a calendar app marked STATUS:CANCELLED in the bookings calendar goes to Google as
    cancelled, which Google then lists as deleted. That agrees with the booking: it must not be
    "restored" (pushed, reverted and notified again at every sync; found by bench/load.py)."""
    user, password = connected
    uid = "called-off-" + secrets.token_hex(4)
    text = event_ics(uid, "Called off", "20261203T170000Z", "20261203T180000Z").replace(
        "END:VEVENT", "STATUS:CANCELLED\r\nEND:VEVENT")
    put = requests.put(f"{server.dav_url}{user}/bookings/{uid}.ics", data=text.encode(), auth=(user, password),
                       headers={"Content-Type": "text/calendar; charset=utf-8"})
    assert put.status_code == 201, put.text
    email = f"{user}@example.com"
    eventually(lambda: (google.get_event(email, event_id_for(uid)) or {}).get("status") == "cancelled",
               what="the cancelled booking in Google")
    with server.database.read() as session:
        calendar = session.scalar(select(RemoteCalendarRow.id).where(RemoteCalendarRow.local_path == f"{user}/google-primary"))

    def syncs_done() -> int:
        with server.database.read() as session:
            payloads = session.scalars(select(Job.payload).where(Job.kind == "sync_calendar", Job.state == "done")).all()
        return sum(1 for p in payloads if json.loads(p).get("calendar") == calendar)

    seen = syncs_done()
    # Two more syncs (pushes and the 3 s poll): with the bug, the first already restored it.
    eventually(lambda: syncs_done() >= seen + 2, timeout=30, what="two syncs after the push")
    with server.database.read() as session:
        messages = session.scalars(select(Notification.message).where(
            Notification.tech == user, Notification.kind == "booking_reverted")).all()
    assert not [m for m in messages if uid in m]
    assert (google.get_event(email, event_id_for(uid)) or {}).get("status") == "cancelled"


def test_syncs_of_one_calendar_never_overlap(server: LockstepServer, api: Api, google: GoogleSandbox,
                                             connected: tuple[str, str]) -> None:
    """Pushes arriving during a slow sync each queue a sync of the calendar; the other worker
    thread must leave it until the running one ends (issue 7: two syncs read and write back
    one sync token). Every list call is slowed by ``delay``, so two list calls of overlapping
    syncs would start less than ``delay`` apart."""
    email = f"{connected[0]}@example.com"
    delay = 1.0
    slow = google.add_fault("latency", delay=delay, method="GET", path=rf"/calendars/{re.escape(email)}/events$",
                            remaining=None)
    started = time.time()
    expected = []
    for hour in range(10, 16):
        span = {"start": f"2026-12-01T{hour}:00:00Z", "end": f"2026-12-01T{hour}:30:00Z"}
        google.create_event(email, {"summary": f"Burst {hour}", "start": {"dateTime": span["start"]},
                                    "end": {"dateTime": span["end"]}})
        expected.append(span)
        time.sleep(0.4)
    try:
        eventually(lambda: all(span in _busy(api, connected[0]) for span in expected), timeout=60,
                   what="every event of the burst in free/busy")
    finally:
        slow.remaining = 0
    lists = sorted(r["time"] for r in google.request_log(f"/calendars/{email}/events")
                   if r["method"] == "GET" and r["path"].endswith("/events") and r["time"] >= started)
    assert len(lists) >= 2, lists  # syncs ran during the burst (fewer under load: each takes longer)
    gaps = [later - earlier for earlier, later in pairwise(lists)]
    assert min(gaps) >= delay * 0.95, gaps
