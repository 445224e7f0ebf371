"""Bad input: a clear 4xx that says what is wrong, and nothing stored."""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.dav import event_ics, report, sync_collection_body, sync_token
from tests.support.lockstep_server import LockstepServer

MALFORMED = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:broken\r\nDTSTART:notadate\r\n"
NO_UID = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nDTSTAMP:20261101T000000Z\r\n"
    "DTSTART:20261201T170000Z\r\nDTEND:20261201T180000Z\r\nSUMMARY:No uid\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)
BAD_DATE = event_ics(uid="bad-date", start="20261341T250000Z")


@pytest.fixture
def calendar(server: LockstepServer, tech: tuple[str, str]) -> tuple[requests.Session, str]:
    session = requests.Session()
    session.auth = tech
    return session, f"{server.dav_url}{tech[0]}/bookings/"


def _state(session: requests.Session, url: str) -> str:
    """The calendar's sync token: unchanged means nothing was written."""
    response = report(session, url, sync_collection_body())
    assert response.status_code == 207
    return sync_token(response.text)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (MALFORMED, "Bad Request:"),
        (NO_UID, "without UID"),
        (BAD_DATE, "Bad Request:"),
        ("not a calendar at all", "Bad Request:"),
    ],
    ids=["malformed", "no-uid", "bad-date", "garbage"],
)
def test_invalid_icalendar_is_refused_with_a_reason(calendar: tuple[requests.Session, str], body: str, expected: str) -> None:
    session, url = calendar
    before = _state(session, url)
    response = session.put(url + "bad.ics", data=body, headers={"Content-Type": "text/calendar"})
    assert response.status_code == 400
    assert expected in response.text
    assert len(response.text.strip()) > len("Bad Request:")  # a reason, not just the phrase
    assert session.get(url + "bad.ics").status_code == 404
    assert _state(session, url) == before


def test_oversized_body_is_413_and_not_read(calendar: tuple[requests.Session, str]) -> None:
    session, url = calendar
    before = _state(session, url)
    description = "x" * (1024 * 1024 + 10)
    body = event_ics(uid="huge").replace("SUMMARY:Job", f"SUMMARY:Job\r\nDESCRIPTION:{description}")
    response = session.put(url + "huge.ics", data=body, headers={"Content-Type": "text/calendar"})
    assert response.status_code == 413
    assert "at most 1048576 bytes" in response.text
    assert session.get(url + "huge.ics").status_code == 404
    assert _state(session, url) == before


def test_stale_if_match_is_412_and_keeps_the_stored_version(calendar: tuple[requests.Session, str]) -> None:
    session, url = calendar
    created = session.put(url + "job.ics", data=event_ics(uid="job", summary="Original"))
    assert created.status_code == 201
    updated = session.put(url + "job.ics", data=event_ics(uid="job", summary="Second"),
                          headers={"If-Match": created.headers["ETag"]})
    assert updated.status_code in (201, 204)
    stale = session.put(url + "job.ics", data=event_ics(uid="job", summary="Lost update"),
                        headers={"If-Match": created.headers["ETag"]})
    assert stale.status_code == 412
    assert "Precondition Failed" in stale.text and "etag" in stale.text.lower()
    assert "SUMMARY:Second" in session.get(url + "job.ics").text
    stale_delete = session.delete(url + "job.ics", headers={"If-Match": created.headers["ETag"]})
    assert stale_delete.status_code == 412
    assert session.get(url + "job.ics").status_code == 200


def test_whole_collection_put_with_one_bad_event_stores_nothing(server: LockstepServer, tech: tuple[str, str]) -> None:
    session = requests.Session()
    session.auth = tech
    url = f"{server.dav_url}{tech[0]}/imported/"
    good = event_ics(uid="good-1").split("BEGIN:VEVENT", 1)[1].split("END:VCALENDAR", 1)[0]
    bad = "BEGIN:VEVENT\r\nUID:bad-1\r\nDTSTART:20261341T990000Z\r\nSUMMARY:bad date\r\nEND:VEVENT\r\n"
    body = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT" + good + bad + "END:VCALENDAR\r\n"
    response = session.put(url, data=body, headers={"Content-Type": "text/calendar"})
    assert response.status_code == 400
    assert session.get(url).status_code == 404  # no calendar, no half of one


def test_malformed_xml_is_400(calendar: tuple[requests.Session, str]) -> None:
    session, url = calendar
    response = session.request("PROPFIND", url, data="<propfind xmlns='DAV:'><prop>", headers={"Depth": "0"})
    assert response.status_code == 400


def test_unknown_user_and_wrong_password_look_the_same(server: LockstepServer, tech: tuple[str, str]) -> None:
    url = f"{server.dav_url}{tech[0]}/"
    timings = {}
    for label, auth in {"unknown user": ("nobody-here", "whatever"), "wrong password": (tech[0], "wrong")}.items():
        started = time.monotonic()
        response = requests.request("PROPFIND", url, auth=auth, headers={"Depth": "0"})
        timings[label] = time.monotonic() - started
        assert response.status_code == 401, label
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    # Both waited for the configured failed-login delay (tests run with 0.3 s).
    assert min(timings.values()) >= server.auth_delay * 0.5, timings
