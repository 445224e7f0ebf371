"""Two-way sync with Google, end to end: server process + emulator + the real client library."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import select

from server.models import Conflict, Notification
from server.sandbox.google import GoogleSandbox
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
