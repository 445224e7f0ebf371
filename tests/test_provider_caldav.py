"""CalDAVProvider against real, separately started CalDAV servers (stock Radicale and stock
Xandikos), through the real caldav library: the provider contract, then what is particular
to CalDAV. Radicale runs twice over: with RFC 6578 sync-collection, and with the provider
told to skip it (the ctag + etag listing that servers without sync-collection get)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from server.providers import provider_class
from server.providers.base import (
    AuthorizationLost, Credentials, CursorExpired, ProviderError, RemoteEvent,
)
from server.providers.caldav_remote import CalDAVProvider, CalDAVSettings, check_account
from server.providers.caldav_remote_sync import decode_ctag_cursor
from server.providers.caldav_remote_write import object_name
from tests.support.caldav_env import (
    RemoteCalendar, RemoteServer, radicale_server, xandikos_server,
)
from tests.support.provider_contract import (
    CONTRACT, at, busy, by_id, drain, ical, series_ical, summaries, uid,
)


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    with radicale_server(tmp_path_factory.mktemp("remote-radicale")) as server:
        yield server


@pytest.fixture(scope="module")
def xandikos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    pytest.importorskip("xandikos", reason="xandikos is not installed (test extra)")
    with xandikos_server(tmp_path_factory.mktemp("remote-xandikos")) as server:
        yield server


class CalDAVHarness:
    """A fresh calendar on the remote server, the provider connected to its account."""

    page_size = 2
    webhook_address = "http://127.0.0.1:9/unused"  # CalDAV has no push: start_watch is None

    def __init__(self, server: RemoteServer, sync_collection: bool) -> None:
        self.server = server
        self.remote = server.new_calendar("Jobs")
        self.calendar_id = self.remote.url
        self.blob = json.dumps({"url": server.url, "username": server.username,
                                "password": server.password})
        self.settings = CalDAVSettings(page_size=self.page_size,
                                       use_sync_collection=sync_collection)
        self.provider = CalDAVProvider(self.settings, Credentials(self.blob))
        if not (server.kind == "radicale" and sync_collection):
            self.expire_cursor = None  # type: ignore[assignment]  # see expire_cursor

    # --- the remote side (plain HTTP, never the provider) ----------------------------
    def create_remote_event(self, event: str | dict[str, Any]) -> str:
        assert isinstance(event, str)
        return self.remote.create(event)

    def update_remote_event(self, remote_id: str, event: str | dict[str, Any]) -> None:
        assert isinstance(event, str)
        self.remote.update(remote_id, event)

    def delete_remote_event(self, remote_id: str) -> None:
        self.remote.delete(remote_id)

    def move_remote_instance(self, remote_id: str, original: datetime, start: datetime,
                             end: datetime) -> None:
        self.remote.override(remote_id, original, start, end)

    def cancel_remote_instance(self, remote_id: str, original: datetime) -> None:
        self.remote.override(remote_id, original, None, None)

    def expire_cursor(self) -> None:
        """Radicale forgets its sync tokens. (Xandikos' tokens are git commits, which cannot
        be expired from outside; a ctag cursor carries its own state and never expires.)"""
        self.server.expire_sync_tokens(self.remote)

    def revoke(self) -> None:
        self.server.revoke()

    def rate_limit(self, retry_after: int) -> None:
        self.server.proxy.fail_next(429, retry_after=retry_after)


MODES = [pytest.param(("radicale", True), id="radicale-sync"),
         pytest.param(("radicale", False), id="radicale-ctag"),
         pytest.param(("xandikos", True), id="xandikos-sync")]


@pytest.fixture(params=MODES)
def harness(request: pytest.FixtureRequest) -> Iterator[CalDAVHarness]:
    kind, sync_collection = request.param
    server: RemoteServer = request.getfixturevalue(kind)
    yield CalDAVHarness(server, sync_collection)
    server.restore()


@pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__.removeprefix("contract_"))
def test_contract(check: Any, harness: CalDAVHarness) -> None:
    check(harness)


# --- CalDAV specifics -------------------------------------------------------------------------

def test_registry_and_object_names() -> None:
    assert provider_class("caldav") is CalDAVProvider
    assert object_name("lockstep-1b2c") == "lockstep-1b2c.ics"
    odd = object_name("a/b@example.com")
    assert odd == object_name("a/b@example.com") != object_name("a_b@example.com")
    assert odd.startswith("ls-") and odd.endswith(".ics") and "/" not in odd


def test_discovery_flags_and_primary(radicale: RemoteServer) -> None:
    tasks = radicale.client().principal().make_calendar(
        name="Chores", cal_id="tasks-only", supported_calendar_component_set=["VTODO"])
    assert tasks is not None
    first = radicale.new_calendar("Personal")
    provider = CalDAVProvider(None, json.dumps({"url": radicale.url, "username": radicale.username,
                                                "password": radicale.password}))
    found = {c.remote_id: c for c in provider.list_calendars()}
    assert first.url in found and found[first.url].name == "Personal"
    assert not any("tasks-only" in c for c in found)  # a task list takes no events
    assert sum(c.primary for c in found.values()) == 1
    assert [c for c in found.values() if c.primary][0].remote_id == min(found)
    assert all(c.writable and c.busy for c in found.values())


def test_wrong_password_is_authorization_lost_without_the_password(radicale: RemoteServer) -> None:
    with pytest.raises(AuthorizationLost) as err:
        check_account(radicale.url, radicale.username, "not-the-password")
    assert "refused the user name or password" in str(err.value)
    provider = CalDAVProvider(None, json.dumps({"url": radicale.url, "username": "alice",
                                                "password": "hunter2-secret"}))
    assert "hunter2-secret" not in repr(provider) and "hunter2-secret" not in repr(provider.session)
    assert provider.credentials().blob == provider._credentials.blob  # handed back unchanged
    assert not provider.credentials().changed
    assert provider.start_watch("x", "y", "z", 60) is None


def test_invalid_sync_token_is_cursor_expired(harness: CalDAVHarness) -> None:
    harness.create_remote_event(ical("ext-1", "one", at("2027-02-01", 9)))
    _, cursor, _ = drain(harness, None)
    if cursor.startswith("sync:"):
        bogus = "sync:" + cursor[len("sync:"):-6] + "000000"
    else:
        assert decode_ctag_cursor(cursor)[1]  # the map of member etags
        bogus = "ctag:!!not-base64"
    with pytest.raises(CursorExpired):
        drain(harness, bogus)
    with pytest.raises(CursorExpired):  # a cursor of the other listing method
        drain(harness, "ctag:" if cursor.startswith("sync:") else "sync:anything")
    assert len(drain(harness, None)[0]) == 1


def test_server_errors_are_transient(harness: CalDAVHarness) -> None:
    harness.server.proxy.fail_next(503, retry_after=4)
    with pytest.raises(ProviderError) as err:
        harness.provider.list_calendars()
    assert not err.value.permanent and err.value.retry_after == 4
    harness.server.proxy.fail_next(502)
    with pytest.raises(ProviderError) as err:
        drain(harness, None)
    assert not err.value.permanent and not isinstance(err.value, AuthorizationLost)
    with pytest.raises(ProviderError) as err:
        harness.provider.put_event(harness.calendar_id, uid(), "not iCalendar")
    assert err.value.permanent
    unreachable = CalDAVProvider(CalDAVSettings(timeout=2), json.dumps(
        {"url": "http://127.0.0.1:9/", "username": "a", "password": "b"}))
    with pytest.raises(ProviderError) as err:
        unreachable.list_calendars()
    assert not err.value.permanent and "network error" in str(err.value)


def test_our_uid_is_the_object_uid_and_a_property(harness: CalDAVHarness) -> None:
    ours = uid()
    written = harness.provider.put_event(harness.calendar_id, ours,
                                         ical(ours, "Booking", at("2027-02-15", 9)))
    assert written.remote_id.endswith("/" + object_name(ours))
    stored = harness.remote.read(written.remote_id)
    (event,) = stored.walk("VEVENT")
    assert str(event["UID"]) == ours and str(event["X-LOCKSTEP-UID"]) == ours
    # Deleted on the server, then our retry without remote_id: the same resource comes back.
    harness.delete_remote_event(written.remote_id)
    back = harness.provider.put_event(harness.calendar_id, ours,
                                      ical(ours, "Booking", at("2027-02-15", 9)))
    assert back.remote_id == written.remote_id
    assert harness.remote.paths() == [written.remote_id]


def test_uid_held_elsewhere_is_updated_not_duplicated(harness: CalDAVHarness) -> None:
    """The tech's phone already put our booking under another name (e.g. an import)."""
    ours = uid()
    elsewhere = harness.create_remote_event(ical(ours, "copied by a phone", at("2027-02-16", 9)))
    written = harness.provider.put_event(harness.calendar_id, ours,
                                         ical(ours, "Booking", at("2027-02-16", 10)))
    assert written.remote_id == elsewhere
    assert harness.remote.paths() == [elsewhere]
    (event,) = drain(harness, None)[0]
    assert summaries(event.ical) == ["Booking"] and event.lockstep_uid == ours


def test_edit_of_a_remote_event_keeps_its_uid(harness: CalDAVHarness) -> None:
    """A tech edits a mirrored personal event: it is written back under its own UID and path."""
    theirs = harness.create_remote_event(ical("phone-uid-1", "dentist", at("2027-02-17", 8)))
    (listed,) = drain(harness, None)[0]
    edited = harness.provider.put_event(harness.calendar_id, "phone-uid-1",
                                        ical("phone-uid-1", "dentist (late)", at("2027-02-17", 9)),
                                        remote_id=listed.remote_id, etag=listed.etag)
    assert edited.remote_id == theirs and edited.etag != listed.etag
    (event,) = drain(harness, None)[0]
    assert event.etag == edited.etag and busy(event.ical) == ["02-17 14:00-15:00"]


def test_deleted_series_is_one_deletion(harness: CalDAVHarness) -> None:
    series = harness.create_remote_event(series_ical("ext-series"))
    single = harness.create_remote_event(ical("ext-1", "one", at("2027-02-17", 9)))
    _, cursor, _ = drain(harness, None)
    harness.delete_remote_event(series)
    harness.delete_remote_event(single)
    events = by_id(drain(harness, cursor)[0])
    assert sorted(events) == sorted([series, single])
    assert all(e.deleted for e in events.values())


def test_tasks_are_not_events(harness: CalDAVHarness) -> None:
    harness.create_remote_event("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n"
                                "BEGIN:VTODO\r\nUID:todo-1\r\nDTSTAMP:20270101T000000Z\r\n"
                                "SUMMARY:buy milk\r\nEND:VTODO\r\nEND:VCALENDAR\r\n")
    assert drain(harness, None)[0] == []
    assert RemoteEvent("x").deleted


def test_unchanged_ctag_reads_no_members(tmp_path: Path, radicale: RemoteServer) -> None:
    """The ctag fallback's point: a quiet calendar costs one PROPFIND, whatever its size."""
    calendar: RemoteCalendar = radicale.new_calendar("Quiet")
    for n in range(3):
        calendar.create(ical(f"q-{n}", f"q{n}", at("2027-02-18", 8 + n)))
    provider = CalDAVProvider(CalDAVSettings(use_sync_collection=False), json.dumps(
        {"url": radicale.url, "username": radicale.username, "password": radicale.password}))
    pages = list(provider.list_changes(calendar.url, None))
    cursor = pages[-1].cursor
    assert cursor and len(pages[-1].events) == 3
    again = list(provider.list_changes(calendar.url, cursor))
    assert [(p.events, p.cursor) for p in again] == [([], cursor)]


def test_listing_method_follows_the_server(harness: CalDAVHarness) -> None:
    _, cursor, _ = drain(harness, None)
    assert cursor.startswith("sync:" if harness.settings.use_sync_collection else "ctag:")


def test_server_without_sync_collection_gets_the_ctag_listing(radicale: RemoteServer) -> None:
    calendar = radicale.new_calendar("Old server")
    kept = calendar.create(ical("o-1", "one", at("2027-02-19", 9)))
    gone = calendar.create(ical("o-2", "two", at("2027-02-19", 11)))
    radicale.proxy.without_sync_collection = True
    provider = CalDAVProvider(CalDAVSettings(page_size=1), json.dumps(
        {"url": radicale.url, "username": radicale.username, "password": radicale.password}))
    pages = list(provider.list_changes(calendar.url, None))
    cursor = pages[-1].cursor or ""
    assert cursor.startswith("ctag:") and len(pages) == 2  # page_size 1: one object a page
    assert sorted(e.remote_id for p in pages for e in p.events) == sorted([kept, gone])
    calendar.update(kept, ical("o-1", "one (moved)", at("2027-02-19", 10)))
    calendar.delete(gone)
    added = calendar.create(ical("o-3", "three", at("2027-02-20", 9)))
    found = by_id([e for p in provider.list_changes(calendar.url, cursor) for e in p.events])
    assert sorted(found) == sorted([kept, gone, added]) and found[gone].deleted
    assert summaries(found[kept].ical) == ["one (moved)"] and summaries(found[added].ical) == ["three"]
    # A sync token kept from before the server lost sync-collection: list everything again.
    with pytest.raises(CursorExpired):
        list(provider.list_changes(calendar.url, "sync:http://radicale.org/ns/sync/" + "a" * 64))
