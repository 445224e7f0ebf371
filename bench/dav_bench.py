#!/usr/bin/env python3
"""CalDAV latency benchmark: Lockstep (SQLite / PostgreSQL) against stock Radicale 3.9.

One run starts stock Radicale 3.9 (multifilesystem storage, plain htpasswd)
and ``lockstep serve`` on each requested backend, all on 127.0.0.1; loads the
same generated calendar into each, one server after the other, with one PUT
per event (stock Radicale: see ``--stock-load``); then times the same CalDAV
requests against every server with the same client code (one
``requests.Session`` each, keep-alive, Basic auth), round-robin so that
background load on the machine hits every server alike, and prints a
Markdown table of median / p95 latencies and Lockstep/stock ratios (lower is
better).

    cd /work/main
    LOCKSTEP_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/dav_bench.py --events 5000 --backends sqlite,postgresql

Everything it starts is stopped on exit, on errors, on Ctrl-C and on
SIGTERM; ``--deadline`` bounds the whole run. ``--py-spy`` (with ``py-spy`` on
PATH) records collapsed stacks of every server while loading and measuring.
Results and their reading: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.dav import multiget_body, sync_collection_body  # noqa: E402
from tests.support.lockstep_server import PG_ENV, running_server  # noqa: E402
from tests.support.stock_radicale import start_stock_radicale  # noqa: E402

USER = "bench"
PASSWORD = "bench-password-1"
CALENDAR = "cal"
TZID = "America/Los_Angeles"
# The calendar is centred on this Monday; events spread over +-1 year around it.
ANCHOR = date(2026, 1, 5)
DAV = "DAV:"
CALDAV = "urn:ietf:params:xml:ns:caldav"
XML_HEADERS = {"Content-Type": "application/xml; charset=utf-8"}
ICS_HEADERS = {"Content-Type": "text/calendar; charset=utf-8"}


class BenchTimeout(RuntimeError):
    pass


# --------------------------------------------------------------------------------------
# Data: realistic VEVENTs (timed with TZID, UTC, all-day, recurring), one per resource.
# --------------------------------------------------------------------------------------
VTIMEZONE = """BEGIN:VTIMEZONE
TZID:America/Los_Angeles
X-LIC-LOCATION:America/Los_Angeles
BEGIN:DAYLIGHT
TZOFFSETFROM:-0800
TZOFFSETTO:-0700
TZNAME:PDT
DTSTART:19700308T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=2SU
END:DAYLIGHT
BEGIN:STANDARD
TZOFFSETFROM:-0700
TZOFFSETTO:-0800
TZNAME:PST
DTSTART:19701101T020000
RRULE:FREQ=YEARLY;BYMONTH=11;BYDAY=1SU
END:STANDARD
END:VTIMEZONE"""

SUMMARIES = [
    "Furnace inspection", "Water heater replacement", "AC tune-up", "Leak repair under sink",
    "Panel upgrade estimate", "Thermostat install", "Duct cleaning", "Follow-up visit",
    "Team stand-up", "Warranty callback", "Gas line pressure test", "Sump pump service",
    "Quarterly safety training", "Parts pickup", "Customer walkthrough", "Boiler annual service",
]
STREETS = ["Maple Ave", "Oak St", "Pine Rd", "Cedar Ln", "Elm Ct", "Birch Way", "Spruce Blvd"]
CITIES = ["Portland, OR", "Seattle, WA", "San Jose, CA", "Sacramento, CA", "Reno, NV"]
CATEGORIES = ["Service", "Install", "Estimate", "Internal", "Warranty"]
WORDS = (
    "customer reports intermittent noise from unit near garage please bring ladder "
    "replacement filter gasket and spare fittings gate code at front desk call on arrival "
    "previous visit found corrosion on valve check pressure and document readings"
).split()


def fold(line: str) -> str:
    """RFC 5545 line folding at 75 octets."""
    data = line.encode()
    if len(data) <= 75:
        return line
    parts, chunk = [], b""
    for char in line:
        encoded = char.encode()
        if len(chunk) + len(encoded) > (75 if not parts else 74):
            parts.append(chunk.decode())
            chunk = b""
        chunk += encoded
    parts.append(chunk.decode())
    return "\r\n ".join(parts)


def _utc(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%SZ")


def _local(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%S")


def make_event(rng: random.Random, index: int, uid: str | None = None, sequence: int = 0,
               summary_suffix: str = "") -> tuple[str, str]:
    """(uid, iCalendar text) for one event; deterministic for a given rng state."""
    uid = uid or f"{uuid.UUID(int=rng.getrandbits(128))}@lockstep-bench"
    day = ANCHOR + timedelta(days=rng.randint(-365, 365))
    stamp = datetime(2025, 12, 1, 12, 0, tzinfo=timezone.utc) + timedelta(minutes=index)
    kind = rng.random()
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Lockstep//dav_bench//EN", "CALSCALE:GREGORIAN"]
    needs_tz = kind < 0.90 and kind >= 0.10 and not (0.70 <= kind < 0.78)
    if needs_tz:
        lines += VTIMEZONE.splitlines()
    event = ["BEGIN:VEVENT", f"UID:{uid}", f"DTSTAMP:{_utc(stamp)}", f"CREATED:{_utc(stamp)}",
             f"LAST-MODIFIED:{_utc(stamp)}", f"SEQUENCE:{sequence}"]
    hour = rng.choice([7, 8, 9, 10, 11, 13, 14, 15, 16])
    start = datetime(day.year, day.month, day.day, hour, rng.choice([0, 15, 30, 45]))
    length = timedelta(minutes=rng.choice([30, 45, 60, 90, 120, 180]))
    if kind < 0.10:  # all-day, 1-3 days
        event += [f"DTSTART;VALUE=DATE:{day:%Y%m%d}",
                  f"DTEND;VALUE=DATE:{day + timedelta(days=rng.randint(1, 3)):%Y%m%d}",
                  "TRANSP:TRANSPARENT"]
    elif 0.70 <= kind < 0.78:  # UTC times (as some clients write them)
        event += [f"DTSTART:{_utc(start)}", f"DTEND:{_utc(start + length)}"]
    else:  # local time with TZID
        event += [f"DTSTART;TZID={TZID}:{_local(start)}", f"DTEND;TZID={TZID}:{_local(start + length)}"]
    if 0.78 <= kind < 0.90:  # recurring
        flavour = rng.random()
        if flavour < 0.4:
            event.append(f"RRULE:FREQ=WEEKLY;COUNT={rng.randint(4, 26)}")
        elif flavour < 0.7:
            until = start + timedelta(days=rng.randint(30, 200))
            event.append(f"RRULE:FREQ=DAILY;INTERVAL={rng.randint(1, 3)};UNTIL={_utc(until)}")
        elif flavour < 0.9:
            event.append("RRULE:FREQ=MONTHLY;BYMONTHDAY=" + str(min(day.day, 28)) + ";COUNT=12")
        else:  # open-ended (matches every later time range)
            event.append("RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR")
        if rng.random() < 0.3:
            skip = start + timedelta(days=7)
            event.append(f"EXDATE;TZID={TZID}:{_local(skip)}")
    summary = rng.choice(SUMMARIES) + summary_suffix
    description = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
    event += [f"SUMMARY:{summary} #{index}",
              f"DESCRIPTION:{description}",
              f"LOCATION:{rng.randint(10, 9999)} {rng.choice(STREETS)}\\, {rng.choice(CITIES).replace(',', chr(92) + ',')}",
              f"CATEGORIES:{rng.choice(CATEGORIES)}",
              "STATUS:CONFIRMED"]
    if rng.random() < 0.4:
        event += ["ORGANIZER;CN=Dispatch:mailto:dispatch@example.com",
                  f"ATTENDEE;CN=Tech {index % 17};ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED:"
                  f"mailto:tech{index % 17}@example.com",
                  f"ATTENDEE;CN=Customer {index};ROLE=OPT-PARTICIPANT;PARTSTAT=NEEDS-ACTION:"
                  f"mailto:customer{index}@example.org"]
    if rng.random() < 0.5:
        event += ["BEGIN:VALARM", "ACTION:DISPLAY", "DESCRIPTION:Reminder",
                  f"TRIGGER:-PT{rng.choice([10, 15, 30, 60])}M", "END:VALARM"]
    event.append("END:VEVENT")
    lines += event + ["END:VCALENDAR"]
    return uid, "\r\n".join(fold(line) for line in lines) + "\r\n"


def make_events(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [make_event(rng, i) for i in range(count)]


# --------------------------------------------------------------------------------------
# Client: the same code for every server.
# --------------------------------------------------------------------------------------
PROPFIND_BODY = (
    '<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
    "<D:getetag/><D:getcontenttype/><D:resourcetype/></D:prop></D:propfind>"
)
MKCALENDAR_BODY = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
    "<D:set><D:prop><D:displayname>Bench</D:displayname>"
    '<C:supported-calendar-component-set><C:comp name="VEVENT"/>'
    "</C:supported-calendar-component-set></D:prop></D:set></C:mkcalendar>"
)


def query_body(start: datetime, end: datetime) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        "<D:prop><D:getetag/><C:calendar-data/></D:prop>"
        '<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT">'
        f'<C:time-range start="{_utc(start)}" end="{_utc(end)}"/>'
        "</C:comp-filter></C:comp-filter></C:filter></C:calendar-query>"
    )


def merged_calendar(events: list[tuple[str, str]]) -> str:
    """One VCALENDAR holding every VEVENT of ``events`` (plus the VTIMEZONE once)."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Lockstep//dav_bench//EN", "CALSCALE:GREGORIAN"]
    lines += VTIMEZONE.splitlines()
    for _uid, text in events:
        body = text.split("BEGIN:VEVENT", 1)[1].rsplit("END:VEVENT", 1)[0]
        lines.append("BEGIN:VEVENT" + body + "END:VEVENT")
    return "\r\n".join(lines + ["END:VCALENDAR"]) + "\r\n"


def etags_of(body: bytes) -> list[tuple[str, str]]:
    """(href, etag) of every item in a PROPFIND reply."""
    found = []
    for response in ET.fromstring(body).findall(f"{{{DAV}}}response"):
        href = response.findtext(f"{{{DAV}}}href") or ""
        etag = response.findtext(f".//{{{DAV}}}getetag")
        if etag and not href.endswith("/"):
            found.append((href, etag))
    return found


def count_responses(body: bytes) -> int:
    return len(ET.fromstring(body).findall(f"{{{DAV}}}response"))


def sync_token_of(body: bytes) -> str:
    token = ET.fromstring(body).find(f"{{{DAV}}}sync-token")
    if token is None or not token.text:
        raise AssertionError("sync-collection response without a sync-token")
    return token.text


class Client:
    def __init__(self, calendar_url: str, deadline: float) -> None:
        self.calendar_url = calendar_url
        self.deadline = deadline
        self.session = requests.Session()
        self.session.auth = (USER, PASSWORD)

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, url: str, body: str | bytes | None = None,
                headers: dict[str, str] | None = None, expect: tuple[int, ...] = (200,),
                timeout: float = 120.0) -> tuple[requests.Response, float]:
        """One request, fully read; returns (response, seconds)."""
        if time.monotonic() > self.deadline:
            raise BenchTimeout("--deadline reached")
        data = body.encode() if isinstance(body, str) else body
        started = time.perf_counter()
        response = self.session.request(method, url, data=data, headers=headers, timeout=timeout)
        _ = response.content
        elapsed = time.perf_counter() - started
        if response.status_code not in expect:
            raise AssertionError(
                f"{method} {url} -> {response.status_code} (expected {expect}): {response.text[:500]}"
            )
        return response, elapsed

    def item_url(self, href: str) -> str:
        return self.calendar_url + href


# --------------------------------------------------------------------------------------
# One server under test, and what the run learned about it.
# --------------------------------------------------------------------------------------
@dataclass
class OpResult:
    samples_ms: list[float] = field(default_factory=list)
    items: int | None = None  # responses counted in a checked reply

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass
class Target:
    key: str  # "stock", "sqlite", "postgresql"
    name: str
    client: Client
    pid: int
    load_seconds: float = 0.0
    load_puts: int = 0  # events loaded by individual PUTs
    load_first_ms: float = 0.0  # median latency of the first --stock-tail PUTs of the load
    load_last_ms: float = 0.0  # ... and of the last --stock-tail (collection almost full)
    import_seconds: float = 0.0  # whole-collection PUT of the first `imported` events
    imported: int = 0
    ops: dict[str, OpResult] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)
    hrefs: list[str] = field(default_factory=list)
    uids: dict[str, str] = field(default_factory=dict)


OPERATIONS = [
    ("propfind_depth1", "PROPFIND Depth:1 (getetag, getcontenttype, resourcetype)"),
    ("multiget_100", "calendar-multiget REPORT, 100 items"),
    ("query_week", "calendar-query, one-week time-range"),
    ("sync_initial", "sync-collection, initial (empty token)"),
    ("sync_incremental", "sync-collection, incremental after 10 changes"),
    ("put_new", "PUT new event (If-None-Match: *)"),
    ("put_update", "PUT update (If-Match)"),
]

RunOnce = Callable[[int], tuple[requests.Response, float]]


def log(who: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {who}: {message}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, events: list[tuple[str, str]]) -> None:
        self.args = args
        self.events = events

    # -- setup and load, one server at a time ------------------------------------------
    def prepare(self, target: Target, import_first: int = 0) -> None:
        client = target.client
        # First authenticated requests: Lockstep verifies argon2 once and caches the
        # login, stock Radicale reads its htpasswd; both create the principal home.
        for _ in range(3):
            client.request("PROPFIND", client.calendar_url.rsplit("/", 2)[0] + "/",
                           PROPFIND_BODY, {**XML_HEADERS, "Depth": "0"}, expect=(207,))
        client.request("MKCALENDAR", client.calendar_url, MKCALENDAR_BODY, XML_HEADERS, expect=(201,))
        with py_spy(target, "load", self.args):
            self._load(target, import_first)

    def _load(self, target: Target, import_first: int) -> None:
        """PUT every event (If-None-Match: *), timed. With ``import_first`` the first that
        many events go in first as ONE whole-collection PUT (Radicale's import), so that
        stock Radicale's O(collection)-per-PUT load fits the time budget."""
        client, total = target.client, len(self.events)
        latencies: list[float] = []
        started = time.perf_counter()
        if import_first:
            _, seconds = client.request("PUT", client.calendar_url, merged_calendar(self.events[:import_first]),
                                        ICS_HEADERS, expect=(201,), timeout=900.0)
            target.import_seconds, target.imported = seconds, import_first
            response, _ = client.request("PROPFIND", client.calendar_url, PROPFIND_BODY,
                                         {**XML_HEADERS, "Depth": "1"}, expect=(207,))
            names = [(unquote(href.rsplit("/", 1)[-1]), etag) for href, etag in etags_of(response.content)]
            by_uid = {name.removesuffix(".ics"): (name, etag) for name, etag in names}
            for uid, _text in self.events[:import_first]:
                href, etag = by_uid[uid]
                target.etags[href], target.uids[href] = etag, uid
                target.hrefs.append(href)
            log(target.key, f"imported {import_first} events in one PUT, {seconds:.1f}s; "
                f"PUT of the remaining {total - import_first} one by one")
        last_report = time.perf_counter()
        headers = {**ICS_HEADERS, "If-None-Match": "*"}
        for index, (uid, text) in enumerate(self.events[import_first:], import_first + 1):
            href = f"{uid}.ics"
            response, seconds = client.request("PUT", client.item_url(href), text, headers, expect=(201,))
            latencies.append(seconds * 1000)
            target.etags[href], target.uids[href] = response.headers["ETag"], uid
            target.hrefs.append(href)
            now = time.perf_counter()
            if index % self.args.progress_every == 0 or index == total or now - last_report > 15:
                last_report = now
                recent = latencies[-self.args.progress_every:]
                log(target.key, f"loaded {index}/{total} events, {now - started:.1f}s, "
                    f"recent PUT median {statistics.median(recent):.1f} ms")
        target.load_seconds = time.perf_counter() - started
        target.load_puts = len(latencies)
        tail = min(len(latencies), self.args.stock_tail)
        target.load_first_ms = statistics.median(latencies[:tail])
        target.load_last_ms = statistics.median(latencies[-tail:])

    # -- the operations, as closures over one target's own state -------------------------
    def operations(self, target: Target) -> dict[str, tuple[RunOnce, Callable[[bytes], int] | None]]:
        """Every target gets identically seeded generators, so each sees the same requests."""
        args, client = self.args, target.client
        calendar = client.calendar_url
        base_path = urlparse(calendar).path
        rng_multi = random.Random(args.seed + 2)
        rng_sync = random.Random(args.seed + 3)
        rng_update = random.Random(args.seed + 4)
        rng_new = random.Random(args.seed + 1)
        week0 = datetime(ANCHOR.year, ANCHOR.month, ANCHOR.day, tzinfo=timezone.utc)
        state = {"token": None, "new": 0}
        depth1 = {**XML_HEADERS, "Depth": "1"}

        def propfind(i: int) -> tuple[requests.Response, float]:
            return client.request("PROPFIND", calendar, PROPFIND_BODY, depth1, expect=(207,))

        def multiget(i: int) -> tuple[requests.Response, float]:
            hrefs = [base_path + h for h in rng_multi.sample(target.hrefs, 100)]
            return client.request("REPORT", calendar, multiget_body(hrefs), depth1, expect=(207,))

        def query(i: int) -> tuple[requests.Response, float]:
            start = week0 + timedelta(weeks=(i % 8) - 4)
            return client.request("REPORT", calendar, query_body(start, start + timedelta(days=7)),
                                  depth1, expect=(207,))

        def sync_initial(i: int) -> tuple[requests.Response, float]:
            return client.request("REPORT", calendar, sync_collection_body(""), XML_HEADERS, expect=(207,))

        def sync_incremental(i: int) -> tuple[requests.Response, float]:
            if state["token"] is None:
                state["token"] = sync_token_of(sync_initial(i)[0].content)
            for href in rng_sync.sample(target.hrefs, 10):  # untimed: the 10 changes
                self._update(target, href, rng_sync)
            response, seconds = client.request("REPORT", calendar, sync_collection_body(state["token"]),
                                               XML_HEADERS, expect=(207,))
            state["token"] = sync_token_of(response.content)
            return response, seconds

        def put_new(i: int) -> tuple[requests.Response, float]:
            state["new"] += 1
            uid, text = make_event(rng_new, 10_000_000 + state["new"])
            href = f"{uid}.ics"
            response, seconds = client.request("PUT", client.item_url(href), text,
                                               {**ICS_HEADERS, "If-None-Match": "*"}, expect=(201,))
            target.etags[href], target.uids[href] = response.headers["ETag"], uid
            return response, seconds

        def put_update(i: int) -> tuple[requests.Response, float]:
            return self._update(target, rng_update.choice(target.hrefs), rng_update)

        return {
            "propfind_depth1": (propfind, count_responses),
            "multiget_100": (multiget, count_responses),
            "query_week": (query, count_responses),
            "sync_initial": (sync_initial, count_responses),
            "sync_incremental": (sync_incremental, count_responses),
            "put_new": (put_new, None),
            "put_update": (put_update, None),
        }

    def _update(self, target: Target, href: str, rng: random.Random) -> tuple[requests.Response, float]:
        _, text = make_event(rng, rng.randint(0, 10**6), uid=target.uids[href], sequence=1,
                             summary_suffix=" (rescheduled)")
        response, seconds = target.client.request(
            "PUT", target.client.item_url(href), text,
            {**ICS_HEADERS, "If-Match": target.etags[href]}, expect=(200, 201, 204))
        target.etags[href] = response.headers["ETag"]
        return response, seconds

    # -- measurement: round-robin over the servers, so background noise hits all alike ----
    def measure(self, targets: list[Target]) -> None:
        args = self.args
        ops = {t.key: self.operations(t) for t in targets}
        with contextlib.ExitStack() as spies:
            for target in targets:
                spies.enter_context(py_spy(target, "measure", args))
            for op, _label in OPERATIONS:
                if op == "query_week" and args.skip_query:
                    continue
                results = {t.key: t.ops.setdefault(op, OpResult()) for t in targets}
                started = started_timed = time.monotonic()
                budget = args.op_seconds * len(targets)
                for i in range(args.warmup + args.repeat):
                    warm = i < args.warmup
                    if warm and i > 0 and time.monotonic() - started > args.op_seconds:
                        continue  # one warm-up round is enough for the slow operations
                    order = targets if i % 2 == 0 else targets[::-1]
                    for target in order:
                        run_once, check = ops[target.key][op]
                        response, seconds = run_once(i)
                        if check is not None and (warm or i == args.warmup + args.repeat - 1):
                            results[target.key].items = check(response.content)
                        if not warm:
                            results[target.key].samples_ms.append(seconds * 1000)
                    if warm:
                        started_timed = time.monotonic()
                    elif (len(results[targets[0].key].samples_ms) >= args.min_repeat
                          and time.monotonic() - started_timed > budget):
                        break
                log("measure", f"{op}: " + "; ".join(
                    f"{t.key} median {results[t.key].median:.1f} ms p95 {results[t.key].p95:.1f} ms"
                    for t in targets) + f" (n={len(results[targets[0].key].samples_ms)})")


# --------------------------------------------------------------------------------------
# Servers, profiling, cleanup.
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def py_spy(target: Target, phase: str, args: argparse.Namespace) -> Iterator[None]:
    """With --py-spy: sample the server with py-spy while the block runs (collapsed stacks)."""
    exe = shutil.which("py-spy") if args.py_spy else None
    if args.py_spy and exe is None:
        log(target.key, "py-spy not on PATH: no profile")
    if exe is None:
        yield
        return
    out = args.profile_dir / f"py-spy-{target.key}-{phase}.txt"
    proc = subprocess.Popen([exe, "record", "--pid", str(target.pid), "--format", "raw", "--rate", "100",
                             "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        log(target.key, f"py-spy profile of the {phase} phase: {out}")


def start_stock(stack: contextlib.ExitStack, bench: Bench, work: Path, deadline: float) -> Target:
    stock = stack.enter_context(start_stock_radicale(work / "stock", {USER: PASSWORD}))
    log("stock", f"Radicale 3.9 (multifilesystem, htpasswd plain) on {stock.url}")
    client = Client(f"{stock.url}{USER}/{CALENDAR}/", deadline)
    stack.callback(client.close)
    target = Target("stock", "stock Radicale 3.9", client, stock.process.pid)
    import_first = 0 if bench.args.stock_load == "put" else len(bench.events) - bench.args.stock_tail
    bench.prepare(target, import_first)
    return target


def start_lockstep(stack: contextlib.ExitStack, bench: Bench, work: Path, backend: str,
                   deadline: float) -> Target:
    server = stack.enter_context(running_server(work / f"lockstep-{backend}", backend, horizon_past_days=None))
    server.add_tech(USER, PASSWORD)
    log(backend, f"lockstep serve ({backend}) on {server.url}")
    assert server.process is not None
    client = Client(f"{server.dav_url}{USER}/{CALENDAR}/", deadline)
    stack.callback(client.close)
    target = Target(backend, f"Lockstep {backend}", client, server.process.pid)
    bench.prepare(target)
    if backend == "postgresql" and bench.args.pg_analyze:
        analyze_schema(server.database_url)
        log(backend, "ANALYZE done on the bench schema (--pg-analyze)")
    return target


def analyze_schema(database_url: str, *, vacuum: bool = False) -> None:
    """ANALYZE (or VACUUM ANALYZE) every table of the bench schema, as autovacuum would in time
    (the test cluster here runs with autovacuum off, so without this the planner has no
    statistics, and an index-only scan visits the table for every row: no visibility map)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_url, isolation_level="AUTOCOMMIT")  # VACUUM: no transaction
    try:
        with engine.connect() as connection:
            tables = connection.execute(sqlalchemy.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars().all()
            for table in tables:
                connection.execute(sqlalchemy.text(f'{"VACUUM ANALYZE" if vacuum else "ANALYZE"} "{table}"'))
    finally:
        engine.dispose()


def git_describe() -> str:
    """The commit measured, and whether server/ differs from it (best effort)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--short", "--untracked-files=no", "--", "server"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head or 'unknown'}" + (" + uncommitted changes in server/" if dirty else ", server/ clean")


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------
def markdown(targets: list[Target], args: argparse.Namespace) -> str:
    stock, others = targets[0], targets[1:]
    head = ["operation", "stock median", "stock p95"]
    for t in others:
        head += [f"{t.key} median", f"{t.key} p95", f"{t.key}/stock median (p95)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op, label in OPERATIONS:
        if op not in stock.ops:
            continue
        s = stock.ops[op]
        row = [f"{label} (n={len(s.samples_ms)})", f"{s.median:.1f}", f"{s.p95:.1f}"]
        for t in others:
            o = t.ops[op]
            row += [f"{o.median:.1f}", f"{o.p95:.1f}", f"**{o.median / s.median:.2f}** ({o.p95 / s.p95:.2f})"]
        lines.append("| " + " | ".join(row) + " |")
    k = args.stock_tail
    full = stock.imported == 0
    row = [f"bulk load: {args.events} PUTs one by one, total s",
           f"{stock.load_seconds:.1f}" if full else
           f"n/a: {stock.imported} imported in 1 PUT ({stock.import_seconds:.1f} s) + {stock.load_puts} PUTs "
           f"({stock.load_seconds - stock.import_seconds:.1f} s)", ""]
    for t in others:
        row += [f"{t.load_seconds:.1f}", "", f"**{t.load_seconds / stock.load_seconds:.2f}**" if full else "n/a"]
    lines.append("| " + " | ".join(row) + " |")
    if full:
        row = [f"bulk load: median of the first {k} PUTs (near-empty calendar)", f"{stock.load_first_ms:.1f}", ""]
        for t in others:
            row += [f"{t.load_first_ms:.1f}", "", f"{t.load_first_ms / stock.load_first_ms:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    row = [f"bulk load: median of the last {k} PUTs (calendar ~{args.events - k // 2} items)",
           f"{stock.load_last_ms:.1f}", ""]
    for t in others:
        row += [f"{t.load_last_ms:.1f}", "", f"**{t.load_last_ms / stock.load_last_ms:.2f}**"]
    lines.append("| " + " | ".join(row) + " |")
    counts = [f"{op} " + "/".join(str(t.ops[op].items) for t in targets)
              for op, _ in OPERATIONS if op in stock.ops and stock.ops[op].items is not None]
    return ("\n".join(lines) + "\n\nLatencies in ms; ratio = Lockstep / stock, lower is better.\n"
            f"Responses per reply ({' / '.join(t.key for t in targets)}): " + "; ".join(counts) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events loaded into each calendar")
    parser.add_argument("--repeat", type=int, default=30, help="timed repetitions per operation (at most)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--min-repeat", type=int, default=5,
                        help="an operation may stop early, after its time budget, once it has this many")
    parser.add_argument("--op-seconds", type=float, default=15.0,
                        help="soft time budget per operation and server")
    parser.add_argument("--backends", default="sqlite,postgresql",
                        help=f"comma-separated Lockstep backends (postgresql needs ${PG_ENV})")
    parser.add_argument("--stock-load", choices=("mixed", "put"), default="mixed",
                        help="put: load stock Radicale with one PUT per event like Lockstep (its PUT of a "
                             "new item is O(collection size): ~15 min for 5000 events here); mixed (default): "
                             "import all but the last --stock-tail events in one whole-collection PUT, "
                             "then PUT the rest one by one")
    parser.add_argument("--stock-tail", type=int, default=100,
                        help="PUTs whose latency is compared at the start / end of each load")
    parser.add_argument("--pg-analyze", action="store_true",
                        help="ANALYZE the PostgreSQL schema after loading (as autovacuum would do)")
    parser.add_argument("--skip-query", action="store_true", help="skip the calendar-query")
    parser.add_argument("--seed", type=int, default=20260105)
    parser.add_argument("--progress-every", type=int, default=500)
    parser.add_argument("--deadline", type=float, default=1200.0,
                        help="abort (stopping every server) after this many seconds")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    parser.add_argument("--py-spy", action="store_true",
                        help="sample every server with py-spy (on PATH) while loading and measuring")
    parser.add_argument("--profile-dir", type=Path, default=Path("."), help="where --py-spy writes")
    parser.add_argument("--workdir", type=Path, help="keep server data here instead of a temp dir")
    args = parser.parse_args(argv)
    args.min_repeat = max(1, min(args.min_repeat, args.repeat))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}")
        if backend == "postgresql" and not os.environ.get(PG_ENV):
            parser.error(f"backend postgresql needs {PG_ENV}, e.g. postgresql://postgres@127.0.0.1:5432/test")
    if args.events < max(200, args.stock_tail + 100):
        parser.error("--events must be at least 200 and exceed --stock-tail by 100")
    if args.py_spy:
        args.profile_dir.mkdir(parents=True, exist_ok=True)

    # Explicit handlers: a shell starting us in the background may have left SIGINT ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    began = time.monotonic()
    deadline = began + args.deadline
    print(f"# dav_bench: {args.events} events, repeat {args.repeat} (+{args.warmup} warm-up), backends "
          f"{','.join(backends)}; nproc {os.cpu_count()}, Python {platform.python_version()}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    print(f"# Lockstep tree: {git_describe()}", flush=True)
    events = make_events(args.events, args.seed)
    print(f"# generated {len(events)} events, {sum(len(t) for _, t in events) / len(events):.0f} bytes "
          f"on average", flush=True)
    bench = Bench(args, events)
    targets: list[Target] = []
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = args.workdir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dav-bench-")))
        try:
            targets.append(start_stock(stack, bench, work, deadline))
            for backend in backends:
                targets.append(start_lockstep(stack, bench, work, backend, deadline))
            log("measure", "all servers loaded; measuring round-robin: "
                + ", ".join(f"{t.key} pid {t.pid}" for t in targets))
            bench.measure(targets)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every server", file=sys.stderr, flush=True)
            return 130
        except BenchTimeout:
            print(f"\n--deadline {args.deadline:.0f}s reached: stopping every server", file=sys.stderr, flush=True)
            return 3
    total = time.monotonic() - began
    if len(targets) > 1:
        print("\n" + markdown(targets, args), flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "nproc": os.cpu_count(), "python": platform.python_version(), "total_seconds": total,
            "servers": [{"key": t.key, "name": t.name, "load_seconds": t.load_seconds, "load_puts": t.load_puts,
                         "load_first_ms": t.load_first_ms, "load_last_ms": t.load_last_ms,
                         "import_seconds": t.import_seconds, "imported": t.imported,
                         "ops": {k: {"samples_ms": v.samples_ms, "items": v.items} for k, v in t.ops.items()}}
                        for t in targets],
        }, indent=1))
    print(f"total runtime {total:.0f} s (load average now "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
