"""Convergence with one tech connected to Google and Outlook at once (the google+microsoft world).

Four sides interleaved: API bookings, a CalDAV client on either mirror calendar,
Google's app and Outlook's app (each remote operation and emulator fault draws
its provider from the seed), plus a revoked grant of either account, a
SIGKILLed worker and, on PostgreSQL, a lost database connection. Bookings go to
Google's primary calendar (the first account connected) and never to Outlook;
both accounts' personal events block time. Many more seeds:
``bench/soak.py --providers google+microsoft``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.support import fb_reference as ref
from tests.support.convergence import run_scenario
from tests.support.convergence_invariants import Item, Observed, RemoteSide, broken
from tests.support.convergence_observers import RemoteItem
from tests.support.convergence_ops import Booking, Model
from tests.support.convergence_world import DUAL, WINDOW_START, World, module_world
from tests.support.dav import event_ics

# Chosen from bench/soak.py --providers google+microsoft output so that together they revoke each
# grant, hit both emulators with faults, make shapes of both providers and record a conflict
# (a change to the operations changes what a seed does: pick again from the soak's output).
DUAL_SQLITE_SEEDS = [
    70018,  # Google (the bookings target) revoked with bookings live; Google 410; Outlook 429; a series
    70020,  # Outlook revoked, Outlook 5xx; Google series and all-day, Outlook all-day
]
DUAL_POSTGRESQL_SEEDS = [80011]  # connections dropped, a conflict, four Outlook faults, Google tentative


@pytest.fixture(scope="module")
def dual_sqlite_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from module_world(tmp_path_factory, "sqlite", DUAL)


@pytest.fixture(scope="module")
def dual_postgresql_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from module_world(tmp_path_factory, "postgresql", DUAL)


@pytest.mark.parametrize("seed", DUAL_SQLITE_SEEDS)
def test_dual_converges_on_sqlite(dual_sqlite_world: World, seed: int) -> None:
    run_scenario(dual_sqlite_world, seed)


@pytest.mark.parametrize("seed", DUAL_POSTGRESQL_SEEDS)
def test_dual_converges_on_postgresql(dual_postgresql_world: World, seed: int) -> None:
    run_scenario(dual_postgresql_world, seed)


# -- the invariants with two remote sides -----------------------------------------------------------
AT = datetime(2027, 2, 2, 18, tzinfo=timezone.utc)


def _event(uid: str, summary: str, start: datetime, minutes: int) -> tuple[RemoteItem, ref.EventSpec]:
    end = start + timedelta(minutes=minutes)
    return (RemoteItem(f"id-{uid}", uid, summary, '"1"', (start, end), recurring=False, part=False),
            ref.EventSpec(uid, "utc", start.replace(tzinfo=None), end - start, summary=summary))


def _dual_observed(**changes: Any) -> tuple[Observed, Model]:
    """Google (the bookings target) holds booking b1 and the gym p1 over it (one conflict);
    Outlook holds the dentist o1 later that day. Every side agrees."""
    booking, gym, dentist = (_event("b1", "Job", AT, 60), _event("p1", "Gym", AT + timedelta(minutes=30), 60),
                             _event("o1", "Dentist", AT + timedelta(hours=3), 60))
    google = RemoteSide("google", "google-primary", [booking[0], gym[0]], [booking[1], gym[1]], bookings=True)
    outlook = RemoteSide("microsoft", "microsoft-primary", [dentist[0]], [dentist[1]], bookings=False)
    for name in ("google", "outlook"):
        for field_name, value in changes.pop(name, {}).items():
            setattr(google if name == "google" else outlook, field_name, value)
    seen = Observed(
        tech="mike", email="mike@example.com", window=(WINDOW_START, WINDOW_START + timedelta(days=35)),
        items=[Item("mike/bookings", "b1.ics", "b1", '"1"',
                    event_ics("b1", "Job", "20270202T180000Z", "20270202T190000Z")),
               Item("mike/google-primary", "r1.ics", "p1", '"2"',
                    event_ics("p1", "Gym", "20270202T183000Z", "20270202T193000Z")),
               Item("mike/microsoft-primary", "r2.ics", "o1", '"3"',
                    event_ics("o1", "Dentist", "20270202T210000Z", "20270202T220000Z"))],
        sides=[google, outlook],
        api_busy=[(AT, AT + timedelta(minutes=90)), (AT + timedelta(hours=3), AT + timedelta(hours=4))],
        conflicts=[("b1", "mike/google-primary/r1.ics")], jobs=[])
    model = Model(bookings={"b1": Booking("b1", AT, AT + timedelta(hours=1), "Job")}, ever_booked={"b1"})
    for name, value in changes.items():
        setattr(seen, name, value)
    return seen, model


def test_dual_invariants_hold_for_agreeing_sides_and_name_each_side() -> None:
    assert broken(*_dual_observed()) == []
    seen, _ = _dual_observed()
    (booking, _gym), (dentist,) = seen.sides[0].items, seen.sides[1].items
    # The booking copied to Outlook too, or missing from Google: both named by side.
    assert any("booking b1 is 1 time(s) in the microsoft calendar (want 0)" in p for p in broken(
        *_dual_observed(outlook={"items": [dentist, booking]})))
    assert any("booking b1 is 0 time(s) in the google calendar (want 1)" in p for p in broken(
        *_dual_observed(google={"items": seen.sides[0].items[1:]})))
    # Outlook's event missing from its own mirror (present nowhere else) is named.
    assert any("microsoft event id-o1 (UID o1) is missing from its mirror" in p for p in broken(
        *_dual_observed(items=seen.items[:2], api_busy=seen.api_busy[:1])))
    # Busy time: the API must include Outlook's time; the union of both providers' expansions too.
    assert any(p.startswith("busy_time_equal: API busy") for p in broken(
        *_dual_observed(api_busy=seen.api_busy[:1])))
    assert any("reference over google+microsoft instances" in p for p in broken(
        *_dual_observed(outlook={"specs": []})))
