"""Push channels are renewed before they expire, and the replaced channel is stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from server.caldav_bridge.engine import JOB_SYNC
from server.models import Job
from server.sandbox.google import GoogleSandbox
from tests.support.api import api_for
from tests.support.google_env import connect_google, eventually, google_env
from tests.support.lockstep_server import LockstepServer, recorded_channels, running_server


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


def test_channel_renewed_at_half_life_and_old_one_stopped(backend: str, google: GoogleSandbox, tmp_path: Path) -> None:
    env = google_env(google, LOCKSTEP_SYNC_WATCH_TTL_SECONDS="24")
    with running_server(tmp_path / "data", backend, extra_env=env) as server:
        user, _ = server.add_tech()
        connect_google(server, google, user)
        first = eventually(lambda: [c for c in google.channels() if not c["stopped"]], what="a channel")
        assert first[0]["address"] == f"{server.url}/hooks/google"
        renewed = eventually(lambda: [c for c in google.channels() if not c["stopped"] and c["id"] != first[0]["id"]],
                             timeout=30, what="a renewed channel")
        assert len(renewed) == 1
        # The new channel is opened first, then the old one is stopped (never a gap without push).
        eventually(lambda: next(c for c in google.channels() if c["id"] == first[0]["id"])["stopped"],
                   what="the replaced channel to be stopped, not orphaned")
        # The new channel still delivers: a change in Google reaches the server through it.
        google.create_event(f"{user}@example.com", {"summary": "After renewal",
                                                    "start": {"dateTime": "2027-04-01T10:00:00Z"},
                                                    "end": {"dateTime": "2027-04-01T11:00:00Z"}})
        eventually(lambda: any(n.channel_id == renewed[0]["id"] for n in google.notifications()),
                   what="a notification on the renewed channel")


def _syncs_done(server: LockstepServer) -> int:
    with server.database.read() as session:
        return len(list(session.scalars(select(Job.id).where(Job.kind == JOB_SYNC, Job.state == "done"))))


def test_change_made_while_the_channel_opens_is_not_lost(backend: str, google: GoogleSandbox, tmp_path: Path) -> None:
    """Google notifies from the moment it opens a channel; the hook trusts a channel only once the
    server has recorded it. A change in between is refused at the hook, so the server must sync
    once the channel is recorded. Here the watch reply is held back (a slow network) while a change
    is made, and polling is too slow to come to the rescue."""
    google.add_slow_reply(8, count=1, path=r"/events/watch$", method="POST")
    env = google_env(google, LOCKSTEP_SYNC_POLL_SECONDS="600")
    with running_server(tmp_path / "data", backend, extra_env=env) as server:
        user, _ = server.add_tech()
        connect_google(server, google, user)
        channel = eventually(lambda: next((c for c in google.channels() if not c["stopped"]), None),
                             what="a channel opened at Google")
        eventually(lambda: _syncs_done(server), what="the first sync")
        assert not recorded_channels(server), "the watch reply came back too soon for this test"
        google.create_event(f"{user}@example.com", {"summary": "Made while the channel opened",
                                                    "start": {"dateTime": "2027-05-03T10:00:00Z"},
                                                    "end": {"dateTime": "2027-05-03T11:00:00Z"}})
        refused = eventually(lambda: [n for n in google.notifications(channel["id"])
                                      if n.resource_state == "exists"], what="the change's notification")
        assert [n.status for n in refused] == [403], "the hook accepted a channel it had not recorded yet"
        assert not recorded_channels(server), "the watch reply came back too soon for this test"

        eventually(lambda: recorded_channels(server) == {channel["id"]}, what="the channel to be recorded")
        api = api_for(server)
        busy = eventually(lambda: api.get("/freebusy", tech=user, start="2027-05-03T00:00:00Z",
                                          end="2027-05-04T00:00:00Z").json()["techs"][user]["busy"],
                          timeout=30, what="the change to be synced after the channel was recorded")
        assert [(b["start"], b["end"]) for b in busy] == [("2027-05-03T10:00:00Z", "2027-05-03T11:00:00Z")]
