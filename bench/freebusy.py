#!/usr/bin/env python3
"""Free/busy latency benchmark: Lockstep's busy index against stock Radicale 3.9.

One run, on 127.0.0.1 only:

1. generates one tech's calendar of ``--events`` resources (default 5,000: a
   quarter recurring -- weekly / daily RRULEs, some with EXDATE and some with
   RECURRENCE-ID overrides --, some all-day, most in a VTIMEZONE, a few
   tentative / cancelled / transparent), spread from 40 days ago to 400 days
   ahead (Lockstep's busy index covers 30 days back to 400 days ahead);
2. starts stock Radicale 3.9 (multifilesystem storage, plain htpasswd), loads
   the calendar over CalDAV PUT and times its free-busy-query REPORT for a
   30-day and a 365-day window starting today (00:00 UTC);
3. for each ``--backends`` entry starts ``lockstep serve``, loads the same
   calendar by one PUT per event into the tech's ``bookings`` calendar, adds
   ``--techs`` more techs with ``--tech-events`` events each (loaded in
   parallel, ``--workers`` connections), and times
     * GET /api/v1/freebusy (bearer token, scope freebusy) for the big tech,
       30 and 365 days,
     * the CalDAV free-busy-query REPORT on the big tech's bookings calendar,
       30 and 365 days,
     * GET /api/v1/freebusy naming all ``--techs`` small techs, 30 days;
4. prints a Markdown table (median / p95 in ms, ratios stock / ours, goals).

Every request goes through one keep-alive HTTP/1.1 connection (``http.client``: the
``requests`` library costs ~1.5 ms of client CPU per request here); each operation
gets untimed warm-up requests first. Stock Radicale's PUT of a new item reads
the whole collection, so loading 5,000 events one by one takes ~20 minutes;
by default (``--stock-load mixed``) it gets the first ``--stock-head`` events
one by one (near-empty calendar), then all but the last ``--stock-tail`` in one
whole-collection PUT (Radicale's import, same content), then the last
``--stock-tail`` one by one; its one-by-one total is estimated from those.

    cd /work/main
    LOCKSTEP_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/freebusy.py --events 5000 --techs 100 --backends sqlite,postgresql

Everything it starts is stopped on exit, on errors and on Ctrl-C / SIGTERM;
the whole run is bounded by ``--deadline`` seconds (default 570).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.dav_bench import (  # noqa: E402
    CITIES, MKCALENDAR_BODY, STREETS, SUMMARIES, TZID, VTIMEZONE, WORDS, BenchTimeout, OpResult, analyze_schema,
    fold, git_describe, log,
)
from tests.support.lockstep_server import PG_ENV, LockstepServer, running_server  # noqa: E402
from tests.support.stock_radicale import start_stock_radicale  # noqa: E402

UTC = timezone.utc
BIG_TECH = "bigtech"
BIG_PASSWORD = "bench-password-1"
CALENDAR = "bookings"
SMALL_CALENDAR = "jobs"
ICS_HEADERS = {"Content-Type": "text/calendar; charset=utf-8"}
XML_HEADERS = {"Content-Type": "application/xml; charset=utf-8"}
WINDOWS = (30, 365)


# --------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------
def _utc(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%SZ")


def _local(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%S")


@dataclass(frozen=True)
class Shape:
    """How a generated calendar looks."""

    days: tuple[int, int]  # first day of an event, relative to today
    recurring: float  # share of recurring series
    allday: float  # share of all-day events


BIG_SHAPE = Shape(days=(-40, 400), recurring=0.25, allday=0.08)
SMALL_SHAPE = Shape(days=(-20, 75), recurring=0.16, allday=0.06)


def make_event(rng: random.Random, index: int, today: date, shape: Shape, label: str) -> tuple[str, str]:
    """(uid, one resource's iCalendar text); deterministic for a given rng state."""
    uid = f"{uuid.UUID(int=rng.getrandbits(128))}@lockstep-fb-bench"
    stamp = datetime(2026, 1, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=index)
    kind = rng.random()
    allday = kind < shape.allday
    recurring = shape.allday <= kind < shape.allday + shape.recurring
    in_utc = not recurring and not allday and rng.random() < 0.12  # some clients write UTC
    low, high = shape.days
    if recurring:  # series start earlier so that they run into the windows
        low, high = low - 30, high - 60
    day = today + timedelta(days=rng.randint(low, high))
    start = datetime(day.year, day.month, day.day, rng.choice([7, 8, 9, 10, 11, 13, 14, 15, 16]),
                     rng.choice([0, 15, 30, 45]))
    length = timedelta(minutes=rng.choice([30, 45, 60, 60, 90, 120, 180]))
    head = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Lockstep//freebusy bench//EN", "CALSCALE:GREGORIAN"]
    if not allday and not in_utc:
        head += VTIMEZONE.splitlines()

    def common(summary: str) -> list[str]:
        return [f"UID:{uid}", f"DTSTAMP:{_utc(stamp)}", f"CREATED:{_utc(stamp)}", f"LAST-MODIFIED:{_utc(stamp)}"]

    summary = f"{rng.choice(SUMMARIES)} #{label}{index}"
    master = ["BEGIN:VEVENT", *common(summary), "SEQUENCE:0"]
    if allday:
        master += [f"DTSTART;VALUE=DATE:{day:%Y%m%d}",
                   f"DTEND;VALUE=DATE:{day + timedelta(days=rng.choice([1, 1, 1, 2, 3])):%Y%m%d}"]
        if rng.random() < 0.3:
            master.append("TRANSP:TRANSPARENT")  # a reminder, not time off
    elif in_utc:
        master += [f"DTSTART:{_utc(start)}", f"DTEND:{_utc(start + length)}"]
    else:
        master += [f"DTSTART;TZID={TZID}:{_local(start)}", f"DTEND;TZID={TZID}:{_local(start + length)}"]
    overrides: list[list[str]] = []
    if recurring:
        flavour = rng.random()
        step = timedelta(weeks=1)
        if flavour < 0.45:
            count = rng.randint(4, 30)
            master.append(f"RRULE:FREQ=WEEKLY;COUNT={count}")
        elif flavour < 0.60:
            count = rng.randint(6, 20)  # weeks
            master.append(f"RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;UNTIL={_utc(start + timedelta(weeks=count))}")
            count = 0  # no exceptions on BYDAY series (occurrences are not start + k * step)
        elif flavour < 0.90:
            interval = rng.choice([1, 1, 2, 3])
            step = timedelta(days=interval)
            count = rng.randint(5, 40)
            if rng.random() < 0.5:
                master.append(f"RRULE:FREQ=DAILY;INTERVAL={interval};COUNT={count}")
            else:
                master.append(f"RRULE:FREQ=DAILY;INTERVAL={interval};UNTIL={_utc(start + step * (count - 1))}")
        else:  # open-ended weekly stand-up
            count = 10
            master.append("RRULE:FREQ=WEEKLY")
        if count >= 4 and rng.random() < 0.3:  # skipped occurrences
            skipped = sorted(rng.sample(range(1, count), rng.choice([1, 1, 2])))
            master.append(f"EXDATE;TZID={TZID}:" + ",".join(_local(start + step * k) for k in skipped))
        else:
            skipped = []
        if count >= 4 and rng.random() < 0.25:  # moved (or cancelled) occurrences
            for k in sorted(set(rng.sample(range(1, count), rng.choice([1, 1, 2]))) - set(skipped)):
                original = start + step * k
                moved = original + timedelta(hours=rng.choice([-2, 1, 2, 3]))
                override = ["BEGIN:VEVENT", *common(summary), "SEQUENCE:1",
                            f"RECURRENCE-ID;TZID={TZID}:{_local(original)}",
                            f"DTSTART;TZID={TZID}:{_local(moved)}",
                            f"DTEND;TZID={TZID}:{_local(moved + length)}",
                            f"SUMMARY:{summary} (moved)"]
                if rng.random() < 0.2:
                    override.append("STATUS:CANCELLED")
                overrides.append(override + ["END:VEVENT"])
    status = rng.random()
    if not allday:
        if status < 0.05:
            master.append("STATUS:TENTATIVE")
        elif status < 0.07:
            master.append("STATUS:CANCELLED")
        else:
            master.append("STATUS:CONFIRMED")
        if rng.random() < 0.03:
            master.append("TRANSP:TRANSPARENT")
    description = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))
    city = rng.choice(CITIES).replace(",", "\\,")
    master += [f"SUMMARY:{summary}", f"DESCRIPTION:{description}",
               f"LOCATION:{rng.randint(10, 9999)} {rng.choice(STREETS)}\\, {city}"]
    if rng.random() < 0.3:
        master += ["ORGANIZER;CN=Dispatch:mailto:dispatch@example.com",
                   f"ATTENDEE;CN=Customer {index};PARTSTAT=NEEDS-ACTION:mailto:customer{index}@example.org"]
    if rng.random() < 0.4:
        master += ["BEGIN:VALARM", "ACTION:DISPLAY", "DESCRIPTION:Reminder",
                   f"TRIGGER:-PT{rng.choice([10, 15, 30, 60])}M", "END:VALARM"]
    master.append("END:VEVENT")
    lines = head + master + [line for override in overrides for line in override] + ["END:VCALENDAR"]
    return uid, "\r\n".join(fold(line) for line in lines) + "\r\n"


def make_calendar(count: int, seed: int, today: date, shape: Shape, label: str) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [make_event(rng, i, today, shape, label) for i in range(count)]


def describe(events: list[tuple[str, str]]) -> str:
    texts = [t for _, t in events]
    series = sum(bool(re.search(r"^RRULE:FREQ=(WEEKLY|DAILY)", t, re.M)) for t in texts)
    return (f"{len(texts)} resources: {series} recurring "
            f"({sum('EXDATE' in t for t in texts)} with EXDATE, {sum('RECURRENCE-ID' in t for t in texts)} with "
            f"RECURRENCE-ID overrides), {sum('VALUE=DATE:' in t for t in texts)} all-day, "
            f"{sum('BEGIN:VTIMEZONE' in t for t in texts)} with VTIMEZONE; "
            f"{sum(len(t) for t in texts) / len(texts):.0f} bytes on average")


def merged_calendar(events: list[tuple[str, str]]) -> str:
    """One VCALENDAR holding every VEVENT of ``events`` (and the VTIMEZONE once)."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Lockstep//freebusy bench//EN", "CALSCALE:GREGORIAN"]
    lines += VTIMEZONE.splitlines()
    for _uid, text in events:
        first, last = text.index("BEGIN:VEVENT"), text.rindex("END:VEVENT") + len("END:VEVENT")
        lines.append(text[first:last])
    return "\r\n".join(lines + ["END:VCALENDAR"]) + "\r\n"


# --------------------------------------------------------------------------------------
# Client.
# --------------------------------------------------------------------------------------
@dataclass
class Reply:
    """What the bench reads of an answer."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class Client:
    """One keep-alive HTTP/1.1 connection per server (http.client); every request is fully read
    and checked. Not ``requests``: on this 2-core machine its own per-request work (about
    1.5 ms, measured against a bare WSGI server) would be counted as the server's latency."""

    def __init__(self, deadline: float, stop: threading.Event, auth: tuple[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.deadline, self.stop = deadline, stop
        self.headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self._connections: dict[str, http.client.HTTPConnection] = {}

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def request(self, method: str, url: str, body: str | None = None, headers: dict[str, str] | None = None,
                params: list[tuple[str, str]] | None = None, expect: tuple[int, ...] = (200,),
                timeout: float = 300.0) -> tuple[Reply, float]:
        if self.stop.is_set():
            raise KeyboardInterrupt("stopping")
        if time.monotonic() > self.deadline:
            raise BenchTimeout("--deadline reached")
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if params:
            target += ("&" if parts.query else "?") + urllib.parse.urlencode(params)
        data = body.encode() if body else None
        started = time.perf_counter()
        for attempt in (1, 2):  # a keep-alive connection the server closed: one new one
            connection = self._connection(parts.netloc, timeout)
            try:
                connection.request(method, target, body=data, headers={**self.headers, **(headers or {})})
                answer = connection.getresponse()
                reply = Reply(answer.status, answer.read())
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                del self._connections[parts.netloc]
                if attempt == 2:
                    raise
                started = time.perf_counter()
        elapsed = time.perf_counter() - started
        if reply.status_code not in expect:
            raise AssertionError(f"{method} {url} -> {reply.status_code} (expected {expect}): {reply.text[:400]}")
        return reply, elapsed

    def _connection(self, netloc: str, timeout: float) -> http.client.HTTPConnection:
        if netloc not in self._connections:
            host, _, port = netloc.rpartition(":")
            self._connections[netloc] = http.client.HTTPConnection(host, int(port), timeout=timeout)
        return self._connections[netloc]


def freebusy_query(start: datetime, end: datetime) -> str:
    return ('<?xml version="1.0" encoding="utf-8"?>'
            '<C:free-busy-query xmlns:C="urn:ietf:params:xml:ns:caldav">'
            f'<C:time-range start="{_utc(start)}" end="{_utc(end)}"/></C:free-busy-query>')


def rfc3339(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


_PERIOD = re.compile(r"(\d{8}T\d{6}Z)/(\d{8}T\d{6}Z|P[0-9WDTHMS]+)")


def vfreebusy_summary(text: str) -> tuple[int, float]:
    """(periods, busy hours) of FBTYPE=BUSY in a VFREEBUSY reply."""
    periods, seconds = 0, 0.0
    for line in text.replace("\r\n ", "").replace("\n ", "").splitlines():
        if not line.startswith("FREEBUSY") or "BUSY-TENTATIVE" in line or "BUSY-UNAVAILABLE" in line:
            continue
        if "FBTYPE=" in line.split(":", 1)[0] and "FBTYPE=BUSY" not in line.split(":", 1)[0]:
            continue
        for a, b in _PERIOD.findall(line.split(":", 1)[1]):
            start = datetime.strptime(a, "%Y%m%dT%H%M%SZ")
            if b.startswith("P"):
                raise AssertionError(f"duration periods not handled: {line}")
            seconds += (datetime.strptime(b, "%Y%m%dT%H%M%SZ") - start).total_seconds()
            periods += 1
    return periods, seconds / 3600


def json_summary(body: bytes, tech: str) -> tuple[int, float]:
    spans = json.loads(body)["techs"][tech]["busy"]
    seconds = sum((datetime.fromisoformat(s["end"].replace("Z", "+00:00"))
                   - datetime.fromisoformat(s["start"].replace("Z", "+00:00"))).total_seconds() for s in spans)
    return len(spans), seconds / 3600


# --------------------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------------------
@dataclass
class Result:
    samples: OpResult = field(default_factory=OpResult)
    periods: int | None = None
    busy_hours: float | None = None
    cpu_seconds: float = 0.0  # the server process's CPU time over the timed requests

    @property
    def cpu_ms(self) -> float:
        """Mean server CPU per request: steadier than latency on a shared machine (it does not
        count time spent waiting for a core), though /proc counts in clock ticks (10 ms), so it
        is only good as a mean over many requests."""
        return self.cpu_seconds * 1000 / max(1, len(self.samples.samples_ms))


@dataclass
class Server:
    key: str  # stock, sqlite, postgresql
    pid: int
    load_seconds: float = 0.0  # the big tech's calendar, as loaded
    load_note: str = ""
    load_estimate: float | None = None  # stock: estimated one-by-one total
    first_ms: float = 0.0  # median PUT latency into a near-empty calendar
    last_ms: float = 0.0  # ... and into an almost full one
    small_load_seconds: float = 0.0
    results: dict[str, Result] = field(default_factory=dict)


@dataclass
class Target:
    server: Server
    client: Client  # keep-alive CalDAV session of the big tech
    calendar: str  # the big tech's bookings calendar URL
    lockstep: LockstepServer | None = None
    small_techs: list[str] = field(default_factory=list)


def run_all(stop: threading.Event, workers: int, jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` on ``workers`` threads; the first failure (or Ctrl-C) stops the others
    (every request checks ``stop``) and is raised."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(job) for job in jobs]
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(pending, timeout=0.5,
                                                        return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in finished:
                future.result()
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)  # in-flight requests end when the servers stop
        raise
    pool.shutdown(wait=True)


def small_tech_names(count: int) -> list[str]:
    return [f"tech{t:03d}" for t in range(count)]


def loaded_marker(work: Path) -> Path:
    """What a --workdir run loaded (for --reuse): the day its data is laid out from, and its shape."""
    return work / "loaded.json"


def data_shape(args: argparse.Namespace, backends: list[str]) -> dict[str, object]:
    return {"events": args.events, "techs": args.techs, "tech_events": args.tech_events, "seed": args.seed,
            "small_load": args.small_load, "stock": not args.no_stock, "backends": backends}


class Bench:
    def __init__(self, args: argparse.Namespace, deadline: float, stop: threading.Event,
                 today: date | None = None) -> None:
        self.args, self.deadline, self.stop = args, deadline, stop
        self.today = today or datetime.now(UTC).date()
        self.day0 = datetime(self.today.year, self.today.month, self.today.day, tzinfo=UTC)
        self.big = make_calendar(args.events, args.seed, self.today, BIG_SHAPE, "b")
        self.small = [make_calendar(args.tech_events, args.seed + 1000 + t, self.today, SMALL_SHAPE, f"t{t}-")
                      for t in range(args.techs)]

    def client(self, stack: contextlib.ExitStack, **kwargs: object) -> Client:
        client = Client(self.deadline, self.stop, **kwargs)  # type: ignore[arg-type]
        stack.callback(client.close)
        return client

    def window(self, days: int) -> tuple[datetime, datetime]:
        return self.day0, self.day0 + timedelta(days=days)

    # -- loading ----------------------------------------------------------------------
    def put_one_by_one(self, who: str, client: Client, calendar_url: str, events: list[tuple[str, str]],
                       done_before: int = 0, total: int | None = None) -> list[float]:
        total = total or len(events)
        latencies: list[float] = []
        started = last = time.perf_counter()
        headers = {**ICS_HEADERS, "If-None-Match": "*"}
        for index, (uid, text) in enumerate(events, done_before + 1):
            _, seconds = client.request("PUT", f"{calendar_url}{uid}.ics", text, headers, expect=(201,))
            latencies.append(seconds * 1000)
            now = time.perf_counter()
            if index % self.args.progress_every == 0 or index == done_before + len(events) or now - last > 15:
                last = now
                recent = latencies[-200:]
                log(who, f"PUT {index}/{total} events, {now - started:.1f}s, recent PUT median "
                    f"{statistics.median(recent):.1f} ms")
        return latencies

    def start_stock(self, stack: contextlib.ExitStack, work: Path) -> Target:
        stock = stack.enter_context(start_stock_radicale(work / "stock", {BIG_TECH: BIG_PASSWORD}))
        log("stock", f"Radicale 3.9 (multifilesystem, htpasswd plain) on {stock.url}, pid {stock.process.pid}")
        client = self.client(stack, auth=(BIG_TECH, BIG_PASSWORD))
        calendar = f"{stock.url}{BIG_TECH}/{CALENDAR}/"
        client.request("PROPFIND", f"{stock.url}{BIG_TECH}/", headers={"Depth": "0"}, expect=(207,))
        if not self.args.reuse:
            client.request("MKCALENDAR", calendar, MKCALENDAR_BODY, XML_HEADERS, expect=(201,))
        return Target(Server("stock", stock.process.pid), client, calendar)

    def start_lockstep(self, stack: contextlib.ExitStack, work: Path, backend: str) -> Target:
        lockstep = stack.enter_context(running_server(work / f"lockstep-{backend}", backend, horizon_past_days=None,
                                                      keep_data=self.args.workdir is not None))
        assert lockstep.process is not None
        log(backend, f"lockstep serve ({backend}) on {lockstep.url}, pid {lockstep.process.pid}")

        def show_errors(kind: type[BaseException] | None, *_: object) -> None:
            """On a failure, the server's errors before its data dir goes away."""
            if kind is None or issubclass(kind, KeyboardInterrupt) or not lockstep.log_file.exists():
                return
            lines = lockstep.log_file.read_text(errors="replace").splitlines()
            marks = [i for i, line in enumerate(lines) if "Traceback" in line or "ERROR" in line]
            if marks:
                print(f"--- {backend} server log ({lockstep.log_file.name}), around its first error:\n"
                      + "\n".join(lines[max(0, marks[0] - 3):marks[0] + 40]), file=sys.stderr, flush=True)
        stack.push(show_errors)
        if not self.args.reuse:
            lockstep.add_tech(BIG_TECH, BIG_PASSWORD)
        client = self.client(stack, auth=(BIG_TECH, BIG_PASSWORD))
        calendar = f"{lockstep.dav_url}{BIG_TECH}/{CALENDAR}/"
        client.request("PROPFIND", calendar, headers={"Depth": "0"}, expect=(207,))
        return Target(Server(backend, lockstep.process.pid), client, calendar, lockstep)

    def load_stock(self, target: Target) -> None:
        server, client, calendar = target.server, target.client, target.calendar
        events, n = self.big, len(self.big)
        if self.args.stock_load == "put":
            latencies = self.put_one_by_one("stock", client, calendar, events)
            server.load_seconds = sum(latencies) / 1000
            server.load_note = f"{n} PUTs"
            tail = min(100, n)
            server.first_ms, server.last_ms = statistics.median(latencies[:tail]), statistics.median(latencies[-tail:])
            return
        head, tail = self.args.stock_head, self.args.stock_tail
        first = self.put_one_by_one("stock", client, calendar, events[:head], total=n)
        started = time.perf_counter()
        log("stock", f"whole-collection PUT of events 1..{n - tail} (Radicale import; replaces the first {head})")
        # Over 250 s at load average 5-9, over 300 s at 10-15: bounded by --deadline instead.
        client.request("PUT", calendar, merged_calendar(events[:n - tail]), ICS_HEADERS, expect=(201,),
                       timeout=max(300.0, self.deadline - time.monotonic()))
        imported = time.perf_counter() - started
        log("stock", f"imported {n - tail} events in {imported:.1f}s; PUT of the last {tail} one by one")
        last = self.put_one_by_one("stock", client, calendar, events[n - tail:], done_before=n - tail, total=n)
        server.first_ms, server.last_ms = statistics.median(first), statistics.median(last)
        server.load_seconds = imported + sum(last) / 1000
        # A new item's PUT costs about a + b * (items already there): the one-by-one total is
        # about n * (first + last) / 2.
        server.load_estimate = n * (server.first_ms + server.last_ms) / 2 / 1000
        server.load_note = (f"1 PUT of {n - tail} ({imported:.0f} s) + {tail} PUTs ({sum(last) / 1000:.0f} s); "
                            f"one by one ≈ {server.load_estimate / 60:.0f} min")

    def load_lockstep(self, target: Target) -> None:
        """The big tech's PUTs and the small techs' load run side by side on PostgreSQL (other techs,
        other locks), one after the other on SQLite."""
        server, backend = target.server, target.server.key

        def big() -> None:
            latencies = self.put_one_by_one(backend, target.client, target.calendar, self.big)
            server.load_seconds = sum(latencies) / 1000
            tail = min(100, len(latencies))
            server.first_ms = statistics.median(latencies[:tail])
            server.last_ms = statistics.median(latencies[-tail:])
            server.load_note = f"{len(latencies)} PUTs"

        def small() -> None:
            target.small_techs = self.load_small(target)

        # SQLite takes one writer at a time: there, side by side would only queue on its lock.
        together = not self.args.serial_load and backend != "sqlite"
        run_all(self.stop, 2 if together else 1, [big, small])
        if backend == "postgresql" and not self.args.no_pg_vacuum:
            assert target.lockstep is not None
            analyze_schema(target.lockstep.database_url, vacuum=True)
            log(backend, "VACUUM ANALYZE done on the bench schema, as autovacuum would (--no-pg-vacuum: not)")

    def load_small(self, target: Target) -> list[str]:
        args, lockstep, backend = self.args, target.lockstep, target.server.key
        assert lockstep is not None
        if not args.techs:
            return []
        started = time.perf_counter()
        names = small_tech_names(args.techs)
        password = "small-password-1"
        # techs.add_tech hashes the password with argon2 (CPU-bound, releases the GIL): 2 threads.
        run_all(self.stop, 2, [lambda name=name: lockstep.add_tech(name, password) for name in names])
        total = args.techs * args.tech_events
        how = ("one PUT per event into their bookings calendar" if args.small_load == "put" else
               f"one whole-calendar PUT per tech (Radicale import) creating a second calendar {SMALL_CALENDAR!r}")
        log(backend, f"added {len(names)} techs in {time.perf_counter() - started:.1f}s; loading their {total} "
            f"events with {args.workers} connections, {how}")
        done = [0]
        lock = threading.Lock()
        last = [time.perf_counter()]

        def progress(count: int) -> None:
            with lock:
                done[0] += count
                now = time.perf_counter()
                if done[0] % args.progress_every < count or done[0] == total or now - last[0] > 15:
                    last[0] = now
                    log(backend, f"loaded {done[0]}/{total} small-tech events, {now - started:.1f}s")

        def load(t: int) -> None:
            client = Client(self.deadline, self.stop, auth=(names[t], password))
            try:
                if args.small_load == "import":
                    client.request("PUT", f"{lockstep.dav_url}{names[t]}/{SMALL_CALENDAR}/",
                                   merged_calendar(self.small[t]), ICS_HEADERS, expect=(201,))
                    progress(len(self.small[t]))
                    return
                calendar = f"{lockstep.dav_url}{names[t]}/{CALENDAR}/"
                headers = {**ICS_HEADERS, "If-None-Match": "*"}
                for uid, text in self.small[t]:
                    client.request("PUT", f"{calendar}{uid}.ics", text, headers, expect=(201,))
                    progress(1)
            finally:
                client.close()

        run_all(self.stop, args.workers, [lambda t=t: load(t) for t in range(args.techs)])
        target.server.small_load_seconds = time.perf_counter() - started
        log(backend, f"{args.techs} techs x {args.tech_events} events loaded in "
            f"{target.server.small_load_seconds:.1f}s")
        return names

    # -- measuring --------------------------------------------------------------------
    def measure(self, who: str, server: Server, ops: dict[str, Callable[[], tuple[Reply, float]]],
                checks: dict[str, Callable[[Reply], tuple[int, float]]], warmup: int, repeat: int,
                min_repeat: int, budget: float) -> None:
        """Round-robin over ``ops`` (so noise hits them alike); stop after ``budget`` s once
        every op has ``min_repeat`` samples."""
        results = {op: server.results.setdefault(op, Result()) for op in ops}
        for op, run in ops.items():
            for _ in range(max(1, warmup)):
                response, _ = run()
            results[op].periods, results[op].busy_hours = checks[op](response)
        started = time.monotonic()
        for i in range(repeat):
            order = list(ops.items()) if i % 2 == 0 else list(ops.items())[::-1]
            for op, run in order:
                cpu_before = cpu_seconds(server.pid)
                _, seconds = run()
                results[op].cpu_seconds += cpu_seconds(server.pid) - cpu_before
                results[op].samples.samples_ms.append(seconds * 1000)
            if i + 1 >= min_repeat and time.monotonic() - started > budget:
                break
        for op in ops:
            r = results[op]
            log(who, f"{op}: median {r.samples.median:.2f} ms, p95 {r.samples.p95:.2f} ms, server CPU "
                f"{r.cpu_ms:.2f} ms/request (n={len(r.samples.samples_ms)}; {r.periods} busy periods, "
                f"{r.busy_hours:.0f} h)")

    def measure_stock(self, target: Target, share: float) -> None:
        args, server, client, calendar = self.args, target.server, target.client, target.calendar
        ops, checks = {}, {}
        for days in WINDOWS:
            body = freebusy_query(*self.window(days))
            ops[f"report_{days}"] = (lambda body=body: client.request(
                "REPORT", calendar, body, {**XML_HEADERS, "Depth": "1"}))
            checks[f"report_{days}"] = lambda r: vfreebusy_summary(r.text)
        log("stock", f"measuring free-busy-query REPORT ({args.stock_warmup} warm-up, then up to "
            f"{args.stock_repeat}, at least {args.stock_min_repeat})")
        self.measure("stock", server, ops, checks, args.stock_warmup, args.stock_repeat, args.stock_min_repeat,
                     min(args.stock_seconds, share))

    def measure_lockstep(self, target: Target, share: float) -> None:
        args, server, lockstep, dav, calendar = (self.args, target.server, target.lockstep, target.client,
                                                 target.calendar)
        small_techs = target.small_techs
        assert lockstep is not None
        name, secret = lockstep.create_token(scope="freebusy")
        stack = contextlib.ExitStack()
        with stack:
            api = self.client(stack, headers={"Authorization": f"Bearer {name}.{secret}",
                                              "Accept": "application/json"})
            url = f"{lockstep.url}/api/v1/freebusy"
            ops, checks = {}, {}
            for days in WINDOWS:
                start, end = self.window(days)
                params = [("tech", BIG_TECH), ("start", rfc3339(start)), ("end", rfc3339(end))]
                ops[f"api_{days}"] = lambda params=params: api.request("GET", url, params=params)
                checks[f"api_{days}"] = lambda r: json_summary(r.content, BIG_TECH)
                body = freebusy_query(start, end)
                ops[f"report_{days}"] = (lambda body=body: dav.request(
                    "REPORT", calendar, body, {**XML_HEADERS, "Depth": "1"}))
                checks[f"report_{days}"] = lambda r: vfreebusy_summary(r.text)
            if small_techs:
                start, end = self.window(30)
                params = [("tech", t) for t in small_techs] + [("start", rfc3339(start)), ("end", rfc3339(end))]
                ops["api_many_30"] = lambda: api.request("GET", url, params=params)

                def many(r: Reply) -> tuple[int, float]:
                    techs = json.loads(r.content)["techs"]
                    assert sorted(techs) == sorted(small_techs), "not every tech answered"
                    totals = [json_summary(r.content, t) for t in small_techs]
                    return sum(p for p, _ in totals), sum(h for _, h in totals)
                checks["api_many_30"] = many
            with profiled(server, "measure", args):
                self.measure(server.key, server, ops, checks, args.warmup, args.repeat, args.min_repeat,
                             min(args.op_seconds * len(ops), share))


@contextlib.contextmanager
def profiled(server: Server, phase: str, args: argparse.Namespace) -> Iterator[None]:
    """With --py-spy EXE: sample the server while the block runs (collapsed stacks)."""
    if not args.py_spy:
        yield
        return
    out = args.profile_dir / f"py-spy-freebusy-{server.key}-{phase}.txt"
    proc = subprocess.Popen([args.py_spy, "record", "--pid", str(server.pid), "--format", "raw", "--rate", "250",
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log(server.key, f"py-spy profile of the {phase} phase: {out}")


# --------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------
def markdown(stock: Server | None, servers: list[Server], args: argparse.Namespace) -> str:
    def cell(server: Server | None, op: str) -> str:
        if server is None or op not in server.results:
            return "n/a"
        s = server.results[op].samples
        return f"{s.median:.2f} / {s.p95:.2f}" if s.median < 100 else f"{s.median:.0f} / {s.p95:.0f}"

    def ratio(server: Server, op: str) -> str:
        if stock is None or op not in server.results:
            return "n/a"
        ours = server.results[op].samples
        theirs = stock.results[f"report_{op.split('_')[1]}"].samples
        return f"**{theirs.median / ours.median:,.0f}×** ({theirs.p95 / ours.p95:,.0f}×)"

    head = ["request", "n"] + (["stock Radicale median / p95"] if stock else [])
    for s in servers:
        head += [f"{s.key} median / p95", f"{s.key}: stock REPORT ÷ this"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    labels = {
        "api_30": "GET /api/v1/freebusy, 1 tech, 30 days",
        "api_365": "GET /api/v1/freebusy, 1 tech, 365 days",
        "report_30": "CalDAV free-busy-query REPORT, 30 days",
        "report_365": "CalDAV free-busy-query REPORT, 365 days",
        "api_many_30": f"GET /api/v1/freebusy, {args.techs} techs, 30 days",
    }
    for op, label in labels.items():
        if not any(op in s.results for s in servers):
            continue
        counts = [len(s.results[op].samples.samples_ms) for s in servers if op in s.results]
        if stock and op.startswith("report"):
            counts = [len(stock.results[op].samples.samples_ms)] + counts
        row = [label, "/".join(str(c) for c in counts)]
        if stock:
            row.append(cell(stock, op) if op.startswith("report") else "—")
        for s in servers:
            row += [cell(s, op), ratio(s, op) if op != "api_many_30" else "—"]
        lines.append("| " + " | ".join(row) + " |")
    row = [f"load: {args.events} events of the big tech, s", ""]
    if stock:
        row.append(f"{stock.load_seconds:.1f} ({stock.load_note})")
    for s in servers:
        row += [f"{s.load_seconds:.1f} ({s.load_note})", "—"]
    lines.append("| " + " | ".join(row) + " |")
    row = ["load: PUT median of the first / last PUTs (near-empty / full calendar; Lockstep 100 / 100"
           + (f", stock {args.stock_head} / {args.stock_tail}" if stock and args.stock_load == "mixed" else "")
           + "), ms", ""]
    if stock:
        row.append(f"{stock.first_ms:.1f} / {stock.last_ms:.1f}")
    for s in servers:
        row += [f"{s.first_ms:.1f} / {s.last_ms:.1f}", "—"]
    lines.append("| " + " | ".join(row) + " |")
    if args.techs:
        how = "1 calendar PUT per tech" if args.small_load == "import" else "1 PUT per event"
        row = [f"load: {args.techs} techs × {args.tech_events} events ({how}, {args.workers} connections, "
               "incl. creating the techs), s", ""]
        if stock:
            row.append("—")
        for s in servers:
            row += [f"{s.small_load_seconds:.1f}", "—"]
        lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n\nLatencies in ms (median / p95); ratios are stock's REPORT time over ours " \
                              "(median, p95 in brackets), higher is better.\n"
    # What the replies held: FBTYPE=BUSY periods and hours (sanity check of equal work).
    facts = []
    for op in labels:
        parts = []
        for s in ([stock] if stock else []) + servers:
            r = s.results.get(op)
            if r is not None and r.periods is not None:
                parts.append(f"{s.key} {r.periods} ({r.busy_hours:.0f} h)")
        if parts:
            facts.append(f"{op}: " + ", ".join(parts))
    text += "Busy periods in the replies (busy hours): " + "; ".join(facts) + "\n"
    cpu = []
    for op in labels:
        parts = [f"{s.key} {s.results[op].cpu_ms:.1f}" for s in ([stock] if stock else []) + servers
                 if op in s.results]
        if parts:
            cpu.append(f"{op}: " + ", ".join(parts))
    text += ("Server process CPU per request, ms (mean; PostgreSQL's own processes not counted): "
             + "; ".join(cpu) + "\n")
    return text


def goals(stock: Server | None, servers: list[Server]) -> str:
    out = []
    for s in servers:
        r = s.results
        checks = []
        if "api_30" in r:
            m = r["api_30"].samples.median
            checks.append(f"1-tech 30-day API median {m:.2f} ms {'<' if m < 5 else '≥'} 5 ms "
                          f"{'met' if m < 5 else f'MISSED ({m / 5:.1f}×)'}")
        if "api_many_30" in r:
            m = r["api_many_30"].samples.median
            checks.append(f"100-tech API median {m:.1f} ms {'<' if m < 50 else '≥'} 50 ms "
                          f"{'met' if m < 50 else f'MISSED ({m / 50:.1f}×)'}")
        if stock:
            for op in ("api_30", "api_365", "report_30", "report_365"):
                if op in r:
                    x = stock.results[f"report_{op.split('_')[1]}"].samples.median / r[op].samples.median
                    checks.append(f"{op} {x:,.0f}× {'met' if x >= 100 else 'MISSED'}")
        out.append(f"{s.key}: " + "; ".join(checks))
    return "Goals (≥100× stock REPORT, 1-tech 30-day API < 5 ms, 100-tech API < 50 ms):\n" + "\n".join(out)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc), 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="resources in the big tech's calendar")
    parser.add_argument("--techs", type=int, default=100, help="small techs for the many-tech request (0: none)")
    parser.add_argument("--tech-events", type=int, default=50, help="resources per small tech")
    parser.add_argument("--workers", type=int, default=4, help="parallel connections loading the small techs")
    parser.add_argument("--small-load", choices=("import", "put"), default="import",
                        help="import (default): one whole-calendar PUT per small tech (a second calendar, "
                             f"{SMALL_CALENDAR!r}); put: one PUT per event into their bookings calendar (slow)")
    parser.add_argument("--backends", default="sqlite,postgresql",
                        help=f"comma-separated Lockstep backends (postgresql needs ${PG_ENV})")
    parser.add_argument("--no-stock", action="store_true", help="skip stock Radicale")
    parser.add_argument("--no-pg-vacuum", action="store_true",
                        help="measure PostgreSQL right after loading, before any VACUUM (this machine's test "
                        "cluster has autovacuum off; by default the script runs VACUUM ANALYZE, as autovacuum would)")
    parser.add_argument("--repeat", type=int, default=200, help="timed requests per Lockstep operation (at most)")
    parser.add_argument("--min-repeat", type=int, default=30, help="... at least")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per operation first")
    parser.add_argument("--op-seconds", type=float, default=6.0,
                        help="soft time budget per Lockstep operation (once --min-repeat is reached)")
    parser.add_argument("--stock-repeat", type=int, default=10, help="timed REPORTs per window for stock (at most)")
    parser.add_argument("--stock-min-repeat", type=int, default=5, help="... at least")
    parser.add_argument("--stock-warmup", type=int, default=1)
    parser.add_argument("--stock-seconds", type=float, default=60.0,
                        help="soft time budget for stock's REPORTs (once --stock-min-repeat is reached)")
    parser.add_argument("--stock-load", choices=("mixed", "put"), default="mixed",
                        help="put: every event by its own PUT (~20 min for 5000: stock reads the whole "
                             "collection per new item); mixed: see --stock-head / --stock-tail")
    parser.add_argument("--stock-head", type=int, default=50, help="mixed: PUTs into the empty calendar first")
    parser.add_argument("--stock-tail", type=int, default=30, help="mixed: PUTs one by one after the import")
    parser.add_argument("--serial-load", action="store_true",
                        help="load the servers, and each server's big and small techs, one after another "
                             "(default: in parallel, which inflates the informative load times but not the "
                             "measurements, taken one server at a time with nothing else of ours running)")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--progress-every", type=int, default=1000)
    parser.add_argument("--deadline", type=float, default=570.0,
                        help="abort (stopping every server) after this many seconds")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    parser.add_argument("--py-spy", metavar="EXE", nargs="?", const=shutil.which("py-spy") or "py-spy",
                        help="sample each Lockstep server with py-spy during the measurement")
    parser.add_argument("--profile-dir", type=Path, default=Path("."), help="where --py-spy writes")
    parser.add_argument("--workdir", type=Path, help="keep server data here instead of a temp dir "
                        "(PostgreSQL: the schema is kept, its URL in WORKDIR/lockstep-postgresql/database_url)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the data an earlier run with the same --workdir and data options loaded, "
                        "without loading again (windows start on the day that run loaded)")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}")
        if backend == "postgresql" and not os.environ.get(PG_ENV):
            parser.error(f"backend postgresql needs {PG_ENV}, e.g. postgresql://postgres@127.0.0.1:5432/test")
    if args.stock_load == "mixed" and args.events < args.stock_head + args.stock_tail + 1:
        parser.error("--events must exceed --stock-head + --stock-tail")
    if args.py_spy:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    loaded_day: date | None = None
    if args.workdir and not args.reuse and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"{args.workdir} already holds data: measure it with --reuse, or name an empty --workdir")
    if args.reuse:
        if args.workdir is None or not loaded_marker(args.workdir).exists():
            parser.error("--reuse needs the --workdir of an earlier run that finished loading")
        loaded = json.loads(loaded_marker(args.workdir).read_text())
        shape = data_shape(args, backends)
        if loaded["shape"] != shape:
            parser.error(f"--reuse: {args.workdir} holds {loaded['shape']}, these options ask for {shape}")
        loaded_day = date.fromisoformat(loaded["day"])

    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    began = time.monotonic()
    deadline = began + args.deadline
    stop = threading.Event()
    print(f"# freebusy bench: big tech {args.events} events, {args.techs} techs x {args.tech_events}, backends "
          f"{','.join(backends)}; nproc {os.cpu_count()}, Python {platform.python_version()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    print(f"# Lockstep tree: {git_describe()}", flush=True)
    bench = Bench(args, deadline, stop, loaded_day)
    print(f"# big tech: {describe(bench.big)}", flush=True)
    if bench.small:
        print(f"# small techs: {describe([e for cal in bench.small for e in cal])}", flush=True)
    print(f"# windows start {bench.day0:%Y-%m-%d} 00:00 UTC: {', '.join(f'{d} days' for d in WINDOWS)}", flush=True)
    stock: Server | None = None
    servers: list[Server] = []
    try:
        with contextlib.ExitStack() as stack:
            if args.workdir:
                work = args.workdir
                work.mkdir(parents=True, exist_ok=True)
            else:
                work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fb-bench-")))
            # Servers start here, in the main thread, so that each is registered for stopping.
            targets = [] if args.no_stock else [bench.start_stock(stack, work)]
            targets += [bench.start_lockstep(stack, work, backend) for backend in backends]
            stock = None if args.no_stock else targets[0].server
            servers = [t.server for t in targets if t.lockstep is not None]
            loads = [(lambda t=t: bench.load_stock(t) if t.lockstep is None else bench.load_lockstep(t))
                     for t in targets]
            started = time.monotonic()
            if args.reuse:
                log("load", f"reusing the data loaded on {bench.today} in {work}")
                for target in targets:
                    target.small_techs = small_tech_names(args.techs) if target.lockstep is not None else []
                    target.server.load_note = "loaded by an earlier run (--reuse)"
            else:
                log("load", f"loading {len(targets)} servers "
                    f"{'one after another' if args.serial_load else 'in parallel'}")
                run_all(stop, 1 if args.serial_load else len(loads), loads)
                if args.workdir:
                    loaded_marker(work).write_text(json.dumps(
                        {"day": bench.today.isoformat(), "shape": data_shape(args, backends)}))
            log("load", f"all loaded in {time.monotonic() - started:.0f}s; CPU used so far: "
                + ", ".join(f"{t.server.key} {cpu_seconds(t.server.pid):.0f} s" for t in targets)
                + f", this client {time.process_time():.0f} s; measuring one server at a time "
                f"(load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
            for left, target in zip(range(len(targets), 0, -1), targets):
                # What is left of --deadline (less 30 s to stop everything), shared out.
                share = max(0.0, (deadline - time.monotonic() - 30) / left * 0.8)
                if target.lockstep is None:
                    bench.measure_stock(target, share)
                else:
                    bench.measure_lockstep(target, share)
    except KeyboardInterrupt:
        stop.set()
        print("\ninterrupted: every server stopped", file=sys.stderr, flush=True)
        return 130
    except BenchTimeout:
        stop.set()
        print(f"\n--deadline {args.deadline:.0f}s reached: every server stopped", file=sys.stderr, flush=True)
        return 3
    total = time.monotonic() - began
    print("\n" + markdown(stock, servers, args), flush=True)
    print(goals(stock, servers), flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "nproc": os.cpu_count(), "python": platform.python_version(), "total_seconds": total,
            "servers": [{"key": s.key, "load_seconds": s.load_seconds, "load_note": s.load_note,
                         "load_estimate": s.load_estimate, "first_ms": s.first_ms, "last_ms": s.last_ms,
                         "small_load_seconds": s.small_load_seconds,
                         "results": {op: {"samples_ms": r.samples.samples_ms, "periods": r.periods,
                                          "busy_hours": r.busy_hours, "cpu_ms": r.cpu_ms}
                                     for op, r in s.results.items()}}
                        for s in ([stock] if stock else []) + servers],
        }, indent=1))
    print(f"total runtime {total:.0f} s (load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())})",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
