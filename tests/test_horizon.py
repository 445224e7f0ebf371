"""The rolling horizon: configurable ([freebusy] horizon_*_days), extended as days pass, so an
unbounded series keeps blocking time indefinitely while the index stays bounded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from server import horizon
from server.freebusy.maintenance import extend_horizon
from tests.support.api import api_for
from tests.support.lockstep_server import LockstepServer, running_server

UTC = timezone.utc
PAST_DAYS, FUTURE_DAYS = 7, 21


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[LockstepServer]:
    env = {"LOCKSTEP_FREEBUSY_HORIZON_PAST_DAYS": str(PAST_DAYS),
           "LOCKSTEP_FREEBUSY_HORIZON_FUTURE_DAYS": str(FUTURE_DAYS)}
    with running_server(tmp_path, "sqlite", extra_env=env) as started:
        yield started


@pytest.fixture()
def short_horizon() -> Iterator[None]:
    """This process's horizon as the server's config sets it, restored afterwards."""
    before = horizon.days()
    horizon.configure(PAST_DAYS, FUTURE_DAYS)
    try:
        yield
    finally:
        horizon.configure(*before)


def _z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_an_unbounded_daily_series_is_indexed_over_the_configured_window_and_rolls_on(
        server: LockstepServer, short_horizon: None) -> None:
    user, password = server.add_tech()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=20)
    series = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Lockstep tests//EN\r\nBEGIN:VEVENT\r\n"
              f"UID:daily-forever\r\nDTSTAMP:20261101T000000Z\r\nDTSTART:{first:%Y%m%d}T100000Z\r\n"
              f"DTEND:{first:%Y%m%d}T110000Z\r\nRRULE:FREQ=DAILY\r\nSUMMARY:Stand-up\r\n"
              "END:VEVENT\r\nEND:VCALENDAR\r\n")
    dav = requests.Session()
    dav.auth = (user, password)
    assert dav.put(f"{server.dav_url}{user}/bookings/daily.ics", data=series,
                   headers={"Content-Type": "text/calendar"}).status_code == 201
    api = api_for(server, "freebusy")

    def busy_days() -> list[int]:
        answer = api.get("/freebusy", tech=user, start=_z(today - timedelta(days=40)),
                         end=_z(today + timedelta(days=60)))
        assert answer.status_code == 200, answer.text
        return [(datetime.fromisoformat(b["start"].replace("Z", "+00:00")) - today).days
                for b in answer.json()["techs"][user]["busy"]]

    # Every day from 7 days back to 20 days ahead: the configured window, not 30 / 400.
    assert busy_days() == list(range(-PAST_DAYS, FUTURE_DAYS))

    # Two weeks later (as the maintenance job sees it): the series reaches further, the past is pruned.
    assert extend_horizon(server.database, now=today + timedelta(days=14)) == 1
    assert busy_days() == list(range(14 - PAST_DAYS, 14 + FUTURE_DAYS))


def test_a_horizon_of_no_days_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        horizon.configure(0, 400)
