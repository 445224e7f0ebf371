"""Scale-out on PostgreSQL: two ``lockstep serve --no-workers`` web nodes and two
``lockstep worker`` processes on one database, with the Google emulator creating
real sync work.

Bookings race across the web nodes (one wins), every job is handled once across
the workers, a worker killed with SIGKILL mid-job has its job taken over after
the lease, and a CalDAV write on one node is read at once on the other.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
import requests
from sqlalchemy import select

from server.caldav_bridge.engine import JOB_PUSH, JOB_SYNC
from server.models import Job, RemoteCalendarRow
from server.providers.google_write import event_id_for
from server.sandbox.google import GoogleSandbox
from tests.support.api import Api, api_for
from tests.support.dav import event_ics, multistatus, report, sync_collection_body, sync_token
from tests.support.google_env import connect_google, eventually, google_env
from tests.support.lockstep_server import PG_ENV, LockstepServer, postgres_schema
from tests.support.lockstep_worker import LockstepWorker

pytestmark = pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"{PG_ENV} not set (PostgreSQL only)")

LEASE_SECONDS = 3
RACERS = 12


@dataclass
class Cluster:
    google: GoogleSandbox
    web: list[LockstepServer]
    workers: list[LockstepWorker]
    database_url: str
    env: dict[str, str]

    def jobs(self, kind: str | None = None) -> list[Job]:
        with self.web[0].database.read() as session:
            query = select(Job).order_by(Job.id)
            if kind:
                query = query.where(Job.kind == kind)
            return list(session.scalars(query))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("nodes")
    with GoogleSandbox() as google, postgres_schema(os.environ[PG_ENV]) as url:
        # One secret key for every process (docs/deploy.md): a token encrypted by the
        # web node that took the OAuth callback is decrypted by whichever worker syncs.
        env = google_env(google, LOCKSTEP_SECURITY_SECRET_KEY=secrets.token_urlsafe(32),
                         LOCKSTEP_SYNC_LEASE_SECONDS=str(LEASE_SECONDS), LOCKSTEP_SYNC_POLL_SECONDS="600")
        web = [LockstepServer(data_dir=base / f"web-{n}", database_url=url, extra_env=env) for n in range(2)]
        workers = [LockstepWorker(data_dir=base / f"worker-{n}", database_url=url, public_url=web[0].url,
                                  extra_env=env) for n in range(2)]
        try:
            for node in web:
                node.start("--no-workers")
            for worker in workers:
                worker.start()
            yield Cluster(google, web, workers, url, env)
        finally:
            for worker in workers:
                worker.stop()
            for node in web:
                node.stop()


def _connected_tech(cluster: Cluster, events: int = 0) -> tuple[str, str]:
    """A tech whose Google calendar holds ``events`` events, connected through web node B."""
    user, password = cluster.web[0].add_tech()
    calendar = cluster.google.add_user(f"{user}@example.com")
    for n in range(events):
        cluster.google.create_event(calendar, {
            "summary": f"Google job {n}", "start": {"dateTime": f"2027-02-{1 + n // 8:02d}T{9 + n % 8:02d}:00:00Z"},
            "end": {"dateTime": f"2027-02-{1 + n // 8:02d}T{9 + n % 8:02d}:30:00Z"}})
    connect_google(cluster.web[1], cluster.google, user)
    return user, password


def _mirror_uids(node: LockstepServer, user: str, password: str) -> Counter[str]:
    body = ("<?xml version='1.0'?><C:calendar-query xmlns:D='DAV:' xmlns:C='urn:ietf:params:xml:ns:caldav'>"
            "<D:prop><C:calendar-data/></D:prop><C:filter><C:comp-filter name='VCALENDAR'>"
            "<C:comp-filter name='VEVENT'/></C:comp-filter></C:filter></C:calendar-query>")
    response = requests.request("REPORT", f"{node.dav_url}{user}/google-primary/", auth=(user, password),
                                data=body, headers={"Depth": "1"}, timeout=30)
    uids: Counter[str] = Counter()
    for entry in multistatus(response.text) if response.status_code == 207 else []:
        data = entry.props.get("{urn:ietf:params:xml:ns:caldav}calendar-data")
        if data is not None and data.text:
            uids.update(line[4:].strip() for line in data.text.splitlines() if line.startswith("UID:"))
    return uids


def _settled(cluster: Cluster) -> bool:
    """Nothing running and nothing due (a channel renewal waits for its half-life: not due)."""
    now = datetime.now(timezone.utc)
    return not any(job.state == "running" or (job.state == "ready" and job.run_at <= now) for job in cluster.jobs())


def test_one_slot_raced_across_web_nodes_one_booking_pushed_once(cluster: Cluster) -> None:
    user, _ = _connected_tech(cluster)
    eventually(lambda: _settled(cluster) and cluster.jobs(JOB_SYNC), timeout=60, what="the import")
    apis = [api_for(node) for node in cluster.web]
    barrier = threading.Barrier(RACERS)

    def book(n: int) -> requests.Response:
        minute = (n % 6) * 5  # overlapping, never identical
        body = {"tech": user, "start": f"2026-12-07T17:{minute:02d}:00Z", "end": f"2026-12-07T18:{minute:02d}:00Z",
                "summary": f"Racer {n}"}
        barrier.wait()
        return apis[n % 2].session.post(apis[n % 2].base + "/bookings", json=body, timeout=60)

    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        answers = list(pool.map(book, range(RACERS)))
    assert sorted(a.status_code for a in answers) == [201] + [409] * (RACERS - 1), [a.text for a in answers]
    for loser in (a for a in answers if a.status_code == 409):
        assert loser.json()["error"] == "conflict" and "busy" in loser.json()["message"]
    winner = next(a.json() for a in answers if a.status_code == 201)

    # The booking reaches Google once, whichever worker pushed it.
    calendar = f"{user}@example.com"
    event = eventually(lambda: cluster.google.get_event(calendar, event_id_for(winner["uid"])), timeout=30,
                       what="the booking in Google")
    assert event["summary"].startswith("Racer")
    eventually(lambda: _settled(cluster), timeout=30, what="the queue to drain")
    pushed = [e for e in cluster.google.stored_events(calendar) if e.get("summary", "").startswith("Racer")]
    assert len(pushed) == 1


def test_jobs_are_claimed_exclusively_across_workers(cluster: Cluster) -> None:
    techs = [_connected_tech(cluster, events=12) for _ in range(3)]
    apis: list[Api] = [api_for(node) for node in cluster.web]
    booked: list[str] = []
    for t, (user, _) in enumerate(techs):
        for n in range(8):
            answer = apis[(t + n) % 2].post("/bookings", {
                "tech": user, "start": f"2026-12-{8 + n:02d}T16:00:00Z", "end": f"2026-12-{8 + n:02d}T17:00:00Z",
                "summary": f"Visit {t}-{n}"})
            assert answer.status_code == 201, answer.text
            booked.append(answer.json()["uid"])

    def all_pushed() -> bool:
        ids = {e["id"] for user, _ in techs for e in cluster.google.stored_events(f"{user}@example.com")}
        return all(event_id_for(uid) in ids for uid in booked)

    eventually(all_pushed, timeout=90, what="every booking in Google")
    for user, password in techs:
        eventually(lambda: len(_mirror_uids(cluster.web[0], user, password)) >= 12, timeout=60,
                   what=f"{user}'s Google calendar mirrored")
    eventually(lambda: _settled(cluster), timeout=60, what="the queue to drain")

    # Each booking was inserted into Google once, and no event exists twice on either side.
    inserts = Counter(entry["path"] for entry in cluster.google.request_log("/events")
                      if entry["method"] == "POST" and entry["path"].endswith("/events"))
    for user, password in techs:
        calendar = f"{user}@example.com"
        stored = cluster.google.stored_events(calendar)
        assert len(stored) == 12 + 8 and len({e["id"] for e in stored}) == len(stored)
        assert sum(n for path, n in inserts.items() if f"/calendars/{calendar}/" in path.replace("%40", "@")) == 8
        mirrored = _mirror_uids(cluster.web[1], user, password)  # Google's own events; bookings stay bookings
        assert len(mirrored) == 12 and set(mirrored.values()) == {1}, mirrored
        assert not set(mirrored) & set(booked)

    # Every job ran once: one attempt each, done, and both worker processes took part.
    ours = [job for job in cluster.jobs() if job.kind in (JOB_PUSH, JOB_SYNC) and job.state != "ready"]
    assert ours and all(job.state == "done" and job.attempts == 1 for job in ours), \
        [(j.id, j.kind, j.state, j.attempts, j.last_error) for j in ours if j.attempts != 1 or j.state != "done"]
    owners = {job.worker for job in ours}
    assert all(any(w.owns(owner) for w in cluster.workers) for owner in owners), owners
    assert all(any(w.owns(owner) for owner in owners) for w in cluster.workers), "a worker did nothing"


def test_killed_workers_job_is_taken_over_after_the_lease(cluster: Cluster) -> None:
    user, password = cluster.web[0].add_tech()
    calendar = cluster.google.add_user(f"{user}@example.com")
    for n in range(20):
        cluster.google.create_event(calendar, {
            "summary": f"Slow job {n}", "start": {"dateTime": f"2027-03-{1 + n:02d}T10:00:00Z"},
            "end": {"dateTime": f"2027-03-{1 + n:02d}T11:00:00Z"}})
    # Listing this calendar's events takes 2 s, so its sync job is caught running.
    cluster.google.add_latency(2.0, path=rf"/calendars/{re.escape(user)}(@|%40)example\.com/events$")
    try:
        connect_google(cluster.web[1], cluster.google, user)
        job = eventually(lambda: next((j for j in cluster.jobs(JOB_SYNC) if j.state == "running"
                                       and _calendar_owner(cluster, j) == user), None),
                         timeout=60, what="the sync job running on a worker")
        victim = next(w for w in cluster.workers if w.owns(job.worker))
        survivor = next(w for w in cluster.workers if w is not victim)
        victim.kill()  # mid-job: the lease stays in the row, nobody renews it
        done = eventually(lambda: next((j for j in cluster.jobs() if j.id == job.id and j.state == "done"), None),
                          timeout=60, what="the other worker to take the job over")
        assert done.attempts == job.attempts + 1 and survivor.owns(done.worker)
    finally:
        cluster.google.clear_faults()
        for worker in cluster.workers:  # a fresh worker in the killed one's place
            if worker.process is None:
                worker.start()
    uids = eventually(lambda: (u := _mirror_uids(cluster.web[0], user, password)) and len(u) >= 20 and u,
                      timeout=30, what="the calendar mirrored")
    assert len(uids) == 20 and set(uids.values()) == {1}


def _calendar_owner(cluster: Cluster, job: Job) -> str:
    """The tech whose mirrored calendar a sync job is for."""
    with cluster.web[0].database.read() as session:
        row = session.get(RemoteCalendarRow, json.loads(job.payload)["calendar"])
        return (row.local_path or "").split("/", 1)[0] if row is not None else ""


def test_caldav_write_on_one_node_is_read_at_once_on_the_other(cluster: Cluster) -> None:
    node_a, node_b = cluster.web
    auth = node_a.add_tech()
    session = requests.Session()
    session.auth = auth
    calendar_a, calendar_b = (f"{node.dav_url}{auth[0]}/bookings/" for node in (node_a, node_b))
    token = sync_token(report(session, calendar_b, sync_collection_body()).text)
    for n in range(5):
        uid = f"cross-{n}"
        created = session.put(f"{calendar_a}{uid}.ics", data=event_ics(uid=uid, summary=f"From A {n}"))
        assert created.status_code == 201
        read = session.get(f"{calendar_b}{uid}.ics")  # the very next request, on the other node
        assert read.status_code == 200 and f"SUMMARY:From A {n}" in read.text
        assert read.headers["ETag"] == created.headers["ETag"]
        changes = report(session, calendar_b, sync_collection_body(token))
        assert changes.status_code == 207
        assert [r.href for r in multistatus(changes.text)] == [f"/dav/{auth[0]}/bookings/{uid}.ics"]
        token = sync_token(changes.text)
    assert session.delete(f"{calendar_b}cross-0.ics").status_code in (200, 204)
    assert session.get(f"{calendar_a}cross-0.ics").status_code == 404
    gone = multistatus(report(session, calendar_a, sync_collection_body(token)).text)
    assert [(r.href, "404" in r.status) for r in gone] == [(f"/dav/{auth[0]}/bookings/cross-0.ics", True)]
