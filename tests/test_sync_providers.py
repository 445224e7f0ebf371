"""The end-to-end sync scenarios, one body each, run for every provider.

A real ``lockstep serve`` process per provider and backend, the provider's far
end behind a :class:`~tests.support.remote_accounts.RemoteAccount`, and the
booking API, CalDAV and the CLI on our side. What only one provider has
(Google's channel headers, Graph's lifecycle events, CalDAV's ctag fallback)
is tested in that provider's own module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import requests
from sqlalchemy import select

from server.models import Conflict, Connection, Notification, Tech
from tests.support.api import Api, api_for
from tests.support.dav import multistatus
from tests.support.google_env import eventually
from tests.support.lockstep_server import LockstepServer, running_server, skip_without_postgresql
from tests.support.remote_accounts import PROVIDERS, RemoteAccount, RemoteView, open_account

DAY = {"start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"}
UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# Every provider on SQLite; the PostgreSQL path of the engine is the same for all of them, so
# one provider covers it here (each provider's own module runs on both databases).
CASES = [(provider, "sqlite") for provider in PROVIDERS] + [("google", "postgresql")]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0]}-{case[1]}")
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    provider, backend = request.param
    if backend == "postgresql":
        skip_without_postgresql()
    return provider, backend


@pytest.fixture(scope="module")
def account(case: tuple[str, str]) -> Iterator[RemoteAccount]:
    with open_account(case[0]) as remote:
        yield remote


@pytest.fixture(scope="module")
def server(case: tuple[str, str], account: RemoteAccount,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    backend = case[1]
    env = {**account.env(), "LOCKSTEP_SYNC_POLL_SECONDS": "3", "LOCKSTEP_CALDAV_POLL_SECONDS": "2"}
    with running_server(tmp_path_factory.mktemp(f"e2e-{account.provider}-{backend}"), backend,
                        extra_env=env) as started:
        yield started


@pytest.fixture(scope="module")
def api(server: LockstepServer) -> Api:
    return api_for(server, "bookings")


@pytest.fixture
def connected(server: LockstepServer, account: RemoteAccount) -> tuple[str, str]:
    user, password = server.add_tech()
    account.connect(server, user)
    calendar = f"{server.dav_url}{user}/{account.mirror_slug}/"
    eventually(lambda: requests.request("PROPFIND", calendar, auth=(user, password),
                                        headers={"Depth": "0"}).status_code == 207, what="mirror calendar")
    return user, password


def _busy(api: Api, user: str) -> list[dict[str, str]]:
    return api.get("/freebusy", tech=user, **DAY).json()["techs"][user]["busy"]


def _booking(account: RemoteAccount, user: str, uid: str) -> RemoteView | None:
    return next((event for event in account.events(user) if event.lockstep_uid == uid), None)


def _mirror_hrefs(server: LockstepServer, account: RemoteAccount, user: str, password: str) -> list[str]:
    listing = requests.request("PROPFIND", f"{server.dav_url}{user}/{account.mirror_slug}/",
                               auth=(user, password), headers={"Depth": "1"})
    return [r.href for r in multistatus(listing.text) if r.href.endswith(".ics")]


def _connection_state(server: LockstepServer, user: str) -> str:
    with server.database.read() as session:
        return session.scalar(select(Connection.state).join(Tech, Tech.id == Connection.tech_id)
                              .where(Tech.username == user)) or ""


def test_booking_appears_remotely(api: Api, account: RemoteAccount, connected: tuple[str, str]) -> None:
    user = connected[0]
    booking = api.post("/bookings", {"tech": user, "start": "2026-12-01T17:00:00Z",
                                     "end": "2026-12-01T18:00:00Z", "summary": "Fix boiler"}).json()
    event = eventually(lambda: _booking(account, user, booking["uid"]), what=f"booking in {account.provider}")
    assert event.summary == "Fix boiler"
    assert event.start_utc == "2026-12-01T17:00:00Z"


def test_personal_event_blocks_and_shows_over_caldav(server: LockstepServer, api: Api, account: RemoteAccount,
                                                     connected: tuple[str, str]) -> None:
    user, password = connected
    remote_id = account.create(user, "Dentist", at("2026-12-01T20:00:00Z"), at("2026-12-01T21:00:00Z"))
    eventually(lambda: {"start": "2026-12-01T20:00:00Z", "end": "2026-12-01T21:00:00Z"} in _busy(api, user),
               what="personal event in free/busy")
    sync = api.get("/freebusy", tech=user, **DAY).json()["techs"][user]["sync"]
    assert sync["state"] == "ok" and sync["last_success"].endswith("Z")
    assert len(_mirror_hrefs(server, account, user, password)) == 1
    account.delete(user, remote_id)
    eventually(lambda: _busy(api, user) == [], what="deleted personal event to free the slot")
    assert _mirror_hrefs(server, account, user, password) == []


def test_booking_moved_remotely_is_reverted_and_notified(server: LockstepServer, api: Api, account: RemoteAccount,
                                                         connected: tuple[str, str]) -> None:
    user = connected[0]
    booking = api.post("/bookings", {"tech": user, "start": "2026-12-01T17:00:00Z",
                                     "end": "2026-12-01T18:00:00Z", "summary": "Keep me"}).json()
    event = eventually(lambda: _booking(account, user, booking["uid"]), what="booking remotely")
    account.move(user, event.remote_id, at("2026-12-01T22:00:00Z"), at("2026-12-01T23:00:00Z"))

    def reverted() -> bool:
        current = _booking(account, user, booking["uid"])
        return current is not None and current.start_utc == "2026-12-01T17:00:00Z"

    time.sleep(1)  # let the move be seen before waiting for the revert
    eventually(reverted, timeout=30, what="booking reverted remotely")
    assert _busy(api, user) == [{"start": "2026-12-01T17:00:00Z", "end": "2026-12-01T18:00:00Z"}]
    with server.database.read() as session:
        kinds = session.scalars(select(Notification.kind).where(Notification.tech == user)).all()
    assert "booking_reverted" in kinds


def test_overlapping_personal_event_records_one_conflict(server: LockstepServer, api: Api, account: RemoteAccount,
                                                         connected: tuple[str, str]) -> None:
    user = connected[0]
    assert api.post("/bookings", {"tech": user, "start": "2026-12-01T17:00:00Z",
                                  "end": "2026-12-01T18:00:00Z", "summary": "Job"}).status_code == 201
    remote_id = account.create(user, "Gym", at("2026-12-01T17:30:00Z"), at("2026-12-01T18:30:00Z"))

    def conflicts() -> list[str]:
        with server.database.read() as session:
            return list(session.scalars(select(Conflict.other_ref).where(Conflict.tech == user)))

    eventually(conflicts, what="a conflict")
    account.rename(user, remote_id, "Gym (longer)")
    time.sleep(4)  # a poll cycle and a push later, still one conflict
    assert len(conflicts()) == 1


def test_calendar_app_edit_of_mirrored_event_reaches_the_provider(server: LockstepServer, account: RemoteAccount,
                                                                  connected: tuple[str, str]) -> None:
    user, password = connected
    remote_id = account.create(user, "Lunch", at("2026-12-04T20:00:00Z"), at("2026-12-04T21:00:00Z"))
    (href,) = eventually(lambda: _mirror_hrefs(server, account, user, password), what="mirrored lunch")
    item = requests.get(server.url + href, auth=(user, password))
    assert item.status_code == 200, (href, item.status_code, item.text)
    edited = item.text.replace("SUMMARY:Lunch", "SUMMARY:Lunch with Ann")
    put = requests.put(server.url + href, data=edited, auth=(user, password),
                       headers={"If-Match": item.headers["ETag"]})
    assert put.status_code in (201, 204), put.text
    eventually(lambda: any(e.remote_id == remote_id and e.summary == "Lunch with Ann"
                           for e in account.events(user)), what="the calendar-app edit remotely")


def test_expired_cursor_resyncs_without_duplicates(server: LockstepServer, account: RemoteAccount,
                                                   connected: tuple[str, str]) -> None:
    user, password = connected
    for hour in (16, 18):
        account.create(user, f"E{hour}", at(f"2026-12-05T{hour}:00:00Z"), at(f"2026-12-05T{hour}:30:00Z"))
    eventually(lambda: len(_mirror_hrefs(server, account, user, password)) == 2, what="two mirrored events")
    account.expire_cursor(user)
    account.create(user, "E20", at("2026-12-05T20:00:00Z"), at("2026-12-05T20:30:00Z"))
    eventually(lambda: len(_mirror_hrefs(server, account, user, password)) == 3, what="resync after expiry")
    server.cli("sync", "now", user)
    time.sleep(2)
    assert len(_mirror_hrefs(server, account, user, password)) == 3
    assert len([e for e in account.events(user) if e.summary.startswith("E")]) == 3  # nothing copied back


def test_revoked_access_needs_reauth_keeps_booking_and_reports_the_gap(server: LockstepServer, api: Api,
                                                                       account: RemoteAccount,
                                                                       connected: tuple[str, str]) -> None:
    user = connected[0]
    account.revoke(user)
    server.cli("sync", "now", user)
    eventually(lambda: _connection_state(server, user) == "needs_reauth", what="needs_reauth")
    assert api.get("/freebusy", tech=user, **DAY).json()["techs"][user]["sync"]["state"] == "needs_reauth"
    booked = api.post("/bookings", {"tech": user, "start": "2026-12-07T17:00:00Z", "end": "2026-12-07T18:00:00Z",
                                    "summary": "During the outage"})
    assert booked.status_code == 201
    uid = booked.json()["uid"]
    assert "needs_reauth" in server.cli("sync", "status").stdout

    account.reconnect(server, user)
    eventually(lambda: _booking(account, user, uid), timeout=30, what="the outage booking flushed")
    eventually(lambda: _connection_state(server, user) == "ok", what="ok again")
    with server.database.read() as session:
        messages = session.scalars(select(Notification.message).where(
            Notification.tech == user, Notification.kind == "sync_recovered")).all()
    assert any(uid in message for message in messages), messages
