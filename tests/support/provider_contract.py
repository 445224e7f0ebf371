"""Provider-agnostic contract tests: what the sync engine relies on from every provider.

Each ``contract_*`` function takes a :class:`ProviderHarness` - a connected provider
on an empty calendar plus hooks that change things on the remote side directly -
and raises AssertionError on a breach. A provider's test module runs them all:

    @pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__)
    def test_contract(check, harness): check(harness)

Hooks a provider cannot offer may be left out (or raise NotImplementedError):
the checks that need them skip. Times are fixed in 2027 around the US DST change
so that wall-clock series are exercised.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import icalendar
import pytest

from server.freebusy.expand import intervals_for
from server.freebusy.policy import Policy
from server.providers.base import (
    AuthorizationLost, CursorExpired, PreconditionFailed, Provider, ProviderError, RemoteEvent,
)

TZ = "America/New_York"
NY = ZoneInfo(TZ)
UTC = timezone.utc


class ProviderHarness(Protocol):
    """A connected provider on an empty calendar, and the remote side's controls."""

    provider: Provider
    calendar_id: str
    page_size: int | None  # when small, full listings must come in several pages
    webhook_address: str  # where push notifications for start_watch should go

    def create_remote_event(self, event: str | dict[str, Any]) -> str:
        """Create as the provider's own UI would (iCalendar text or a native body): its id."""

    def update_remote_event(self, remote_id: str, event: str | dict[str, Any]) -> None: ...

    def delete_remote_event(self, remote_id: str) -> None: ...

    def move_remote_instance(self, remote_id: str, original: datetime, start: datetime,
                             end: datetime) -> None:
        """Move one occurrence of a series (only that one)."""

    def cancel_remote_instance(self, remote_id: str, original: datetime) -> None: ...

    def expire_cursor(self) -> None:
        """Make the provider refuse every sync cursor issued so far."""

    def revoke(self) -> None:
        """Revoke the grant the provider holds, as a user would in their account settings."""

    def rate_limit(self, retry_after: int) -> None:
        """The next API call answers 'slow down' with this Retry-After."""

    def notifications(self, channel_id: str, count: int, timeout: float = 5.0) -> list[dict]:
        """Wait for ``count`` push messages of a channel: dicts with channel_id, token, state."""


# --- iCalendar builders and readers ----------------------------------------------------------

def at(day: str, hour: int, minute: int = 0) -> datetime:
    """A wall-clock time in New York."""
    return datetime.fromisoformat(f"{day}T{hour:02d}:{minute:02d}").replace(tzinfo=NY)


def ical(uid: str, summary: str, start: datetime, minutes: int = 60, *, rrule: str | None = None,
         moved: Iterable[tuple[datetime, datetime]] = (),
         cancelled: Iterable[datetime] = ()) -> str:
    """One calendar object; ``moved`` (original, new start) and ``cancelled`` become overrides."""
    calendar = icalendar.Calendar()
    calendar.add("PRODID", "-//Lockstep//contract tests//EN")
    calendar.add("VERSION", "2.0")

    def vevent(begin: datetime, title: str, original: datetime | None = None,
               status: str = "CONFIRMED") -> icalendar.Event:
        event = icalendar.Event()
        event.add("UID", uid)
        event.add("DTSTAMP", datetime.now(UTC))
        event.add("DTSTART", begin)
        event.add("DTEND", begin + timedelta(minutes=minutes))
        event.add("SUMMARY", title)
        event.add("STATUS", status)
        if original is not None:
            event.add("RECURRENCE-ID", original)
        return event

    master = vevent(start, summary)
    if rrule:
        master.add("RRULE", icalendar.vRecur.from_ical(rrule))
    calendar.add_component(master)
    for original, new_start in moved:
        calendar.add_component(vevent(new_start, summary + " (moved)", original))
    for original in cancelled:
        calendar.add_component(vevent(original, summary, original, "CANCELLED"))
    return calendar.to_ical().decode()


def busy(text: str | None, start: str = "2027-01-01", end: str = "2027-12-31") -> list[str]:
    """Blocking intervals of one object as 'MM-DD HH:MM-HH:MM' in UTC."""
    assert text is not None
    policy = Policy.simple(TZ, hours="mon-sun 00:00-24:00")
    window = (datetime.fromisoformat(start).replace(tzinfo=UTC),
              datetime.fromisoformat(end).replace(tzinfo=UTC))
    return [f"{i.start:%m-%d %H:%M}-{i.end:%H:%M}" for i in intervals_for(text, policy, *window)
            if i.kind == "busy"]


def summaries(text: str | None) -> list[str]:
    assert text is not None
    return [str(c.get("SUMMARY", "")) for c in icalendar.Calendar.from_ical(text).walk("VEVENT")]


# A weekly series across the DST change (2027-03-14): 09:00 New York every Monday.
SERIES_START = at("2027-03-01", 9)
SERIES_RULE = "FREQ=WEEKLY;COUNT=6"
SERIES_BUSY = ["03-01 14:00-15:00", "03-08 16:00-17:00", "03-15 13:00-14:00",
               "03-29 13:00-14:00", "04-05 13:00-14:00"]  # 03-08 moved to 11:00, 03-22 cancelled


def series_ical(uid: str) -> str:
    return ical(uid, "Standup", SERIES_START, rrule=SERIES_RULE,
                moved=[(at("2027-03-08", 9), at("2027-03-08", 11))],
                cancelled=[at("2027-03-22", 9)])


# --- helpers ------------------------------------------------------------------------------

def drain(h: ProviderHarness, cursor: str | None) -> tuple[list[RemoteEvent], str, list[Any]]:
    """Every page of one list_changes run: (events, the new cursor, pages)."""
    pages = list(h.provider.list_changes(h.calendar_id, cursor))
    assert pages, "list_changes yielded no page"
    assert all(p.cursor is None for p in pages[:-1]), "cursor before the last page"
    assert pages[-1].cursor, "the last page carries no cursor"
    assert all(p.full == (cursor is None) for p in pages)
    return [e for p in pages for e in p.events], str(pages[-1].cursor), pages


def by_id(events: list[RemoteEvent]) -> dict[str, RemoteEvent]:
    ids = [e.remote_id for e in events]
    assert len(ids) == len(set(ids)), f"an object listed twice: {ids}"
    return {e.remote_id: e for e in events}


def need(h: ProviderHarness, hook: str) -> Callable[..., Any]:
    found = getattr(h, hook, None)
    if found is None:
        pytest.skip(f"harness offers no {hook}")
    return found  # type: ignore[no-any-return]


def uid() -> str:
    return f"lockstep-{uuid.uuid4()}"


# --- the contract ---------------------------------------------------------------------------

def contract_list_calendars(h: ProviderHarness) -> None:
    calendars = {c.remote_id: c for c in h.provider.list_calendars()}
    assert h.calendar_id in calendars
    ours = calendars[h.calendar_id]
    assert ours.writable and ours.busy and ours.name
    assert sum(c.primary for c in calendars.values()) <= 1


def contract_full_listing_then_cursor(h: ProviderHarness) -> None:
    made = [h.create_remote_event(ical(f"ext-{i}", f"job {i}", at("2027-02-01", 8 + i)))
            for i in range(5)]
    events, cursor, pages = drain(h, None)
    if h.page_size and h.page_size < len(made):
        assert len(pages) > 1, "a small page size should give several pages"
    found = by_id(events)
    assert set(found) == set(made)
    for index, remote_id in enumerate(made):
        event = found[remote_id]
        assert event.etag and not event.deleted and event.lockstep_uid is None
        assert summaries(event.ical) == [f"job {index}"]
    events, _, _ = drain(h, cursor)
    assert events == []


def contract_incremental_create_update_delete(h: ProviderHarness) -> None:
    kept = h.create_remote_event(ical("ext-a", "A", at("2027-02-02", 9)))
    gone = h.create_remote_event(ical("ext-b", "B", at("2027-02-02", 11)))
    _, cursor, _ = drain(h, None)
    added = h.create_remote_event(ical("ext-c", "C", at("2027-02-03", 9)))
    h.update_remote_event(kept, ical("ext-a", "A moved", at("2027-02-02", 14)))
    h.delete_remote_event(gone)
    found = by_id(drain(h, cursor)[0])
    assert set(found) == {kept, gone, added}
    assert summaries(found[added].ical) == ["C"]
    assert summaries(found[kept].ical) == ["A moved"]
    assert busy(found[kept].ical) == ["02-02 19:00-20:00"]
    assert found[gone].deleted and found[gone].ical is None


def contract_series_is_one_object(h: ProviderHarness) -> None:
    series = h.create_remote_event(series_ical("ext-series"))
    events, cursor, _ = drain(h, None)
    (event,) = events
    assert event.remote_id == series and busy(event.ical) == SERIES_BUSY

    need(h, "move_remote_instance")(series, at("2027-03-29", 9), at("2027-03-29", 13),
                                    at("2027-03-29", 14))
    need(h, "cancel_remote_instance")(series, at("2027-04-05", 9))
    (event,) = drain(h, cursor)[0]  # only instances changed: still the whole series, once
    assert event.remote_id == series
    assert busy(event.ical) == SERIES_BUSY[:3] + ["03-29 17:00-18:00"]


def contract_expired_cursor_then_full_listing(h: ProviderHarness) -> None:
    made = [h.create_remote_event(ical(f"ext-{i}", f"job {i}", at("2027-02-04", 8 + i)))
            for i in range(3)]
    made.append(h.create_remote_event(series_ical("ext-series")))
    _, cursor, _ = drain(h, None)
    made.append(h.create_remote_event(ical("ext-late", "late", at("2027-02-05", 9))))
    need(h, "expire_cursor")()
    with pytest.raises(CursorExpired):
        drain(h, cursor)
    events, _, _ = drain(h, None)
    assert sorted(by_id(events)) == sorted(made)  # by_id refuses duplicates


def contract_put_event_is_idempotent(h: ProviderHarness) -> None:
    ours = uid()
    text = ical(ours, "Booking", at("2027-02-08", 10))
    first = h.provider.put_event(h.calendar_id, ours, text)
    again = h.provider.put_event(h.calendar_id, ours, text)  # a retry after a lost answer
    assert again.remote_id == first.remote_id and first.lockstep_uid == ours
    events, _, _ = drain(h, None)
    mine = [e for e in events if e.lockstep_uid == ours]
    assert [e.remote_id for e in mine] == [first.remote_id]
    assert busy(mine[0].ical) == ["02-08 15:00-16:00"]


def contract_own_writes_are_recognised(h: ProviderHarness) -> None:
    theirs = h.create_remote_event(ical("ext-1", "dentist", at("2027-02-09", 8)))
    _, cursor, _ = drain(h, None)
    ours = uid()
    written = h.provider.put_event(h.calendar_id, ours, ical(ours, "Booking", at("2027-02-09", 10)))
    h.update_remote_event(theirs, ical("ext-1", "dentist (moved)", at("2027-02-09", 7)))
    found = by_id(drain(h, cursor)[0])
    assert found[written.remote_id].lockstep_uid == ours
    assert found[theirs].lockstep_uid is None


def contract_if_match_conflicts(h: ProviderHarness) -> None:
    ours = uid()
    first = h.provider.put_event(h.calendar_id, ours, ical(ours, "v1", at("2027-02-10", 10)))
    second = h.provider.put_event(h.calendar_id, ours, ical(ours, "v2", at("2027-02-10", 11)),
                                  remote_id=first.remote_id, etag=first.etag)
    assert second.remote_id == first.remote_id and second.etag != first.etag
    with pytest.raises(PreconditionFailed):
        h.provider.put_event(h.calendar_id, ours, ical(ours, "v3", at("2027-02-10", 12)),
                             remote_id=first.remote_id, etag=first.etag)
    h.update_remote_event(first.remote_id, ical(ours, "edited remotely", at("2027-02-10", 13)))
    with pytest.raises(PreconditionFailed):
        h.provider.delete_event(h.calendar_id, first.remote_id, etag=second.etag)
    events, _, _ = drain(h, None)
    assert summaries(by_id(events)[first.remote_id].ical) == ["edited remotely"]


def contract_put_series_with_overrides(h: ProviderHarness) -> None:
    ours = uid()
    text = series_ical(ours)
    written = h.provider.put_event(h.calendar_id, ours, text)
    assert busy(written.ical) == SERIES_BUSY
    (event,) = drain(h, None)[0]
    assert event.remote_id == written.remote_id and event.lockstep_uid == ours
    assert busy(event.ical) == SERIES_BUSY
    # Someone moves and deletes occurrences on the provider side; writing our object again reverts.
    need(h, "move_remote_instance")(written.remote_id, at("2027-03-15", 9), at("2027-03-15", 15),
                                    at("2027-03-15", 16))
    need(h, "cancel_remote_instance")(written.remote_id, at("2027-03-29", 9))
    h.provider.put_event(h.calendar_id, ours, text, remote_id=written.remote_id)
    (event,) = drain(h, None)[0]
    assert busy(event.ical) == SERIES_BUSY


def contract_delete_is_idempotent(h: ProviderHarness) -> None:
    ours = uid()
    written = h.provider.put_event(h.calendar_id, ours, ical(ours, "Booking", at("2027-02-11", 9)))
    _, cursor, _ = drain(h, None)
    h.provider.delete_event(h.calendar_id, written.remote_id, etag=written.etag)
    h.provider.delete_event(h.calendar_id, written.remote_id)
    h.provider.delete_event(h.calendar_id, written.remote_id, etag=written.etag)
    found = by_id(drain(h, cursor)[0])
    assert found[written.remote_id].deleted
    assert drain(h, None)[0] == []


def contract_watch_notifies_until_stopped(h: ProviderHarness) -> None:
    before = datetime.now(UTC)
    watch = h.provider.start_watch(h.calendar_id, h.webhook_address, "s3cret", 600)
    if watch is None:
        pytest.skip("provider has no push notifications")
    assert watch.channel_id and watch.resource_id and watch.token == "s3cret"
    assert before + timedelta(seconds=590) < watch.expires_at < before + timedelta(seconds=610)
    first = h.notifications(watch.channel_id, 1)
    h.create_remote_event(ical("ext-1", "new", at("2027-02-12", 9)))
    got = h.notifications(watch.channel_id, len(first) + 1)
    assert len(got) > len(first)
    assert all(n["token"] == "s3cret" for n in got)
    h.provider.stop_watch(watch)
    h.provider.stop_watch(watch)  # stopping twice is harmless
    h.create_remote_event(ical("ext-2", "after stop", at("2027-02-12", 11)))
    time.sleep(0.4)
    assert len(h.notifications(watch.channel_id, 0, timeout=0)) == len(got)


def contract_revoked_grant_is_authorization_lost(h: ProviderHarness) -> None:
    drain(h, None)
    need(h, "revoke")()
    with pytest.raises(AuthorizationLost) as err:
        h.provider.list_calendars()
    assert err.value.permanent
    with pytest.raises(AuthorizationLost):
        drain(h, None)


def contract_rate_limit_is_transient(h: ProviderHarness) -> None:
    need(h, "rate_limit")(7)
    with pytest.raises(ProviderError) as err:
        drain(h, None)
    assert not err.value.permanent and err.value.retry_after == 7
    assert not isinstance(err.value, (AuthorizationLost, CursorExpired))
    drain(h, None)  # the next try goes through


CONTRACT: list[Callable[[ProviderHarness], None]] = [
    contract_list_calendars,
    contract_full_listing_then_cursor,
    contract_incremental_create_update_delete,
    contract_series_is_one_object,
    contract_expired_cursor_then_full_listing,
    contract_put_event_is_idempotent,
    contract_own_writes_are_recognised,
    contract_if_match_conflicts,
    contract_put_series_with_overrides,
    contract_delete_is_idempotent,
    contract_watch_notifies_until_stopped,
    contract_revoked_grant_is_authorization_lost,
    contract_rate_limit_is_transient,
]


# --- a webhook endpoint for push tests ----------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server: Any = self.server
        query = parse_qs(urlsplit(self.path).query)
        with server.cond:
            server.received.append({"path": self.path, "body": body,
                                    "headers": {k.lower(): v for k, v in self.headers.items()}})
            server.cond.notify_all()
        token = query.get("validationToken", [None])[0]  # Graph's subscription handshake
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        if token:
            self.wfile.write(token.encode())

    def log_message(self, *args: Any) -> None:
        return None


class WebhookReceiver:
    """A local HTTP endpoint that records every POST it gets (headers, body)."""

    def __init__(self) -> None:
        self.server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.received, self.server.cond = [], threading.Condition()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/test"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, match: Callable[[dict[str, Any]], bool], count: int,
             timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.server.cond:
            while True:
                found = [r for r in self.server.received if match(r)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    return found
                self.server.cond.wait(min(left, 0.05))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
