"""The request sequence iOS Calendar performs when a CalDAV account is added, replayed."""

from __future__ import annotations

import requests

from tests.support.dav import (
    event_ics,
    multiget_body,
    multistatus,
    propfind,
    report,
    sync_collection_body,
    sync_token,
    tag,
)
from tests.support.lockstep_server import LockstepServer

IOS_AGENT = "iOS/18.1 (22B83) dataaccessd/1.0"


def test_ios_account_setup_and_sync(server: LockstepServer, tech: tuple[str, str]) -> None:
    user, password = tech
    anonymous = requests.Session()
    anonymous.headers["User-Agent"] = IOS_AGENT

    # 1. The phone knows only the host: well-known redirect, then an anonymous PROPFIND.
    well_known = anonymous.request("PROPFIND", server.url + "/.well-known/caldav", allow_redirects=False)
    assert well_known.status_code == 301
    assert well_known.headers["Location"] == "/dav/"
    challenge = propfind(anonymous, server.dav_url, "<propfind xmlns='DAV:'><prop><current-user-principal/></prop></propfind>")
    assert challenge.status_code == 401
    assert challenge.headers["WWW-Authenticate"].startswith("Basic")

    phone = requests.Session()
    phone.headers["User-Agent"] = IOS_AGENT
    phone.auth = (user, password)

    # 2. current-user-principal from the root.
    root = propfind(phone, server.dav_url, "<propfind xmlns='DAV:'><prop><current-user-principal/><principal-URL/></prop></propfind>")
    assert root.status_code == 207
    principal = multistatus(root.text)[0].props[tag("d", "current-user-principal")]
    principal_href = principal.findtext("{DAV:}href")
    assert principal_href == f"/dav/{user}/"

    # 3. calendar-home-set from the principal.
    body = (
        "<propfind xmlns='DAV:' xmlns:C='urn:ietf:params:xml:ns:caldav'><prop>"
        "<C:calendar-home-set/><C:calendar-user-address-set/><displayname/></prop></propfind>"
    )
    principal_resp = propfind(phone, server.url + principal_href, body)
    assert principal_resp.status_code == 207
    home_href = multistatus(principal_resp.text)[0].props[tag("c", "calendar-home-set")].findtext("{DAV:}href")
    assert home_href == f"/dav/{user}/"

    # 4. Depth-1 listing of the home: the bookings calendar with ctag, sync-token and components.
    body = (
        "<propfind xmlns='DAV:' xmlns:C='urn:ietf:params:xml:ns:caldav' "
        "xmlns:CS='http://calendarserver.org/ns/'><prop><resourcetype/><displayname/>"
        "<CS:getctag/><sync-token/><C:supported-calendar-component-set/></prop></propfind>"
    )
    listing = propfind(phone, server.url + home_href, body, depth="1")
    assert listing.status_code == 207
    calendars = {r.href: r for r in multistatus(listing.text) if tag("c", "calendar") in
                 [c.tag for c in r.props.get(tag("d", "resourcetype"), [])]}
    bookings_href = f"/dav/{user}/bookings/"
    assert set(calendars) == {bookings_href}
    bookings = calendars[bookings_href]
    assert bookings.props[tag("d", "displayname")].text == "Bookings"
    ctag_before = bookings.props[tag("cs", "getctag")].text
    assert ctag_before and bookings.props[tag("d", "sync-token")].text
    components = [c.get("name") for c in bookings.props[tag("c", "supported-calendar-component-set")]]
    assert components == ["VEVENT"]

    # 5. Create events with If-None-Match: * (a repeat is refused).
    calendar_url = server.url + bookings_href
    created = {}
    for name in ("keep", "edit", "gone"):
        response = phone.put(f"{calendar_url}{name}.ics", data=event_ics(uid=f"ios-{name}-{user}"),
                             headers={"If-None-Match": "*", "Content-Type": "text/calendar"})
        assert response.status_code == 201, response.text
        created[name] = response.headers["ETag"]
    again = phone.put(f"{calendar_url}keep.ics", data=event_ics(uid=f"ios-keep-{user}"),
                      headers={"If-None-Match": "*", "Content-Type": "text/calendar"})
    assert again.status_code == 412

    # 6. calendar-multiget returns the data with the same etags.
    hrefs = [f"{bookings_href}{name}.ics" for name in created]
    multiget = report(phone, calendar_url, multiget_body(hrefs))
    assert multiget.status_code == 207
    got = {r.href: r for r in multistatus(multiget.text)}
    assert set(got) == set(hrefs)
    for name, etag in created.items():
        item = got[f"{bookings_href}{name}.ics"]
        assert item.props[tag("d", "getetag")].text == etag
        assert f"UID:ios-{name}-{user}" in item.props[tag("c", "calendar-data")].text

    # 7. Initial sync, then an edit and a delete: the delta names exactly those two.
    initial = report(phone, calendar_url, sync_collection_body())
    assert initial.status_code == 207
    token = sync_token(initial.text)
    assert {r.href for r in multistatus(initial.text)} == set(hrefs)

    edited = phone.put(f"{calendar_url}edit.ics", data=event_ics(uid=f"ios-edit-{user}", summary="Moved"),
                       headers={"If-Match": created["edit"], "Content-Type": "text/calendar"})
    assert edited.status_code in (201, 204)
    deleted = phone.delete(f"{calendar_url}gone.ics", headers={"If-Match": created["gone"]})
    assert deleted.status_code in (200, 204)

    delta = report(phone, calendar_url, sync_collection_body(token))
    assert delta.status_code == 207
    changes = {r.href: r for r in multistatus(delta.text)}
    assert set(changes) == {f"{bookings_href}edit.ics", f"{bookings_href}gone.ics"}
    assert "404" in changes[f"{bookings_href}gone.ics"].status
    new_etag = changes[f"{bookings_href}edit.ics"].props[tag("d", "getetag")].text
    assert new_etag and new_etag != created["edit"]
    assert sync_token(delta.text) != token

    # Nothing changed since: an empty delta. The ctag moved.
    quiet = report(phone, calendar_url, sync_collection_body(sync_token(delta.text)))
    assert quiet.status_code == 207 and multistatus(quiet.text) == []
    relist = multistatus(propfind(phone, server.url + home_href, body, depth="1").text)
    ctag_after = next(r for r in relist if r.href == bookings_href).props[tag("cs", "getctag")].text
    assert ctag_after != ctag_before


def test_unknown_sync_token_is_refused(server: LockstepServer, tech: tuple[str, str]) -> None:
    user, password = tech
    url = f"{server.dav_url}{user}/bookings/"
    forged = "http://lockstep.invalid/ns/sync/999999-1"
    response = report(_session((user, password)), url, sync_collection_body(forged))
    assert response.status_code == 403
    assert "valid-sync-token" in response.text


def test_tech_can_make_more_calendars(server: LockstepServer, tech: tuple[str, str]) -> None:
    user, password = tech
    session = requests.Session()
    session.auth = (user, password)
    url = f"{server.dav_url}{user}/personal/"
    body = (
        "<?xml version='1.0'?><C:mkcalendar xmlns:D='DAV:' xmlns:C='urn:ietf:params:xml:ns:caldav'>"
        "<D:set><D:prop><D:displayname>Personal</D:displayname></D:prop></D:set></C:mkcalendar>"
    )
    assert session.request("MKCALENDAR", url, data=body).status_code == 201
    assert session.put(url + "a.ics", data=event_ics(uid="personal-a"),
                       headers={"Content-Type": "text/calendar"}).status_code == 201
    listing = multistatus(propfind(session, f"{server.dav_url}{user}/", "<propfind xmlns='DAV:'><prop><displayname/></prop></propfind>", depth="1").text)
    names = {r.href: r.props.get(tag("d", "displayname")) for r in listing}
    assert f"/dav/{user}/personal/" in names and f"/dav/{user}/bookings/" in names


def test_url_encoded_user_name_is_decoded(server: LockstepServer, tech: tuple[str, str]) -> None:
    """iOS percent-encodes user names; Radicale's urldecode_username undoes it."""
    user, password = tech
    encoded = "".join(f"%{ord(c):02X}" for c in user)
    response = propfind(_session((encoded, password)), f"{server.dav_url}{user}/", "<propfind xmlns='DAV:'><prop><displayname/></prop></propfind>")
    assert response.status_code == 207


def _session(auth: tuple[str, str]) -> requests.Session:
    session = requests.Session()
    session.auth = auth
    return session
