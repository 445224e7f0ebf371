"""vdirsyncer two-way sync: 200 events up, server-side creations, edits and deletions
on both sides, then an idle sync; no duplicates, no losses.

The same scenario runs against stock Radicale 3.9 (proof that the harness itself
is right) and against a tech's bookings calendar on Lockstep, on each backend.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.support.lockstep_server import LockstepServer
from tests.support.stock_radicale import start_stock_radicale
from tests.support.vdirsyncer_harness import run_vdirsyncer_scenario

STOCK_USER, STOCK_PASSWORD = "mike", "s3cret-pass"
MKCALENDAR_BODY = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
    "<D:set><D:prop><D:displayname>Bookings</D:displayname>"
    '<C:supported-calendar-component-set><C:comp name="VEVENT"/>'
    "</C:supported-calendar-component-set></D:prop></D:set></C:mkcalendar>"
)


def _logged_errors(log_file: Path, offset: int) -> list[str]:
    text = log_file.read_bytes()[offset:].decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line]


@pytest.mark.slow
def test_vdirsyncer_two_way_sync_against_stock_radicale(tmp_path: Path) -> None:
    with start_stock_radicale(tmp_path / "radicale", {STOCK_USER: STOCK_PASSWORD}) as stock:
        calendar_url = f"{stock.url}{STOCK_USER}/bookings/"
        created = requests.request(
            "MKCALENDAR",
            calendar_url,
            data=MKCALENDAR_BODY.encode(),
            auth=(STOCK_USER, STOCK_PASSWORD),
            headers={"Content-Type": "application/xml; charset=utf-8"},
            timeout=30,
        )
        assert created.status_code == 201, f"MKCALENDAR -> {created.status_code}: {created.text}"
        run_vdirsyncer_scenario(calendar_url, STOCK_USER, STOCK_PASSWORD, tmp_path / "vdirsyncer")
        assert stock.process.poll() is None, "stock Radicale died during the scenario"


@pytest.mark.slow
def test_vdirsyncer_two_way_sync_against_lockstep(
    server: LockstepServer, tech: tuple[str, str], tmp_path: Path
) -> None:
    user, password = tech
    log_offset = server.log_file.stat().st_size
    run_vdirsyncer_scenario(
        f"{server.dav_url}{user}/bookings/", user, password, tmp_path / "vdirsyncer"
    )
    assert server.process is not None and server.process.poll() is None, "Lockstep died"
    errors = _logged_errors(server.log_file, log_offset)
    assert not errors, "Lockstep logged errors during the scenario:\n" + "\n".join(errors[:20])
