"""``lockstep demo`` as a newcomer runs it: seeded techs, the emulated Google page, availability moving."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests

from tests.support.google_env import eventually
from tests.support.lockstep_server import free_port

NY = ZoneInfo("America/New_York")


class Demo:
    def __init__(self, process: subprocess.Popen[str], output: str) -> None:
        self.process = process
        self.output = output

    def find(self, pattern: str) -> str:
        match = re.search(pattern, self.output)
        assert match, f"{pattern!r} not in the demo's output:\n{self.output}"
        return match.group(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    data = tmp_path_factory.mktemp("demo")
    log = (data / "demo.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "--data", str(data), "demo",
                                "--port", str(free_port())],
                               stdout=subprocess.PIPE, stderr=log, text=True)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        for line in process.stdout:  # the summary ends with the "Press Ctrl-C" line
            lines.append(line)
            if line.strip().startswith("Press Ctrl-C"):
                break
        else:
            raise AssertionError("demo exited early:\n" + "".join(lines) + Path(log.name).read_text())
        yield Demo(process, "".join(lines))
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _next_weekday(after: date) -> date:
    day = after + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_personal_event_added_on_the_google_page_removes_the_slot(demo: Demo) -> None:
    token = demo.find(r"API token \(bookings scope\): (\S+)")
    page = demo.find(r"Google Calendar:\s+(\S+)")
    base = demo.find(r"CalDAV account:\s+(\S+)/dav/")
    day = _next_weekday(datetime.now(NY).date() + timedelta(days=7))  # clear of the seeded events' week
    window = {"tech": "alice", "start": _utc(datetime.combine(day, time(0), NY)),
              "end": _utc(datetime.combine(day + timedelta(days=1), time(0), NY)), "duration": "60"}
    headers = {"Authorization": f"Bearer {token}"}
    ten = _utc(datetime.combine(day, time(10), NY))

    def slot_starts() -> set[str]:
        answer = requests.get(f"{base}/api/v1/availability", params=window, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        return {slot["start"] for slot in answer.json()["techs"]["alice"]["slots"]}

    assert ten in slot_starts()
    added = requests.post(page, data={"summary": "Dentist", "day": day.isoformat(), "start": "10:00",
                                      "end": "11:00"}, timeout=10)
    assert added.status_code == 200 and "Dentist" in added.text
    eventually(lambda: ten not in slot_starts(), timeout=40, what="the 10:00 slot to disappear")


@pytest.mark.parametrize("user,zone,provider", [("alice", "America/New_York", "google"),
                                                ("bob", "America/Chicago", "microsoft")])
def test_seeded_calendars_block_time_and_the_account_works_over_caldav(demo: Demo, user: str, zone: str,
                                                                      provider: str) -> None:
    token = demo.find(r"API token \(bookings scope\): (\S+)")
    base = demo.find(r"CalDAV account:\s+(\S+)/dav/")
    password = demo.find(rf"{user} \({provider}, {zone}, password (\S+)\)")
    local = ZoneInfo(zone)
    monday = datetime.now(local).date()
    monday += timedelta(days=(0 - monday.weekday()) % 7 or 7)
    span = {"tech": user, "start": _utc(datetime.combine(monday, time(0), local)),
            "end": _utc(datetime.combine(monday + timedelta(days=1), time(0), local))}

    def busy() -> list[dict[str, str]]:
        answer = requests.get(f"{base}/api/v1/freebusy", params=span,
                              headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()["techs"][user]["busy"]

    standup = {"start": _utc(datetime.combine(monday, time(9), local)),
               "end": _utc(datetime.combine(monday, time(9, 30), local))}
    eventually(lambda: standup in busy(), timeout=30, what=f"{user}'s weekly stand-up to block Monday 09:00")
    listing = requests.request("PROPFIND", f"{base}/dav/{user}/", auth=(user, password),
                               headers={"Depth": "1"}, timeout=10)
    assert listing.status_code == 207
    assert f"/dav/{user}/{provider}-primary/" in listing.text
