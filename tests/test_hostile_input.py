"""Hostile input gets nowhere: fuzzed iCalendar and JSON never get a 5xx and never
half-write; forged push notifications change nothing and replayed ones do no harm;
traversal and cross-tech requests by every method are refused; oversized bodies
get a 413 that says why; injected headers do nothing.

Hypothesis runs derandomized (the same examples on every run) with modest counts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from server.caldav_bridge.engine import JOB_SYNC
from server.models import Job, RemoteCalendarRow
from server.sandbox.google import GoogleSandbox
from server.sandbox.graph import GraphSandbox
from tests.support.api import api_for
from tests.support.dav import event_ics, multistatus, propfind, report, sync_collection_body, sync_token
from tests.support.google_env import connect_google, eventually, google_env
from tests.support.lockstep_server import LockstepServer, recorded_channels, running_server
from tests.support.microsoft_env import connect_microsoft, graph_env
from tests.support.raw_http import basic, raw_request

FIXTURES = Path(__file__).parent / "fixtures" / "ical"
SECRET = "Private: divorce lawyer"
DENIED = {400, 401, 403, 404, 405, 409}
FUZZ = settings(max_examples=35, derandomize=True, deadline=None, database=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its input at once
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])
CALENDAR_QUERY = (
    "<?xml version='1.0'?><C:calendar-query xmlns:D='DAV:' xmlns:C='urn:ietf:params:xml:ns:caldav'>"
    "<D:prop><D:getetag/><C:calendar-data/></D:prop><C:filter><C:comp-filter name='VCALENDAR'>"
    "<C:comp-filter name='VEVENT'/></C:comp-filter></C:filter></C:calendar-query>"
)


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphSandbox]:
    with GraphSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def server(backend: str, google: GoogleSandbox, graph: GraphSandbox,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    """This module's server talks to the Google and Graph emulators (for the push notification tests)."""
    env = {**google_env(google), **graph_env(graph), "LOCKSTEP_SYNC_POLL_SECONDS": "600",
           "LOCKSTEP_SECURITY_SECRET_KEY": secrets.token_urlsafe(32)}
    # A short failed-login delay: Radicale sleeps it on every 401/403, and this module sends hundreds.
    with running_server(tmp_path_factory.mktemp(f"hostile-{backend}"), backend, extra_env=env,
                        auth_delay=0.01) as started:
        yield started


def _session(auth: tuple[str, str]) -> requests.Session:
    session = requests.Session()
    session.auth = auth
    return session


def _state(session: requests.Session, url: str) -> str:
    """A calendar's sync token: unchanged means nothing was written to it."""
    response = report(session, url, sync_collection_body())
    assert response.status_code == 207, response.text
    return sync_token(response.text)


# --- fuzzed iCalendar PUT ------------------------------------------------------------------

SEEDS = [event_ics(uid="seed-plain"),
         event_ics(uid="seed-recurring").replace("SUMMARY:Job", "SUMMARY:Standup\r\nRRULE:FREQ=WEEKLY;BYDAY=MO"),
         *(path.read_text() for path in sorted(FIXTURES.glob("*.ics"))[:6])]
BAD_DATES = ["20261341T250000Z", "00000000T000000Z", "99991231T235959Z", "2026-12-01", "", "20261201",
             "20261201T170000Z/PT1H", "-1", "20261201T1700", "1e9", "20260229T100000Z", "19000101T000000"]
RRULES = ["FREQ=SECONDLY;COUNT=999999999", "FREQ=MINUTELY", "FREQ=SECONDLY", "FREQ=DAILY;COUNT=2147483648",
          "FREQ=YEARLY;COUNT=-1", "FREQ=DAILY;INTERVAL=0", "FREQ=HOURLY;UNTIL=99991231T000000Z",
          "FREQ=DAILY;BYHOUR=" + ",".join(map(str, range(24))) + ";BYMINUTE=" + ",".join(map(str, range(60))),
          "FREQ=WEEKLY;BYDAY=" + ",".join(["MO"] * 2000), "FREQ=BOGUS", "FREQ=DAILY;UNTIL=20261130T000000Z",
          "FREQ=MONTHLY;BYMONTHDAY=" + ",".join(map(str, range(-31, 32))), "FREQ=DAILY;" + "X=1;" * 500]
GARBAGE_BYTES = [b"\x00", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xef\xbb\xbf", b"\r",
                 b"\n", b"\r\n ", b"\r\n\t", b":", b";", b"\\", b"=", b"\xe2\x80\xae"]
Mutation = Callable[[st.DrawFn, bytes], bytes]


def _at(draw: st.DrawFn, body: bytes) -> int:
    return draw(st.integers(0, len(body)))


def broken_folding(draw: st.DrawFn, body: bytes) -> bytes:
    where = _at(draw, body)
    fold = draw(st.sampled_from([b"\r\n", b"\r\n ", b"\r\n\t", b"\n ", b"\r ", b" \r\n"]))
    if draw(st.booleans()):
        return b" orphan continuation\r\n" + body
    return body[:where] + fold + body[where:]


def bad_date(draw: st.DrawFn, body: bytes) -> bytes:
    name = draw(st.sampled_from([b"DTSTART", b"DTEND", b"DTSTAMP"]))
    value = draw(st.one_of(st.sampled_from(BAD_DATES), st.text("0123456789TZ-:+/P", max_size=20))).encode()
    params = draw(st.sampled_from([b"", b";TZID=Mars/Olympus_Mons", b";VALUE=DATE", b";TZID=", b";VALUE=PERIOD"]))
    lines = [(name + params + b":" + value) if line.startswith(name + b":") else line for line in body.split(b"\r\n")]
    return b"\r\n".join(lines)


def huge_recurrence(draw: st.DrawFn, body: bytes) -> bytes:
    rule = draw(st.sampled_from(RRULES)).encode()
    return body.replace(b"END:VEVENT", b"RRULE:" + rule + b"\r\nEND:VEVENT", 1)


def deep_nesting(draw: st.DrawFn, body: bytes) -> bytes:
    depth = draw(st.sampled_from([50, 400, 3000]))
    name = draw(st.sampled_from([b"VALARM", b"VEVENT", b"VCALENDAR", b"X-DEEP"]))
    opened = b"".join(b"BEGIN:" + name + b"\r\n" for _ in range(depth))
    closed = b"".join(b"END:" + name + b"\r\n" for _ in range(depth if draw(st.booleans()) else depth // 2))
    return body.replace(b"END:VEVENT", opened + closed + b"END:VEVENT", 1)


def stray_bytes(draw: st.DrawFn, body: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 4))):
        where = _at(draw, body)
        body = body[:where] + draw(st.sampled_from(GARBAGE_BYTES)) + body[where:]
    return body


def odd_text(draw: st.DrawFn, body: bytes) -> bytes:
    text = draw(st.text(max_size=80)).encode("utf-8", "surrogatepass")
    name = draw(st.sampled_from([b"SUMMARY:", b"UID:", b"LOCATION;LANGUAGE=", b"X-A;X-B=", b"ATTENDEE;CN="]))
    return body.replace(b"END:VEVENT", name + text + b"\r\nEND:VEVENT", 1)


def line_surgery(draw: st.DrawFn, body: bytes) -> bytes:
    lines = body.split(b"\r\n")
    index = draw(st.integers(0, max(0, len(lines) - 1)))
    operation = draw(st.sampled_from(["drop", "twice", "swap", "truncate"]))
    if operation == "drop":
        del lines[index]
    elif operation == "twice":
        lines.insert(index, lines[index])
    elif operation == "swap" and index + 1 < len(lines):
        lines[index], lines[index + 1] = lines[index + 1], lines[index]
    else:
        lines[index] = lines[index][: draw(st.integers(0, len(lines[index])))]
    return b"\r\n".join(lines)


def line_endings(draw: st.DrawFn, body: bytes) -> bytes:
    return body.replace(b"\r\n", draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"])))


MUTATIONS: list[Mutation] = [broken_folding, bad_date, huge_recurrence, deep_nesting, stray_bytes, odd_text,
                             line_surgery, line_endings]


@st.composite
def hostile_icalendar(draw: st.DrawFn) -> bytes:
    body = draw(st.sampled_from(SEEDS)).encode()
    body = body.replace(b"seed-", b"seed-" + uuid.uuid4().hex.encode() + b"-")  # UIDs never collide
    for mutate in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        body = mutate(draw, body)
    return body


def test_fuzzed_icalendar_put_never_5xx_and_all_or_nothing(server: LockstepServer) -> None:
    auth = server.add_tech()
    session = _session(auth)
    calendar = f"{server.dav_url}{auth[0]}/bookings/"
    numbers = itertools.count()
    stored = 0

    @FUZZ
    @given(body=hostile_icalendar())
    def put(body: bytes) -> None:
        nonlocal stored
        href = f"{calendar}fuzz-{next(numbers)}.ics"
        before = _state(session, calendar)
        answer = session.put(href, data=body, headers={"Content-Type": "text/calendar"}, timeout=60)
        assert answer.status_code < 500, (answer.status_code, answer.text[:300], body[:300])
        after = session.get(href, timeout=30)
        if answer.status_code in (201, 204):
            assert after.status_code == 200
            stored += 1
        else:
            assert answer.status_code in (400, 403, 409, 412, 413, 415), answer.status_code
            assert len(answer.text.strip()) > len("Bad Request:"), answer.text  # says why
            assert after.status_code == 404
            assert _state(session, calendar) == before, "a refused PUT changed the calendar"

    put()
    listing = report(session, calendar, CALENDAR_QUERY)  # everything stored still reads back
    assert listing.status_code == 207
    assert len(multistatus(listing.text)) == stored


@pytest.mark.parametrize("start,rule", [
    ("20261201T170000Z", "FREQ=MINUTELY"),
    ("20261201T170000Z", "FREQ=SECONDLY;INTERVAL=7"),
    ("20261201T170000Z", "FREQ=DAILY;BYHOUR=" + ",".join(map(str, range(24))) + ";BYMINUTE=0,10,20,30,40,50"),
    ("00010101T170000Z", "FREQ=DAILY"),
], ids=["minutely", "secondly", "daily-by-hour-and-minute", "daily-since-year-1"])
def test_recurrence_too_costly_to_index_is_refused_not_hung(server: LockstepServer, start: str, rule: str) -> None:
    """Open-ended dense rules (no COUNT for Radicale's limit to catch) once held the tech's
    write lock while the busy index expanded them: minutes, on SQLite for every tech."""
    auth = server.add_tech()
    session = _session(auth)
    calendar = f"{server.dav_url}{auth[0]}/bookings/"
    body = event_ics(uid="dense", start=start, end=start[:9] + "18" + start[11:]).replace(
        "SUMMARY:Job", f"SUMMARY:Job\r\nRRULE:{rule}")
    before = _state(session, calendar)
    answer = session.put(calendar + "dense.ics", data=body, timeout=30)
    assert answer.status_code == 400 and "recurrence" in answer.text and "at most" in answer.text, answer.text
    assert session.get(calendar + "dense.ics").status_code == 404
    assert _state(session, calendar) == before
    # The same event inside a whole-calendar import: refused before anything is created.
    imported = session.put(f"{server.dav_url}{auth[0]}/imported/", data=body, timeout=30,
                           headers={"Content-Type": "text/calendar"})
    assert imported.status_code == 400 and "recurrence" in imported.text
    assert session.get(f"{server.dav_url}{auth[0]}/imported/").status_code == 404
    # An ordinary series is still welcome.
    weekly = body.replace(f"RRULE:{rule}", "RRULE:FREQ=WEEKLY;BYDAY=TU,TH").replace("UID:dense", "UID:weekly")
    assert session.put(calendar + "weekly.ics", data=weekly).status_code == 201


# --- fuzzed JSON API --------------------------------------------------------------------

EDGE_STAMPS = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1899-12-31T23:59:59Z",
               "3000-01-01T00:00:00Z", "2026-02-30T10:00:00Z", "2026-12-01T24:00:00Z", "2026-12-01T10:00:00+24:00",
               "2026-12-01t10:00:00z", "2026-12-01T10:00:00.999999999Z", "２０２６-12-01T10:00:00Z",
               "2026-12-01T10:00:00\x00Z", "2026-12-01 10:00:00Z", "2026-12-01T10:00:00", "2026-12-01",
               "2026-12-01T10:00:00+99:99", "1e309"]
ODD_TEXT = ["", " ", "x" * 9000, "a\r\nEND:VEVENT\r\nBEGIN:VEVENT", "\x00", "\ud800", "\\", 'Smith, John; "Jr"',
            "\u202e\u0000\uffff", "</script>", "${jndi:ldap://x}", "'; DROP TABLE dav_items; --"]


def _stamp(day: int, hour: int, minute: int, offset: str) -> str:
    return f"2026-12-{day:02d}T{hour:02d}:{minute:02d}:00{offset}"


def stamps() -> st.SearchStrategy[object]:
    valid = st.builds(_stamp, st.integers(1, 28), st.integers(0, 23), st.sampled_from([0, 15, 30, 45]),
                      st.sampled_from(["Z", "+02:00", "-05:30", "z"]))
    return st.one_of(valid, valid, st.sampled_from(EDGE_STAMPS), st.text(max_size=30), st.integers(),
                     st.floats(allow_nan=True), st.none(), st.lists(st.integers(), max_size=2))


def texts() -> st.SearchStrategy[object]:
    return st.one_of(st.text(max_size=60), st.text(max_size=60), st.sampled_from(ODD_TEXT), st.integers(),
                     st.none(), st.booleans(), st.lists(st.text(max_size=5), max_size=2),
                     st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2))


def booking_bodies(tech: str) -> st.SearchStrategy[bytes]:
    techs = st.one_of(st.just(tech), st.just(tech), st.just(tech), texts())
    customer = st.one_of(st.dictionaries(st.sampled_from(["name", "email", "phone", "x"]), texts(), max_size=3),
                         texts())
    body = st.fixed_dictionaries({"tech": techs, "start": stamps(), "end": stamps(), "summary": texts()},
                                 optional={"description": texts(), "location": texts(), "customer": customer})
    documents = body.map(lambda b: json.dumps(b).encode())  # json escapes lone surrogates as \\ud800
    raw = st.sampled_from([b"[" * 20000 + b"]" * 20000, b'{"tech": ' + b"[" * 30000, b"null", b"[]", b'"x"',
                           b'{"start": 1e999999}', b"NaN", b"\xff\xfe{}", b'{"tech": "a", "tech": "b"}', b""])
    return st.one_of(documents, documents, documents, raw, st.binary(max_size=100))


def _booking_count(session: requests.Session, calendar: str) -> int:
    return len(multistatus(report(session, calendar, sync_collection_body()).text))


def test_fuzzed_booking_requests_never_5xx_and_book_only_on_2xx(server: LockstepServer) -> None:
    auth = server.add_tech()
    owner = _session(auth)
    calendar = f"{server.dav_url}{auth[0]}/bookings/"
    api = api_for(server, "bookings")

    @FUZZ
    @given(body=booking_bodies(auth[0]),
           key=st.one_of(st.none(), st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=250)))
    def book(body: bytes, key: str | None) -> None:
        before, count = _state(owner, calendar), _booking_count(owner, calendar)
        headers = {"Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
        answer = api.session.post(api.base + "/bookings", data=body, headers=headers, timeout=30)
        assert answer.status_code < 500, (answer.status_code, answer.text[:300], body[:300])
        assert answer.headers["Content-Type"].startswith("application/json")
        if answer.status_code == 201:
            made = answer.json()
            assert api.get(f"/bookings/{made['uid']}.ics").status_code == 200
            assert owner.get(server.url + made["href"]).status_code == 200
        elif answer.status_code == 200:  # an idempotent replay: nothing new
            assert _booking_count(owner, calendar) == count
        else:
            assert answer.status_code in (400, 404, 409, 413, 422), answer.status_code
            assert answer.json()["message"]
            assert _state(owner, calendar) == before, "a refused booking changed the calendar"

    book()


def test_fuzzed_freebusy_and_availability_queries_never_5xx(server: LockstepServer) -> None:
    user, _ = server.add_tech()
    api = api_for(server, "freebusy")
    values = st.one_of(stamps(), texts()).map(lambda v: v if isinstance(v, str) else json.dumps(v))
    techs = st.lists(st.one_of(st.just(user), st.text(max_size=12), st.just(user + "\x00")), max_size=3)
    params = st.fixed_dictionaries({"tech": techs}, optional={
        "start": values, "end": values, "duration": st.one_of(st.integers(-10, 3000).map(str), values),
        "step": st.one_of(st.integers(-10, 3000).map(str), values)})

    @FUZZ
    @given(path=st.sampled_from(["/freebusy", "/availability"]), query=params,
           accept=st.sampled_from(["application/json", "text/calendar", "*/*", "text/html;q=0.1, x/y"]))
    def ask(path: str, query: dict[str, object], accept: str) -> None:
        answer = api.session.get(api.base + path, params=query, headers={"Accept": accept}, timeout=30)
        assert answer.status_code < 500, (answer.status_code, answer.text[:300], query)
        if answer.status_code != 200:
            assert answer.status_code in (400, 404) and answer.json()["message"]

    ask()


@pytest.mark.parametrize("field,value", [
    ("start", "0001-01-01T00:00:00+01:00"), ("end", "9999-12-31T23:59:59-01:00"),
    ("summary", "\ud800"), ("tech", "mike\x00"), ("summary", "nul\x00inside"),
])
def test_unrepresentable_booking_fields_are_400_naming_the_field(server: LockstepServer, field: str, value: str) -> None:
    """These answered 500: dates that overflow in UTC, lone surrogates, NUL (PostgreSQL text)."""
    user, _ = server.add_tech()
    body = {"tech": user, "start": "2026-12-14T17:00:00Z", "end": "2026-12-14T18:00:00Z", "summary": "Visit",
            field: value}
    answer = api_for(server).session.post(server.url + "/api/v1/bookings", data=json.dumps(body),
                                          headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field


def test_customer_line_breaks_cannot_inject_icalendar(server: LockstepServer) -> None:
    """A line break in a customer field answered 500; escaped, it stays inside its property."""
    user, password = server.add_tech()
    api = api_for(server)
    answer = api.post("/bookings", {"tech": user, "start": "2026-12-15T17:00:00Z", "end": "2026-12-15T18:00:00Z",
                                    "summary": "Visit", "customer": {"name": "Eve\r\nEND:VEVENT\r\nBEGIN:VEVENT",
                                                                     "phone": "Smith, John; 555"}})
    assert answer.status_code == 201, answer.text
    text = _session((user, password)).get(server.url + answer.json()["href"]).text
    assert text.splitlines().count("BEGIN:VEVENT") == 1 and "Eve\\nEND:VEVENT\\nBEGIN:VEVENT" in text
    moved = api.patch(f"/bookings/{answer.json()['uid']}", {"start": "2026-12-16T17:00:00Z",
                                                             "end": "2026-12-16T18:00:00Z"})
    assert moved.status_code == 200
    again = _session((user, password)).get(server.url + answer.json()["href"]).text
    phone = [line for line in again.splitlines() if line.startswith("X-LOCKSTEP-CUSTOMER-PHONE")]
    assert phone == ["X-LOCKSTEP-CUSTOMER-PHONE:Smith\\, John\\; 555"]  # escaped once, after a move too


# --- forged and replayed push notifications -----------------------------------------------

def _jobs(server: LockstepServer) -> list[Job]:
    with server.database.read() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def _quiet(server: LockstepServer) -> bool:
    now = datetime.now(timezone.utc)
    return not any(j.state == "running" or (j.state == "ready" and _aware(j.run_at) <= now) for j in _jobs(server))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _mirrored_uids(server: LockstepServer, auth: tuple[str, str]) -> list[str]:
    """UIDs in the tech's mirrored provider calendar (the only one of theirs with a remote row)."""
    with server.database.read() as session:
        paths = [p for p in session.scalars(select(RemoteCalendarRow.local_path)) if p.startswith(auth[0] + "/")]
    found = []
    for path in paths:
        listing = report(_session(auth), f"{server.dav_url}{path}/", CALENDAR_QUERY)
        for entry in multistatus(listing.text) if listing.status_code == 207 else []:
            data = entry.props.get("{urn:ietf:params:xml:ns:caldav}calendar-data")
            found += [line[4:].strip() for line in (data.text or "").splitlines() if line.startswith("UID:")]
    return found


@contextlib.contextmanager
def _hooks_without_workers(server: LockstepServer, tmp_path: Path) -> Iterator[LockstepServer]:
    """A web-only node answers the hooks while no worker runs, so every job they queue stays
    visible; the module's server (and its workers) comes back afterwards."""
    hooks = LockstepServer(data_dir=tmp_path / "hooks", database_url=server.database_url,
                           extra_env=server.extra_env).start("--no-workers")
    server.stop()
    try:
        yield hooks
    finally:
        hooks.stop()
        server.start()


def _new_jobs(server: LockstepServer, baseline: list[int]) -> list[tuple[str, str]]:
    return [(j.kind, j.state) for j in _jobs(server) if j.id not in baseline]


def test_forged_push_notifications_change_nothing_and_replays_do_no_harm(
        server: LockstepServer, google: GoogleSandbox, graph: GraphSandbox, tmp_path: Path) -> None:
    """Google (channel token) and Graph (clientState): a tech connected to each, a real change
    notified by each emulator, then forgeries and replays of those very notifications."""
    google_tech, graph_tech = server.add_tech(), server.add_tech()
    calendar = f"{google_tech[0]}@example.com"
    connect_google(server, google, google_tech[0])
    email = connect_microsoft(server, graph, graph_tech[0])
    channel = eventually(lambda: next((c for c in google.channels()
                                       if c["calendarId"] == calendar and not c["stopped"]), None), what="a channel")
    subscription = eventually(lambda: next((s for s in graph.subscriptions() if s["user"] == email), None),
                              what="a subscription")
    # Our hook trusts a channel once the server has recorded it, a moment after the provider opened it.
    eventually(lambda: {channel["id"], subscription["id"]} <= recorded_channels(server), what="channels recorded")
    google.create_event(calendar, {"summary": "Real change", "start": {"dateTime": "2027-05-03T10:00:00Z"},
                                   "end": {"dateTime": "2027-05-03T11:00:00Z"}})
    graph.create_event(email, None, {"subject": "Real change", "start": {"dateTime": "2027-05-04T10:00:00",
                                                                         "timeZone": "UTC"},
                                     "end": {"dateTime": "2027-05-04T11:00:00", "timeZone": "UTC"}})
    real_google = eventually(lambda: next((n for n in google.notifications(channel["id"])
                                           if n.resource_state == "exists" and n.delivered), None),
                             what="a Google notification")
    real_graph = eventually(lambda: next(iter(graph.notifications(subscription["id"])), None),
                            what="a Graph notification")
    try:
        eventually(lambda: len(_mirrored_uids(server, google_tech)) == 1
                   and len(_mirrored_uids(server, graph_tech)) == 1 and _quiet(server), timeout=90, what="the syncs")
    except AssertionError as timed_out:
        state = {"mirrored": {t[0]: _mirrored_uids(server, t) for t in (google_tech, graph_tech)},
                 "jobs": [(j.kind, j.state, str(j.run_at), j.attempts, j.last_error[:200]) for j in _jobs(server)
                          if j.state != "done"],
                 "graph": [(d.kind, d.status, d.error) for d in graph.deliveries()]}
        raise AssertionError(f"{timed_out}: {state}") from None
    mirrored = {t: _mirrored_uids(server, t) for t in (google_tech, graph_tech)}
    remote = (google.stored_events(calendar), graph.stored_events(email))

    with _hooks_without_workers(server, tmp_path) as hooks:
        baseline = [j.id for j in _jobs(hooks)]
        genuine = dict(real_google.headers)
        forged = {
            "wrong token": {**genuine, "X-Goog-Channel-Token": "forged-" + secrets.token_urlsafe(8)},
            "token case changed": {**genuine, "X-Goog-Channel-Token": genuine["X-Goog-Channel-Token"].swapcase()},
            "no token": {k: v for k, v in genuine.items() if k != "X-Goog-Channel-Token"},
            "unknown channel": {**genuine, "X-Goog-Channel-ID": str(uuid.uuid4())},
            "other resource": {**genuine, "X-Goog-Resource-ID": "forged-resource"},
            "sync with wrong token": {**genuine, "X-Goog-Resource-State": "sync", "X-Goog-Channel-Token": "x"},
        }
        for name, headers in forged.items():
            answer = requests.post(hooks.url + "/hooks/google", headers=headers, timeout=30)
            assert answer.status_code == 403 and answer.json()["message"], (name, answer.status_code, answer.text)
        for missing in ("X-Goog-Channel-ID", "X-Goog-Resource-State"):
            answer = requests.post(hooks.url + "/hooks/google", timeout=30,
                                   headers={k: v for k, v in genuine.items() if k != missing})
            assert answer.status_code == 400 and answer.json()["message"]

        hook = hooks.url + "/hooks/microsoft"
        real = real_graph
        forged_items = [{**real, "clientState": "guessed"}, {**real, "clientState": ""},
                        {k: v for k, v in real.items() if k != "clientState"},
                        {**real, "subscriptionId": str(uuid.uuid4())},
                        {**real, "clientState": "guessed", "lifecycleEvent": "subscriptionRemoved"},
                        {**real, "clientState": "guessed", "lifecycleEvent": "reauthorizationRequired"},
                        {**real, "clientState": real["clientState"].swapcase()}]
        for item in forged_items:
            answer = requests.post(hook, json={"value": [item]}, timeout=30)
            assert answer.status_code == 202, answer.text  # accepted and dropped: Graph must not retry
        for body in (b"not json", b'{"value": "x"}', b'{"value": [1]}', b"[" * 20000 + b"]" * 20000):
            assert requests.post(hook, data=body, timeout=30).status_code == 400
        assert _new_jobs(hooks, baseline) == [], "a forged notification queued work"
        assert hooks.log_file.read_text().count("rejected Microsoft notification") == len(forged_items)

        def replay(n: int) -> int:  # the genuine ones, each replayed 20 times at once
            if n % 2:
                return requests.post(hook, json={"value": [real]}, timeout=30).status_code
            return requests.post(hooks.url + "/hooks/google", headers=genuine, timeout=30).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            replies = list(pool.map(replay, range(40)))
        assert sorted(replies) == [200] * 20 + [202] * 20
        assert _new_jobs(hooks, baseline) == [(JOB_SYNC, "ready")] * 2, "replays were not deduplicated"
    eventually(lambda: _quiet(server), timeout=30, what="the replayed syncs")
    assert {t: _mirrored_uids(server, t) for t in mirrored} == mirrored  # no duplicate, nothing lost
    assert (google.stored_events(calendar), graph.stored_events(email)) == remote  # nothing echoed back


# --- traversal and cross-tech access by every method -------------------------------------------

def _traversals(me: str, victim: str, rest: str) -> list[str]:
    return [f"/dav/{me}/../{victim}/{rest}", f"/dav/{me}/%2e%2e/{victim}/{rest}", f"/dav/{me}/%2E%2E/{victim}/{rest}",
            f"/dav/{me}/..%2f{victim}/{rest}", f"/dav/{me}%2f..%2f{victim}%2f{rest.replace('/', '%2f')}",
            f"/dav/{me}/%252e%252e/{victim}/{rest}", f"/dav/{me}/..%5c{victim}/{rest}",
            f"/dav/{me}/bookings/../../{victim}/{rest}", f"/dav/./{victim}/{rest}", f"/dav//{victim}/{rest}",
            f"/dav/{me}/../../dav/{victim}/{rest}", f"/dav/%2e%2e/dav/{victim}/{rest}", f"/dav/{victim}/./{rest}"]


def test_traversal_and_cross_tech_requests_by_every_method_are_refused(server: LockstepServer) -> None:
    me, my_password = server.add_tech()
    victim = server.add_tech()
    owner = _session(victim)
    home = f"{server.dav_url}{victim[0]}/"
    assert owner.put(home + "bookings/job.ics", data=event_ics(uid=f"job-{victim[0]}", summary=SECRET)).status_code == 201
    assert owner.request("MKCALENDAR", home + "personal/").status_code == 201
    assert owner.put(home + "personal/p.ics", data=event_ics(uid=f"p-{victim[0]}", summary=SECRET)).status_code == 201
    states = {c: _state(owner, home + c + "/") for c in ("bookings", "personal")}
    mine = _session((me, my_password))
    assert mine.put(f"{server.dav_url}{me}/bookings/mine.ics", data=event_ics(uid=f"mine-{me}")).status_code == 201
    auth = [(b"Authorization", basic(me, my_password))]
    xml = [(b"Content-Type", b"application/xml; charset=utf-8")]
    event = event_ics(uid=f"planted-{me}").encode()
    proppatch = (b"<propertyupdate xmlns='DAV:'><set><prop><displayname>pwned</displayname></prop></set>"
                 b"</propertyupdate>")
    requests_made = 0

    def refused(method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        nonlocal requests_made
        requests_made += 1
        answer = raw_request(server.url, method, target, auth + headers, body)
        assert answer.status in DENIED, f"{method} {target}: {answer.status} {answer.text[:200]}"
        assert SECRET not in answer.text, f"{method} {target} leaked"

    for target in _traversals(me, victim[0], "personal/p.ics"):
        refused("GET", target, [])
        refused("PROPFIND", target, xml + [(b"Depth", b"0")], b"<propfind xmlns='DAV:'><allprop/></propfind>")
    for item in ("bookings/job.ics",):
        for target in _traversals(me, victim[0], item):
            refused("GET", target, [])
            refused("PUT", target, [(b"Content-Type", b"text/calendar")], event)
            refused("DELETE", target, [])
            refused("PROPFIND", target, xml + [(b"Depth", b"0")], b"<propfind xmlns='DAV:'><allprop/></propfind>")
            refused("PROPPATCH", target, xml, proppatch)
            refused("MOVE", target, [(b"Destination", f"{server.url}/dav/{me}/bookings/stolen.ics".encode())])
            refused("COPY", target, [(b"Destination", f"{server.url}/dav/{me}/bookings/copied.ics".encode())])
            refused("POST", target, xml, b"<x/>")
    for collection in ("bookings/", ""):
        for target in _traversals(me, victim[0], collection):
            refused("REPORT", target, xml + [(b"Depth", b"1")], CALENDAR_QUERY.encode())
            refused("REPORT", target, xml, sync_collection_body().encode())
            refused("MKCALENDAR", target.rstrip("/") + "/evil/", [])
            refused("MKCOL", target.rstrip("/") + "/evil2/", [])
            refused("PROPPATCH", target, xml, proppatch)
            refused("DELETE", target, [])
    # MOVE and COPY of one's own item into the victim's home, the Destination spelled every way.
    for destination in _traversals(me, victim[0], "bookings/planted.ics"):
        for method in ("MOVE", "COPY"):
            for spelled in (server.url + destination, destination):
                refused(method, f"/dav/{me}/bookings/mine.ics", [(b"Destination", spelled.encode()),
                                                                  (b"Overwrite", b"T")])
    assert requests_made > 300

    assert mine.get(f"{server.dav_url}{me}/bookings/mine.ics").status_code == 200  # not moved anywhere
    for stolen in ("stolen.ics", "copied.ics"):
        assert mine.get(f"{server.dav_url}{me}/bookings/{stolen}").status_code == 404
    assert {c: _state(owner, home + c + "/") for c in ("bookings", "personal")} == states
    assert SECRET in owner.get(home + "bookings/job.ics").text and SECRET in owner.get(home + "personal/p.ics").text
    listing = propfind(owner, home, "<propfind xmlns='DAV:'><prop><displayname/></prop></propfind>", depth="1")
    assert "pwned" not in listing.text and "evil" not in listing.text and "brand-new" not in listing.text


# --- oversized bodies, lying lengths, header injection ---------------------------------------

def test_oversized_bodies_are_413_with_a_reason_by_every_method(server: LockstepServer) -> None:
    user, password = server.add_tech()
    limit = 1024 * 1024
    target = f"/dav/{user}/bookings/"
    auth = [(b"Authorization", basic(user, password))]
    before = _state(_session((user, password)), server.dav_url + f"{user}/bookings/")
    for method, path in [("PUT", target + "big.ics"), ("PROPFIND", target), ("REPORT", target),
                         ("PROPPATCH", target), ("MKCALENDAR", f"/dav/{user}/big/"), ("POST", target)]:
        # A Content-Length over the limit is refused before the body is read (most is never sent).
        answer = raw_request(server.url, method, path, auth, b"x" * 1024, content_length=limit + 1)
        assert answer.status == 413, (method, answer.status, answer.text)
        assert f"at most {limit} bytes" in answer.text and "Nothing was stored" in answer.text
        whole = raw_request(server.url, method, path, auth, b"<" * (limit + 10))
        assert whole.status == 413, (method, whole.status)
    api = api_for(server)
    big = api.session.post(api.base + "/bookings", data=json.dumps({"tech": user, "summary": "x" * 70000}),
                           headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and "at most" in big.json()["message"]
    lying = raw_request(server.url, "POST", "/api/v1/bookings", [(b"Authorization", api.session.headers[
        "Authorization"].encode()), (b"Content-Type", b"application/json")], b"{}", content_length=10 ** 9)
    assert lying.status == 413 and b"at most" in lying.body  # refused on the declared length, nothing read
    hook = requests.post(server.url + "/hooks/google", data=b"x" * (limit + 10),
                         headers={"X-Goog-Channel-ID": "x", "X-Goog-Resource-State": "exists"})
    assert hook.status_code in (400, 403, 413)
    assert _state(_session((user, password)), server.dav_url + f"{user}/bookings/") == before
    # Chunked uploads (no Content-Length) are refused with a reason too.
    chunked = raw_request(server.url, "PUT", target + "chunked.ics", auth + [(b"Transfer-Encoding", b"chunked")],
                          b"5\r\nhello\r\n0\r\n\r\n")
    assert chunked.status in (400, 411) and chunked.text.strip()
    assert _session((user, password)).get(server.dav_url + f"{user}/bookings/chunked.ics").status_code == 404


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
                  + b"".join(b'<!ENTITY %s "%s">' % (b"a" * (n + 2), (b"&" + b"a" * (n + 1) + b";") * 10)
                             for n in range(8))
                  + b"]><propfind xmlns='DAV:'><prop><displayname>&" + b"a" * 9 + b";</displayname></prop></propfind>")
XXE = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
       b"<propertyupdate xmlns='DAV:'><set><prop><displayname>&e;</displayname></prop></set></propertyupdate>")
DEEP_XML = b"<propfind xmlns='DAV:'>" + b"<prop>" * 50000 + b"</prop>" * 50000 + b"</propfind>"


@pytest.mark.parametrize("body", [BILLION_LAUGHS, XXE, DEEP_XML], ids=["billion-laughs", "xxe", "deep"])
def test_hostile_xml_is_400_not_500(server: LockstepServer, body: bytes) -> None:
    """Radicale answered these with 500 (defusedxml raising, or recursion in its XML writer)."""
    user, password = server.add_tech()
    owner = _session((user, password))
    before = _state(owner, f"{server.dav_url}{user}/bookings/")
    headers = [(b"Authorization", basic(user, password)), (b"Content-Type", b"application/xml"), (b"Depth", b"1")]
    for method, path in [("PROPFIND", f"/dav/{user}/bookings/"), ("REPORT", f"/dav/{user}/bookings/"),
                         ("PROPPATCH", f"/dav/{user}/bookings/"), ("MKCALENDAR", f"/dav/{user}/xml/")]:
        answer = raw_request(server.url, method, path, headers, body)
        assert answer.status == 400 and "XML" in answer.text, (method, answer.status, answer.text[:200])
        assert "root:" not in answer.text
    assert _state(owner, f"{server.dav_url}{user}/bookings/") == before
    assert owner.get(f"{server.dav_url}{user}/xml/").status_code == 404
    negative = raw_request(server.url, "PUT", f"/dav/{user}/bookings/n.ics", headers[:1] + [(b"Content-Length", b"-5")])
    assert negative.status == 400 and "Content-Length" in negative.text


def test_header_injection_and_forged_script_name_do_nothing(server: LockstepServer) -> None:
    user, password = server.add_tech()
    auth = (b"Authorization", basic(user, password))
    calendar = f"/dav/{user}/bookings/"
    ics = event_ics(uid=f"hdr-{user}").encode()
    assert raw_request(server.url, "PUT", calendar + "hdr.ics", [auth, (b"Content-Type", b"text/calendar")],
                       ics).status == 201
    # Bare CR or LF, obs-fold continuations and NUL inside header values: refused by the HTTP
    # server or taken as plain text; never a second header in the answer, never a 5xx.
    injected = [b"\rSet-Cookie: injected=1", b"\nSet-Cookie: injected=1", b"\r\n Set-Cookie: injected=1",
                b"\r\n\tX-Injected: 1", b"\x00X-Injected: 1"]
    for suffix in injected:
        for method, name, value in [("PROPFIND", b"Depth", b"1"), ("GET", b"If-None-Match", b'"x"'),
                                    ("PROPFIND", b"X-Forwarded-Host", b"evil.example"),
                                    ("MOVE", b"Destination", f"{server.url}{calendar}moved.ics".encode()),
                                    ("GET", b"Accept-Language", b"en")]:
            answer = raw_request(server.url, method, calendar + "hdr.ics", [auth, (name, value + suffix)])
            assert answer.status < 500, (method, name, suffix, answer.status)
            assert answer.header("Set-Cookie") is None and answer.header("X-Injected") is None, answer.headers
    listing = raw_request(server.url, "PROPFIND", calendar, [auth, (b"Depth", b"1")])
    hrefs = {r.href for r in multistatus(listing.text)} - {calendar}
    assert len(hrefs) == 1 and hrefs <= {calendar + "hdr.ics", calendar + "moved.ics"}, hrefs  # moved at most

    # X-Script-Name (Radicale's base-prefix header) and forwarded headers are ignored: hrefs stay /dav/.
    for forged in [(b"X-Script-Name", b"/evil"), (b"X-Script-Name", b"/dav/../evil"),
                   (b"X-Forwarded-Host", b"evil.example"), (b"X-Forwarded-Proto", b"gopher"),
                   (b"X-Forwarded-Prefix", b"/evil")]:
        listing = raw_request(server.url, "PROPFIND", calendar, [auth, (b"Depth", b"1"), forged],
                              b"<propfind xmlns='DAV:'><prop><getetag/></prop></propfind>")
        assert listing.status == 207, listing.text
        hrefs = [r.href for r in multistatus(listing.text)]
        assert hrefs and all(h.startswith(f"/dav/{user}/bookings/") for h in hrefs), hrefs
        assert "evil" not in listing.text
    redirect = raw_request(server.url, "GET", "/.well-known/caldav", [(b"X-Script-Name", b"/evil")])
    assert redirect.status in (301, 302, 308) and redirect.header("Location") == "/dav/"


def test_nul_in_addresses_and_credentials_is_refused(server: LockstepServer) -> None:
    """NUL reached PostgreSQL (which refuses it in text) from query parameters and paths: 500."""
    user, password = server.add_tech()
    name, secret = server.create_token(scope="bookings")
    bearer = [(b"Authorization", f"Bearer {name}.{secret}".encode())]
    for target in [f"/api/v1/freebusy?tech={user}%00&start=2026-12-01T00:00:00Z&end=2026-12-02T00:00:00Z",
                   f"/api/v1/availability?tech={user}&tech=%00&start=2026-12-01T00:00:00Z"
                   "&end=2026-12-02T00:00:00Z&duration=30",
                   "/api/v1/bookings/lockstep-x%00y.ics"]:
        answer = raw_request(server.url, "GET", target, bearer)
        assert answer.status in (400, 404) and json.loads(answer.body)["message"], (target, answer.status)
    for method in ("PATCH", "DELETE"):
        answer = raw_request(server.url, method, "/api/v1/bookings/a%00b", bearer + [(b"Content-Type",
                             b"application/json")], b'{"summary": "x"}')
        assert answer.status in (400, 404), (method, answer.status)
    for credentials in [f"Bearer {name}\x00.{secret}".encode(), f"Bearer {name}.{secret}\x00".encode()]:
        answer = raw_request(server.url, "GET", "/api/v1/techs", [(b"Authorization", credentials)])
        assert answer.status in (400, 401), answer.status
    for user_name in (user + "\x00", "\x00"):
        answer = raw_request(server.url, "PROPFIND", f"/dav/{user}/", [(b"Authorization", basic(user_name, password)),
                                                                       (b"Depth", b"0")])
        assert answer.status in (400, 401), answer.status
