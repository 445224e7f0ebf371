#!/usr/bin/env python3
"""Load test: many techs, CalDAV clients syncing, booking clients and Google pushing, all at once.

For each ``--configs`` entry, one after the other in the same run:

* ``sqlite``: one ``lockstep serve`` (sync workers in-process) on SQLite;
* ``postgresql``: two ``lockstep serve --no-workers`` web nodes and ``--pg-workers``
  ``lockstep worker`` processes on one PostgreSQL schema ($LOCKSTEP_TEST_DATABASE_URL),
  clients spread over both nodes (no load balancer: client *i* talks to node *i* mod 2).

Each configuration gets ``--techs`` techs seeded through the service code the CLI
uses (``techs.add_tech``, then ``store.put_item`` in one ``Database.write`` per
tech): a ``bookings`` and a ``personal`` calendar of realistic events (bench/freebusy.py's
generator: recurring with EXDATE / overrides, all-day, VTIMEZONE, tentative...).
``--google-techs`` of them are connected to the Google emulator (server/sandbox/google.py)
through the real consent flow. Then, for ``--duration`` seconds:

* ``--dav-clients`` threads, one tech each (keep-alive ``requests.Session``, Basic auth):
  sync-collection REPORT on each of the tech's calendars with the last token, GET
  (a few changes) or calendar-multiget (more) of what changed, and now and then a PUT
  (new or update, If-None-Match / If-Match) or DELETE of one of its own events;
* ``--booking-clients`` threads with a ``bookings`` API token: GET /api/v1/availability
  for one tech over 14 days, then POST /api/v1/bookings of one of the first free slots
  (a 409 when another client or a CalDAV write took it first: an expected outcome);
* one provider thread creating, moving and deleting events in the emulator for the
  connected techs, so push notifications reach /hooks/google and syncs run;
* a sampler reading every server / worker process's RSS and CPU time from /proc.

Each client waits a random 0..2x ``--think`` seconds between loops (0: flat out).
Before the load, the bench waits (``--settle``) for the jobs the seeding and the
connections queued; the first ``--warmup`` seconds of load (first logins hash argon2,
first full syncs) are not measured.
Printed: progress every ``--progress`` seconds to stderr; Markdown tables to stdout
(per request kind: count, throughput, p50/p95/p99, errors = 5xx + connection errors,
other 4xx, expected 409/412; per process: RSS start/peak/end, CPU; jobs by state).
The load generator runs on the same machine as the servers and shares its cores.

    cd /work/main
    LOCKSTEP_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/load.py --duration 600 --configs sqlite,postgresql
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import random
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.dav_bench import git_describe  # noqa: E402
from bench.freebusy import SMALL_SHAPE, cpu_seconds, make_calendar, make_event, rfc3339  # noqa: E402
from server import techs as tech_admin  # noqa: E402
from server.dav import store  # noqa: E402
from server.dav.rights import BOOKINGS_CALENDAR  # noqa: E402
from server.db import Database  # noqa: E402
from server.models import Job  # noqa: E402
from server.sandbox.google import GoogleSandbox  # noqa: E402
from tests.support.dav import NS, multiget_body, multistatus, sync_collection_body, sync_token  # noqa: E402
from tests.support.google_env import connect_google, google_env  # noqa: E402
from tests.support.lockstep_server import PG_ENV, LockstepServer, postgres_schema  # noqa: E402
from tests.support.lockstep_worker import LockstepWorker  # noqa: E402
from tests.support.remote_accounts import GoogleAccount  # noqa: E402

UTC = timezone.utc
PASSWORD = "load-bench-password-1"
PERSONAL = "personal"
PERSONAL_PROPS = {"tag": "VCALENDAR", "D:displayname": "Personal",
                  "C:supported-calendar-component-set": "VEVENT", "ICAL:calendar-color": "#7a2ae2ff"}
TIMEZONES = ("America/Los_Angeles", "America/Denver", "America/Chicago", "America/New_York")
ICS = {"Content-Type": "text/calendar; charset=utf-8"}
XML = {"Content-Type": "application/xml; charset=utf-8", "Depth": "1"}
PROPFIND_CALENDARS = ('<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:resourcetype/>'
                      "</d:prop></d:propfind>")
KINDS = {  # key: label, in table order
    "dav_propfind": "DAV PROPFIND Depth 1 (discovery, once per client)",
    "dav_sync": "DAV REPORT sync-collection",
    "dav_multiget": "DAV REPORT calendar-multiget",
    "dav_get": "DAV GET",
    "dav_put": "DAV PUT",
    "dav_delete": "DAV DELETE",
    "api_availability": "API GET /availability",
    "api_bookings": "API POST /bookings",
    "hooks": "hooks POST /hooks/google (emulator push)",
}
EXPECTED = (409, 412)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Measurements.
# --------------------------------------------------------------------------------------
@dataclass
class KindStats:
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # ok, expected, 4xx, 5xx, conn


class Stats:
    """Every request's latency and outcome by kind; thread-safe."""

    def __init__(self) -> None:
        self.kinds: dict[str, KindStats] = defaultdict(KindStats)
        self.samples: dict[str, list[str]] = defaultdict(list)  # first few non-ok answers per kind
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.ended: float | None = None

    def record(self, kind: str, seconds: float, outcome: str, note: str = "") -> None:
        with self.lock:
            stats = self.kinds[kind]
            stats.outcomes[outcome] += 1
            if outcome != "conn":
                stats.latencies_ms.append(seconds * 1000)
            if outcome not in ("ok", "expected") and len(self.samples[kind]) < 5:
                self.samples[kind].append(note)

    def reset(self) -> None:
        """Forget the warm-up: measuring starts now."""
        with self.lock:
            self.kinds.clear()
            self.samples.clear()
            self.started = time.monotonic()

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {kind: sum(s.outcomes.values()) for kind, s in self.kinds.items()}

    def errors(self) -> int:
        with self.lock:
            return sum(s.outcomes["5xx"] + s.outcomes["conn"] for s in self.kinds.values())


def classify(status: int, ok: tuple[int, ...]) -> str:
    if status in ok:
        return "ok"
    if status in EXPECTED:
        return "expected"
    if status >= 500:
        return "5xx"
    if status >= 400:
        return "4xx"
    return "ok"


def percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


class Client:
    """One keep-alive session: every request timed, fully read and classified."""

    def __init__(self, stats: Stats, stop: threading.Event, auth: tuple[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.stats, self.stop = stats, stop
        self.session = requests.Session()
        self.session.auth = auth
        self.session.headers.update(headers or {})

    def call(self, kind: str, method: str, url: str, ok: tuple[int, ...] = (200,),
             **kwargs: Any) -> requests.Response | None:
        started = time.perf_counter()
        try:
            response = self.session.request(method, url, timeout=60, **kwargs)
            _ = response.content
        except requests.RequestException as exc:
            self.stats.record(kind, time.perf_counter() - started, "conn", f"{method} {url}: {exc!r}"[:300])
            return None
        outcome = classify(response.status_code, ok)
        self.stats.record(kind, time.perf_counter() - started, outcome,
                          f"{method} {url} -> {response.status_code}: {response.text[:200]!r}")
        return response

    def think(self, mean: float, rng: random.Random) -> None:
        if mean > 0:
            self.stop.wait(rng.uniform(0, 2 * mean))


# --------------------------------------------------------------------------------------
# Clients.
# --------------------------------------------------------------------------------------
@dataclass
class Calendar:
    url: str  # absolute URL of the collection
    path: str  # its href path (/dav/user/cal/)
    token: str = ""


def dav_client(base: str, user: str, stats: Stats, stop: threading.Event, seed: int, args: argparse.Namespace,
               today: Any) -> None:
    """A phone syncing one tech's calendars in a loop, writing now and then to its personal calendar."""
    rng = random.Random(seed)
    client = Client(stats, stop, auth=(user, PASSWORD))
    home = f"{base}/dav/{user}/"
    calendars: list[Calendar] = []
    response = client.call("dav_propfind", "PROPFIND", home, ok=(207,), data=PROPFIND_CALENDARS,
                           headers=XML)
    if response is None or response.status_code != 207:
        return
    for entry in multistatus(response.text):
        rtype = entry.props.get(f"{{{NS['d']}}}resourcetype")
        if rtype is not None and rtype.find("c:calendar", NS) is not None:
            calendars.append(Calendar(base + entry.href, entry.href))
    personal = next((c for c in calendars if c.path.rstrip("/").endswith("/" + PERSONAL)), None)
    own: dict[str, tuple[str, str, str]] = {}  # href -> (uid, text, etag) of events this client wrote
    serial = 0
    first = True
    while not stop.is_set():
        for calendar in calendars:
            if stop.is_set():
                break
            response = client.call("dav_sync", "REPORT", calendar.url, ok=(207,),
                                   data=sync_collection_body(calendar.token), headers=XML)
            if response is None or response.status_code != 207:
                if response is not None and response.status_code in (403, 409):  # token refused: start over
                    calendar.token = ""
                continue
            calendar.token = sync_token(response.text) or calendar.token
            changed = [e.href for e in multistatus(response.text) if " 200 " in e.status]
            if not changed:
                continue
            if first or len(changed) > 3:  # initial sync, or many changes: multiget in chunks
                for at in range(0, len(changed), 100):
                    client.call("dav_multiget", "REPORT", calendar.url, ok=(207,),
                                data=multiget_body(changed[at:at + 100]), headers=XML)
            else:
                for href in changed:
                    client.call("dav_get", "GET", base + href, ok=(200, 404))
        first = False
        if personal is not None and rng.random() < args.write_share and not stop.is_set():
            action = rng.random()
            if own and action < 0.15:  # delete one of ours
                href, (uid, text, etag) = rng.choice(list(own.items()))
                response = client.call("dav_delete", "DELETE", base + href, ok=(204, 200),
                                       headers={"If-Match": etag})
                if response is not None and response.status_code in (200, 204, 404, 412):
                    own.pop(href, None)
            elif own and action < 0.40:  # update one of ours
                href, (uid, text, etag) = rng.choice(list(own.items()))
                text = re.sub(r"^SUMMARY:", "SUMMARY:(updated) ", text, count=1, flags=re.M)
                response = client.call("dav_put", "PUT", base + href, ok=(204, 201, 200),
                                       data=text.encode(), headers={**ICS, "If-Match": etag})
                if response is not None and response.status_code in (200, 201, 204):
                    own[href] = (uid, text, response.headers.get("ETag", etag))
                elif response is not None and response.status_code == 412:
                    own.pop(href, None)
            else:  # a new event
                serial += 1
                uid, text = make_event(rng, serial, today, SMALL_SHAPE, f"{user}-c")
                href = f"{personal.path}{uid}.ics"
                response = client.call("dav_put", "PUT", base + href, ok=(201, 204),
                                       data=text.encode(), headers={**ICS, "If-None-Match": "*"})
                if response is not None and response.status_code in (201, 204):
                    own[href] = (uid, text, response.headers.get("ETag", ""))
        client.think(args.think, rng)
    client.session.close()


def booking_client(base: str, token: str, tech_names: list[str], stats: Stats, stop: threading.Event, seed: int,
                   args: argparse.Namespace) -> None:
    """A dispatcher app: look up a tech's free slots, book one of the first (409 when it lost a race)."""
    rng = random.Random(seed)
    client = Client(stats, stop, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    hot = tech_names[: max(1, len(tech_names) // 5)]  # a fifth of the techs get half the requests
    while not stop.is_set():
        tech = rng.choice(hot if rng.random() < 0.5 else tech_names)
        now = datetime.now(UTC)
        start = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
        params = {"tech": tech, "start": rfc3339(start), "end": rfc3339(start + timedelta(days=14)),
                  "duration": "60"}
        response = client.call("api_availability", "GET", f"{base}/api/v1/availability", params=params)
        slots = []
        if response is not None and response.status_code == 200:
            slots = response.json()["techs"].get(tech, {}).get("slots", [])
        if slots:
            slot = rng.choice(slots[:6])
            body = {"tech": tech, "start": slot["start"], "end": slot["end"],
                    "summary": f"Load test job {uuid.uuid4().hex[:8]}",
                    "description": "Booked by bench/load.py", "location": "1 Bench St, Portland, OR",
                    "customer": {"name": "Load Customer", "email": "customer@example.org", "phone": "+15035550100"}}
            client.call("api_bookings", "POST", f"{base}/api/v1/bookings", ok=(201,), json=body,
                        headers={"Idempotency-Key": uuid.uuid4().hex})
        client.think(args.think, rng)
    client.session.close()


def provider_thread(account: GoogleAccount, users: list[str], stats: Stats, stop: threading.Event, seed: int,
                    rate: float) -> None:
    """The techs' own Google Calendar app: creates, moves, deletes events at ``rate`` per second."""
    rng = random.Random(seed)
    mine: dict[str, list[str]] = {user: [] for user in users}
    while not stop.wait(1 / rate if rate > 0 else 3600):
        user = rng.choice(users)
        day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=rng.randint(1, 14))
        start = day + timedelta(hours=rng.randint(14, 23), minutes=rng.choice([0, 30]))
        end = start + timedelta(minutes=rng.choice([30, 60, 90]))
        action = rng.random()
        started = time.perf_counter()
        try:
            if mine[user] and action < 0.2:
                account.delete(user, mine[user].pop(rng.randrange(len(mine[user]))))
                what = "delete"
            elif mine[user] and action < 0.5:
                account.move(user, rng.choice(mine[user]), start, end)
                what = "move"
            else:
                mine[user].append(account.create(user, f"Personal {rng.randint(1, 999)}", start, end))
                what = "create"
            stats.record(f"provider_{what}", time.perf_counter() - started, "ok")
        except Exception as exc:  # noqa: BLE001 - an emulator refusal is a result, not a crash
            stats.record("provider_error", time.perf_counter() - started, "5xx", repr(exc)[:300])


def time_push_deliveries(google: GoogleSandbox, stats: Stats, active: threading.Event) -> None:
    """Time each push notification the emulator delivers (all attempts) while the load runs."""
    deliver = google.push._deliver

    def timed(note: Any) -> None:
        started = time.perf_counter()
        deliver(note)
        if not active.is_set():
            return
        seconds = time.perf_counter() - started
        if note.status is None:
            stats.record("hooks", seconds, "conn", str(note.error)[:300])
        else:
            stats.record("hooks", seconds, classify(note.status, (200,)),
                         f"{note.status} after {note.attempts} attempt(s)")
        if note.attempts > 1:  # a failed first attempt, retried by the emulator
            stats.record("hooks_retried", seconds, "ok")

    google.push._deliver = timed  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------
# Processes: memory and CPU.
# --------------------------------------------------------------------------------------
def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class ProcessWatch:
    name: str
    pid: int
    rss: list[float] = field(default_factory=list)
    cpu_start: float = 0.0
    cpu_end: float = 0.0


def sampler(watches: list[ProcessWatch], stop: threading.Event, every: float) -> None:
    while True:
        for watch in watches:
            value = rss_mb(watch.pid)
            if value is not None:
                watch.rss.append(value)
        if stop.wait(every):
            break


# --------------------------------------------------------------------------------------
# Set-up of one configuration.
# --------------------------------------------------------------------------------------
@dataclass
class Deployment:
    key: str
    web: list[LockstepServer]
    workers: list[LockstepWorker]
    google: GoogleSandbox
    database: Database

    def watches(self) -> list[ProcessWatch]:
        out = [ProcessWatch(f"web {n + 1}" if len(self.web) > 1 else "serve (web + workers)", s.process.pid)
               for n, s in enumerate(self.web) if s.process is not None]
        out += [ProcessWatch(f"worker {n + 1}", w.pid) for n, w in enumerate(self.workers)]
        return out

    def logs(self) -> list[Path]:
        return [s.log_file for s in self.web] + [w.log_file for w in self.workers]


@contextlib.contextmanager
def deploy(key: str, work: Path, args: argparse.Namespace) -> Iterator[Deployment]:
    with contextlib.ExitStack() as stack:
        google = stack.enter_context(GoogleSandbox())
        env = google_env(google, LOCKSTEP_SECURITY_SECRET_KEY=secrets.token_urlsafe(32))
        if key == "sqlite":
            url = f"sqlite:///{work / 'lockstep.db'}"
            web = [LockstepServer(data_dir=work / "web-1", database_url=url, extra_env=env,
                                  horizon_past_days=None)]
            stack.callback(web[0].stop)
            web[0].start()
            workers: list[LockstepWorker] = []
        else:
            url = stack.enter_context(postgres_schema(os.environ[PG_ENV]))
            web = [LockstepServer(data_dir=work / f"web-{n + 1}", database_url=url, extra_env=env,
                                  horizon_past_days=None) for n in range(2)]
            for node in web:
                stack.callback(node.stop)
                node.start("--no-workers")
            # Worker n opens its push channels towards node n: notifications land on both nodes.
            workers = [LockstepWorker(data_dir=work / f"worker-{n + 1}", database_url=url,
                                      public_url=web[n % 2].url, extra_env=env, horizon_past_days=None)
                       for n in range(args.pg_workers)]
            for worker in workers:
                stack.callback(worker.stop)
                worker.start()
        database = web[0].database
        yield Deployment(key, web, workers, google, database)


_SEED_DATABASES: dict[str, Database] = {}


def seed_tech(url: str, name: str, n: int, events: int, seed_value: int, today: Any) -> int:
    """One tech with two calendars (run in a seeding process; parsing happens before the write lock)."""
    database = _SEED_DATABASES.get(url)
    if database is None:
        database = _SEED_DATABASES[url] = Database(url)
    tech_admin.add_tech(database, name, name=f"Tech {n}", email=f"{name}@example.com",
                        tz=TIMEZONES[n % len(TIMEZONES)], password=PASSWORD)
    calendar = make_calendar(events, seed_value, today, SMALL_SHAPE, f"{name}-")
    in_bookings = max(1, events * 3 // 5)
    paths = [f"{name}/{BOOKINGS_CALENDAR}" if i < in_bookings else f"{name}/{PERSONAL}" for i in range(events)]
    parsed = [store.item_data_from_text(text, path) for (_, text), path in zip(calendar, paths)]
    with database.write([name]) as session:
        collections = {f"{name}/{BOOKINGS_CALENDAR}": store.get_collection(session, f"{name}/{BOOKINGS_CALENDAR}"),
                       f"{name}/{PERSONAL}": store.ensure_collection(session, f"{name}/{PERSONAL}", PERSONAL_PROPS)}
        for (uid, _), path, data in zip(calendar, paths, parsed):
            store.put_item(session, collections[path], f"{uid}.ics", data)  # type: ignore[arg-type]
    return events


def seed(deployment: Deployment, args: argparse.Namespace, today: Any) -> list[str]:
    """``--techs`` techs with two calendars each, through the service code the CLI uses
    (``techs.add_tech``, ``store.put_item``), in ``--seed-processes`` processes: parsing
    iCalendar (vobject's VTIMEZONE handling) costs ~20-40 ms an event."""
    names = [f"tech{n:03d}" for n in range(args.techs)]
    started = time.monotonic()
    url = deployment.database.url
    # spawn, not fork: this process runs the emulator's threads.
    with ProcessPoolExecutor(max_workers=args.seed_processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(seed_tech, url, name, n, args.tech_events, args.seed + n, today)
                   for n, name in enumerate(names)]
        total = sum(f.result() for f in futures)
    log(f"{deployment.key}: seeded {args.techs} techs, {total} events in {time.monotonic() - started:.0f} s")
    return names


def connect_techs(deployment: Deployment, users: list[str], args: argparse.Namespace, today: Any) -> GoogleAccount:
    """Each connected tech's Google calendar gets a few events first, then the consent flow runs
    (on web node n mod 2), as `lockstep connect google` + a browser would."""
    account = GoogleAccount(deployment.google)
    started = time.monotonic()
    rng = random.Random(args.seed)

    def one(n: int) -> None:
        user = users[n]
        deployment.google.add_user(f"{user}@example.com")
        for k in range(args.google_events):
            day = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=rng.randint(-10, 30))
            start = day + timedelta(hours=rng.randint(14, 23))
            account.create(user, f"Google event {k}", start, start + timedelta(hours=1))
        connect_google(deployment.web[n % len(deployment.web)], deployment.google, user)

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(one, range(len(users))))
    log(f"{deployment.key}: connected {len(users)} techs to the Google emulator in {time.monotonic() - started:.0f} s")
    return account


def due_jobs(database: Database) -> int:
    now = datetime.now(UTC)
    with database.read() as session:
        return sum(1 for state, run_at in session.query(Job.state, Job.run_at)
                   if state == "running" or (state == "ready" and run_at.replace(tzinfo=run_at.tzinfo or UTC) <= now))


def settle(deployment: Deployment, timeout: float) -> str:
    """Wait (at most ``timeout`` s) until the seeding's and connections' jobs are done."""
    started = time.monotonic()
    due = due_jobs(deployment.database)
    while due and time.monotonic() - started < timeout:
        time.sleep(2)
        due = due_jobs(deployment.database)
    note = f"jobs settled in {time.monotonic() - started:.0f} s ({due} still due)"
    log(f"{deployment.key}: {note}")
    return note


def jobs_summary(database: Database) -> tuple[Counter[tuple[str, str]], list[str]]:
    with database.read() as session:
        rows = list(session.query(Job.kind, Job.state, Job.last_error))
    counts = Counter((kind, state) for kind, state, _ in rows)
    errors = [f"{kind}: {error[:160]}" for kind, state, error in rows if state == "dead" and error][:5]
    return counts, errors


def log_problems(paths: list[Path]) -> tuple[int, list[str]]:
    """(tracebacks in the logs, the first few exception lines)."""
    count, lines = 0, []
    for path in paths:
        if not path.exists():
            continue
        text = path.read_text(errors="replace").splitlines()
        for i, line in enumerate(text):
            if line.startswith("Traceback"):
                count += 1
                tail = next((t for t in text[i + 1:i + 80] if t and not t.startswith(" ")), "")
                if len(lines) < 6:
                    lines.append(f"{path.name}: {tail[:200]}")
    return count, lines


# --------------------------------------------------------------------------------------
# One configuration's run.
# --------------------------------------------------------------------------------------
@dataclass
class RunResult:
    key: str
    note: str
    stats: Stats
    watches: list[ProcessWatch]
    seconds: float
    client_cpu: float
    jobs: Counter[tuple[str, str]]
    job_errors: list[str]
    tracebacks: int
    traceback_lines: list[str]
    setup_seconds: float
    settle_note: str
    warmup: float


def run_config(key: str, work: Path, args: argparse.Namespace, interrupted: threading.Event) -> RunResult:
    today = datetime.now(UTC).date()
    setup_started = time.monotonic()
    with deploy(key, work, args) as deployment:
        names = seed(deployment, args, today)
        google_users = names[: args.google_techs]
        account = connect_techs(deployment, google_users, args, today)
        settle_note = settle(deployment, args.settle)
        token = tech_admin.create_token(deployment.database, "loadbench", "bookings")
        bases = [node.url for node in deployment.web]
        stats, stop, active = Stats(), threading.Event(), threading.Event()
        time_push_deliveries(deployment.google, stats, active)
        watches = deployment.watches()
        setup_seconds = time.monotonic() - setup_started
        # Client i talks to node i mod (number of nodes); DAV client i is tech i (the
        # connected techs come first, so their mirror calendars are synced too).
        threads = [threading.Thread(target=dav_client, name=f"dav-{i}", daemon=True,
                                    args=(bases[i % len(bases)], names[i % len(names)], stats, stop,
                                          args.seed * 1000 + i, args, today))
                   for i in range(args.dav_clients)]
        threads += [threading.Thread(target=booking_client, name=f"book-{i}", daemon=True,
                                     args=(bases[i % len(bases)], f"{token.name}.{token.secret}", names, stats, stop,
                                           args.seed * 2000 + i, args))
                    for i in range(args.booking_clients)]
        if google_users and args.provider_rate > 0:
            threads.append(threading.Thread(target=provider_thread, name="provider", daemon=True,
                                            args=(account, google_users, stats, stop, args.seed, args.provider_rate)))
        sample_stop = threading.Event()
        sampling = threading.Thread(target=sampler, args=(watches, sample_stop, args.sample_every), daemon=True)
        sampling.start()
        log(f"{key}: load starts: {args.dav_clients} CalDAV clients, {args.booking_clients} booking clients, "
            f"{len(google_users)} Google-connected techs ({args.provider_rate}/s changes), {args.duration:.0f} s, "
            f"nodes {', '.join(bases)}")
        active.set()
        for thread in threads:
            thread.start()
        interrupted.wait(args.warmup)  # first logins (argon2), first full syncs: not measured
        stats.reset()
        for watch in watches:
            watch.cpu_start = cpu_seconds(watch.pid)
        client_cpu = time.process_time()
        ends = stats.started + args.duration
        last_counts: dict[str, int] = {}
        last_time = stats.started
        while not interrupted.is_set():
            left = ends - time.monotonic()
            if left <= 0:
                break
            interrupted.wait(min(args.progress, left))
            now = time.monotonic()
            counts = stats.counts()
            rates = ", ".join(f"{k} {(counts.get(k, 0) - last_counts.get(k, 0)) / (now - last_time):.1f}/s"
                              for k in KINDS if k in counts)
            rss = ", ".join(f"{w.name} {w.rss[-1]:.0f} MB" for w in watches if w.rss)
            log(f"{key}: {now - stats.started:.0f} s, {sum(counts.values())} requests, {stats.errors()} errors; "
                f"{rates}; RSS {rss}")
            last_counts, last_time = counts, now
        stop.set()
        active.clear()
        stats.ended = time.monotonic()
        for thread in threads:
            thread.join(timeout=70)
        sample_stop.set()
        sampling.join(timeout=10)
        for watch in watches:
            watch.cpu_end = cpu_seconds(watch.pid)
        client_cpu = time.process_time() - client_cpu
        jobs, job_errors = jobs_summary(deployment.database)
        note = (f"{len(deployment.web)} × `lockstep serve --no-workers` + {len(deployment.workers)} × `lockstep worker`"
                if deployment.workers else "1 × `lockstep serve` (sync workers in-process)")
        result = RunResult(key, note, stats, watches, stats.ended - stats.started, client_cpu, jobs, job_errors,
                           0, [], setup_seconds, settle_note, args.warmup)
        logs = deployment.logs()
    result.tracebacks, result.traceback_lines = log_problems(logs)
    return result


# --------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------
def markdown(result: RunResult) -> str:
    stats, seconds = result.stats, result.seconds
    lines = [f"### {result.key}: {result.note}", "",
             f"Measured {seconds:.0f} s after a {result.warmup:.0f} s warm-up (set-up before: "
             f"{result.setup_seconds:.0f} s, {result.settle_note}). RSS start is sampled before the warm-up.", "",
             "| request | n | req/s | p50 ms | p95 ms | p99 ms | errors (5xx + conn) | other 4xx | 409/412 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total = Counter[str]()
    for kind, label in KINDS.items():
        s = stats.kinds.get(kind)
        if s is None:
            continue
        n = sum(s.outcomes.values())
        total.update(s.outcomes)
        ordered = sorted(s.latencies_ms)
        errors = s.outcomes["5xx"] + s.outcomes["conn"]
        lines.append(f"| {label} | {n} | {n / seconds:.1f} | {percentile(ordered, 50):.0f} | "
                     f"{percentile(ordered, 95):.0f} | {percentile(ordered, 99):.0f} | "
                     f"{errors} ({100 * errors / max(1, n):.2f}%) | {s.outcomes['4xx']} | {s.outcomes['expected']} |")
    n = sum(total.values())
    errors = total["5xx"] + total["conn"]
    lines.append(f"| **all** | {n} | {n / seconds:.1f} | | | | {errors} ({100 * errors / max(1, n):.2f}%) | "
                 f"{total['4xx']} | {total['expected']} |")
    provider = {k.removeprefix("provider_"): sum(s.outcomes.values()) for k, s in stats.kinds.items()
                if k.startswith("provider_")}
    lines += ["", f"Google-side changes made by the provider thread: "
              + (", ".join(f"{k} {v}" for k, v in sorted(provider.items())) or "none") + "."]
    lines += ["", "| process | RSS start MB | RSS peak MB | RSS end MB | CPU s (share of one core) |",
              "|---|---:|---:|---:|---:|"]
    for w in result.watches:
        if w.rss:
            cpu = w.cpu_end - w.cpu_start
            lines.append(f"| {w.name} (pid {w.pid}) | {w.rss[0]:.0f} | {max(w.rss):.0f} | {w.rss[-1]:.0f} | "
                         f"{cpu:.0f} ({100 * cpu / seconds:.0f}%) |")
    lines.append(f"| load generator (this process, all client threads) | | | | "
                 f"{result.client_cpu:.0f} ({100 * result.client_cpu / seconds:.0f}%) |")
    jobs = ", ".join(f"{kind} {state} {count}" for (kind, state), count in sorted(result.jobs.items()))
    lines += ["", f"Jobs at the end: {jobs or 'none'}."]
    if result.job_errors:
        lines.append("Dead jobs' last errors: " + "; ".join(result.job_errors))
    lines.append(f"Tracebacks in the server/worker logs: {result.tracebacks}"
                 + (" — " + "; ".join(result.traceback_lines) if result.traceback_lines else "") + ".")
    samples = [f"{KINDS.get(k, k)}: {v[0]}" for k, v in stats.samples.items() if v]
    if samples:
        lines.append("First non-2xx/unexpected answer per kind: " + "; ".join(s.replace("|", "\\|") for s in samples))
    return "\n".join(lines) + "\n"


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load per configuration")
    parser.add_argument("--techs", type=int, default=200)
    parser.add_argument("--seed-processes", type=int, default=2, help="processes seeding the techs")
    parser.add_argument("--tech-events", type=int, default=30,
                        help="seeded events per tech (3/5 in bookings, the rest in personal)")
    parser.add_argument("--dav-clients", type=int, default=50)
    parser.add_argument("--booking-clients", type=int, default=20)
    parser.add_argument("--google-techs", type=int, default=20, help="techs connected to the Google emulator")
    parser.add_argument("--google-events", type=int, default=10, help="events in each one's Google calendar first")
    parser.add_argument("--provider-rate", type=float, default=2.0, help="Google-side changes per second")
    parser.add_argument("--think", type=float, default=1.0,
                        help="mean pause between a client's loops, seconds (uniform 0..2x; 0: flat out)")
    parser.add_argument("--write-share", type=float, default=0.2,
                        help="share of a CalDAV client's loops that end with a PUT or DELETE")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds of load before measuring (first logins hash argon2, first full syncs)")
    parser.add_argument("--settle", type=float, default=240.0,
                        help="wait at most this long for the seeding's jobs before the load starts")
    parser.add_argument("--configs", default="sqlite,postgresql")
    parser.add_argument("--pg-workers", type=int, default=2, help="`lockstep worker` processes on PostgreSQL")
    parser.add_argument("--progress", type=float, default=30.0, help="seconds between progress lines")
    parser.add_argument("--sample-every", type=float, default=3.0, help="seconds between RSS samples")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--workdir", type=Path, help="keep server data and logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for key in configs:
        if key not in ("sqlite", "postgresql"):
            parser.error(f"unknown config {key!r}")
        if key == "postgresql" and not os.environ.get(PG_ENV):
            parser.error(f"config postgresql needs {PG_ENV}, e.g. postgresql://postgres@127.0.0.1:5432/test")
    if args.google_techs > args.techs or args.dav_clients > args.techs:
        parser.error("--google-techs and --dav-clients must not exceed --techs")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupted = threading.Event()
    began = datetime.now(UTC)
    header = (f"# load bench {began:%Y-%m-%d %H:%M} UTC: {args.techs} techs × {args.tech_events} events, "
              f"{args.dav_clients} CalDAV clients, {args.booking_clients} booking clients, {args.google_techs} "
              f"Google-connected techs ({args.provider_rate}/s changes), think {args.think} s, "
              f"{args.duration:.0f} s per config; nproc {os.cpu_count()} (client and servers share them), "
              f"Python {platform.python_version()}, load average before "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; tree {git_describe()}")
    print(header, flush=True)
    results: list[RunResult] = []
    try:
        with contextlib.ExitStack() as stack:
            if args.workdir:
                work = args.workdir
                work.mkdir(parents=True, exist_ok=True)
            else:
                work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="load-bench-")))
            for key in configs:
                result = run_config(key, work / key, args, interrupted)
                results.append(result)
                print("\n" + markdown(result), flush=True)
    except KeyboardInterrupt:
        interrupted.set()
        print("\ninterrupted: every server stopped", file=sys.stderr, flush=True)
        return 130
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"total {(datetime.now(UTC) - began).total_seconds():.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
