"""The operations of a convergence scenario, one function per thing a side can do.

Sides: the booking API (what it acknowledged is recorded in :class:`Model`),
a CalDAV client editing the tech's mirror calendars, and each provider's own app
(personal events through the RemoteAccount protocol; shapes only an
emulator's control API can make, such as series with exceptions, all-day and
tentative invitations, are in convergence_shapes.py). In a world of several
providers each remote operation, and each CalDAV edit, first draws which
account (or mirror) it acts on. Every function draws only from ``ctx.rng``, so a seed
replays the same choices.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import icalendar
import requests

from tests.support.convergence_observers import RemoteItem, observer_for
from tests.support.convergence_world import TECH_ZONE, WINDOW_DAYS, WINDOW_START, Tech, World
from tests.support.dav import event_ics, multistatus, tag
from tests.support.remote_accounts import RemoteAccount, utc_text

ZONE = ZoneInfo(TECH_ZONE)
API_RETRIES = 6
T = TypeVar("T")


@dataclass
class Booking:
    uid: str
    start: datetime
    end: datetime
    summary: str


@dataclass
class Model:
    """What the scenario knows must hold: acknowledged bookings, and what happened."""

    bookings: dict[str, Booking] = field(default_factory=dict)
    ever_booked: set[str] = field(default_factory=set)
    revoked: set[tuple[str, str]] = field(default_factory=set)  # (provider, user) whose grant was revoked
    faults_used: set[str] = field(default_factory=set)
    fault_sides: set[str] = field(default_factory=set)  # with several providers: "fault@provider" (or "fault")
    hit: str = ""  # the provider the running fault drew, if it drew one
    shapes_used: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)


@dataclass
class Ctx:
    world: World
    tech: Tech
    rng: random.Random
    model: Model

    def note(self, text: str) -> None:
        self.model.log.append(f"{len(self.model.log) + 1:>3} {text}")

    def pick(self, sides: Sequence[T]) -> T:
        """One of several sides, drawn from the seed; no draw when there is only one, so the
        seeds of a single-provider world replay exactly as before several providers existed."""
        return sides[0] if len(sides) == 1 else self.rng.choice(list(sides))

    def remote(self) -> RemoteAccount:
        """The provider account a remote operation (or fault) acts on."""
        account = self.pick(self.world.accounts)
        self.model.hit = account.provider
        return account


# -- times ---------------------------------------------------------------------------------
def local(day: int, hour: float) -> datetime:
    """``hour`` o'clock on day ``day`` of the window, in the tech's zone, as an aware datetime."""
    first = WINDOW_START.astimezone(ZONE).date() + timedelta(days=day)
    minutes = int(round(hour * 60))
    return datetime(first.year, first.month, first.day, minutes // 60, minutes % 60, tzinfo=ZONE)


def slot(rng: random.Random, earliest: float = 8, latest: float = 17) -> tuple[datetime, datetime]:
    day = rng.randrange(WINDOW_DAYS - 7)  # series and moves stay inside the window
    start = local(day, rng.randrange(int(earliest * 2), int(latest * 2) - 1) / 2)
    return start, start + timedelta(minutes=rng.choice((30, 60, 90)))


def personal_slot(ctx: Ctx) -> tuple[datetime, datetime]:
    """Anywhere in the day, or now and then over a live booking (the overlap is a conflict)."""
    if ctx.model.bookings and ctx.rng.random() < 0.35:
        booking = ctx.model.bookings[ctx.rng.choice(sorted(ctx.model.bookings))]
        start = booking.start + timedelta(minutes=ctx.rng.choice((-30, 0, 30)))
        return start, start + timedelta(minutes=ctx.rng.choice((30, 60)))
    return slot(ctx.rng, 6, 21)


def _z(moment: datetime) -> str:
    return utc_text(moment)


# -- the booking API -----------------------------------------------------------------------
def _api(ctx: Ctx, method: str, path: str, body: Any = None, key: str | None = None) -> requests.Response:
    """One API call as a careful client makes it: retried on 5xx or a dropped connection
    (with the same Idempotency-Key for creates), so the answer is never ambiguous."""
    api = ctx.world.api
    for attempt in range(API_RETRIES):
        try:
            headers = {"Idempotency-Key": key} if key else {}
            answer = api.session.request(method, api.base + path, json=body, headers=headers, timeout=30)
        except requests.ConnectionError:
            answer = None
        if answer is not None and answer.status_code < 500:
            return answer
        time.sleep(0.3 * (attempt + 1))
    raise AssertionError(f"API {method} {path} kept failing: "
                         f"{answer.status_code if answer is not None else 'no connection'}")


def api_book(ctx: Ctx) -> None:
    start, end = slot(ctx.rng)
    summary = f"Job {ctx.rng.randrange(10**6)}"
    answer = _api(ctx, "POST", "/bookings", {"tech": ctx.tech.user, "start": _z(start), "end": _z(end),
                                              "summary": summary}, key=str(uuid.UUID(int=ctx.rng.getrandbits(128))))
    if answer.status_code == 201:
        uid = answer.json()["uid"]
        ctx.model.bookings[uid] = Booking(uid, start, end, summary)
        ctx.model.ever_booked.add(uid)
        ctx.note(f"api book {uid} {_z(start)}..{_z(end)} -> 201")
    else:
        assert answer.status_code == 409, answer.text
        ctx.note(f"api book {_z(start)}..{_z(end)} -> 409 refused")


def api_move(ctx: Ctx) -> None:
    if not ctx.model.bookings:
        return api_book(ctx)
    booking = ctx.model.bookings[ctx.rng.choice(sorted(ctx.model.bookings))]
    start, end = slot(ctx.rng)
    answer = _api(ctx, "PATCH", f"/bookings/{booking.uid}", {"start": _z(start), "end": _z(end)})
    if answer.status_code == 200:
        booking.start, booking.end = start, end
        ctx.note(f"api move {booking.uid} -> {_z(start)}..{_z(end)} 200")
    else:
        assert answer.status_code == 409, answer.text
        ctx.note(f"api move {booking.uid} -> {_z(start)} 409 refused")


def api_cancel(ctx: Ctx) -> None:
    if not ctx.model.bookings:
        return api_book(ctx)
    uid = ctx.rng.choice(sorted(ctx.model.bookings))
    answer = _api(ctx, "DELETE", f"/bookings/{uid}")
    assert answer.status_code in (204, 404), answer.text
    if answer.status_code == 204:
        del ctx.model.bookings[uid]
    ctx.note(f"api cancel {uid} -> {answer.status_code}")


# -- a CalDAV client on the mirror calendars -------------------------------------------------
def mirror_items(ctx: Ctx, url: str) -> list[tuple[str, str]]:
    """(href, etag) of the items in the mirror calendar at ``url``, sorted."""
    listing = ctx.tech.dav.request("PROPFIND", url, headers={"Depth": "1"})
    if listing.status_code != 207:
        return []
    return sorted((r.href, r.props[tag("d", "getetag")].text or "") for r in multistatus(listing.text)
                  if r.href.endswith(".ics") and tag("d", "getetag") in r.props)


def _mirror(ctx: Ctx) -> str:
    """The mirror calendar a CalDAV edit goes to (one per connected account)."""
    return ctx.world.mirror_url(ctx.tech, ctx.remote())


def dav_create(ctx: Ctx, url: str | None = None) -> None:
    url = url or _mirror(ctx)
    start, end = personal_slot(ctx)
    uid = f"dav-{uuid.UUID(int=ctx.rng.getrandbits(128))}"
    text = event_ics(uid, f"Phone {ctx.rng.randrange(1000)}", ical_utc(start), ical_utc(end))
    answer = ctx.tech.dav.put(url + f"{uid}.ics", data=text,
                              headers={"If-None-Match": "*", "Content-Type": "text/calendar"})
    ctx.note(f"dav create {uid} {_z(start)}..{_z(end)} -> {answer.status_code}")
    assert answer.status_code in (201, 204), answer.text


def ical_utc(moment: datetime) -> str:
    return utc_text(moment).replace("-", "").replace(":", "")


def dav_edit(ctx: Ctx) -> None:
    mirror = _mirror(ctx)
    items = mirror_items(ctx, mirror)
    if not items:
        return dav_create(ctx, mirror)
    href, etag = ctx.rng.choice(items)
    url = ctx.world.server.url + href
    current = ctx.tech.dav.get(url)
    if current.status_code != 200:
        ctx.note(f"dav edit {href}: gone ({current.status_code})")
        return
    calendar = icalendar.Calendar.from_ical(current.text)
    events = list(calendar.walk("VEVENT"))
    master = next(e for e in events if "RECURRENCE-ID" not in e)
    simple = len(events) == 1 and "RRULE" not in master and isinstance(master["DTSTART"].dt, datetime)
    if simple and ctx.rng.random() < 0.6:
        shift = timedelta(minutes=30 * ctx.rng.choice((-4, -2, -1, 1, 2, 4)))
        for name in ("DTSTART", "DTEND"):
            if name in master:
                value = master[name].dt + shift
                del master[name]
                master.add(name, value)
        what = f"shift {shift}"
    else:
        summary = f"Edited {ctx.rng.randrange(1000)}"
        for event in events:
            if "SUMMARY" in event:
                del event["SUMMARY"]
            event.add("SUMMARY", summary)
        what = f"summary {summary!r}"
    answer = ctx.tech.dav.put(url, data=calendar.to_ical(),
                              headers={"If-Match": current.headers.get("ETag", etag),
                                       "Content-Type": "text/calendar"})
    ctx.note(f"dav edit {href} {what} -> {answer.status_code}")
    assert answer.status_code in (201, 204, 412), answer.text


def dav_delete(ctx: Ctx) -> None:
    mirror = _mirror(ctx)
    items = mirror_items(ctx, mirror)
    if not items:
        return dav_create(ctx, mirror)
    href, etag = ctx.rng.choice(items)
    answer = ctx.tech.dav.delete(ctx.world.server.url + href, headers={"If-Match": etag})
    ctx.note(f"dav delete {href} -> {answer.status_code}")
    assert answer.status_code in (200, 204, 404, 412), answer.text


# -- the providers' own apps -------------------------------------------------------------------
def _personal(ctx: Ctx, account: RemoteAccount, timed_single: bool = False) -> list[RemoteItem]:
    """Live events of the tech's primary calendar at ``account`` that are not bookings, exceptions
    of a series left out (and series and all-day events too when ``timed_single``)."""
    out = []
    for event in observer_for(account).items(ctx.tech.email):
        if event.uid in ctx.model.ever_booked or event.part:
            continue
        if timed_single and (event.recurring or event.span is None):
            continue
        out.append(event)
    return sorted(out, key=lambda e: e.id)


def remote_create(ctx: Ctx, account: RemoteAccount | None = None) -> None:
    account = account or ctx.remote()
    start, end = personal_slot(ctx)
    remote_id = account.create(ctx.tech.user, f"Errand {ctx.rng.randrange(1000)}", start, end)
    ctx.note(f"remote create {account.provider} {remote_id} {_z(start)}..{_z(end)}")


def remote_move(ctx: Ctx) -> None:
    account = ctx.remote()
    events = _personal(ctx, account, timed_single=True)
    if not events:
        return remote_create(ctx, account)
    event = ctx.rng.choice(events)
    start, end = personal_slot(ctx)
    account.move(ctx.tech.user, event.id, start, end)
    ctx.note(f"remote move {account.provider} {event.id} -> {_z(start)}..{_z(end)}")


def remote_rename(ctx: Ctx) -> None:
    account = ctx.remote()
    events = _personal(ctx, account)
    if not events:
        return remote_create(ctx, account)
    event = ctx.rng.choice(events)
    summary = f"Renamed {ctx.rng.randrange(1000)}"
    account.rename(ctx.tech.user, event.id, summary)
    ctx.note(f"remote rename {account.provider} {event.id} {summary!r}")


def remote_delete(ctx: Ctx) -> None:
    account = ctx.remote()
    events = _personal(ctx, account)
    if not events:
        return remote_create(ctx, account)
    event = ctx.rng.choice(events)
    account.delete(ctx.tech.user, event.id)
    ctx.note(f"remote delete {account.provider} {event.id}")


def remote_tamper_booking(ctx: Ctx) -> None:
    """The tech moves or deletes a booking in their own calendar app (Lockstep must restore it).
    Bookings live only in the target calendar (the first account's), so that is where it happens;
    with nothing to tamper with, a personal event is made on a drawn side instead."""
    target = ctx.world.account
    ours = [e for e in target.events(ctx.tech.user) if e.lockstep_uid in ctx.model.bookings]
    if not ours:
        return remote_create(ctx)
    event = ctx.rng.choice(sorted(ours, key=lambda e: e.remote_id))
    if ctx.rng.random() < 0.5:
        target.delete(ctx.tech.user, event.remote_id)
        ctx.note(f"remote tamper {target.provider}: delete booking {event.lockstep_uid}")
    else:
        start, end = slot(ctx.rng, 6, 21)
        target.move(ctx.tech.user, event.remote_id, start, end)
        ctx.note(f"remote tamper {target.provider}: move booking {event.lockstep_uid} -> {_z(start)}")


Op = Callable[[Ctx], None]
OPERATIONS: list[tuple[Op, int]] = [
    (api_book, 6), (api_move, 3), (api_cancel, 2),
    (dav_create, 2), (dav_edit, 2), (dav_delete, 1),
    (remote_create, 4), (remote_move, 2), (remote_rename, 1), (remote_delete, 2), (remote_tamper_booking, 1),
]
