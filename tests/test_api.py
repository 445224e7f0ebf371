"""/api/v1 end to end: free/busy, availability, bookings, and every refusal."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import icalendar
import pytest
import requests

from tests.support.api import Api, api_for
from tests.support.dav import event_ics, report
from tests.support.lockstep_server import LockstepServer

UTC = timezone.utc
DAY = {"start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"}  # a Tuesday


@pytest.fixture(scope="module")
def api(server: LockstepServer) -> Api:
    return api_for(server, "bookings")


def _book(api: Api, tech: str, start: str, end: str, **extra: object) -> requests.Response:
    return api.post("/bookings", {"tech": tech, "start": start, "end": end, "summary": "Fix boiler", **extra})


def _dav(server: LockstepServer, tech: tuple[str, str]) -> requests.Session:
    session = requests.Session()
    session.auth = tech
    return session


def test_booking_is_visible_over_caldav_and_blocks_the_slot(server: LockstepServer, api: Api, tech: tuple[str, str]) -> None:
    user = tech[0]
    created = _book(api, user, "2026-12-01T17:00:00Z", "2026-12-01T18:00:00Z",
                    customer={"name": "Ann Smith", "email": "ann@example.com", "phone": "+1 555 0100"},
                    location="12 Elm St")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["tech"] == user and body["start"] == "2026-12-01T17:00:00Z" and body["end"] == "2026-12-01T18:00:00Z"
    assert body["href"] == f"/dav/{user}/bookings/{body['uid']}.ics"
    over_caldav = _dav(server, tech).get(server.url + body["href"])
    assert over_caldav.status_code == 200
    event = icalendar.Calendar.from_ical(over_caldav.text).walk("VEVENT")[0]
    assert str(event["UID"]) == body["uid"] and str(event["LOCATION"]) == "12 Elm St"
    assert "Ann Smith" in str(event["DESCRIPTION"])

    clash = _book(api, user, "2026-12-01T17:30:00Z", "2026-12-01T18:30:00Z")
    assert clash.status_code == 409
    assert clash.json()["error"] == "conflict"
    assert clash.json()["conflicts"] == [{"start": "2026-12-01T17:30:00Z", "end": "2026-12-01T18:00:00Z"}]
    assert _book(api, user, "2026-12-01T18:00:00Z", "2026-12-01T19:00:00Z").status_code == 201  # touching is fine

    ics = api.get(f"/bookings/{body['uid']}.ics")
    assert ics.status_code == 200 and ics.headers["Content-Type"].startswith("text/calendar")
    assert body["uid"] in ics.text


def test_freebusy_json_and_vfreebusy(server: LockstepServer, api: Api, tech: tuple[str, str]) -> None:
    user = tech[0]
    assert _book(api, user, "2026-12-01T17:00:00Z", "2026-12-01T18:00:00Z").status_code == 201
    dav = _dav(server, tech)
    personal = f"{server.dav_url}{user}/personal/"
    assert dav.request("MKCALENDAR", personal).status_code == 201
    assert dav.put(personal + "dentist.ics", data=event_ics(uid="dentist", start="20261201T200000Z",
                                                            end="20261201T210000Z")).status_code == 201
    tentative = event_ics(uid="maybe", start="20261201T220000Z", end="20261201T230000Z").replace(
        "SUMMARY:Job", "SUMMARY:Maybe\r\nSTATUS:TENTATIVE")
    assert dav.put(personal + "maybe.ics", data=tentative).status_code == 201
    other, _ = server.add_tech()

    response = api.get("/freebusy", tech=[user, other], **DAY)
    assert response.status_code == 200
    body = response.json()
    assert body["start"] == DAY["start"] and body["end"] == DAY["end"]
    assert body["techs"][user]["busy"] == [
        {"start": "2026-12-01T17:00:00Z", "end": "2026-12-01T18:00:00Z"},
        {"start": "2026-12-01T20:00:00Z", "end": "2026-12-01T21:00:00Z"},
    ]
    assert body["techs"][user]["tentative"] == [{"start": "2026-12-01T22:00:00Z", "end": "2026-12-01T23:00:00Z"}]
    assert body["techs"][user]["sync"] == {"state": "not_connected", "last_success": None}
    assert body["techs"][other]["busy"] == [] and body["techs"][other]["tentative"] == []

    as_ical = api.session.get(api.base + "/freebusy", params={"tech": user, **DAY}, headers={"Accept": "text/calendar"})
    assert as_ical.headers["Content-Type"].startswith("text/calendar")
    component = icalendar.Calendar.from_ical(as_ical.text).walk("VFREEBUSY")[0]
    lines = as_ical.text.replace("\r\n ", "").replace(";VALUE=PERIOD", "")
    assert "FREEBUSY;FBTYPE=BUSY:20261201T170000Z/20261201T180000Z" in lines
    assert "FREEBUSY;FBTYPE=BUSY:20261201T200000Z/20261201T210000Z" in lines
    assert "FREEBUSY;FBTYPE=BUSY-TENTATIVE:20261201T220000Z/20261201T230000Z" in lines
    assert str(component["X-LOCKSTEP-TECH"]) == user

    # The CalDAV free-busy-query REPORT on the same calendar agrees (from the same index).
    fb = report(dav, personal, "<?xml version='1.0'?><C:free-busy-query xmlns:C='urn:ietf:params:xml:ns:caldav'>"
                               "<C:time-range start='20261201T000000Z' end='20261202T000000Z'/></C:free-busy-query>")
    assert fb.status_code == 200
    text = fb.text.replace("\r\n ", "")
    assert "FBTYPE=BUSY:20261201T200000Z/20261201T210000Z" in text
    assert "FBTYPE=BUSY-TENTATIVE:20261201T220000Z/20261201T230000Z" in text


def test_tentative_policy_and_transparent_calendar(server: LockstepServer, api: Api) -> None:
    user, password = server.add_tech()
    server.cli("tech", "update", user, "--tentative-blocks", "yes")
    dav = _dav(server, (user, password))
    tentative = event_ics(uid="t1", start="20261201T220000Z", end="20261201T230000Z").replace(
        "SUMMARY:Job", "SUMMARY:Maybe\r\nSTATUS:TENTATIVE")
    assert dav.put(f"{server.dav_url}{user}/bookings/t1.ics", data=tentative).status_code == 201
    shadow = f"{server.dav_url}{user}/shadow/"
    assert dav.request("MKCALENDAR", shadow).status_code == 201
    assert dav.put(shadow + "s.ics", data=event_ics(uid="s", start="20261201T170000Z",
                                                    end="20261201T180000Z")).status_code == 201
    busy = api.get("/freebusy", tech=user, **DAY).json()["techs"][user]
    assert busy["busy"] == [{"start": "2026-12-01T17:00:00Z", "end": "2026-12-01T18:00:00Z"},
                            {"start": "2026-12-01T22:00:00Z", "end": "2026-12-01T23:00:00Z"}]
    assert busy["tentative"] == []
    # Marking the calendar transparent (RFC 6638) removes its events from busy time.
    proppatch = ("<?xml version='1.0'?><D:propertyupdate xmlns:D='DAV:' xmlns:C='urn:ietf:params:xml:ns:caldav'>"
                 "<D:set><D:prop><C:schedule-calendar-transp><C:transparent/></C:schedule-calendar-transp>"
                 "</D:prop></D:set></D:propertyupdate>")
    assert dav.request("PROPPATCH", shadow, data=proppatch).status_code == 207
    busy = api.get("/freebusy", tech=user, **DAY).json()["techs"][user]
    assert busy["busy"] == [{"start": "2026-12-01T22:00:00Z", "end": "2026-12-01T23:00:00Z"}]


def test_availability_respects_hours_buffers_and_busy_time(server: LockstepServer, api: Api) -> None:
    """On a Tuesday still ahead (availability never offers the past), in Berlin's own time."""
    user, _ = server.add_tech(tz="Europe/Berlin")
    server.cli("tech", "update", user, "--hours", "mon-fri 09:00-12:00 13:00-17:00", "--buffer-before", "30")
    today = datetime.now(UTC).date()
    tuesday = today + timedelta(days=7 + (1 - today.weekday()) % 7)
    berlin = ZoneInfo("Europe/Berlin")

    def at(hour: int) -> str:
        return datetime.combine(tuesday, time(hour), berlin).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    day = {"start": f"{tuesday}T00:00:00Z", "end": f"{tuesday + timedelta(days=1)}T00:00:00Z"}
    assert _book(api, user, at(10), at(11)).status_code == 201
    response = api.get("/availability", tech=user, duration=60, step=60, **day)
    assert response.status_code == 200
    slots = [(s["start"], s["end"]) for s in response.json()["techs"][user]["slots"]]
    # The buffer is kept before each new booking: 11:00-12:00 would need 10:30-11:00 free.
    assert slots == [(at(h), at(h + 1)) for h in (9, 13, 14, 15, 16)]
    assert _book(api, user, at(11), at(12)).status_code == 409


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"tech": "nobody-at-all"}, 404, "tech"),
        ({"start": "2026-12-02T00:00:00Z", "end": "2026-12-01T00:00:00Z"}, 400, "end"),
        ({"start": "2026-01-01T00:00:00Z", "end": "2027-01-03T00:00:00Z"}, 400, "end"),
        ({"start": "2026-12-01T00:00:00"}, 400, "start"),
        ({"start": "tomorrow"}, 400, "start"),
        ({"duration": "1h"}, 400, "duration"),
        ({"duration": "0"}, 400, "duration"),
    ],
    ids=["unknown-tech", "end-before-start", "over-366-days", "no-offset", "not-a-date", "duration-text", "duration-zero"],
)
def test_bad_queries_name_the_field(api: Api, tech: tuple[str, str], params: dict[str, str], status: int, field: str) -> None:
    query = {"tech": tech[0], "duration": "60", **DAY, **params}
    response = api.get("/availability", **query)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] and field in body["message"]


def test_bad_booking_bodies(server: LockstepServer, api: Api, tech: tuple[str, str]) -> None:
    raw = api.session.post(api.base + "/bookings", data="not json", headers={"Content-Type": "application/json"})
    assert raw.status_code == 400 and "body" in raw.json()["message"]
    missing = api.post("/bookings", {"tech": tech[0], "start": "2026-12-01T17:00:00Z", "end": "2026-12-01T18:00:00Z"})
    assert missing.status_code == 400 and "summary" in missing.json()["message"]
    unknown = _book(api, "ghost-tech", "2026-12-01T17:00:00Z", "2026-12-01T18:00:00Z")
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_tech"
    assert api.get("/freebusy", tech=tech[0], **DAY).json()["techs"][tech[0]]["busy"] == []


def test_tokens_and_scopes(server: LockstepServer, tech: tuple[str, str]) -> None:
    url = server.url + "/api/v1/freebusy"
    assert requests.get(url, params={"tech": tech[0], **DAY}).status_code == 401
    bad = requests.get(url, params={"tech": tech[0], **DAY}, headers={"Authorization": "Bearer app.wrong"})
    assert bad.status_code == 401 and bad.json()["error"] == "unauthorized"
    as_tech = requests.get(url, params={"tech": tech[0], **DAY}, headers={"Authorization": f"Bearer {tech[0]}.{tech[1]}"})
    assert as_tech.status_code == 401  # a tech's app password is not an API token
    readonly = api_for(server, "freebusy")
    assert readonly.get("/freebusy", tech=tech[0], **DAY).status_code == 200
    refused = _book(readonly, tech[0], "2026-12-01T17:00:00Z", "2026-12-01T18:00:00Z")
    assert refused.status_code == 403 and "scope" in refused.json()["message"]


def test_idempotency_move_and_cancel(server: LockstepServer, api: Api, tech: tuple[str, str]) -> None:
    user = tech[0]
    body = {"tech": user, "start": "2026-12-02T17:00:00Z", "end": "2026-12-02T18:00:00Z", "summary": "Once"}
    first = api.post("/bookings", body, **{"Idempotency-Key": "order-42"})
    again = api.post("/bookings", body, **{"Idempotency-Key": "order-42"})
    assert first.status_code == 201 and again.status_code == 201 and again.json() == first.json()
    reused = api.post("/bookings", {**body, "summary": "Different"}, **{"Idempotency-Key": "order-42"})
    assert reused.status_code == 422
    uid = first.json()["uid"]
    listing = _dav(server, tech).request("PROPFIND", f"{server.dav_url}{user}/bookings/", headers={"Depth": "1"})
    assert listing.text.count(".ics</href>") == 1  # one booking, not two

    other = _book(api, user, "2026-12-02T19:00:00Z", "2026-12-02T20:00:00Z")
    assert other.status_code == 201
    moved = api.patch(f"/bookings/{uid}", {"start": "2026-12-02T17:30:00Z", "end": "2026-12-02T18:30:00Z"})
    assert moved.status_code == 200 and moved.json()["start"] == "2026-12-02T17:30:00Z"
    into_other = api.patch(f"/bookings/{uid}", {"start": "2026-12-02T19:30:00Z", "end": "2026-12-02T20:30:00Z"})
    assert into_other.status_code == 409
    busy = api.get("/freebusy", tech=user, start="2026-12-02T00:00:00Z", end="2026-12-03T00:00:00Z").json()
    assert busy["techs"][user]["busy"] == [{"start": "2026-12-02T17:30:00Z", "end": "2026-12-02T18:30:00Z"},
                                           {"start": "2026-12-02T19:00:00Z", "end": "2026-12-02T20:00:00Z"}]
    assert api.delete(f"/bookings/{uid}").status_code == 204
    assert api.delete(f"/bookings/{uid}").status_code == 404
    busy = api.get("/freebusy", tech=user, start="2026-12-02T00:00:00Z", end="2026-12-03T00:00:00Z").json()
    assert busy["techs"][user]["busy"] == [{"start": "2026-12-02T19:00:00Z", "end": "2026-12-02T20:00:00Z"}]


def test_allday_pto_blocks_local_working_hours_only(server: LockstepServer, api: Api) -> None:
    user, password = server.add_tech(tz="America/Los_Angeles")
    pto = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:pto\r\nDTSTAMP:20261101T000000Z\r\n"
           "DTSTART;VALUE=DATE:20261201\r\nDTEND;VALUE=DATE:20261202\r\nSUMMARY:PTO\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
    assert _dav(server, (user, password)).put(f"{server.dav_url}{user}/bookings/pto.ics", data=pto).status_code == 201
    busy = api.get("/freebusy", tech=user, start="2026-11-30T00:00:00Z", end="2026-12-03T00:00:00Z").json()
    # Tuesday 08:00-17:00 in Los Angeles (PST, UTC-8), not a UTC midnight-to-midnight slot.
    assert busy["techs"][user]["busy"] == [{"start": "2026-12-01T16:00:00Z", "end": "2026-12-02T01:00:00Z"}]
    # An evening slot that day is still bookable; a morning one is not.
    assert _book(api, user, "2026-12-02T02:00:00Z", "2026-12-02T03:00:00Z").status_code == 201
    assert _book(api, user, "2026-12-01T17:00:00Z", "2026-12-01T18:00:00Z").status_code == 409


def test_minimum_notice_hides_slots_too_soon(server: LockstepServer, api: Api) -> None:
    from datetime import datetime, timedelta, timezone

    user, _ = server.add_tech(tz="UTC")
    server.cli("tech", "update", user, "--hours", "mon-sun 00:00-24:00", "--min-notice", "180")
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    start, end = now, now + timedelta(hours=8)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    slots = api.get("/availability", tech=user, start=start.strftime(fmt), end=end.strftime(fmt),
                    duration=60, step=60).json()["techs"][user]["slots"]
    assert slots, "some slots later in the window"
    earliest = datetime.strptime(slots[0]["start"], fmt).replace(tzinfo=timezone.utc)
    assert earliest >= now + timedelta(minutes=180)
    # Slots start on the hour (step 60 from the working range's start). The server's clock has
    # seconds this ``now`` dropped, so on the hour the slot at now + 180 min is already too soon.
    assert earliest < now + timedelta(minutes=180 + 60 + 1)


def test_caldav_freebusy_view_uses_the_index(server: LockstepServer, api: Api) -> None:
    """``GET <calendar>?view=freebusy`` places an all-day event in the tech's working hours too."""
    user, password = server.add_tech(tz="Europe/Berlin")
    pto = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:pto-view\r\nDTSTAMP:20261101T000000Z\r\n"
           "DTSTART;VALUE=DATE:20261201\r\nDTEND;VALUE=DATE:20261202\r\nSUMMARY:PTO\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
    url = f"{server.dav_url}{user}/bookings/"
    assert _dav(server, (user, password)).put(url + "pto.ics", data=pto).status_code == 201
    view = _dav(server, (user, password)).get(url, params={"view": "freebusy", "start": "20261130T000000Z",
                                                            "end": "20261203T000000Z"})
    assert view.status_code == 200 and view.headers["Content-Type"].startswith("text/calendar")
    text = view.text.replace("\r\n ", "")
    assert "FREEBUSY;FBTYPE=BUSY:20261201T070000Z/20261201T160000Z" in text  # 08-17 Berlin (UTC+1)
