"""Propagation latency per provider, and import cost of the Google sync, in one run.

    .venv/bin/python bench/propagation.py [--providers google,microsoft,caldav] [--changes 200]
        [--poll-changes 60] [--import-events 10000]

Prints p50/p95, for each provider (its emulator, or a second stock CalDAV
server), of: a change made on the provider → visible in /api/v1/freebusy and
over CalDAV, with push notifications and (same run, same machine) poll-only
(CalDAV accounts have no push: poll-only); a booking made through the API →
present on the provider. Then the time and the
server's peak memory for initial imports of two sizes (memory should not grow
with the event count). Loopback only; every server it starts is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.sandbox.google import GoogleSandbox  # noqa: E402
from tests.support.api import api_for  # noqa: E402
from tests.support.google_env import connect_google, eventually, google_env  # noqa: E402
from tests.support.lockstep_server import LockstepServer, running_server  # noqa: E402
from tests.support.remote_accounts import PROVIDERS, RemoteAccount, open_account, utc_text  # noqa: E402

POLL_SECONDS_POLL_ONLY = 5


def log(message: str) -> None:
    print(f"[propagation] {message}", file=sys.stderr, flush=True)


def wait_until(check: Callable[[], bool], timeout: float = 60.0, step: float = 0.01) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError("change never became visible")
        time.sleep(step)
    return time.monotonic() - started


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def inbound_latencies(server: LockstepServer, account: RemoteAccount, user: str, password: str,
                      changes: int) -> tuple[list[float], list[float]]:
    """Seconds from an event created on the provider until /api/v1/freebusy, and CalDAV, show it."""
    api = api_for(server, "freebusy")
    to_api, to_caldav = [], []
    mirror = f"{server.dav_url}{user}/{account.mirror_slug}/"
    for n in range(changes):
        day, slot = 1 + n // 20, n % 20
        start = datetime(2027, 2, day, slot, tzinfo=timezone.utc)
        created_at = time.monotonic()
        account.create(user, f"P{n}", start, start + timedelta(minutes=30))
        window = {"start": utc_text(start), "end": utc_text(start + timedelta(minutes=30))}

        def in_api() -> bool:
            return bool(api.get("/freebusy", tech=user, **window).json()["techs"][user]["busy"])

        def in_caldav() -> bool:
            listing = requests.request("PROPFIND", mirror, auth=(user, password), headers={"Depth": "1"})
            return listing.text.count(".ics</") >= n + 1

        wait_until(in_api)
        to_api.append(time.monotonic() - created_at)
        wait_until(in_caldav)
        to_caldav.append(time.monotonic() - created_at)
        if (n + 1) % 25 == 0:
            log(f"  {n + 1}/{changes} changes measured")
    return to_api, to_caldav


def outbound_latencies(server: LockstepServer, account: RemoteAccount, user: str, bookings: int) -> list[float]:
    api = api_for(server, "bookings")
    samples = []
    for n in range(bookings):
        day, slot = 1 + n // 20, n % 20
        started = time.monotonic()
        uid = api.post("/bookings", {"tech": user, "start": f"2027-03-{day:02d}T{slot:02d}:00:00Z",
                                     "end": f"2027-03-{day:02d}T{slot:02d}:30:00Z", "summary": f"B{n}"}).json()["uid"]
        wait_until(lambda: any(e.lockstep_uid == uid for e in account.events(user)), step=0.02)
        samples.append(time.monotonic() - started)
    return samples


def peak_rss_mib(server: LockstepServer) -> float:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def import_cost(google: GoogleSandbox, work: Path, backend: str, events: int) -> tuple[float, float]:
    """(seconds to import ``events`` events, peak RSS of the server in MiB)."""
    with running_server(work / f"import-{events}", backend, extra_env=google_env(google)) as server:
        user, password = server.add_tech()
        calendar = f"{user}@example.com"
        google.add_user(calendar)
        for n in range(events):
            day, minute = n // 96, (n % 96) * 15
            google.create_event(calendar, {
                "summary": f"I{n}", "start": {"dateTime": _at(day, minute)}, "end": {"dateTime": _at(day, minute + 10)}})
        log(f"import of {events} events ({backend}): starting")
        started = time.monotonic()
        connect_google(server, google, user)
        mirror = f"{user}/google-primary"

        def imported() -> bool:
            from server.dav import store

            with server.database.read() as session:
                collection = store.get_collection(session, mirror)
                return collection is not None and len(store.all_hrefs(session, collection.id)) >= events

        eventually(imported, timeout=1800, what=f"import of {events}")
        return time.monotonic() - started, peak_rss_mib(server)


def _at(day: int, minute: int) -> str:
    moment = datetime(2027, 1, 1, tzinfo=timezone.utc) + timedelta(days=day, minutes=minute)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def measure_mode(account: RemoteAccount, work: Path, backend: str, push: bool, changes: int,
                 poll_seconds: int) -> dict[str, list[float]]:
    extra = {**account.env(), "LOCKSTEP_SYNC_PUSH": "true" if push else "false",
             "LOCKSTEP_SYNC_POLL_SECONDS": "300" if push else str(poll_seconds),
             "LOCKSTEP_CALDAV_POLL_SECONDS": str(poll_seconds)}
    mode = "push" if push else "poll-only"
    with running_server(work / f"{account.provider}-{mode}", backend, extra_env=extra) as server:
        user, password = server.add_tech()
        account.connect(server, user)
        eventually(lambda: requests.request("PROPFIND", f"{server.dav_url}{user}/{account.mirror_slug}/",
                                            auth=(user, password), headers={"Depth": "0"}).status_code == 207,
                   timeout=60, what="mirror calendar")
        time.sleep(1)  # let the first sync and the push subscription settle
        log(f"{account.provider} {mode} ({backend}): measuring {changes} inbound changes")
        to_api, to_caldav = inbound_latencies(server, account, user, password, changes)
        log(f"{account.provider} {mode} ({backend}): measuring {changes} bookings → {account.provider}")
        return {"inbound_api": to_api, "inbound_caldav": to_caldav,
                "outbound": outbound_latencies(server, account, user, changes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--poll-changes", type=int, default=60, help="changes measured in poll-only mode")
    parser.add_argument("--import-events", type=int, default=10000, help="0 skips the import measurement")
    parser.add_argument("--small-import", type=int, default=2000)
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--providers", default=",".join(PROVIDERS),
                        help=f"comma-separated, of {', '.join(PROVIDERS)}")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lockstep-prop-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        for provider in args.providers.split(","):
            account = stack.enter_context(open_account(provider))
            # CalDAV accounts have no push: they are measured at their poll interval only.
            modes = [(False, args.poll_changes)] if provider == "caldav" else [
                (True, args.changes), (False, args.poll_changes)]
            for push, changes in modes:
                results = measure_mode(account, work, args.backend, push, changes, POLL_SECONDS_POLL_ONLY)
                mode = "push" if push else f"poll-only ({POLL_SECONDS_POLL_ONLY} s)"
                for label, samples in ((f"{provider} change → /api/v1/freebusy, {mode}", results["inbound_api"]),
                                       (f"{provider} change → CalDAV, {mode}", results["inbound_caldav"]),
                                       (f"API booking → in {provider}, {mode}", results["outbound"])):
                    p50, p95 = percentiles(samples)
                    rows.append(f"| {label} | {len(samples)} | {p50 * 1000:.0f} ms | {p95 * 1000:.0f} ms |")
        google = stack.enter_context(GoogleSandbox())
        imports = []
        for events in (n for n in (args.small_import, args.import_events) if n > 0):
            seconds, rss = import_cost(google, work, args.backend, events)
            imports.append(f"| {events:,} | {seconds:.1f} s | {events / seconds:.0f} events/s | {rss:.0f} MiB |")
    print(f"\nBackend: {args.backend}\n")
    print("| path | changes | p50 | p95 |\n|---|---|---|---|")
    print("\n".join(rows))
    print("\n| initial import | time | rate | server peak RSS |\n|---|---|---|---|")
    print("\n".join(imports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
