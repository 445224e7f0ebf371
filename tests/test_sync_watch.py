"""Push channels are renewed before they expire, and the replaced channel is stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.sandbox.google import GoogleSandbox
from tests.support.google_env import connect_google, eventually, google_env
from tests.support.lockstep_server import running_server


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
