"""Two-way sync with Outlook, end to end: a `lockstep serve` process + the Graph emulator
over HTTPS + the real MSAL, connected through the consent flow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
from sqlalchemy import select

from server.models import Connection, Notification, RemoteCalendarRow, Tech
from server.providers.microsoft_mapping import UID_PROPERTY
from server.sandbox.google import GoogleSandbox
from server.sandbox.graph import GraphSandbox
from tests.support.api import Api, api_for
from tests.support.dav import multistatus
from tests.support.google_env import connect_google, eventually, google_env
from tests.support.lockstep_server import LockstepServer, running_server
from tests.support.microsoft_env import connect_microsoft, graph_env

UTC = timezone.utc
DAY = {"start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"}
DAY2 = {"start": "2026-12-02T00:00:00Z", "end": "2026-12-03T00:00:00Z"}
DAY3 = {"start": "2026-12-03T00:00:00Z", "end": "2026-12-04T00:00:00Z"}
PACIFIC = "Pacific Standard Time"


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphSandbox]:
    with GraphSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def server(backend: str, graph: GraphSandbox, google: GoogleSandbox,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    env = {**google_env(google), **graph_env(graph, LOCKSTEP_SYNC_POLL_SECONDS="3")}
    with running_server(tmp_path_factory.mktemp(f"sync-ms-{backend}"), backend, extra_env=env) as started:
        yield started


@pytest.fixture(scope="module")
def api(server: LockstepServer) -> Api:
    return api_for(server, "bookings")


@pytest.fixture
def connected(server: LockstepServer, graph: GraphSandbox) -> tuple[str, str, str]:
    """(user, app password, mailbox) of a tech connected to a fresh Outlook mailbox."""
    return _connect(server, graph)


@pytest.fixture(scope="module")
def shared(server: LockstepServer, graph: GraphSandbox) -> tuple[str, str, str]:
    """One connected tech for the tests that do not break the connection; each uses its own days."""
    return _connect(server, graph)


def _connect(server: LockstepServer, graph: GraphSandbox) -> tuple[str, str, str]:
    user, password = server.add_tech()
    email = connect_microsoft(server, graph, user, time_zone=PACIFIC)
    mirror = f"{server.dav_url}{user}/microsoft-primary/"
    eventually(lambda: requests.request("PROPFIND", mirror, auth=(user, password),
                                        headers={"Depth": "0"}).status_code == 207, what="mirror calendar")
    eventually(lambda: _calendar_row(server, user).watch_channel, what="a Graph subscription")
    return user, password, email


def _calendar_row(server: LockstepServer, user: str) -> RemoteCalendarRow:
    with server.database.read() as session:
        row = session.scalar(select(RemoteCalendarRow).join(Connection, Connection.id == RemoteCalendarRow.connection_id)
                             .join(Tech, Tech.id == Connection.tech_id)
                             .where(Tech.username == user, RemoteCalendarRow.primary.is_(True)))
        assert row is not None
        return row


def _state(server: LockstepServer, user: str) -> str:
    with server.database.read() as session:
        return session.scalar(select(Connection.state).join(Tech, Tech.id == Connection.tech_id)
                              .where(Tech.username == user)) or ""


def _ours(graph: GraphSandbox, email: str, uid: str) -> dict[str, Any] | None:
    return next((e for e in graph.stored_events(email)
                 if {"id": UID_PROPERTY, "value": uid} in (e.get("singleValueExtendedProperties") or [])), None)


def _utc(value: dict[str, str]) -> str:
    assert value["timeZone"] == "UTC"
    return datetime.fromisoformat(value["dateTime"][:19]).strftime("%Y-%m-%dT%H:%M:%SZ")


def _busy(api: Api, user: str, window: dict[str, str] = DAY) -> list[dict[str, str]]:
    return api.get("/freebusy", tech=user, **window).json()["techs"][user]["busy"]


def _items(server: LockstepServer, user: str, password: str) -> list[str]:
    listing = requests.request("PROPFIND", f"{server.dav_url}{user}/microsoft-primary/", auth=(user, password),
                               headers={"Depth": "1"})
    return [r.href for r in multistatus(listing.text) if r.href.endswith(".ics")]


def _mirrored(server: LockstepServer, user: str, password: str, text: str) -> str:
    """The href of the mirrored item whose iCalendar contains ``text``; "" when none does."""
    for href in _items(server, user, password):
        if text in requests.get(server.url + href, auth=(user, password)).text:
            return href
    return ""


def test_booking_appears_in_outlook_and_is_kept_there(server: LockstepServer, api: Api, graph: GraphSandbox,
                                                      shared: tuple[str, str, str]) -> None:
    user, _, email = shared
    booking = api.post("/bookings", {"tech": user, "start": "2026-12-01T17:00:00Z",
                                     "end": "2026-12-01T18:00:00Z", "summary": "Fix boiler"}).json()
    event = eventually(lambda: _ours(graph, email, booking["uid"]), what="booking in Outlook")
    assert event["subject"] == "Fix boiler" and event["transactionId"].startswith("lockstep-")
    assert (_utc(event["start"]), _utc(event["end"])) == ("2026-12-01T17:00:00Z", "2026-12-01T18:00:00Z")
    time.sleep(1)  # its echo comes back through delta: still one event, still one booking
    assert len([e for e in graph.stored_events(email) if e["subject"] == "Fix boiler"]) == 1
    assert _busy(api, user) == [{"start": "2026-12-01T17:00:00Z", "end": "2026-12-01T18:00:00Z"}]
    # Moved in Outlook: the booking is the truth, so it goes back, and the tech is told.
    graph.update_event(email, event["id"], {"start": {"dateTime": "2026-12-01T22:00:00", "timeZone": "UTC"},
                                            "end": {"dateTime": "2026-12-01T23:00:00", "timeZone": "UTC"}})

    def start_in_outlook() -> str:
        current = _ours(graph, email, booking["uid"])
        return _utc(current["start"]) if current else ""

    time.sleep(1)
    eventually(lambda: start_in_outlook() == "2026-12-01T17:00:00Z", timeout=30, what="the booking restored")
    assert _busy(api, user) == [{"start": "2026-12-01T17:00:00Z", "end": "2026-12-01T18:00:00Z"}]
    with server.database.read() as session:
        kinds = session.scalars(select(Notification.kind).where(Notification.tech == user)).all()
    assert "booking_reverted" in kinds


def test_personal_event_blocks_and_shows_over_caldav(server: LockstepServer, api: Api, graph: GraphSandbox,
                                                     shared: tuple[str, str, str]) -> None:
    user, password, email = shared
    created = graph.create_event(email, None, {
        "subject": "Dentist", "start": {"dateTime": "2026-12-02T12:00:00", "timeZone": PACIFIC},
        "end": {"dateTime": "2026-12-02T13:00:00", "timeZone": PACIFIC}})
    graph.create_event(email, None, {  # free time never blocks
        "subject": "Lunch (free)", "showAs": "free", "start": {"dateTime": "2026-12-02T14:00:00", "timeZone": PACIFIC},
        "end": {"dateTime": "2026-12-02T15:00:00", "timeZone": PACIFIC}})
    eventually(lambda: _busy(api, user, DAY2) == [{"start": "2026-12-02T20:00:00Z", "end": "2026-12-02T21:00:00Z"}]
               and _mirrored(server, user, password, "SUMMARY:Dentist")
               and _mirrored(server, user, password, "SUMMARY:Lunch (free)"),
               what="personal event in free/busy and over CalDAV")
    sync = api.get("/freebusy", tech=user, **DAY2).json()["techs"][user]["sync"]
    assert sync["state"] == "ok" and sync["last_success"].endswith("Z")
    graph.delete_event(email, created["id"])
    eventually(lambda: _busy(api, user, DAY2) == [] and not _mirrored(server, user, password, "SUMMARY:Dentist"),
               what="the deleted event to free the slot and leave CalDAV")


def test_windows_zone_series_across_dst(api: Api, graph: GraphSandbox, shared: tuple[str, str, str]) -> None:
    user, _, email = shared
    graph.create_event(email, None, {
        "subject": "Crew standup", "start": {"dateTime": "2027-03-02T09:00:00", "timeZone": PACIFIC},
        "end": {"dateTime": "2027-03-02T10:00:00", "timeZone": PACIFIC},
        "recurrence": {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["tuesday"]},
                       "range": {"type": "numbered", "numberOfOccurrences": 4, "startDate": "2027-03-02",
                                 "recurrenceTimeZone": PACIFIC}}})
    window = {"start": "2027-03-01T00:00:00Z", "end": "2027-04-01T00:00:00Z"}
    expected = [  # 09:00 Pacific every Tuesday: PST before 2027-03-14, PDT after
        {"start": "2027-03-02T17:00:00Z", "end": "2027-03-02T18:00:00Z"},
        {"start": "2027-03-09T17:00:00Z", "end": "2027-03-09T18:00:00Z"},
        {"start": "2027-03-16T16:00:00Z", "end": "2027-03-16T17:00:00Z"},
        {"start": "2027-03-23T16:00:00Z", "end": "2027-03-23T17:00:00Z"},
    ]
    eventually(lambda: _busy(api, user, window) == expected, what=f"the series, got {_busy(api, user, window)}")


def test_series_exception_edited_on_each_side(server: LockstepServer, api: Api, graph: GraphSandbox,
                                              shared: tuple[str, str, str]) -> None:
    user, password, email = shared
    series = graph.create_event(email, None, {
        "subject": "Route planning", "start": {"dateTime": "2027-01-04T08:00:00", "timeZone": PACIFIC},
        "end": {"dateTime": "2027-01-04T09:00:00", "timeZone": PACIFIC},
        "recurrence": {"pattern": {"type": "daily", "interval": 1},
                       "range": {"type": "numbered", "numberOfOccurrences": 3, "startDate": "2027-01-04",
                                 "recurrenceTimeZone": PACIFIC}}})
    window = {"start": "2027-01-04T00:00:00Z", "end": "2027-01-08T00:00:00Z"}
    # Outlook side: the second occurrence moves to 10:00.
    (second,) = [i for i in graph.instances(email, series["id"], "2027-01-05T00:00:00Z", "2027-01-06T00:00:00Z")]
    graph.update_event(email, second["id"], {"start": {"dateTime": "2027-01-05T10:00:00", "timeZone": PACIFIC},
                                             "end": {"dateTime": "2027-01-05T11:00:00", "timeZone": PACIFIC}})
    outlook_side = [{"start": "2027-01-04T16:00:00Z", "end": "2027-01-04T17:00:00Z"},
                    {"start": "2027-01-05T18:00:00Z", "end": "2027-01-05T19:00:00Z"},
                    {"start": "2027-01-06T16:00:00Z", "end": "2027-01-06T17:00:00Z"}]
    eventually(lambda: _busy(api, user, window) == outlook_side, what="the Outlook exception in free/busy")
    # CalDAV side (an iPhone): the third occurrence moves to 13:00 in the mirrored series.
    href = _mirrored(server, user, password, "SUMMARY:Route planning")
    item = requests.get(server.url + href, auth=(user, password))
    assert "RECURRENCE-ID" in item.text, item.text
    import icalendar

    calendar = icalendar.Calendar.from_ical(item.text)
    master = next(c for c in calendar.walk("VEVENT") if "RECURRENCE-ID" not in c)
    override = icalendar.Event()
    for name in ("UID", "SUMMARY"):
        override.add(name, master[name])
    override.add("DTSTAMP", datetime.now(UTC))
    third = master["DTSTART"].dt.replace(day=6)
    override.add("RECURRENCE-ID", third)
    override.add("DTSTART", third.replace(hour=13))
    override.add("DTEND", third.replace(hour=14))
    calendar.add_component(override)
    put = requests.put(server.url + href, data=calendar.to_ical(), auth=(user, password),
                       headers={"If-Match": item.headers["ETag"], "Content-Type": "text/calendar"})
    assert put.status_code in (201, 204), put.text

    def outlook_starts() -> list[str]:
        return sorted(_utc(i["start"]) for i in graph.instances(email, series["id"], "2027-01-04T00:00:00Z",
                                                               "2027-01-08T00:00:00Z"))

    eventually(lambda: outlook_starts() == ["2027-01-04T16:00:00Z", "2027-01-05T18:00:00Z", "2027-01-06T21:00:00Z"],
               what=f"both exceptions in Outlook, got {outlook_starts()}")
    eventually(lambda: _busy(api, user, window) == outlook_side[:2] + [
        {"start": "2027-01-06T21:00:00Z", "end": "2027-01-06T22:00:00Z"}], what="both exceptions in free/busy")


def test_subscription_removed_recovers_by_itself(server: LockstepServer, api: Api, graph: GraphSandbox,
                                                 shared: tuple[str, str, str]) -> None:
    user, _, email = shared
    old = _calendar_row(server, user).watch_channel
    graph.send_lifecycle(old, "subscriptionRemoved")
    new = eventually(lambda: (c := _calendar_row(server, user).watch_channel) != old and c, what="a new subscription")
    live = {s["id"]: s for s in graph.subscriptions()}
    assert new in live and old not in live
    assert live[new]["notificationUrl"] == f"{server.url}/hooks/microsoft"
    graph.create_event(email, None, {"subject": "After recovery",
                                     "start": {"dateTime": "2026-12-03T07:00:00", "timeZone": PACIFIC},
                                     "end": {"dateTime": "2026-12-03T08:00:00", "timeZone": PACIFIC}})
    eventually(lambda: _busy(api, user, DAY3) == [{"start": "2026-12-03T15:00:00Z", "end": "2026-12-03T16:00:00Z"}],
               what="an Outlook change after the recovery")
    assert graph.wait_for_notifications(1, new, timeout=5)  # and push works on the new subscription


def test_webhook_handshake_and_forged_notifications(server: LockstepServer, graph: GraphSandbox,
                                                    shared: tuple[str, str, str]) -> None:
    user = shared[0]
    hook = f"{server.url}/hooks/microsoft"
    shake = requests.post(hook, params={"validationToken": "Validation: Testing client application <x>"})
    assert shake.status_code == 200 and shake.headers["Content-Type"].startswith("text/plain")
    assert shake.text == "Validation: Testing client application <x>"
    assert requests.post(hook, data="not json").status_code == 400
    assert requests.post(hook, json={"nothing": []}).status_code == 400
    too_big = requests.post(hook, data=b"{" + b" " * (600 * 1024) + b"}")
    assert too_big.status_code == 400 and "limited to" in too_big.json()["message"]
    row = _calendar_row(server, user)
    forged = [{"subscriptionId": row.watch_channel, "clientState": "guessed", "lifecycleEvent": "subscriptionRemoved"},
              {"subscriptionId": "nope", "clientState": row.watch_token, "lifecycleEvent": "subscriptionRemoved"}]
    answer = requests.post(hook, json={"value": forged})
    assert answer.status_code == 202
    time.sleep(2)  # had it been believed, a new subscription would have replaced this one by now
    assert _calendar_row(server, user).watch_channel == row.watch_channel
    assert row.watch_channel in {s["id"] for s in graph.subscriptions()}
    assert server.log_file.read_text().count("rejected Microsoft notification") >= 2
    forged_sign_in = requests.post(f"{server.url}/oauth/microsoft/callback", data={"state": "forged", "code": "x"})
    assert forged_sign_in.status_code == 400 and "unknown or has expired" in forged_sign_in.text
    # The genuine lifecycle event from Graph is acted on at once (not at the half-life renewal).
    graph.send_lifecycle(row.watch_channel, "reauthorizationRequired")
    eventually(lambda: _calendar_row(server, user).watch_channel != row.watch_channel,
               what="a new subscription after reauthorizationRequired")


def test_revoked_grant_needs_reauth_keeps_the_booking_then_disconnect(
        server: LockstepServer, api: Api, graph: GraphSandbox, connected: tuple[str, str, str]) -> None:
    user, password, email = connected
    graph.revoke_refresh_tokens(email)
    server.cli("sync", "now", user)
    eventually(lambda: _state(server, user) == "needs_reauth", what="needs_reauth")
    assert api.get("/freebusy", tech=user, **DAY).json()["techs"][user]["sync"]["state"] == "needs_reauth"
    booked = api.post("/bookings", {"tech": user, "start": "2026-12-07T17:00:00Z", "end": "2026-12-07T18:00:00Z",
                                    "summary": "During the outage"})
    assert booked.status_code == 201
    uid = booked.json()["uid"]
    assert _ours(graph, email, uid) is None
    assert "needs_reauth" in server.cli("sync", "status").stdout

    connect_microsoft(server, graph, user)  # the tech reconnects
    eventually(lambda: _ours(graph, email, uid), timeout=30, what="the outage booking flushed to Outlook")
    eventually(lambda: _state(server, user) == "ok", what="ok again")
    with server.database.read() as session:
        messages = session.scalars(select(Notification.message).where(
            Notification.tech == user, Notification.kind == "sync_recovered")).all()
    assert any(uid in message for message in messages), messages
    # Disconnecting deletes the subscriptions and the mirror calendar; the booking stays ours.
    eventually(lambda: [s for s in graph.subscriptions() if s["user"] == email], what="a subscription")
    assert "Disconnected microsoft" in server.cli("disconnect", "microsoft", user).stdout
    assert not [s for s in graph.subscriptions() if s["user"] == email]
    assert requests.request("PROPFIND", f"{server.dav_url}{user}/microsoft-primary/", auth=(user, password),
                            headers={"Depth": "0"}).status_code == 404
    # Connected again: a new subscription at once, whatever jobs the removed calendar left behind.
    connect_microsoft(server, graph, user)
    eventually(lambda: [s for s in graph.subscriptions() if s["user"] == email], what="a new subscription")


def test_google_and_outlook_at_once(server: LockstepServer, api: Api, graph: GraphSandbox,
                                    google: GoogleSandbox) -> None:
    """Both accounts' personal events block; a booking goes to one calendar only: the first
    account's primary, or the one chosen with --bookings-to."""
    user, password, email = _connect(server, graph)  # Outlook first
    connect_google(server, google, user)
    eventually(lambda: requests.request("PROPFIND", f"{server.dav_url}{user}/google-primary/",
                                        auth=(user, password), headers={"Depth": "0"}).status_code == 207,
               what="the Google mirror")
    day = {"start": "2026-12-08T00:00:00Z", "end": "2026-12-09T00:00:00Z"}
    graph.create_event(email, None, {"subject": "Outlook dentist",
                                     "start": {"dateTime": "2026-12-08T09:00:00", "timeZone": PACIFIC},
                                     "end": {"dateTime": "2026-12-08T10:00:00", "timeZone": PACIFIC}})
    google.create_event(email, {"summary": "Google gym", "start": {"dateTime": "2026-12-08T19:00:00Z"},
                                "end": {"dateTime": "2026-12-08T20:00:00Z"}})
    eventually(lambda: _busy(api, user, day) == [{"start": "2026-12-08T17:00:00Z", "end": "2026-12-08T18:00:00Z"},
                                                {"start": "2026-12-08T19:00:00Z", "end": "2026-12-08T20:00:00Z"}],
               what="personal events of both accounts blocking")

    def in_google(uid: str) -> bool:
        return any((e.get("extendedProperties") or {}).get("private", {}).get("lockstepUid") == uid
                   for e in google.stored_events(email))

    first = api.post("/bookings", {"tech": user, "summary": "To Outlook", "start": "2026-12-08T21:00:00Z",
                                   "end": "2026-12-08T22:00:00Z"}).json()["uid"]
    eventually(lambda: _ours(graph, email, first), what="the booking in Outlook (first account)")
    server.cli("calendars", user, "--bookings-to", email)  # Google's primary calendar id is the address
    time.sleep(1)
    second = api.post("/bookings", {"tech": user, "summary": "To Google", "start": "2026-12-08T22:00:00Z",
                                    "end": "2026-12-08T23:00:00Z"}).json()["uid"]
    eventually(lambda: in_google(second), what="the booking in the chosen Google calendar")
    time.sleep(1)
    assert _ours(graph, email, second) is None
