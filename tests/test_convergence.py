"""Convergence under faults: fixed seeds of the randomized scenario runner, plus the regressions it found.

Each seed drives tests/support/convergence.py against Google or Outlook (the
Graph emulator): API bookings, a CalDAV client and the provider's own app
interleaved with faults (429/5xx/latency, expired sync tokens and delta links,
dropped/duplicated/reordered push, a revoked grant, a SIGKILLed worker, on
PostgreSQL a lost database connection); after quiescence every invariant must
hold. Many more seeds: bench/soak.py.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from server.caldav_bridge.engine import Bridge
from server.models import Conflict, Connection, EventLink, Job, RemoteCalendarRow, Tech
from server.providers.base import Credentials, RemoteEvent
from server.providers.microsoft import MicrosoftProvider
from server.sandbox.google import GoogleSandbox
from server.sandbox.graph import GraphSandbox
from tests.support.convergence import run_scenario
from tests.support.convergence_invariants import Item, Observed, RemoteSide, broken
from tests.support.convergence_observers import GoogleObserver
from tests.support.convergence_ops import Booking, Model, local
from tests.support.convergence_world import WINDOW_START, World, module_world
from tests.support.dav import event_ics, multistatus
from tests.support.google_env import eventually
from tests.support.microsoft_env import graph_settings, sign_in

# Chosen from soak runs so that together they inject every fault kind and record conflicts
# (a change to the operations changes what a seed does: pick again from bench/soak.py output).
SQLITE_SEEDS = [6, 7, 12, 2005]
POSTGRESQL_SEEDS = [6004]  # includes the lost database connection and a SIGKILLed worker
# Microsoft (Graph emulator), chosen the same way from bench/soak.py --providers microsoft.
GRAPH_SQLITE_SEEDS = [30004, 30005, 30009, 30011, 30017]  # every Graph shape and fault between them
GRAPH_POSTGRESQL_SEEDS = [40017]  # lost database connection, revoked grant, a series
# A module's world is shared: after the seeds its worker still polls their techs, so a
# regression test's sync-then-push can take well over 30 s on a loaded machine.
SETTLE = 90.0


@pytest.fixture(scope="module")
def sqlite_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from module_world(tmp_path_factory, "sqlite", "google")


@pytest.fixture(scope="module")
def postgresql_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from module_world(tmp_path_factory, "postgresql", "google")


@pytest.fixture(scope="module")
def graph_sqlite_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from module_world(tmp_path_factory, "sqlite", "microsoft")


@pytest.fixture(scope="module")
def graph_postgresql_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from module_world(tmp_path_factory, "postgresql", "microsoft")


@pytest.mark.parametrize("seed", SQLITE_SEEDS)
def test_converges_on_sqlite(sqlite_world: World, seed: int) -> None:
    run_scenario(sqlite_world, seed)


@pytest.mark.parametrize("seed", POSTGRESQL_SEEDS)
def test_converges_on_postgresql(postgresql_world: World, seed: int) -> None:
    run_scenario(postgresql_world, seed)


@pytest.mark.parametrize("seed", GRAPH_SQLITE_SEEDS)
def test_converges_with_outlook_on_sqlite(graph_sqlite_world: World, seed: int) -> None:
    run_scenario(graph_sqlite_world, seed)


@pytest.mark.parametrize("seed", GRAPH_POSTGRESQL_SEEDS)
def test_converges_with_outlook_on_postgresql(graph_postgresql_world: World, seed: int) -> None:
    run_scenario(graph_postgresql_world, seed)


def test_calendar_app_edits_made_while_access_was_revoked_reach_the_provider(sqlite_world: World) -> None:
    """Regression (found by seed 6): a push that died with the grant was never retried after
    reconnecting, so the mirror and the provider disagreed for good."""
    world = sqlite_world
    tech = world.add_tech()
    google = world.account.sandbox  # type: ignore[attr-defined]
    lunch = world.account.create(tech.user, "Lunch", local(3, 12), local(3, 13))
    url = world.mirror_url(tech)
    eventually(lambda: tech.dav.request("PROPFIND", url, headers={"Depth": "1"}).text.count(".ics") == 1,
               what="the mirrored lunch")
    world.account.revoke(tech.user)
    created = tech.dav.put(url + "phone.ics", data=event_ics("phone-call", "Phone", "20270205T180000Z",
                                                            "20270205T183000Z"), headers={"If-None-Match": "*"})
    assert created.status_code == 201, created.text

    def pushes_dead() -> bool:
        with world.server.database.read() as session:
            errors = session.scalars(select(Job.last_error).where(
                Job.kind == "push_item", Job.state == "dead", Job.payload.contains("phone.ics"))).all()
        return any("reconnect" in error for error in errors)

    eventually(pushes_dead, timeout=SETTLE, what="the push to fail for want of access")
    world.account.reconnect(world.server, tech.user)
    eventually(lambda: any(e.summary == "Phone" for e in world.account.events(tech.user)), timeout=SETTLE,
               what="the calendar-app event on the provider after reconnecting")
    assert {e.remote_id for e in world.account.events(tech.user)} >= {lunch}
    assert google.get_event(tech.email, lunch)["summary"] == "Lunch"


def test_booking_cancelled_while_access_was_revoked_is_removed_after_reconnect(sqlite_world: World) -> None:
    """Regression (found by seed 6 on PostgreSQL): the cancellation's push died with the grant and
    reconnecting re-sent only the live bookings, so the cancelled one stayed in the tech's calendar."""
    world = sqlite_world
    tech = world.add_tech()
    booked = world.api.post("/bookings", {"tech": tech.user, "start": "2027-02-03T18:00:00Z",
                                          "end": "2027-02-03T19:00:00Z", "summary": "Boiler"})
    assert booked.status_code == 201, booked.text
    uid = booked.json()["uid"]
    eventually(lambda: any(e.lockstep_uid == uid for e in world.account.events(tech.user)), what="booking remotely")
    world.account.revoke(tech.user)
    assert world.api.delete(f"/bookings/{uid}").status_code == 204

    def push_dead() -> bool:
        with world.server.database.read() as session:
            errors = session.scalars(select(Job.last_error).where(
                Job.kind == "push_item", Job.state == "dead", Job.payload.contains(uid))).all()
        return any("reconnect" in error for error in errors)

    eventually(push_dead, timeout=SETTLE, what="the cancellation's push to fail for want of access")
    world.account.reconnect(world.server, tech.user)
    eventually(lambda: not any(e.lockstep_uid == uid for e in world.account.events(tech.user)), timeout=SETTLE,
               what="the cancelled booking gone from the provider after reconnecting")


def test_booking_deleted_remotely_while_the_cursor_expired_is_restored(sqlite_world: World) -> None:
    """Regression (found by seed 103): a full listing after an expired sync token does not list a
    deleted event, and only mirrored events were reconciled with it; the booking stayed lost."""
    world = sqlite_world
    tech = world.add_tech()
    booked = world.api.post("/bookings", {"tech": tech.user, "start": "2027-02-04T18:00:00Z",
                                          "end": "2027-02-04T19:00:00Z", "summary": "Boiler"})
    assert booked.status_code == 201, booked.text
    uid = booked.json()["uid"]
    event = eventually(lambda: next((e for e in world.account.events(tech.user) if e.lockstep_uid == uid), None),
                       what="booking remotely")
    world.account.expire_cursor(tech.user)
    world.account.delete(tech.user, event.remote_id)
    world.server.cli("sync", "now", tech.user)
    eventually(lambda: any(e.lockstep_uid == uid and e.start_utc == "2027-02-04T18:00:00Z"
                           for e in world.account.events(tech.user)), timeout=SETTLE, what="the booking restored")


def test_a_slow_first_push_does_not_leave_the_booking_at_its_old_time(sqlite_world: World) -> None:
    """Regression (found by seed 1009): the create's push, slowed, finished after the move's push
    and wrote the old time remotely, and its link made that look current; nothing corrected it."""
    world = sqlite_world
    tech = world.add_tech()
    google = world.account.sandbox  # type: ignore[attr-defined]
    google.add_fault("latency", delay=3.0, remaining=1, method="POST", path=r"/events$")
    booked = world.api.post("/bookings", {"tech": tech.user, "start": "2027-02-09T18:00:00Z",
                                          "end": "2027-02-09T19:00:00Z", "summary": "Boiler"})
    assert booked.status_code == 201, booked.text
    uid = booked.json()["uid"]
    time.sleep(1)  # the create's push is now inside the slow insert
    moved = world.api.patch(f"/bookings/{uid}", {"start": "2027-02-10T18:00:00Z", "end": "2027-02-10T19:00:00Z"})
    assert moved.status_code == 200, moved.text
    eventually(lambda: any(e.lockstep_uid == uid and e.start_utc == "2027-02-10T18:00:00Z"
                           for e in world.account.events(tech.user)) and not _jobs_waiting(world),
               timeout=40, what="the booking remotely at its new time, every job done")


def _jobs_waiting(world: World) -> bool:
    with world.server.database.read() as session:
        return bool(session.scalar(select(Job.id).where(Job.kind == "push_item", Job.state.in_(["ready", "running"]))
                                   .limit(1)))


def test_calendar_app_event_over_a_booking_records_one_conflict(sqlite_world: World) -> None:
    """Regression (found by seed 1002): only provider-side events were checked for overlaps."""
    world = sqlite_world
    tech = world.add_tech()
    booked = world.api.post("/bookings", {"tech": tech.user, "start": "2027-02-11T18:00:00Z",
                                          "end": "2027-02-11T19:00:00Z", "summary": "Boiler"})
    assert booked.status_code == 201, booked.text
    eventually(lambda: tech.dav.request("PROPFIND", world.mirror_url(tech), headers={"Depth": "0"}).status_code == 207,
               what="the mirror calendar")  # created by the connection's import; a PUT before it is a 409
    put = tech.dav.put(world.mirror_url(tech) + "dentist.ics", data=event_ics(
        "dentist", "Dentist", "20270211T183000Z", "20270211T193000Z"), headers={"If-None-Match": "*"})
    assert put.status_code == 201, put.text

    def conflicts() -> list[tuple[str, str]]:
        with world.server.database.read() as session:
            return [tuple(row) for row in session.execute(select(Conflict.booking_uid, Conflict.other_ref).where(
                Conflict.tech == tech.user))]

    eventually(conflicts, timeout=SETTLE, what="the conflict")
    assert conflicts() == [(booked.json()["uid"], f"{tech.user}/{world.account.mirror_slug}/dentist.ics")]


def test_tentative_invitation_over_a_booking_is_a_conflict_when_tentative_blocks(sqlite_world: World) -> None:
    """Regression (found by seed 6011 on PostgreSQL): only 'busy' time was checked for overlaps, so
    under a policy where tentative time blocks, a tentative invitation over a booking went unrecorded."""
    world = sqlite_world
    tech = world.add_tech()  # tentative_blocks is on for convergence techs
    booked = world.api.post("/bookings", {"tech": tech.user, "start": "2027-02-12T18:00:00Z",
                                          "end": "2027-02-12T19:00:00Z", "summary": "Boiler"})
    assert booked.status_code == 201, booked.text
    world.account.sandbox.create_event(tech.email, {  # type: ignore[attr-defined]
        "summary": "Vendor call (maybe)", "start": {"dateTime": "2027-02-12T18:30:00Z"},
        "end": {"dateTime": "2027-02-12T19:30:00Z"},
        "attendees": [{"email": tech.email, "responseStatus": "tentative"},
                      {"email": "vendor@example.net", "organizer": True, "responseStatus": "accepted"}]})

    def conflicts() -> list[str]:
        with world.server.database.read() as session:
            return list(session.scalars(select(Conflict.booking_uid).where(Conflict.tech == tech.user)))

    eventually(conflicts, timeout=SETTLE, what="the conflict")
    assert conflicts() == [booked.json()["uid"]]


def test_pushed_calendar_app_event_listed_before_its_link_is_not_copied(sqlite_world: World) -> None:
    """Regression (found by seed 20003 on PostgreSQL): a sync that listed our just-pushed event before
    the push wrote its link stored a second copy of it (same UID) in the mirror."""
    world = sqlite_world
    tech = world.add_tech()
    url = world.mirror_url(tech)
    eventually(lambda: tech.dav.request("PROPFIND", url, headers={"Depth": "0"}).status_code == 207,
               what="the mirror calendar")
    world.account.revoke(tech.user)  # the push cannot run: the item stays unlinked
    text = event_ics("dav-phone", "Phone", "20270205T180000Z", "20270205T183000Z")
    assert tech.dav.put(url + "dav-phone.ics", data=text, headers={"If-None-Match": "*"}).status_code == 201
    bridge = Bridge(world.server.database, None, None)  # type: ignore[arg-type] # only the store is used
    with world.server.database.write([tech.user]) as session:
        calendar = session.scalar(select(RemoteCalendarRow).join(Connection).join(Tech).where(
            Tech.username == tech.user))
        counts = {"created": 0, "updated": 0, "deleted": 0, "echo": 0, "reverted": 0}
        listed = RemoteEvent("gphone", '"1"', text.replace("SUMMARY:Phone", "SUMMARY:Phone (from Google)"),
                             lockstep_uid="dav-phone")
        bridge._apply_one(session, calendar.id, calendar.connection_id, tech.user, listed, counts)
    items = multistatus(tech.dav.request("PROPFIND", url, headers={"Depth": "1"}).text)
    assert [r.href.rsplit("/", 1)[1] for r in items if r.href.endswith(".ics")] == ["dav-phone.ics"]
    assert "Phone (from Google)" in tech.dav.get(url + "dav-phone.ics").text
    world.account.reconnect(world.server, tech.user)


def test_cancelled_booking_listed_before_its_link_is_deleted_not_mirrored(sqlite_world: World) -> None:
    """Regression (found by seed 10121): a booking created and cancelled at once, listed by a sync
    before its create's push had linked it, was copied into the mirror and stayed in Google."""
    world = sqlite_world
    tech = world.add_tech()
    url = world.mirror_url(tech)
    eventually(lambda: tech.dav.request("PROPFIND", url, headers={"Depth": "0"}).status_code == 207,
               what="the mirror calendar")
    world.account.revoke(tech.user)  # no push runs: nothing links the booking
    booked = world.api.post("/bookings", {"tech": tech.user, "start": "2027-02-15T18:00:00Z",
                                          "end": "2027-02-15T19:00:00Z", "summary": "Boiler"})
    uid = booked.json()["uid"]
    assert world.api.delete(f"/bookings/{uid}").status_code == 204
    bridge = Bridge(world.server.database, None, None)  # type: ignore[arg-type] # only the store is used
    with world.server.database.write([tech.user]) as session:
        calendar = session.scalar(select(RemoteCalendarRow).join(Connection).join(Tech).where(
            Tech.username == tech.user))
        counts = {"created": 0, "updated": 0, "deleted": 0, "echo": 0, "reverted": 0}
        listed = RemoteEvent("gbooking", '"1"', event_ics(uid, "Boiler", "20270215T180000Z", "20270215T190000Z"),
                             lockstep_uid=uid)
        bridge._apply_one(session, calendar.id, calendar.connection_id, tech.user, listed, counts)
        link = session.scalar(select(EventLink).where(EventLink.remote_id == "gbooking"))
        assert (link.local_path, link.origin) == (f"{tech.user}/bookings", "local")
        assert session.scalar(select(Job.id).where(Job.kind == "push_item", Job.state == "ready",
                                                   Job.payload.contains(uid))) is not None
    items = multistatus(tech.dav.request("PROPFIND", url, headers={"Depth": "1"}).text)
    assert [r.href for r in items if r.href.endswith(".ics")] == []
    world.account.reconnect(world.server, tech.user)


def test_outlook_booking_deleted_between_delta_and_reread_is_a_deletion_not_a_copy() -> None:
    """Regression (found by Microsoft seed 30014 on SQLite): delta listed our booking's event, its
    cancellation deleted it before the re-read for our uid (delta lacks it), and the event, read
    without our uid, was copied into the mirror as a personal event that outlived the booking."""
    with GraphSandbox() as graph:
        email = "regress30014@example.com"
        graph.add_user(email, time_zone="Pacific Standard Time")
        settings = graph_settings(graph)
        provider = MicrosoftProvider(settings, Credentials(sign_in(graph, settings, email)))
        calendar = graph.default_calendar_id(email)
        ours = "lockstep-regress-30014"
        written = provider.put_event(calendar, ours, event_ics(ours, "Job", "20270226T230000Z", "20270227T003000Z"))
        reread = f"/me/events/{written.remote_id}"
        graph.add_latency(1.5, 1, path=re.escape(reread) + "$")  # the re-read waits; meanwhile:

        def cancel_when_reread_starts() -> None:
            eventually(lambda: any(r["method"] == "GET" for r in graph.request_log(reread)), what="the re-read")
            graph.delete_event(email, written.remote_id)

        deleter = threading.Thread(target=cancel_when_reread_starts)
        deleter.start()
        listed = [event for page in provider.list_changes(calendar, None) for event in page.events]
        deleter.join()
    assert [(e.remote_id, e.deleted) for e in listed] == [(written.remote_id, True)]


def test_outlook_booking_restored_under_a_new_id_then_cancelled_is_gone(graph_sqlite_world: World) -> None:
    """Regression (found by Microsoft seed 30012 on SQLite): a booking deleted in Outlook is restored
    under a new id (Graph never re-uses one); the push added a second link instead of re-pointing
    the first, so the cancellation deleted the old, gone event and the restored one stayed."""
    world = graph_sqlite_world
    tech = world.add_tech()
    booked = world.api.post("/bookings", {"tech": tech.user, "start": "2027-02-15T18:30:00Z",
                                          "end": "2027-02-15T19:00:00Z", "summary": "Furnace"})
    assert booked.status_code == 201, booked.text
    uid = booked.json()["uid"]

    def remote_ids() -> list[str]:
        return [e.remote_id for e in world.account.events(tech.user) if e.lockstep_uid == uid]

    eventually(lambda: len(remote_ids()) == 1, what="the booking in Outlook")
    (first,) = remote_ids()
    world.account.delete(tech.user, first)  # the tech deletes it in Outlook: Lockstep restores it
    eventually(lambda: remote_ids() not in ([], [first]), timeout=SETTLE, what="the booking restored in Outlook")
    assert world.api.delete(f"/bookings/{uid}").status_code == 204
    eventually(lambda: remote_ids() == [], timeout=SETTLE, what="the cancelled booking gone from Outlook")

    def links() -> list[str]:
        with world.server.database.read() as session:
            return list(session.scalars(select(EventLink.remote_id).where(EventLink.local_uid == uid)))

    # The push deletes the event at Graph, then removes its link in a transaction of its own: the
    # link may outlive the event by a moment, never for good.
    eventually(lambda: links() == [], timeout=SETTLE, what="no link left once the event is gone")


def _observed(**changes: Any) -> tuple[Observed, Model]:
    """Two sides that agree: booking b1 overlapped by the personal event p1 (one conflict)."""
    booking = event_ics("b1", "Job", "20270202T180000Z", "20270202T190000Z")
    gym = event_ics("p1", "Gym", "20270202T183000Z", "20270202T193000Z")
    google = GoogleObserver(GoogleSandbox())  # its event shapes only: nothing is started or read
    events = [{"id": "lockstepb1", "summary": "Job", "extendedProperties": {"private": {"lockstepUid": "b1"}},
               "start": {"dateTime": "2027-02-02T18:00:00Z"}, "end": {"dateTime": "2027-02-02T19:00:00Z"}},
              {"id": "g1", "iCalUID": "p1", "summary": "Gym",
               "start": {"dateTime": "2027-02-02T18:30:00Z"}, "end": {"dateTime": "2027-02-02T19:30:00Z"}}]
    remote = [google.item(e) for e in events]
    specs = [spec for spec in map(google.to_spec, events) if spec]
    at = datetime(2027, 2, 2, 18, tzinfo=timezone.utc)
    side = RemoteSide("google", "google-primary", changes.pop("remote", remote), changes.pop("remote_specs", specs),
                      bookings=True)
    seen = Observed(tech="mike", email="mike@example.com", window=(WINDOW_START, WINDOW_START + timedelta(days=35)),
                    items=[Item("mike/bookings", "b1.ics", "b1", '"1"', booking),
                           Item("mike/google-primary", "r1.ics", "p1", '"2"', gym)],
                    sides=[side], api_busy=[(at, at + timedelta(minutes=90))],
                    conflicts=[("b1", "mike/google-primary/r1.ics")], jobs=[])
    model = Model(bookings={"b1": Booking("b1", at, at + timedelta(hours=1), "Job")}, ever_booked={"b1"})
    for name, value in changes.items():
        setattr(seen, name, value)
    return seen, model


def test_invariants_hold_for_agreeing_sides_and_name_each_difference() -> None:
    seen, model = _observed()
    assert broken(seen, model) == []
    seen, model = _observed()
    assert any("booking b1 is 0 time(s) in the google calendar" in p for p in broken(
        *_observed(remote=seen.sides[0].items[1:], remote_specs=seen.sides[0].specs[1:])))
    assert any(p.startswith("busy_time_equal: API busy") for p in broken(*_observed(api_busy=[])))
    assert any("no conflict is recorded" in p for p in broken(*_observed(conflicts=[])))
    assert any("recorded 2 times" in p for p in broken(*_observed(conflicts=seen.conflicts * 2)))
    assert any("UID p1 stored 2 times" in p for p in broken(*_observed(items=[*seen.items, replace(
        seen.items[1], calendar="mike/bookings", href="p1.ics")])))
    renamed = [seen.sides[0].items[0], replace(seen.sides[0].items[1], summary="Gym (late)")]
    assert any("google says 'Gym (late)'" in p for p in broken(*_observed(remote=renamed)))
    stuck = [{"id": 9, "kind": "push_item", "state": "ready", "attempts": 3, "last_error": "503",
              "future_watch": False}]
    assert any("job 9 push_item still ready" in p for p in broken(*_observed(jobs=stuck)))


def test_emulator_drops_duplicates_and_reorders_push_notifications() -> None:
    received: list[str] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            received.append(self.headers["X-Goog-Message-Number"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    hook = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    event = {"summary": "x", "start": {"dateTime": "2027-02-01T10:00:00Z"}, "end": {"dateTime": "2027-02-01T11:00:00Z"}}
    try:
        with GoogleSandbox(push_sync_delay=0) as google:
            google.add_user("a@example.com")
            google.push.watch("a@example.com", "a@example.com", {
                "id": "c1", "type": "web_hook", "address": f"http://127.0.0.1:{hook.server_port}/h"}, google.base_url)
            google.wait_for_notifications(1)
            google.misdeliver_notifications(drop=1)
            google.create_event("a@example.com", event)  # 2: dropped
            google.misdeliver_notifications(duplicate=1)
            google.create_event("a@example.com", event)  # 3: twice
            google.wait_for_notifications(4)
            google.misdeliver_notifications(reorder=2)
            google.create_event("a@example.com", event)  # 4, 5: held, then newest first
            google.create_event("a@example.com", event)
            google.wait_for_notifications(6)
            google.misdeliver_notifications(reorder=3)
            google.create_event("a@example.com", event)  # 6: held until the faults are cleared
            time.sleep(0.2)
            assert "6" not in received
            google.clear_notification_faults()
            google.wait_for_notifications(7)
            eventually(lambda: len(received) == 6, what="six deliveries")
            assert received == ["1", "3", "3", "5", "4", "6"]
            assert [n.error for n in google.notifications()][1] == "dropped by an injected fault"
    finally:
        hook.shutdown()
