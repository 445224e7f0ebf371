"""A server killed with SIGKILL in the middle of an import converges after restart, duplicating nothing."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from server.dav import store
from server.sandbox.google import GoogleSandbox
from tests.support.dav import multistatus
from tests.support.google_env import connect_google, eventually, google_env
from tests.support.lockstep_server import LockstepServer, running_server

EVENTS = 300


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


def _mirror_uids(server: LockstepServer, user: str, password: str) -> Counter[str]:
    body = ("<?xml version='1.0'?><C:calendar-query xmlns:D='DAV:' xmlns:C='urn:ietf:params:xml:ns:caldav'>"
            "<D:prop><C:calendar-data/></D:prop><C:filter><C:comp-filter name='VCALENDAR'>"
            "<C:comp-filter name='VEVENT'/></C:comp-filter></C:filter></C:calendar-query>")
    response = requests.request("REPORT", f"{server.dav_url}{user}/google-primary/", auth=(user, password),
                                data=body, headers={"Depth": "1"}, timeout=30)
    if response.status_code != 207:
        return Counter()
    uids: Counter[str] = Counter()
    for entry in multistatus(response.text):
        data = entry.props.get("{urn:ietf:params:xml:ns:caldav}calendar-data")
        if data is not None and data.text:
            uids.update(line[4:].strip() for line in data.text.splitlines() if line.startswith("UID:"))
    return uids


def test_sigkill_mid_import_then_restart_converges(backend: str, google: GoogleSandbox, tmp_path: Path) -> None:
    # The killed import's job keeps its (calendar) key until its lease runs out: a short lease
    # lets the restarted server take it over within the test's wait.
    env = google_env(google, LOCKSTEP_SYNC_POLL_SECONDS="2", LOCKSTEP_SYNC_LEASE_SECONDS="8")
    with running_server(tmp_path / "data", backend, extra_env=env) as server:
        user, password = server.add_tech()
        calendar = f"{user}@example.com"
        google.add_user(calendar)
        for n in range(EVENTS):
            day, hour = 1 + n // 10, 8 + n % 10
            google.create_event(calendar, {"summary": f"Job {n}",
                                           "start": {"dateTime": f"2027-01-{day:02d}T{hour:02d}:00:00Z"},
                                           "end": {"dateTime": f"2027-01-{day:02d}T{hour:02d}:30:00Z"}})
        google.add_latency(0.05)  # slow the listing down so the kill lands mid-import
        connect_google(server, google, user)
        eventually(lambda: 0 < sum(_mirror_uids(server, user, password).values()), timeout=60,
                   what="the import to start")
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        with server.database.read() as session:
            mirror = store.get_collection(session, f"{user}/google-primary")
            partial = len(store.all_hrefs(session, mirror.id)) if mirror else 0
        assert 0 < partial < EVENTS, f"the kill should land mid-import ({partial} of {EVENTS} imported)"
        server.process = None
        google.clear_faults()
        server.start()
        uids = eventually(lambda: (u := _mirror_uids(server, user, password)) and sum(u.values()) >= EVENTS and u,
                          timeout=120, what="the import to finish after the restart")
        assert len(uids) == EVENTS and set(uids.values()) == {1}, "a mirrored event is duplicated"
        remote = [e for e in google.stored_events(calendar) if e.get("summary", "").startswith("Job ")]
        assert len(remote) == EVENTS, "an event was pushed back to Google as a copy"
