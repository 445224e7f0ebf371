"""Two-way sync with Google, end to end: server process + emulator + the real client library."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import select

from server.models import Conflict, Notification
from server.sandbox.google import GoogleSandbox
from tests.support.api import Api, api_for
from tests.support.dav import multistatus
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


def _google_events(google: GoogleSandbox, user: str) -> list[dict]:
    return google.stored_events(f"{user}@example.com")


def _start_utc(event: dict | None) -> str:
    from datetime import datetime, timezone

    if not event or "dateTime" not in event.get("start", {}):
        return ""
    moment = datetime.fromisoformat(event["start"]["dateTime"].replace("Z", "+00:00"))
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _busy(api: Api, user: str) -> list[dict[str, str]]:
    return api.get("/freebusy", tech=user, **DAY).json()["techs"][user]["busy"]


def test_booking_appears_in_google(api: Api, google: GoogleSandbox, connected: tuple[str, str]) -> None:
    user = connected[0]
    booking = api.post("/bookings", {"tech": user, "start": "2026-12-01T17:00:00Z",
                                     "end": "2026-12-01T18:00:00Z", "summary": "Fix boiler"}).json()

    def mirrored() -> list[dict]:
        return [e for e in _google_events(google, user)
                if (e.get("extendedProperties") or {}).get("private", {}).get("lockstepUid") == booking["uid"]]

    (event,) = eventually(mirrored, what="booking in Google")
    assert event["summary"] == "Fix boiler"
    assert _start_utc(event) == "2026-12-01T17:00:00Z"


def test_personal_event_blocks_and_shows_over_caldav(server: LockstepServer, api: Api, google: GoogleSandbox,
                                                     connected: tuple[str, str]) -> None:
    user, password = connected
    created = google.create_event(f"{user}@example.com", {
        "summary": "Dentist", "start": {"dateTime": "2026-12-01T20:00:00Z"},
        "end": {"dateTime": "2026-12-01T21:00:00Z"}})
    eventually(lambda: {"start": "2026-12-01T20:00:00Z", "end": "2026-12-01T21:00:00Z"} in _busy(api, user),
               what="personal event in free/busy")
    sync = api.get("/freebusy", tech=user, **DAY).json()["techs"][user]["sync"]
    assert sync["state"] == "ok" and sync["last_success"].endswith("Z")
    listing = requests.request("PROPFIND", f"{server.dav_url}{user}/google-primary/", auth=(user, password),
                               headers={"Depth": "1"})
    assert listing.text.count(".ics</href>") == 1
    google.delete_event(f"{user}@example.com", created["id"])
    eventually(lambda: _busy(api, user) == [], what="deleted personal event to free the slot")


def test_booking_moved_in_google_is_reverted_and_notified(server: LockstepServer, api: Api, google: GoogleSandbox,
                                                          connected: tuple[str, str]) -> None:
    user = connected[0]
    booking = api.post("/bookings", {"tech": user, "start": "2026-12-01T17:00:00Z",
                                     "end": "2026-12-01T18:00:00Z", "summary": "Keep me"}).json()

    def remote() -> dict | None:
        return next((e for e in _google_events(google, user)
                     if (e.get("extendedProperties") or {}).get("private", {}).get("lockstepUid") == booking["uid"]), None)

    event = eventually(remote, what="booking in Google")
    google.patch_event(f"{user}@example.com", event["id"], {
        "start": {"dateTime": "2026-12-01T22:00:00Z"}, "end": {"dateTime": "2026-12-01T23:00:00Z"}})
    eventually(lambda: _start_utc(remote()) == "2026-12-01T17:00:00Z", what="booking reverted in Google")
    assert _busy(api, user) == [{"start": "2026-12-01T17:00:00Z", "end": "2026-12-01T18:00:00Z"}]
    with server.database.read() as session:
        kinds = session.scalars(select(Notification.kind).where(Notification.tech == user)).all()
    assert "booking_reverted" in kinds


def test_overlapping_personal_event_records_one_conflict(server: LockstepServer, api: Api, google: GoogleSandbox,
                                                         connected: tuple[str, str]) -> None:
    user = connected[0]
    assert api.post("/bookings", {"tech": user, "start": "2026-12-01T17:00:00Z",
                                  "end": "2026-12-01T18:00:00Z", "summary": "Job"}).status_code == 201
    event = google.create_event(f"{user}@example.com", {
        "summary": "Gym", "start": {"dateTime": "2026-12-01T17:30:00Z"}, "end": {"dateTime": "2026-12-01T18:30:00Z"}})

    def conflicts() -> list[str]:
        with server.database.read() as session:
            return list(session.scalars(select(Conflict.other_ref).where(Conflict.tech == user)))

    eventually(conflicts, what="a conflict")
    google.patch_event(f"{user}@example.com", event["id"], {"summary": "Gym (longer)"})
    eventually(lambda: requests.get(f"{server.url}/healthz").ok)
    import time

    time.sleep(4)  # a poll cycle and a push later, still one conflict
    assert len(conflicts()) == 1


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


def test_iphone_edit_of_mirrored_event_reaches_google(server: LockstepServer, google: GoogleSandbox,
                                                      connected: tuple[str, str]) -> None:
    user, password = connected
    calendar = f"{user}@example.com"
    created = google.create_event(calendar, {"summary": "Lunch", "start": {"dateTime": "2026-12-04T20:00:00Z"},
                                             "end": {"dateTime": "2026-12-04T21:00:00Z"}})
    url = f"{server.dav_url}{user}/google-primary/"

    def item_hrefs() -> list[str]:
        listing = requests.request("PROPFIND", url, auth=(user, password), headers={"Depth": "1"})
        return [r.href for r in multistatus(listing.text) if r.href.endswith(".ics")]

    (href,) = eventually(item_hrefs, what="mirrored lunch")
    item = requests.get(server.url + href, auth=(user, password))
    assert item.status_code == 200, (href, item.status_code, item.text)
    edited = item.text.replace("SUMMARY:Lunch", "SUMMARY:Lunch with Ann")
    put = requests.put(server.url + href, data=edited, auth=(user, password), headers={"If-Match": item.headers["ETag"]})
    assert put.status_code in (201, 204), put.text
    eventually(lambda: (google.get_event(calendar, created["id"]) or {}).get("summary") == "Lunch with Ann",
               what="the iPhone edit in Google")


def test_expired_sync_token_resyncs_without_duplicates(server: LockstepServer, api: Api, google: GoogleSandbox,
                                                       connected: tuple[str, str]) -> None:
    user, password = connected
    calendar = f"{user}@example.com"
    for hour in (16, 18):
        google.create_event(calendar, {"summary": f"E{hour}", "start": {"dateTime": f"2026-12-05T{hour}:00:00Z"},
                                       "end": {"dateTime": f"2026-12-05T{hour}:30:00Z"}})
    url = f"{server.dav_url}{user}/google-primary/"

    def count() -> int:
        return requests.request("PROPFIND", url, auth=(user, password), headers={"Depth": "1"}).text.count(".ics</href>")

    eventually(lambda: count() == 2, what="two mirrored events")
    google.expire_sync_tokens()
    google.create_event(calendar, {"summary": "E20", "start": {"dateTime": "2026-12-05T20:00:00Z"},
                                   "end": {"dateTime": "2026-12-05T20:30:00Z"}})
    eventually(lambda: count() == 3, what="resync after 410")
    server.cli("sync", "now", user)
    import time

    time.sleep(2)
    assert count() == 3
    google_side = [e for e in google.stored_events(calendar) if e.get("summary", "").startswith("E")]
    assert len(google_side) == 3  # nothing pushed back as a copy


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


def test_revoked_grant_needs_reauth_keeps_booking_and_reports_the_gap(server: LockstepServer, api: Api,
                                                                      google: GoogleSandbox,
                                                                      connected: tuple[str, str]) -> None:
    from server.models import Notification

    user = connected[0]
    calendar = f"{user}@example.com"
    google.revoke_refresh_token(email=calendar)
    google.expire_access_tokens(calendar)
    server.cli("sync", "now", user)

    eventually(lambda: _connection_state(server, user) == "needs_reauth", what="needs_reauth")
    assert api.get("/freebusy", tech=user, **DAY).json()["techs"][user]["sync"]["state"] == "needs_reauth"
    booked = api.post("/bookings", {"tech": user, "start": "2026-12-07T17:00:00Z", "end": "2026-12-07T18:00:00Z",
                                    "summary": "During the outage"})
    assert booked.status_code == 201
    uid = booked.json()["uid"]
    status = server.cli("sync", "status").stdout
    assert "needs_reauth" in status

    connect_google(server, google, user)  # the tech reconnects

    def in_google() -> bool:
        return any((e.get("extendedProperties") or {}).get("private", {}).get("lockstepUid") == uid
                   for e in google.stored_events(calendar))

    eventually(in_google, timeout=30, what="the outage booking flushed to Google")
    eventually(lambda: _connection_state(server, user) == "ok", what="ok again")
    with server.database.read() as session:
        messages = session.scalars(select(Notification.message).where(
            Notification.tech == user, Notification.kind == "sync_recovered")).all()
    assert any(uid in message for message in messages), messages


def _connection_state(server: LockstepServer, user: str) -> str:
    from server.models import Connection, Tech

    with server.database.read() as session:
        return session.scalar(select(Connection.state).join(Tech, Tech.id == Connection.tech_id)
                              .where(Tech.username == user)) or ""


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
    out = server.cli("disconnect", "google", user).stdout
    assert "Disconnected google" in out
    assert not [c for c in google.channels() if c["calendarId"] == email and not c["stopped"]]
    assert requests.request("PROPFIND", f"{server.dav_url}{user}/google-primary/", auth=(user, password),
                            headers={"Depth": "0"}).status_code == 404
    assert _busy(api, user) == []
    again = server.cli("disconnect", "google", user, check=False)
    assert again.returncode == 1 and "no google connection" in again.stderr
