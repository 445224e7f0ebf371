#!/usr/bin/env python3
"""CalDAV latency benchmark: Lockstep (SQLite / PostgreSQL) against stock Radicale 3.9.

One run starts, one at a time, stock Radicale 3.9 (multifilesystem storage,
plain htpasswd) and ``lockstep serve`` on each requested backend, all on
127.0.0.1; loads the same generated calendar into each through individual
PUTs, then times the same CalDAV requests against each with the same client
code (one ``requests.Session``, keep-alive, Basic auth) and prints a Markdown
table of median / p95 latencies and Lockstep/stock ratios (lower is better).

    cd /work/main
    LOCKSTEP_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/dav_bench.py --events 5000 --backends sqlite,postgresql

Everything it starts is stopped on exit, on errors and on Ctrl-C / SIGTERM;
the whole run is bounded by ``--deadline`` seconds. With ``--py-spy`` (and
``py-spy`` on PATH) each Lockstep server is sampled during the measurement
phase and a collapsed-stack file is written next to the JSON results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
from urllib.parse import unquote

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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
        event += [f"ORGANIZER;CN=Dispatch:mailto:dispatch@example.com",
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


def multiget_body(hrefs: list[str]) -> str:
    refs = "".join(f"<D:href>{h}</D:href>" for h in hrefs)
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        f"<D:prop><D:getetag/><C:calendar-data/></D:prop>{refs}</C:calendar-multiget>"
    )


def sync_body(token: str) -> str:
    token_xml = f"<D:sync-token>{token}</D:sync-token>" if token else "<D:sync-token/>"
    return (
        '<?xml version="1.0" encoding="utf-8"?><D:sync-collection xmlns:D="DAV:">'
        f"{token_xml}<D:sync-level>1</D:sync-level><D:prop><D:getetag/></D:prop>"
        "</D:sync-collection>"
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
                headers: dict[str, str] | None = None, expect: tuple[int, ...] = (200,)
                ) -> tuple[requests.Response, float]:
        """One request, fully read; returns (response, seconds)."""
        if time.monotonic() > self.deadline:
            raise BenchTimeout("--deadline reached")
        data = body.encode() if isinstance(body, str) else body
        started = time.perf_counter()
        response = self.session.request(method, url, data=data, headers=headers, timeout=120)
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
# The run on one server.
# --------------------------------------------------------------------------------------
@dataclass
class OpResult:
    samples_ms: list[float] = field(default_factory=list)
    items: int | None = None  # responses counted in the last checked reply

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]


@dataclass
class ServerResult:
    name: str
    load_seconds: float = 0.0
    load_puts: int = 0  # events loaded by individual PUTs
    load_first_ms: float = 0.0  # median latency of the first --stock-tail PUTs of the load
    load_last_ms: float = 0.0  # ... and of the last --stock-tail (collection almost full)
    import_seconds: float = 0.0  # whole-collection PUT of the first `imported` events
    imported: int = 0
    ops: dict[str, OpResult] = field(default_factory=dict)


OPERATIONS = [
    ("propfind_depth1", "PROPFIND Depth:1 (getetag, getcontenttype, resourcetype)"),
    ("multiget_100", "calendar-multiget REPORT, 100 items"),
    ("query_week", "calendar-query, one-week time-range"),
    ("sync_initial", "sync-collection, initial (empty token)"),
    ("sync_incremental", "sync-collection, incremental after 10 changes"),
    ("put_new", "PUT new event (If-None-Match: *)"),
    ("put_update", "PUT update (If-Match)"),
]


class Bench:
    def __init__(self, args: argparse.Namespace, events: list[tuple[str, str]], deadline: float) -> None:
        self.args = args
        self.events = events
        self.deadline = deadline

    def log(self, server: str, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {server}: {message}", flush=True)

    def run(self, name: str, calendar_url: str, on_measure: Callable[[], contextlib.AbstractContextManager[None]],
            import_first: int = 0) -> ServerResult:
        result = ServerResult(name)
        client = Client(calendar_url, self.deadline)
        try:
            self._setup(name, client)
            self._load(name, client, result, import_first)
            with on_measure():
                self._measure(name, client, result)
        finally:
            client.close()
        return result

    def _setup(self, name: str, client: Client) -> None:
        # First authenticated request: Lockstep verifies argon2 once and caches the login,
        # stock Radicale reads its htpasswd; a few more warm both up.
        for _ in range(3):
            client.request("PROPFIND", client.calendar_url.rsplit("/", 2)[0] + "/",
                           PROPFIND_BODY, {**XML_HEADERS, "Depth": "0"}, expect=(207,))
        client.request("MKCALENDAR", client.calendar_url, MKCALENDAR_BODY, XML_HEADERS, expect=(201,))

    def _load(self, name: str, client: Client, result: ServerResult, import_first: int = 0) -> None:
        """PUT every event (If-None-Match: *), timed; with ``import_first`` the first that
        many events go in first as ONE whole-collection PUT (Radicale's import), so that
        stock Radicale's O(n)-per-PUT load stays within the time budget."""
        total = len(self.events)
        self.etags: dict[str, str] = {}
        self.hrefs: list[str] = []
        self.texts: dict[str, str] = {}
        latencies: list[float] = []
        started = time.perf_counter()
        if import_first:
            _, seconds = client.request("PUT", client.calendar_url, merged_calendar(self.events[:import_first]),
                                        ICS_HEADERS, expect=(201,))
            result.import_seconds = seconds
            result.imported = import_first
            response, _ = client.request("PROPFIND", client.calendar_url, PROPFIND_BODY,
                                         {**XML_HEADERS, "Depth": "1"}, expect=(207,))
            names = [(unquote(href.rsplit("/", 1)[-1]), etag) for href, etag in etags_of(response.content)]
            hrefs_by_uid = {name.removesuffix(".ics"): (name, etag) for name, etag in names}
            for uid, _text in self.events[:import_first]:
                href, etag = hrefs_by_uid[uid]
                self.etags[href] = etag
                self.hrefs.append(href)
                self.texts[href] = uid
            self.log(name, f"imported {import_first} events in one PUT, {seconds:.1f}s; "
                     f"PUT of the remaining {total - import_first} one by one")
        last_report = time.perf_counter()
        headers = {**ICS_HEADERS, "If-None-Match": "*"}
        for index, (uid, text) in enumerate(self.events[import_first:], import_first + 1):
            href = f"{uid}.ics"
            response, seconds = client.request("PUT", client.item_url(href), text, headers, expect=(201,))
            latencies.append(seconds * 1000)
            self.etags[href] = response.headers["ETag"]
            self.hrefs.append(href)
            self.texts[href] = uid
            now = time.perf_counter()
            if index % self.args.progress_every == 0 or index == total or now - last_report > 15:
                last_report = now
                recent = latencies[-self.args.progress_every:]
                self.log(name, f"loaded {index}/{total} events, {now - started:.1f}s, "
                         f"recent PUT median {statistics.median(recent):.1f} ms")
        result.load_seconds = time.perf_counter() - started
        result.load_puts = len(latencies)
        tail = min(len(latencies), self.args.stock_tail)
        result.load_first_ms = statistics.median(latencies[:tail])
        result.load_last_ms = statistics.median(latencies[-tail:])

    def _measure(self, name: str, client: Client, result: ServerResult) -> None:
        args = self.args
        rng_new = random.Random(args.seed + 1)
        calendar = client.calendar_url
        new_counter = iter(range(10**9))

        def timed(op: str, run_once: Callable[[int, bool], tuple[requests.Response | None, float]],
                  check: Callable[[bytes], int] | None = None) -> None:
            res = OpResult()
            op_started = time.monotonic()
            for i in range(args.warmup + args.repeat):
                warm = i < args.warmup
                response, seconds = run_once(i, warm)
                if check is not None and response is not None and (warm or i == args.warmup + args.repeat - 1):
                    res.items = check(response.content)
                if not warm:
                    res.samples_ms.append(seconds * 1000)
                    if (len(res.samples_ms) >= args.min_repeat
                            and time.monotonic() - op_started > args.op_seconds):
                        break
            result.ops[op] = res
            self.log(name, f"{op}: n={len(res.samples_ms)} median {res.median:.2f} ms, "
                     f"p95 {res.p95:.2f} ms" + (f", {res.items} responses" if res.items is not None else ""))

        # Read-only operations first, on exactly the loaded calendar.
        timed("propfind_depth1",
              lambda i, w: client.request("PROPFIND", calendar, PROPFIND_BODY,
                                          {**XML_HEADERS, "Depth": "1"}, expect=(207,)),
              count_responses)

        rng_multi = random.Random(args.seed + 2)
        base_path = requests.utils.urlparse(calendar).path
        timed("multiget_100",
              lambda i, w: client.request(
                  "REPORT", calendar,
                  multiget_body([base_path + h for h in rng_multi.sample(self.hrefs, 100)]),
                  {**XML_HEADERS, "Depth": "1"}, expect=(207,)),
              count_responses)

        week0 = datetime(ANCHOR.year, ANCHOR.month, ANCHOR.day, tzinfo=timezone.utc)

        def query(i: int, warm: bool) -> tuple[requests.Response, float]:
            start = week0 + timedelta(weeks=(i % 8) - 4)
            return client.request("REPORT", calendar, query_body(start, start + timedelta(days=7)),
                                  {**XML_HEADERS, "Depth": "1"}, expect=(207,))

        if not args.skip_query:
            timed("query_week", query, count_responses)

        timed("sync_initial",
              lambda i, w: client.request("REPORT", calendar, sync_body(""), XML_HEADERS, expect=(207,)),
              count_responses)

        # Incremental sync: 10 untimed If-Match updates, then the timed sync from the old token.
        rng_sync = random.Random(args.seed + 3)
        state = {"token": sync_token_of(
            client.request("REPORT", calendar, sync_body(""), XML_HEADERS, expect=(207,))[0].content)}

        def incremental(i: int, warm: bool) -> tuple[requests.Response, float]:
            for href in rng_sync.sample(self.hrefs, 10):
                self._update(client, href, rng_sync)
            response, seconds = client.request("REPORT", calendar, sync_body(state["token"]),
                                               XML_HEADERS, expect=(207,))
            state["token"] = sync_token_of(response.content)
            return response, seconds

        timed("sync_incremental", incremental, count_responses)

        def put_new(i: int, warm: bool) -> tuple[requests.Response, float]:
            uid, text = make_event(rng_new, 10_000_000 + next(new_counter))
            href = f"{uid}.ics"
            response, seconds = client.request("PUT", client.item_url(href), text,
                                               {**ICS_HEADERS, "If-None-Match": "*"}, expect=(201,))
            self.etags[href] = response.headers["ETag"]
            return response, seconds

        timed("put_new", put_new)

        rng_update = random.Random(args.seed + 4)
        timed("put_update",
              lambda i, w: self._update(client, rng_update.choice(self.hrefs), rng_update))

    def _update(self, client: Client, href: str, rng: random.Random) -> tuple[requests.Response, float]:
        uid = self.texts[href]
        _, text = make_event(rng, rng.randint(0, 10**6), uid=uid, sequence=1,
                             summary_suffix=" (rescheduled)")
        response, seconds = client.request(
            "PUT", client.item_url(href), text, {**ICS_HEADERS, "If-Match": self.etags[href]},
            expect=(200, 201, 204))
        self.etags[href] = response.headers["ETag"]
        return response, seconds


# --------------------------------------------------------------------------------------
# Servers, profiling, cleanup.
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def py_spy(pid: int, out: Path, enabled: bool) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs (collapsed stacks into ``out``)."""
    exe = shutil.which("py-spy") if enabled else None
    if enabled and exe is None:
        print("py-spy not on PATH: no profile", flush=True)
    if exe is None:
        yield
        return
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
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
        print(f"py-spy profile: {out}", flush=True)


def run_stock(bench: Bench, work: Path) -> ServerResult:
    with start_stock_radicale(work / "stock", {USER: PASSWORD}) as stock:
        bench.log("stock", f"Radicale 3.9 (multifilesystem) on {stock.url}")
        import_first = 0 if bench.args.stock_load == "put" else len(bench.events) - bench.args.stock_tail
        result = bench.run("stock", f"{stock.url}{USER}/{CALENDAR}/", contextlib.nullcontext, import_first)
        result.name = "stock Radicale 3.9"
        return result


def run_lockstep(bench: Bench, work: Path, backend: str, out_dir: Path | None) -> ServerResult:
    with running_server(work / f"lockstep-{backend}", backend) as server:
        server.add_tech(USER, PASSWORD)
        bench.log(backend, f"lockstep serve ({backend}) on {server.url}")
        assert server.process is not None
        pid = server.process.pid
        profile = (out_dir or work) / f"py-spy-{backend}.txt"
        result = bench.run(backend, f"{server.dav_url}{USER}/{CALENDAR}/",
                           lambda: py_spy(pid, profile, bench.args.py_spy))
        result.name = f"Lockstep {backend}"
        return result


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------
def markdown(results: list[ServerResult], args: argparse.Namespace) -> str:
    stock = results[0]
    others = results[1:]
    head = ["operation", "stock median", "stock p95"]
    for r in others:
        short = r.name.replace("Lockstep ", "")
        head += [f"{short} median", f"{short} p95", f"{short}/stock median (p95)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op, label in OPERATIONS:
        if op not in stock.ops:
            continue
        s = stock.ops[op]
        n = len(s.samples_ms)
        row = [f"{label} (n={n})", f"{s.median:.1f}", f"{s.p95:.1f}"]
        for r in others:
            o = r.ops[op]
            row += [f"{o.median:.1f}", f"{o.p95:.1f}",
                    f"**{o.median / s.median:.2f}** ({o.p95 / s.p95:.2f})"]
        lines.append("| " + " | ".join(row) + " |")
    k = args.stock_tail
    full = stock.imported == 0
    row = [f"bulk load: {args.events} PUTs one by one, total s",
           f"{stock.load_seconds:.1f}" if full else
           f"n/a: {stock.imported} imported in 1 PUT ({stock.import_seconds:.1f} s) + {stock.load_puts} PUTs "
           f"({stock.load_seconds - stock.import_seconds:.1f} s)", ""]
    for r in others:
        row += [f"{r.load_seconds:.1f}", "", f"**{r.load_seconds / stock.load_seconds:.2f}**" if full else "n/a"]
    lines.append("| " + " | ".join(row) + " |")
    if full:
        row = [f"bulk load: median of the first {k} PUTs (near-empty calendar)", f"{stock.load_first_ms:.1f}", ""]
        for r in others:
            row += [f"{r.load_first_ms:.1f}", "", f"{r.load_first_ms / stock.load_first_ms:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    row = [f"bulk load: median of the last {k} PUTs (calendar ~{args.events - k // 2} items)",
           f"{stock.load_last_ms:.1f}", ""]
    for r in others:
        row += [f"{r.load_last_ms:.1f}", "", f"**{r.load_last_ms / stock.load_last_ms:.2f}**"]
    lines.append("| " + " | ".join(row) + " |")
    counts = ["responses per reply (stock / " + " / ".join(r.name for r in others) + "): "]
    for op, _label in OPERATIONS:
        if op in stock.ops and stock.ops[op].items is not None:
            counts.append(f"{op} " + "/".join(str(r.ops[op].items) for r in results))
    return "\n".join(lines) + "\n\nLatencies in ms; ratio = Lockstep / stock, lower is better.\n" + \
        counts[0] + "; ".join(counts[1:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events loaded into each calendar")
    parser.add_argument("--repeat", type=int, default=30, help="timed repetitions per operation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--min-repeat", type=int, default=10,
                        help="an operation stops after --op-seconds once it has this many samples")
    parser.add_argument("--op-seconds", type=float, default=20.0,
                        help="soft time budget per operation and server")
    parser.add_argument("--backends", default="sqlite,postgresql",
                        help=f"comma-separated Lockstep backends (postgresql needs ${PG_ENV})")
    parser.add_argument("--stock-load", choices=("mixed", "put"), default="mixed",
                        help="put: load stock Radicale with one PUT per event like Lockstep (its PUT is "
                             "O(collection size), ~20 min for 5000 events); mixed (default): import all "
                             "but the last --stock-tail events in one whole-collection PUT, then PUT the "
                             "rest one by one")
    parser.add_argument("--stock-tail", type=int, default=100,
                        help="PUTs whose latency is compared at the start / end of each load")
    parser.add_argument("--skip-stock", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-query", action="store_true", help="skip the calendar-query")
    parser.add_argument("--seed", type=int, default=20260105)
    parser.add_argument("--progress-every", type=int, default=500)
    parser.add_argument("--deadline", type=float, default=1200.0, help="abort the whole run after this many seconds")
    parser.add_argument("--json", type=Path, help="also write raw samples here")
    parser.add_argument("--py-spy", action="store_true",
                        help="sample each Lockstep server with py-spy during the measurements")
    parser.add_argument("--workdir", type=Path, help="keep server data here instead of a temp dir")
    args = parser.parse_args(argv)
    args.min_repeat = min(args.min_repeat, args.repeat)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}")
        if backend == "postgresql" and not os.environ.get(PG_ENV):
            parser.error(f"backend postgresql needs {PG_ENV}, e.g. postgresql://postgres@127.0.0.1:5432/test")
    if args.events < 200:
        parser.error("--events must be at least 200")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    began = time.monotonic()
    deadline = began + args.deadline
    print(f"# dav_bench: {args.events} events, repeat {args.repeat} (+{args.warmup} warm-up), "
          f"backends {backends}; nproc {os.cpu_count()}, Python {platform.python_version()}", flush=True)
    events = make_events(args.events, args.seed)
    print(f"# generated {len(events)} events, {sum(len(t) for _, t in events) / len(events):.0f} bytes "
          f"average", flush=True)
    bench = Bench(args, events, deadline)
    results: list[ServerResult] = []
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = args.workdir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dav-bench-")))
        try:
            if not args.skip_stock:
                results.append(run_stock(bench, work))
            for backend in backends:
                results.append(run_lockstep(bench, work, backend, args.json.parent if args.json else None))
        except KeyboardInterrupt:
            print("\ninterrupted: servers stopped", file=sys.stderr)
            return 130
        except BenchTimeout:
            print(f"\nstopped: --deadline {args.deadline:.0f}s reached; servers stopped", file=sys.stderr)
            return 3
    total = time.monotonic() - began
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "nproc": os.cpu_count(), "python": platform.python_version(), "total_seconds": total,
            "servers": [{"name": r.name, "load_seconds": r.load_seconds, "load_first_ms": r.load_first_ms,
                         "load_last_ms": r.load_last_ms, "load_puts": r.load_puts,
                         "import_seconds": r.import_seconds, "imported": r.imported,
                         "ops": {k: {"samples_ms": v.samples_ms, "items": v.items} for k, v in r.ops.items()}}
                        for r in results],
        }, indent=1))
    if not args.skip_stock and len(results) > 1:
        print()
        print(markdown(results, args))
    print(f"total runtime {total:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
