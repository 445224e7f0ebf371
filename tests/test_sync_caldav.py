"""Remote CalDAV end to end: a real ``lockstep serve`` syncing with a separately started stock
Radicale (the tech's "iCloud"), connected with ``lockstep connect caldav``.

The server polls remote CalDAV every second and everything else every ten minutes, so
every remote change seen here was found by the CalDAV poll timer ([caldav] poll_seconds).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest
import requests
from sqlalchemy import select

from server.config import load_config
from server.connections import ConnectError, connect_caldav
from server.crypto import KeyRing
from server.models import Connection, RemoteCalendarRow, Tech
from tests.support.api import Api, api_for
from tests.support.caldav_env import (
    CalDAVRemoteAccount, RemoteServer, connect_caldav_cli, event_ical, radicale_server,
)
from tests.support.dav import multistatus
from tests.support.google_env import eventually
from tests.support.lockstep_server import LockstepServer, running_server

DAY = {"start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    with radicale_server(tmp_path_factory.mktemp("icloud-like")) as server:
        yield server


@pytest.fixture(scope="module")
def server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    env = {"LOCKSTEP_CALDAV_POLL_SECONDS": "1", "LOCKSTEP_SYNC_POLL_SECONDS": "600"}
    with running_server(tmp_path_factory.mktemp(f"caldav-{backend}"), backend,
                        extra_env=env) as started:
        yield started


@pytest.fixture(scope="module")
def api(server: LockstepServer) -> Api:
    return api_for(server, "bookings")


@pytest.fixture(scope="module")
def account(remote: RemoteServer) -> CalDAVRemoteAccount:
    return CalDAVRemoteAccount(remote)


@pytest.fixture
def connected(server: LockstepServer, account: CalDAVRemoteAccount) -> tuple[str, str]:
    user, password = server.add_tech()
    account.connect(server, user)
    eventually(lambda: _propfind(server, user, password, "caldav-primary/", "0").status_code == 207,
               what="mirror calendar")
    return user, password


def _propfind(server: LockstepServer, user: str, password: str, path: str,
              depth: str) -> requests.Response:
    return requests.request("PROPFIND", f"{server.dav_url}{user}/{path}", auth=(user, password),
                            headers={"Depth": depth})


def _mirror_hrefs(server: LockstepServer, user: str, password: str) -> list[str]:
    listing = _propfind(server, user, password, "caldav-primary/", "1")
    return [r.href for r in multistatus(listing.text) if r.href.endswith(".ics")]


def _busy(api: Api, user: str) -> list[dict[str, str]]:
    return api.get("/freebusy", tech=user, **DAY).json()["techs"][user]["busy"]


def _booking_remotely(account: CalDAVRemoteAccount, user: str, uid: str) -> object | None:
    return next((e for e in account.events(user) if e.lockstep_uid == uid), None)


def test_two_way_sync(server: LockstepServer, api: Api, account: CalDAVRemoteAccount,
                      connected: tuple[str, str]) -> None:
    """One tech, every direction: a booking out, a personal event in, an edit on each side,
    deletes on each side. (One connection for all of it keeps the module quick.)"""
    user, password = connected
    with server.database.read() as session:
        stored = session.scalar(select(Connection).join(Tech, Tech.id == Connection.tech_id)
                                .where(Tech.username == user))
        assert stored is not None and stored.provider == "caldav" and stored.credentials
        assert account.server.users[user] not in stored.credentials  # encrypted at rest

    # A booking appears in the remote calendar, under its own UID, marked as ours.
    booking = api.post("/bookings", {"tech": user, "start": "2026-12-01T17:00:00Z",
                                     "end": "2026-12-01T18:00:00Z", "summary": "Fix boiler"}).json()
    event = eventually(lambda: _booking_remotely(account, user, booking["uid"]),
                       what="booking in the remote calendar")
    assert event.summary == "Fix boiler" and event.start_utc == "2026-12-01T17:00:00Z"
    stored_booking = account.calendars[user].read(event.remote_id)
    assert [str(e["UID"]) for e in stored_booking.walk("VEVENT")] == [booking["uid"]]
    booked = [{"start": "2026-12-01T17:00:00Z", "end": "2026-12-01T18:00:00Z"}]

    # A personal event made on the remote server blocks time and shows over our CalDAV.
    dentist = account.create(user, "Dentist", at("2026-12-01T20:00:00Z"), at("2026-12-01T21:00:00Z"))
    eventually(lambda: _busy(api, user) == booked + [{"start": "2026-12-01T20:00:00Z",
                                                      "end": "2026-12-01T21:00:00Z"}],
               what="personal event in free/busy")
    slots = api.get("/availability", tech=user, duration=60, **DAY).json()["techs"][user]["slots"]
    assert {"start": "2026-12-01T20:00:00Z", "end": "2026-12-01T21:00:00Z"} not in slots
    (href,) = _mirror_hrefs(server, user, password)
    assert api.get("/freebusy", tech=user, **DAY).json()["techs"][user]["sync"]["state"] == "ok"

    # Edited remotely: the busy time follows.
    account.move(user, dentist, at("2026-12-01T22:00:00Z"), at("2026-12-01T23:00:00Z"))
    eventually(lambda: _busy(api, user) == booked + [{"start": "2026-12-01T22:00:00Z",
                                                      "end": "2026-12-01T23:00:00Z"}],
               what="remote edit in free/busy")

    # Edited by the tech over our CalDAV: written back in place on the remote server.
    mine = requests.get(server.url + href, auth=(user, password))
    uid = next(line for line in mine.text.splitlines() if line.startswith("UID:"))[4:]
    changed = event_ical(uid, "Dentist (late)", at("2026-12-01T23:00:00Z"), at("2026-12-02T00:00:00Z"))
    put = requests.put(server.url + href, data=changed, auth=(user, password),
                       headers={"Content-Type": "text/calendar", "If-Match": mine.headers["ETag"]})
    assert put.status_code in (201, 204), put.text

    def edited_remotely() -> bool:
        found = {e.remote_id: e for e in account.events(user)}
        return (found[dentist].summary, found[dentist].start_utc) == (
            "Dentist (late)", "2026-12-01T23:00:00Z")

    eventually(edited_remotely, what="our edit in the remote calendar")
    assert len(account.events(user)) == 2  # in place: no copy

    # Deleted remotely: the slot frees and the mirror empties. Cancelled here: gone remotely.
    account.delete(user, dentist)
    eventually(lambda: _busy(api, user) == booked, what="remote delete to free the slot")
    assert _mirror_hrefs(server, user, password) == []
    assert api.delete(f"/bookings/{booking['uid']}").status_code in (200, 204)
    eventually(lambda: account.events(user) == [], what="cancelled booking gone remotely")


def test_calendar_selection(server: LockstepServer, account: CalDAVRemoteAccount,
                            connected: tuple[str, str]) -> None:
    user, password = connected
    side = account.server.new_calendar("Side jobs", user, cal_id="zz-side-jobs")  # sorts last
    side.create(event_ical("side-1", "Side job", at("2026-12-01T23:00:00Z"), at("2026-12-02T00:00:00Z")))
    account.connect(server, user)  # connecting again discovers the new calendar

    def discovered() -> list[tuple[str, bool]]:
        with server.database.read() as session:
            return [(row.name, row.selected) for row in session.scalars(
                select(RemoteCalendarRow).join(Connection, Connection.id == RemoteCalendarRow.connection_id)
                .join(Tech, Tech.id == Connection.tech_id).where(Tech.username == user))
                if row.name == "Side jobs"]

    assert eventually(discovered, what="the new calendar discovered") == [("Side jobs", False)]
    chosen = server.cli("calendars", user, "--select", side.url).stdout
    assert "[x] Side jobs" in chosen and "[x] Calendar" in chosen and side.url in chosen

    def mirrored() -> bool:
        answer = _propfind(server, user, password, "caldav-side-jobs/", "1")
        return answer.status_code == 207 and any(r.href.endswith(".ics") for r in multistatus(answer.text))

    eventually(mirrored, what="the chosen calendar mirrored")


def test_wrong_password_is_refused_and_nothing_stored(server: LockstepServer,
                                                      remote: RemoteServer) -> None:
    user, _ = server.add_tech()
    remote.add_account(user, "the-right-one")
    done = connect_caldav_cli(server, user, remote.url, user, "wrong-" + uuid.uuid4().hex)
    assert done.returncode == 1
    assert "refused the user name or password" in done.stderr
    assert "wrong-" not in done.stderr + done.stdout
    with server.database.read() as session:
        rows = session.scalars(select(Connection).join(Tech, Tech.id == Connection.tech_id)
                               .where(Tech.username == user)).all()
        assert rows == []
    config, ring = load_config(str(server.data_dir), None), KeyRing("k" * 32)
    with pytest.raises(ConnectError, match="https://"):
        connect_caldav(server.database, config, ring, user, "ftp://example.com/", user, "x")
    with pytest.raises(ConnectError, match="not in the URL"):
        connect_caldav(server.database, config, ring, user, "https://me:pw@example.com/", user, "x")
