"""A tech reads nothing of another tech's, by any method; tokens get exactly their scope."""

from __future__ import annotations

import http.client
from urllib.parse import urlparse

import pytest
import requests

from tests.support.dav import event_ics, multiget_body, propfind, report, sync_collection_body
from tests.support.lockstep_server import LockstepServer

SECRET = "Root canal for Mrs. Example"
DENIED = {401, 403, 404, 405}
FREEBUSY_QUERY = (
    "<?xml version='1.0'?><C:free-busy-query xmlns:C='urn:ietf:params:xml:ns:caldav'>"
    "<C:time-range start='20261101T000000Z' end='20270101T000000Z'/></C:free-busy-query>"
)
CALENDAR_QUERY = (
    "<?xml version='1.0'?><C:calendar-query xmlns:D='DAV:' xmlns:C='urn:ietf:params:xml:ns:caldav'>"
    "<D:prop><D:getetag/><C:calendar-data/></D:prop><C:filter><C:comp-filter name='VCALENDAR'>"
    "<C:comp-filter name='VEVENT'/></C:comp-filter></C:filter></C:calendar-query>"
)
PROPFIND_ALL = "<propfind xmlns='DAV:'><allprop/></propfind>"


@pytest.fixture
def victim(server: LockstepServer) -> tuple[str, str]:
    """A tech with a booking and a personal calendar holding something private."""
    user, password = server.add_tech()
    session = requests.Session()
    session.auth = (user, password)
    assert session.put(f"{server.dav_url}{user}/bookings/job.ics",
                       data=event_ics(uid=f"job-{user}", summary=SECRET)).status_code == 201
    assert session.request("MKCALENDAR", f"{server.dav_url}{user}/personal/").status_code == 201
    assert session.put(f"{server.dav_url}{user}/personal/dentist.ics",
                       data=event_ics(uid=f"dentist-{user}", summary=SECRET)).status_code == 201
    return user, password


def _session(auth: tuple[str, str]) -> requests.Session:
    session = requests.Session()
    session.auth = auth
    return session


def _raw(server: LockstepServer, method: str, path: str, auth: tuple[str, str], **headers: str) -> tuple[int, str]:
    """Send the path byte for byte (requests would normalise '..')."""
    import base64

    connection = http.client.HTTPConnection(urlparse(server.url).netloc, timeout=10)
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    connection.request(method, path, headers={"Authorization": f"Basic {token}", **headers})
    response = connection.getresponse()
    body = response.read().decode("utf-8", "replace")
    connection.close()
    return response.status, body


def test_tech_cannot_reach_another_techs_data(server: LockstepServer, tech: tuple[str, str], victim: tuple[str, str]) -> None:
    other, _ = victim
    attacker = _session(tech)
    home = f"{server.dav_url}{other}/"
    bookings = f"{home}bookings/"
    personal = f"{home}personal/"
    attempts = {
        "GET item": attacker.get(bookings + "job.ics"),
        "GET calendar": attacker.get(bookings),
        "PROPFIND home d0": propfind(attacker, home, PROPFIND_ALL),
        "PROPFIND home d1": propfind(attacker, home, PROPFIND_ALL, depth="1"),
        "PROPFIND calendar": propfind(attacker, bookings, PROPFIND_ALL, depth="1"),
        "PROPFIND item": propfind(attacker, personal + "dentist.ics", PROPFIND_ALL),
        "calendar-query": report(attacker, bookings, CALENDAR_QUERY),
        "multiget": report(attacker, bookings, multiget_body([f"/dav/{other}/bookings/job.ics"])),
        "sync-collection": report(attacker, personal, sync_collection_body()),
        "free-busy": report(attacker, personal, FREEBUSY_QUERY),
        "PUT": attacker.put(bookings + "evil.ics", data=event_ics(uid="evil")),
        "DELETE item": attacker.delete(bookings + "job.ics"),
        "DELETE calendar": attacker.delete(personal),
        "MKCALENDAR": attacker.request("MKCALENDAR", home + "mine/"),
        "PROPPATCH": attacker.request("PROPPATCH", bookings, data=(
            "<propertyupdate xmlns='DAV:'><set><prop><displayname>x</displayname></prop></set></propertyupdate>")),
        "MOVE out": attacker.request("MOVE", bookings + "job.ics",
                                     headers={"Destination": f"{server.dav_url}{tech[0]}/bookings/stolen.ics"}),
    }
    for name, response in attempts.items():
        assert response.status_code in DENIED, f"{name}: {response.status_code} {response.text[:200]}"
        assert SECRET not in response.text, name

    # MOVE of the attacker's own item into the victim's calendar.
    own = f"{server.dav_url}{tech[0]}/bookings/mine.ics"
    assert attacker.put(own, data=event_ics(uid=f"mine-{tech[0]}")).status_code == 201
    moved = attacker.request("MOVE", own, headers={"Destination": bookings + "planted.ics"})
    assert moved.status_code in DENIED
    assert attacker.get(own).status_code == 200  # still where it was

    # The root listing does not reveal other homes.
    listing = propfind(attacker, server.dav_url, PROPFIND_ALL, depth="1")
    assert f"/dav/{other}/" not in listing.text

    # Path traversal from the attacker's own home.
    for path in (f"/dav/{tech[0]}/../{other}/bookings/job.ics", f"/dav/{tech[0]}/%2e%2e/{other}/bookings/job.ics"):
        status, body = _raw(server, "GET", path, tech)
        assert status in DENIED, path
        assert SECRET not in body

    # And the victim's data is intact.
    owner = _session(victim)
    assert SECRET in owner.get(bookings + "job.ics").text
    assert owner.get(bookings + "evil.ics").status_code == 404


def test_bookings_token_reads_and_writes_bookings_only(server: LockstepServer, victim: tuple[str, str]) -> None:
    user, _ = victim
    token = _session(server.create_token(scope="bookings"))
    bookings = f"{server.dav_url}{user}/bookings/"
    personal = f"{server.dav_url}{user}/personal/"

    assert SECRET in token.get(bookings + "job.ics").text
    assert token.put(bookings + "api.ics", data=event_ics(uid=f"api-{user}")).status_code == 201
    assert report(token, bookings, sync_collection_body()).status_code == 207

    free_busy = report(token, personal, FREEBUSY_QUERY)
    assert free_busy.status_code == 200 and "FREEBUSY" in free_busy.text
    assert SECRET not in free_busy.text

    for name, response in {
        "GET personal item": token.get(personal + "dentist.ics"),
        "PROPFIND personal": propfind(token, personal, PROPFIND_ALL, depth="1"),
        "calendar-query personal": report(token, personal, CALENDAR_QUERY),
        "PUT personal": token.put(personal + "x.ics", data=event_ics(uid="x")),
        "MKCALENDAR": token.request("MKCALENDAR", f"{server.dav_url}{user}/new/"),
        "DELETE bookings calendar": token.delete(bookings),
    }.items():
        assert response.status_code in DENIED, f"{name}: {response.status_code}"
        assert SECRET not in response.text, name


def test_freebusy_token_sees_only_free_busy(server: LockstepServer, victim: tuple[str, str]) -> None:
    user, _ = victim
    token = _session(server.create_token(scope="freebusy"))
    bookings = f"{server.dav_url}{user}/bookings/"
    assert token.get(bookings + "job.ics").status_code in DENIED
    assert token.put(bookings + "y.ics", data=event_ics(uid="y")).status_code in DENIED
    free_busy = report(token, bookings, FREEBUSY_QUERY)
    assert free_busy.status_code == 200 and "FREEBUSY;FBTYPE=BUSY:20261201T170000Z" in free_busy.text
    assert SECRET not in free_busy.text


def test_token_and_tech_names_are_one_namespace(server: LockstepServer, tech: tuple[str, str]) -> None:
    result = server.cli("token", "create", tech[0], "--scope", "bookings", check=False)
    assert result.returncode != 0
    assert "already taken" in result.stderr
